"""Streamed all-pairs TAR@FAR and chunked 1:N search against exact NumPy computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.evaluation import host_staging
from jaxface.evaluation import identification as I
from jaxface.evaluation import verification as V

RNG = np.random.default_rng(0)


def _clustered(n, d, n_ids, noise=1.0):
    labels = RNG.integers(0, n_ids, n)
    centres = RNG.normal(size=(n_ids, d))
    e = centres[labels] + noise * RNG.normal(size=(n, d))
    return (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32), labels


@pytest.fixture(scope="module")
def pairs_set():
    e, lab = _clustered(1100, 32, 120)
    iu = np.triu_indices(len(e), 1)
    s = (e.astype(np.float64) @ e.T.astype(np.float64))[iu]
    same = (lab[:, None] == lab[None, :])[iu]
    return e, lab, s, same


def _mesh():
    return jax.sharding.Mesh(np.array(jax.devices()), ("x",))


def _assert_histograms_match(gen, imp, s, same, n_bins):
    assert gen.sum() == same.sum() and imp.sum() == (~same).sum()
    bins = np.clip(np.floor((s + 1) * n_bins / 2).astype(np.int64), 0, n_bins - 1)
    ref_gen = np.bincount(bins[same], minlength=n_bins)
    ref_imp = np.bincount(bins[~same], minlength=n_bins)
    # float32 device scores vs float64 reference: only pairs within float32 rounding of a bin
    # edge may land one bin off -- the cumulative counts agree up to a one-bin shift.
    for got, ref in ((gen, ref_gen), (imp, ref_imp)):
        cg, cr = np.cumsum(got), np.cumsum(ref)
        assert np.all(cg[:-1] <= cr[1:]) and np.all(cr[:-1] <= cg[1:])
        assert np.abs(got - ref).sum() <= 0.02 * ref.sum()


def test_histograms_match_exact_counts(pairs_set):
    e, lab, s, same = pairs_set
    n_bins = 2**16
    # block does not divide N: exercises the padding mask, the diagonal tiles and the
    # label-free tiles far from the diagonal (120 identities over 5 blocks).
    gen, imp = I.all_pairs_histograms(e, lab, n_bins=n_bins, block=256)
    _assert_histograms_match(gen, imp, s, same, n_bins)
    # Sharded over the 8 host devices: the identical histograms.
    gen8, imp8 = I.all_pairs_histograms(e, lab, n_bins=n_bins, block=128, mesh=_mesh())
    np.testing.assert_array_equal(gen8, gen)
    np.testing.assert_array_equal(imp8, imp)


def test_histograms_identity_spanning_blocks_and_string_labels():
    # One identity of 400 members spans four 128-row blocks once sorted, so genuine pairs
    # sit off the diagonal tiles too; labels are strings, in no particular order.
    e, ids = _clustered(700, 16, 40, noise=0.5)
    ids[RNG.permutation(700)[:400]] = 7
    lab = np.array([f"person_{i:03d}" for i in ids])
    iu = np.triu_indices(len(e), 1)
    s = (e.astype(np.float64) @ e.T.astype(np.float64))[iu]
    same = (ids[:, None] == ids[None, :])[iu]
    n_bins = 2**12
    gen, imp = I.all_pairs_histograms(e, lab, n_bins=n_bins, block=128)
    _assert_histograms_match(gen, imp, s, same, n_bins)


def test_histogram_tar_at_far_agrees_with_exact_roc(pairs_set):
    e, lab, s, same = pairs_set
    gen, imp = I.all_pairs_histograms(e, lab, n_bins=2**16, block=512)
    n_imp = (~same).sum()
    for far in (1e-5, 1e-4, 1e-3, 1e-2):
        h = I.histogram_tar_at_far(gen, imp, far)
        # Exact TAR / FAR at the same threshold from the float64 scores.
        thr = h["threshold"]
        exact_tar = (s[same] >= thr).mean()
        exact_far = (s[~same] >= thr).mean()
        assert abs(h["tar"] - exact_tar) <= 2 / same.sum()
        assert abs(h["far"] - exact_far) <= 20 / n_imp
        # Against the exact pair-list ROC: the bin grid is 3e-5 wide, so TAR differs by the
        # genuine pairs of at most a bin or so.
        ex = V.tar_at_far(s, same, far)
        assert abs(h["tar"] - ex) < 0.01, (far, h["tar"], ex)
        hi = I.histogram_tar_at_far(gen, imp, far, method="interpolated")
        assert abs(hi["tar"] - V.tar_at_far(s, same, far, method="interpolated")) < 0.01


def _ref_topk(q, g, k):
    sc = q.astype(np.float64) @ g.T.astype(np.float64)
    idx = np.argsort(-sc, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sc, idx, 1), idx


@pytest.mark.parametrize("chunk,use_mesh", [(1000, False), (4096, False), (1000, True)])
def test_search_top_k_matches_argsort(chunk, use_mesh):
    g = RNG.normal(size=(9000, 24)).astype(np.float32)
    q = RNG.normal(size=(37, 24)).astype(np.float32)
    s, i = I.search_top_k(q, g, k=7, chunk=chunk, mesh=_mesh() if use_mesh else None)
    rs, ri = _ref_topk(q, g, 7)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_allclose(s, rs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "gallery_kind,k,chunk,window",
    [
        ("numpy", 45, 700, None),
        ("numpy", 5, 4096, None),
        ("numpy", 45, 700, 1),  # a selection after every chunk
        (
            "numpy",
            45,
            700,
            3 * 23 * 96,
        ),  # windows of 3 chunks (23 queries, 96 groups each): the last one part-filled
        ("memmap", 45, 700, None),
        ("npy_readonly", 45, 768, None),
        ("device", 45, 700, None),
        ("mesh", 45, 700, None),
    ],
)
def test_search_top_k_exact_ties(gallery_kind, k, chunk, window, tmp_path, monkeypatch):
    """Small-integer embeddings: every score is an exact integer, so the top-k is full of
    exact ties, within and across groups of rows and chunks. The result must be the stable
    argsort's (lower gallery index first), whatever holds the gallery."""
    g = RNG.integers(-2, 3, size=(3001, 16)).astype(np.float32)
    g[1500:1540] = g[7]  # a run of duplicates: whole groups tied with a row of another chunk
    q = RNG.integers(-2, 3, size=(23, 16)).astype(np.float32)
    q[0] = g[7]
    mesh = None
    if window is not None:
        monkeypatch.setattr(I, "_WINDOW_VALUES", window)
    if gallery_kind == "memmap":
        mm = np.lib.format.open_memmap(
            tmp_path / "g.npy", mode="w+", dtype=np.float32, shape=g.shape
        )
        mm[:] = g
        g_in = mm
    elif gallery_kind == "npy_readonly":  # chunks read in place from the mapping
        np.save(tmp_path / "g.npy", g)
        g_in = np.load(tmp_path / "g.npy", mmap_mode="r")
        assert host_staging.in_place_source(g_in) is not None
    elif gallery_kind == "device":
        g_in = jnp.asarray(g)
    else:
        g_in = g
        mesh = _mesh() if gallery_kind == "mesh" else None
    s, i = I.search_top_k(q, g_in, k=k, chunk=chunk, mesh=mesh)
    rs, ri = _ref_topk(q, g, k)
    np.testing.assert_array_equal(s, rs)
    np.testing.assert_array_equal(i, ri)


def test_search_in_place_tail_pieces(tmp_path):
    """A gallery read in place whose tail holds whole sub-blocks: the tail runs as an unpadded
    step of its own size plus one padded sub-block; the result is still the stable argsort."""
    sub = I._sub_rows(9)
    g_n = 2 * sub + sub + 37
    assert list(I._pieces(g_n, 2 * sub, sub, True)) == [
        (0, 2 * sub, 2 * sub),
        (2 * sub, sub, sub),
        (3 * sub, 37, sub),
    ]
    assert list(I._pieces(g_n, 2 * sub, sub, False)) == [
        (0, 2 * sub, 2 * sub),
        (2 * sub, sub + 37, 2 * sub),
    ]
    g = RNG.integers(-2, 3, size=(g_n, 8)).astype(np.float32)
    q = RNG.integers(-2, 3, size=(9, 8)).astype(np.float32)
    np.save(tmp_path / "g.npy", g)
    s, i = I.search_top_k(q, np.load(tmp_path / "g.npy", mmap_mode="r"), k=10, chunk=2 * sub)
    rs, ri = _ref_topk(q, g, 10)
    np.testing.assert_array_equal(s, rs)
    np.testing.assert_array_equal(i, ri)


def test_in_place_source_rules(tmp_path):
    g = np.zeros((256, 32), np.float32)
    np.save(tmp_path / "g.npy", g)
    ro = np.load(tmp_path / "g.npy", mmap_mode="r")
    src = host_staging.in_place_source(ro)
    assert src is not None and src.flags.writeable and src.ctypes.data % 64 == 0
    assert host_staging.in_place_source(ro[8:]) is None  # a view of a read-only mapping
    raw = np.zeros(256 * 32 + 32, np.float32)
    start = (-raw.ctypes.data % 64) // 4 + 1  # 4 bytes past a 64-byte boundary
    unaligned = raw[start : start + 256 * 32].reshape(256, 32)
    assert unaligned.ctypes.data % 64 == 4 and host_staging.in_place_source(unaligned) is None
    assert host_staging.in_place_source(g.astype(np.float64)) is None
    assert host_staging.in_place_source(np.asfortranarray(g)) is None


def test_cmc_rank_k_and_dir_at_fpir():
    g, gl = _clustered(400, 16, 400, noise=0.0)  # one gallery image per identity
    gl = np.arange(400)
    probe_ids = np.r_[RNG.integers(0, 400, 150), np.arange(400, 450)]  # 50 non-mated
    centres = np.r_[g, RNG.normal(size=(50, 16))]
    pe = centres[probe_ids] + 0.35 * RNG.normal(size=(200, 16))
    pe = (pe / np.linalg.norm(pe, axis=1, keepdims=True)).astype(np.float32)
    s, i = I.search_top_k(pe, g, k=20, chunk=128)
    curve = I.cmc(i, probe_ids, gl)
    # Reference CMC from a full argsort, over mated probes + misses for non-mated ones.
    full = np.argsort(-(pe.astype(np.float64) @ g.T), axis=1, kind="stable")
    first = np.array(
        [np.nonzero(gl[r] == p)[0][0] if p < 400 else 10**9 for r, p in zip(full, probe_ids)]
    )
    np.testing.assert_allclose(curve, [(first < r).mean() for r in range(1, 21)])
    assert np.all(np.diff(curve) >= 0)
    assert I.rank_k_accuracy(i, probe_ids, gl, 5) == curve[4]
    res = I.dir_at_fpir(s, i, probe_ids, gl, fpir=[0.0, 0.1, 1.0])
    mated = probe_ids < 400
    non_top1 = np.sort(s[~mated, 0])[::-1]
    for f, d, fp, t in zip([0.0, 0.1, 1.0], res["dir"], res["fpir"], res["threshold"]):
        m = int(np.floor(f * 50 + 1e-9))
        tt = non_top1[m] if m < 50 else -np.inf
        assert t == tt and fp <= f + 1e-12
        ref = np.mean(
            [(s[q, 0] > tt) and gl[i[q, 0]] == probe_ids[q] for q in np.nonzero(mated)[0]]
        )
        assert d == pytest.approx(ref)
    assert res["dir"][0] <= res["dir"][1] <= res["dir"][2]
    assert res["dir"][2] == pytest.approx(curve[0] * 200 / 150)


def test_errors():
    with pytest.raises(ValueError, match="embeddings"):
        I.all_pairs_histograms(np.full((4, 3), np.nan), np.zeros(4))
    with pytest.raises(ValueError, match="k=5"):
        I.search_top_k(np.ones((2, 3)), np.ones((4, 3)), k=5)
    with pytest.raises(ValueError, match="gallery: non-finite"):
        I.search_top_k(np.ones((2, 3)), np.r_[np.ones((3, 3)), [[np.nan] * 3]], k=2)
    with pytest.raises(ValueError, match="gallery: non-finite"):  # a NaN row far from the top-k
        g = -np.ones((300, 3))
        g[250] = np.nan
        I.search_top_k(np.ones((2, 3)), g, k=2, chunk=64, mesh=_mesh())
    with pytest.raises(ValueError, match="queries: non-finite"):
        I.search_top_k(np.full((2, 3), np.inf), np.ones((4, 3)), k=2)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_rejects_nonfinite_embeddings(bad):
    """NaN / inf anywhere in the embeddings is an error, not a silently wrong ROC or top-k:
    all-pairs (names the row), queries, gallery rows far from the top-k (checked on device,
    per chunk, sharded or not), and the scores handed to the open-set metric."""
    e = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    lab = np.arange(300) % 30
    broken = e.copy()
    broken[123, 4] = bad
    with pytest.raises(ValueError, match=r"embeddings: non-finite.*in 1 row\(s\), first 123"):
        I.all_pairs_histograms(broken, lab, n_bins=64, block=64)
    with pytest.raises(ValueError, match="queries: non-finite"):
        I.search_top_k(broken[100:130], e, k=5)
    for mesh in (None, _mesh()):
        with pytest.raises(ValueError, match="gallery: non-finite"):
            I.search_top_k(e[:4], broken, k=5, chunk=64, mesh=mesh)
    s, i = I.search_top_k(e[:20], e[20:], k=3)
    s[5, 0] = bad
    with pytest.raises(ValueError, match=r"scores: 1 non-finite"):
        I.dir_at_fpir(s, i, lab[:20], lab[20:], fpir=0.1, mated=np.arange(20) % 2 == 0)


def test_plot_cmc_writes_png(tmp_path):
    from PIL import Image

    idx = np.array([[0, 1, 2], [2, 0, 1], [1, 2, 0]])
    curve = I.cmc(idx, np.array([0, 0, 0]), np.array([0, 1, 2]))
    np.testing.assert_allclose(curve, [1 / 3, 2 / 3, 1.0])
    out = I.plot_cmc({"all": curve}, tmp_path / "cmc.png")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (600, 450)
        assert len(np.unique(np.asarray(im.convert("L")))) > 10  # drawn, not blank
    with pytest.raises(ValueError, match="all cmc: 1 non-finite"):
        I.plot_cmc({"all": np.array([0.5, np.nan])}, tmp_path / "bad.png")
