"""Verification protocols: real LFW / CFP files, fold logic, ROC metrics vs sklearn."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from jaxface.evaluation import verification as V

RNG = np.random.default_rng(0)


# ------------------------------------------------------------------ real files


def test_lfw_pairs_real_file(real_data):
    pairs = V.parse_lfw_pairs(real_data("lfw", "pairs.txt"))
    assert len(pairs) == 6000 and pairs.n_folds == 10 and pairs.pairs_per_fold == 300
    assert np.bincount(pairs.fold).tolist() == [600] * 10
    for k in range(10):
        assert pairs.same[pairs.fold == k].sum() == 300
    assert np.all(pairs.name1[pairs.same] == pairs.name2[pairs.same])
    assert np.all(pairs.name1[~pairs.same] != pairs.name2[~pairs.same])
    names = set(pairs.name1) | set(pairs.name2)
    refs = set(zip(pairs.name1, pairs.index1)) | set(zip(pairs.name2, pairs.index2))
    assert len(names) == 4281 and len(refs) == 7701
    # First line of the file: "Abel_Pacheco 1 4".
    assert (pairs.name1[0], pairs.index1[0], pairs.index2[0]) == ("Abel_Pacheco", 1, 4)
    p1, _ = pairs.paths("/lfw")
    assert str(p1[0]) == "/lfw/Abel_Pacheco/Abel_Pacheco_0001.jpg"
    # The real image files that are present follow that layout's naming.
    assert (
        real_data("lfw", "Anthony_Hopkins_0001.jpg").name
        == V.lfw_image_path(".", "Anthony_Hopkins", 1).name
    )


def test_cfp_protocol_real_files(real_data):
    root = real_data("cfp")
    proto = V.parse_cfp_protocol(root)
    assert len(proto.frontal_paths) == 5000 and len(proto.profile_paths) == 2000
    assert all(p.is_file() for p in proto.frontal_paths + proto.profile_paths)
    assert len(set(proto.frontal_paths + proto.profile_paths)) == 7000
    assert all("frontal" == p.parent.name for p in proto.frontal_paths)
    assert all("profile" == p.parent.name for p in proto.profile_paths)
    assert np.bincount(proto.frontal_identity).tolist() == [10] * 500
    assert np.bincount(proto.profile_identity).tolist() == [4] * 500
    for name, second in (("FF", proto.frontal_identity), ("FP", proto.profile_identity)):
        splits = proto.splits[name]
        assert len(splits) == 10
        seen = set()
        for i1, i2, same in splits:
            assert same.sum() == 350 and (~same).sum() == 350
            ids = set(proto.frontal_identity[i1]) | set(second[i2])
            assert len(ids) == 50 and not (ids & seen)  # 50 identities, disjoint across splits
            seen |= ids
        _, _, same, split = proto.pairs(name)
        assert len(same) == 7000 and np.bincount(split).tolist() == [700] * 10
    fid = V.read_cfp_fiducials(proto.fiducial_path(proto.profile_paths[0]))
    assert fid.shape == (30, 2)


def test_cfp_rejects_escaping_paths_and_bad_indices(tmp_path):
    root = tmp_path / "cfp"
    (root / "Protocol").mkdir(parents=True)
    (root / "Protocol" / "Pair_list_F.txt").write_text(
        "1 ../Data/Images/001/frontal/01.jpg\n2 ../../../etc/passwd\n"
    )
    (root / "Protocol" / "Pair_list_P.txt").write_text("1 ../Data/Images/001/profile/01.jpg\n")
    with pytest.raises(ValueError, match=r"Pair_list_F.txt:2: .*escapes"):
        V.parse_cfp_protocol(root, check_exists=False)
    (root / "Protocol" / "Pair_list_F.txt").write_text("1 /etc/passwd\n")
    with pytest.raises(ValueError, match=r"Pair_list_F.txt:1: absolute"):
        V.parse_cfp_protocol(root, check_exists=False)
    (root / "Protocol" / "Pair_list_F.txt").write_text("1 ../Data/Images/001/frontal/01.jpg\n")
    with pytest.raises(FileNotFoundError, match=r"Pair_list_F.txt:1"):
        V.parse_cfp_protocol(root, check_exists=True)
    d = root / "Protocol" / "Split" / "FF" / "01"
    d.mkdir(parents=True)
    (d / "same.txt").write_text("1,1\n1,7\n")
    (d / "diff.txt").write_text("")
    with pytest.raises(ValueError, match=r"same.txt:2: field j=7 out of range"):
        V.parse_cfp_protocol(root, check_exists=False, n_splits=1)


def test_lfw_parse_errors_name_file_and_line(tmp_path):
    p = tmp_path / "pairs.txt"
    p.write_text("1 2\nA 1 2\nB 1 3\nC 1 D x\nE 1 F 2\n")
    with pytest.raises(ValueError, match=r"pairs.txt:4: field j: expected an integer"):
        V.parse_lfw_pairs(p)
    p.write_text("1 2\nA 1 2\nB 1 3\nC 1 D 2\n")
    with pytest.raises(ValueError, match=r"pairs.txt:4: expected 4 pair lines"):
        V.parse_lfw_pairs(p)
    p.write_text("1 2\nA 1 2\nB 1 Q 3\nC 1 D 2\nE 1 F 2\n")
    with pytest.raises(ValueError, match=r"pairs.txt:3: fold 1, same pair 2"):
        V.parse_lfw_pairs(p)
    p.write_text("1 2\nA 1 2\nB 1 3\nC 1 D 2\nE 1 F 2\n")
    ok = V.parse_lfw_pairs(p)
    assert ok.same.tolist() == [True, True, False, False]


@pytest.mark.parametrize("name", ["..", "../../etc", "a/b", "a\\b", "."])
def test_lfw_names_cannot_escape_the_root(tmp_path, name):
    p = tmp_path / "pairs.txt"
    p.write_text(f"1 1\nA 1 2\nC 1 {name} 2\n")
    with pytest.raises(ValueError, match=r"pairs.txt:3: person name .* not a plain folder name"):
        V.parse_lfw_pairs(p)


# ------------------------------------------------------------------ metrics


def _synthetic(n=1000, sep=1.5):
    same = RNG.random(n) < 0.5
    sim = RNG.normal(size=n) + sep * same
    return sim, same


def test_roc_eer_auc_against_sklearn():
    for sim, same in (
        _synthetic(),
        _synthetic(300, 0.3),
        (np.round(_synthetic()[0], 1), _synthetic()[1]),
    ):
        fpr, tpr, thr = V.roc_curve(sim, same)
        sf, st, sth = sk_roc_curve(same, sim, drop_intermediate=False)
        np.testing.assert_allclose(fpr, sf)
        np.testing.assert_allclose(tpr, st)
        np.testing.assert_allclose(thr[1:], sth[1:])
        np.testing.assert_allclose(V.roc_auc(sim, same), roc_auc_score(same, sim), rtol=1e-12)
        np.testing.assert_allclose(V.eer(sim, same), sf[np.argmin(np.abs(sf + st - 1))])
        # Distances: the same ROC.
        np.testing.assert_allclose(
            V.roc_auc(-sim, same, kind="distance"), roc_auc_score(same, sim), rtol=1e-12
        )
        np.testing.assert_allclose(V.eer(2 - sim, same, kind="distance"), V.eer(sim, same))


def test_tar_at_far_closest_and_interpolated():
    sim, same = _synthetic(5000)
    sf, st, _ = sk_roc_curve(same, sim)
    for far in (1e-3, 1e-2, 0.1):
        # insightface IJB_11.py convention
        _, idx = min(zip(abs(sf - far), range(len(sf))))
        np.testing.assert_allclose(V.tar_at_far(sim, same, far), st[idx])
    np.testing.assert_allclose(
        V.tar_at_far(sim, same, [0.5], method="interpolated"),
        [np.interp(0.5, *V.roc_curve(sim, same)[:2])],
    )
    # Perfect separation: TAR 1 at any FAR.
    perfect = np.where(same, 1.0, -1.0)
    assert V.tar_at_far(perfect, same, 1e-6, method="closest_upper") == 1.0
    assert V.tar_at_far(perfect, same, 1e-6) == 0.0  # insightface's tie rule: the (0, 0) point
    # closest_upper is never below closest and sits at the same FPR.
    for far in (1e-3, 1e-2):
        assert V.tar_at_far(sim, same, far, method="closest_upper") >= V.tar_at_far(sim, same, far)


def _reference_kfold(dist, same, folds, thresholds):
    """insightface's calculate_roc accuracy part, written out."""
    accs = []
    for k in np.unique(folds):
        tr, te = folds != k, folds == k
        acc_tr = [np.mean((dist[tr] < t) == same[tr]) for t in thresholds]
        t = thresholds[int(np.argmax(acc_tr))]
        accs.append(np.mean((dist[te] < t) == same[te]))
    return np.array(accs)


def test_kfold_accuracy_matches_reference_and_uses_other_folds():
    n = 600
    same = np.tile(np.r_[np.ones(30, bool), np.zeros(30, bool)], 10)
    folds = np.repeat(np.arange(10), 60)
    dist = np.clip(RNG.normal(1.4, 0.3, n) - 0.5 * same, 0, 4)
    got = V.kfold_accuracy(dist, same, folds)
    np.testing.assert_allclose(
        got["accuracy"], _reference_kfold(dist, same, folds, V.LFW_THRESHOLDS)
    )
    assert abs(got["mean"] - got["accuracy"].mean()) < 1e-12 and got["std"] == got["accuracy"].std()
    # Leakage check: a fold whose own optimum differs from the others' does not get its own.
    dist2 = np.where(same, 0.5, 1.5)
    dist2[folds == 0] = np.where(same[folds == 0], 2.5, 3.5)  # fold 0 separable only above 2
    got2 = V.kfold_accuracy(dist2, same, folds)
    assert got2["accuracy"][0] == 0.5  # threshold from folds 1..9 (~1) calls everything "different"
    np.testing.assert_array_equal(got2["accuracy"][1:], 1.0)
    # Similarity scores with the cosine grid.
    got3 = V.kfold_accuracy(1 - dist / 2, same, folds, kind="similarity")
    assert abs(got3["mean"] - got["mean"]) < 0.02


def test_kfold_tar_at_far_and_evaluate_folds():
    same = np.tile(np.r_[np.ones(300, bool), np.zeros(300, bool)], 10)
    folds = np.repeat(np.arange(10), 600)
    dist = np.clip(RNG.normal(1.4, 0.25, len(same)) - 0.6 * same, 0, 4)
    r = V.kfold_tar_at_far(dist, same, folds, 1e-2)
    assert r["tar"].shape == (10,) and np.all(r["far"] <= 0.05)
    assert 0.3 < r["tar_mean"] < 1.0
    rep = V.evaluate_folds(dist, same, folds)
    aucs = [roc_auc_score(same[folds == k], -dist[folds == k]) for k in range(10)]
    np.testing.assert_allclose(rep["auc"], aucs)
    assert rep["eer"].shape == (10,) and 0 < rep["eer_mean"] < 0.5


def test_nan_rejected_and_plot(tmp_path):
    sim, same = _synthetic(100)
    sim[17] = np.nan
    with pytest.raises(ValueError, match=r"scores: 1 non-finite value.*index \(17,\)"):
        V.roc_auc(sim, same)
    with pytest.raises(ValueError, match="emb1"):
        V.pair_distances(np.full((2, 3), np.nan), np.zeros((2, 3)))
    sim, same = _synthetic(2000)
    fpr, tpr, _ = V.roc_curve(sim, same)
    out = V.plot_roc({"a": (fpr, tpr), "b": (fpr, np.sqrt(tpr))}, tmp_path / "roc.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_fuse_flip_and_distances():
    e = RNG.normal(size=(5, 4))
    ef = RNG.normal(size=(5, 4))
    f = V.fuse_flip(e, ef)
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0)
    np.testing.assert_allclose(f[0], (e[0] + ef[0]) / np.linalg.norm(e[0] + ef[0]))
    d = V.pair_distances(f, f[::-1])
    np.testing.assert_allclose(d, 2 - 2 * np.sum(f * f[::-1], axis=1))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_rejects_nonfinite_embeddings(bad):
    """A diverged model's NaN / inf embedding is an error naming the array and row,
    at every verification entry point that takes embeddings or scores."""
    e = RNG.normal(size=(6, 4))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    broken = e.copy()
    broken[3, 1] = bad
    with pytest.raises(ValueError, match=r"emb1: 1 non-finite value.*index \(3, 1\)"):
        V.pair_distances(broken, e)
    with pytest.raises(ValueError, match=r"emb2: 1 non-finite"):
        V.pair_distances(e, broken)
    with pytest.raises(ValueError, match=r"emb_flip: 1 non-finite"):
        V.fuse_flip(e, broken)
    d = V.pair_distances(e, e[::-1])
    d[2] = bad
    same = np.array([1, 0, 1, 0, 1, 0], bool)
    with pytest.raises(ValueError, match=r"scores: 1 non-finite"):
        V.evaluate_folds(d, same, np.arange(6) % 2)
    with pytest.raises(ValueError, match=r"scores: 1 non-finite"):
        V.tar_at_far(d, same, 0.1, kind="distance")
