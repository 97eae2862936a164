"""The embedded synthetic face data: determinism, label consistency, CelebA rates, tfds.

The renderer tests are NumPy only; the tfds round trip (last test) imports TensorFlow.
"""

import numpy as np
import pytest

from jaxface.data.synthetic import render, scenes

SPEC = render.Spec()


# ---------------------------------------------------------------------------------------
# Determinism.


@pytest.mark.parametrize(
    "make",
    [render.attributes_example, render.identity_example, render.detection_example],
    ids=["attributes", "identity", "detection"],
)
def test_same_coordinates_same_bytes(make):
    a = make(3, "train", 11, SPEC)
    b = make(3, "train", 11, SPEC)
    assert a["image"].tobytes() == b["image"].tobytes()
    c = make(4, "train", 11, SPEC)  # another seed
    assert c["image"].tobytes() != a["image"].tobytes()
    e = make(3, "train", 12, SPEC)  # another index
    assert e["image"].tobytes() != a["image"].tobytes()


def test_example_order_does_not_matter():
    """An example depends on its coordinates only, not on what was generated before."""
    first = render.identity_example(0, "test", 5, SPEC)["image"]
    for i in range(3):
        render.identity_example(0, "test", i, SPEC)
    render.head_params.cache_clear()
    assert render.identity_example(0, "test", 5, SPEC)["image"].tobytes() == first.tobytes()


def test_split_streams_differ():
    a = render.attributes_example(0, "train", 0)["image"]
    b = render.attributes_example(0, "test", 0)["image"]
    assert a.tobytes() != b.tobytes()
    with pytest.raises(ValueError, match="unknown split"):
        render.attributes_example(0, "dev", 0)


# ---------------------------------------------------------------------------------------
# Attributes.


def test_attribute_names_and_rates_match_the_celeba_file(real_data):
    path = real_data("celeba", "list_attr_celeba_first20000.txt")
    lines = path.read_text().splitlines()
    names = tuple(lines[1].split())
    assert names == render.ATTRIBUTE_NAMES
    rows = np.array([[int(v) for v in line.split()[1:]] for line in lines[2:] if line.strip()]) > 0
    assert len(rows) == 20000  # the row count the embedded comment states
    np.testing.assert_allclose(rows.mean(0), render.CELEBA_ATTRIBUTE_RATES, atol=5e-6)
    male = rows[:, names.index("Male")]
    np.testing.assert_allclose(rows[male].mean(0), render.CELEBA_RATES_GIVEN_MALE, atol=5e-6)


def test_attribute_rates_match_celeba_over_the_default_size():
    n = 20_000  # the default attributes train split
    labels = np.stack([render.attributes_labels(0, "train", i) for i in range(n)])
    assert labels.dtype == np.int32 and set(np.unique(labels)) <= {0, 1}
    p = np.asarray(render.CELEBA_ATTRIBUTE_RATES)
    # Binomial standard error of each rate; 4.5 sigma keeps the 40-way family's false
    # alarm rate below 1e-4 while catching any bias of about a percentage point.
    tol = 4.5 * np.sqrt(p * (1 - p) / n)
    err = np.abs(labels.mean(0) - p)
    bad = {
        render.ATTRIBUTE_NAMES[i]: (labels[:, i].mean(), p[i]) for i in np.flatnonzero(err > tol)
    }
    assert not bad, f"rates off by more than 4.5 sigma (n={n}): {bad}"
    assert err.max() < 0.016


def test_attribute_labels_agree_with_the_rendered_example():
    for i in range(5):
        np.testing.assert_array_equal(
            render.attributes_labels(1, "test", i),
            render.attributes_example(1, "test", i)["attributes"],
        )


def test_attribute_correlations_are_plausible():
    labels = np.stack([render.attributes_labels(0, "train", i) for i in range(6000)])
    col = {n: labels[:, i].astype(bool) for i, n in enumerate(render.ATTRIBUTE_NAMES)}
    assert col["Male"][col["Goatee"]].mean() > 0.95  # beards on men
    assert col["Male"][col["Wearing_Lipstick"]].mean() < 0.05  # lipstick on women
    colours = labels[
        :, [render.A[n] for n in ("Black_Hair", "Brown_Hair", "Blond_Hair", "Gray_Hair")]
    ]
    assert colours.sum(1).max() == 1  # one hair colour at most
    assert col["Young"][col["Gray_Hair"]].mean() < col["Young"].mean()  # gray hair goes with age
    assert col["Smiling"][col["Mouth_Slightly_Open"]].mean() > col["Smiling"].mean()


def test_every_attribute_is_visible():
    """Toggling one attribute (same nuisance stream) changes the crop."""
    for seed in range(2):
        base = np.zeros(render.NUM_ATTRIBUTES, np.int32)
        base[[render.A["No_Beard"], render.A["Young"]]] = 1
        base[render.A["Male"]] = seed
        ref = render.render_attribute_face(base, np.random.default_rng(seed), 64).astype(np.int32)
        for i, name in enumerate(render.ATTRIBUTE_NAMES):
            flipped = base.copy()
            flipped[i] ^= 1
            img = render.render_attribute_face(flipped, np.random.default_rng(seed), 64).astype(
                np.int32
            )
            changed = (np.abs(img - ref).sum(-1) > 30).sum()
            assert changed >= 4, f"{name}: toggling it changes {changed} pixels (seed {seed})"


def test_attribute_image_size_is_configurable():
    ex = render.attributes_example(0, "train", 0, render.Spec(attribute_image_size=96))
    assert ex["image"].shape == (96, 96, 3) and ex["image"].dtype == np.uint8
    assert ex["attributes"].shape == (40,) and ex["id"] == 0


# ---------------------------------------------------------------------------------------
# Identity.


def test_identity_labels_splits_and_geometry():
    spec = render.Spec(num_train_identities=7, num_test_identities=3, images_per_identity=4)
    train = [render.identity_example(0, "train", i, spec) for i in range(7 * 4)]
    test = [render.identity_example(0, "test", i, spec) for i in range(3 * 4)]
    train_ids = {int(e["label"]) for e in train}
    test_ids = {int(e["label"]) for e in test}
    assert train_ids == set(range(7)) and test_ids == set(range(7, 10))  # disjoint, global ids
    with pytest.raises(IndexError):
        render.identity_example(0, "test", 3 * 4, spec)
    for e in train + test:
        assert e["image"].shape == (112, 112, 3) and e["image"].dtype == np.uint8
        assert -90 <= float(e["yaw"]) <= 90
        assert e["landmarks"].shape == (5, 2) and e["landmarks"].dtype == np.float32
    for e in train:  # image 0 near-frontal, image 1 a profile
        k = int(e["id"]) % 4
        if k == 0:
            assert abs(float(e["yaw"])) < 10
            lm = e["landmarks"]
            assert np.all((lm > 0) & (lm < 112))
            assert (
                lm[0, 0] < lm[2, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]
            )  # eyes, nose, mouth in order
            assert lm[:2, 1].max() < lm[2, 1] < lm[3:, 1].min()
        if k == 1:
            assert abs(float(e["yaw"])) >= 70


def _view(identity, yaw, smile=0.0):
    hp = render.head_params(0, identity)
    out = render.render_head(hp, yaw=yaw, smile=smile)
    return out["image"]


def test_identity_is_stable_and_profiles_differ():
    ids = range(12)
    frontal = {i: _view(i, 0.0) for i in ids}
    near = {i: _view(i, 6.0, smile=0.6) for i in ids}  # the same person, slightly turned, smiling
    profile = {i: _view(i, 80.0) for i in ids}

    def dist(a, b):
        return float(np.abs(a - b).mean())

    same = np.mean([dist(frontal[i], near[i]) for i in ids])
    other = np.mean([dist(frontal[i], frontal[j]) for i in ids for j in ids if i < j])
    prof = np.mean([dist(frontal[i], profile[i]) for i in ids])
    assert same < 0.6 * other, (same, other)
    assert prof > 2 * same, (prof, same)  # the frontal/profile gap


def test_profile_hides_the_far_eye():
    for identity in range(4):
        hp = render.head_params(0, identity)
        kw = dict(size=(160, 160), centre=(80.0, 80.0))  # room for the nose in profile
        frontal = render.render_head(hp, yaw=0.0, **kw)
        assert frontal["visible"].all()
        for yaw in (85.0, -85.0):
            profile = render.render_head(hp, yaw=yaw, **kw)
            far = (
                1 if yaw > 0 else 0
            )  # yaw > 0 turns the nose to the image right: the right eye goes round
            assert (
                not profile["visible"][far]
                and profile["visible"][1 - far]
                and profile["visible"][2]
            )
            # The nose tip is the outermost landmark on the turned side.
            nose_x, eyes_x = profile["landmarks"][2, 0], profile["landmarks"][:2, 0]
            assert (nose_x > eyes_x.max()) if yaw > 0 else (nose_x < eyes_x.min())
            # The head's outline changes, not just its texture.
            assert (frontal["mask"] != profile["mask"]).mean() > 0.05


# ---------------------------------------------------------------------------------------
# Detection.


def test_detection_scene_labels():
    sizes_all, n_faces = [], []
    for i in range(12):
        ex = render.detection_example(0, "train", i, SPEC)
        img, f = ex["image"], ex["faces"]
        H, W = img.shape[:2]
        assert 256 <= H <= 640 and 256 <= W <= 640 and img.dtype == np.uint8
        n = len(f["boxes"])
        n_faces.append(n)
        assert n <= 40
        for key in ("landmarks", "blur", "occlusion", "pose", "invalid", "yaw"):
            assert len(f[key]) == n
        if not n:
            continue
        b = f["boxes"]
        assert (
            np.all(b[:, 0] >= 0)
            and np.all(b[:, 1] >= 0)
            and np.all(b[:, 2] <= W)
            and np.all(b[:, 3] <= H)
        )
        assert np.all(b[:, 2] > b[:, 0]) and np.all(b[:, 3] > b[:, 1])
        size = b[:, 3] - b[:, 1]
        assert np.all(size >= SPEC.detection_min_face - 2) and np.all(
            size <= SPEC.detection_max_face + 2
        )
        sizes_all.append(size)
        lm = f["landmarks"]
        assert np.all(lm[..., 0] >= b[:, None, 0] - 1) and np.all(lm[..., 0] <= b[:, None, 2] + 1)
        assert np.all(lm[..., 1] >= b[:, None, 1] - 1) and np.all(lm[..., 1] <= b[:, None, 3] + 1)
        for key, hi in (("blur", 2), ("occlusion", 2), ("pose", 1), ("invalid", 1)):
            assert f[key].min() >= 0 and f[key].max() <= hi
        # Faces do not overlap one another.
        for j in range(n):
            for k in range(j + 1, n):
                assert not scenes._intersects(b[j], b[k])
    sizes = np.concatenate(sizes_all)
    assert (sizes < 20).mean() > 0.1  # small faces are common
    assert sizes.max() > 80
    assert max(n_faces) > 5


def test_difficulty_subsets_are_nested():
    rng = np.random.default_rng(0)
    n = 500
    sizes = np.exp(rng.uniform(np.log(6), np.log(400), n))
    blur, occ = rng.integers(0, 3, n), rng.integers(0, 3, n)
    pose, invalid = rng.integers(0, 2, n), rng.random(n) < 0.05
    s = render.difficulty_subsets(sizes, blur, occ, pose, invalid)
    assert np.all(s["easy"] <= s["medium"]) and np.all(s["medium"] <= s["hard"])
    assert not np.any(s["hard"] & invalid)
    assert s["easy"].sum() < s["medium"].sum() < s["hard"].sum()
    assert np.all(sizes[s["easy"]] >= 50) and np.all(sizes[s["hard"]] >= 10)


# ---------------------------------------------------------------------------------------
# tfds round trip.


def test_tfds_build_and_read_back(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    tf = pytest.importorskip("tensorflow")
    tf.config.set_visible_devices([], "GPU")
    from jaxface.data.synthetic import builder as builder_lib

    cfgs = [
        builder_lib.SyntheticFacesConfig(
            name="attributes_tiny", kind="attributes", num_train=12, num_test=4, image_size=32
        ),
        builder_lib.SyntheticFacesConfig(
            name="identity_tiny",
            kind="identity",
            num_train_identities=3,
            num_test_identities=2,
            images_per_identity=2,
        ),
        builder_lib.SyntheticFacesConfig(
            name="detection_tiny",
            kind="detection",
            num_train=3,
            num_validation=2,
            num_test=0,
            detection_max_side=320,
        ),
    ]
    assert {c.name for c in builder_lib.SyntheticFaces.BUILDER_CONFIGS} == {
        "attributes",
        "identity",
        "detection",
    }
    for cfg in cfgs:
        b = tfds.builder("synthetic_faces", config=cfg, data_dir=str(tmp_path))
        b.download_and_prepare()
        spec = cfg.spec()
        assert {s: b.info.splits[s].num_examples for s in b.info.splits} == cfg.split_sizes()
        for split, n in cfg.split_sizes().items():
            got = list(tfds.as_numpy(b.as_dataset(split=split)))
            assert len(got) == n
            for ex in got:
                if cfg.kind == "attributes":
                    want = render.attributes_example(cfg.seed, split, int(ex["id"]), spec)
                    assert ex["image"].shape == (32, 32, 3)
                    np.testing.assert_array_equal(ex["image"], want["image"])
                    np.testing.assert_array_equal(ex["attributes"], want["attributes"])
                elif cfg.kind == "identity":
                    want = render.identity_example(cfg.seed, split, int(ex["id"]), spec)
                    np.testing.assert_array_equal(ex["image"], want["image"])
                    assert ex["label"] == want["label"] and ex["yaw"] == want["yaw"]
                    np.testing.assert_allclose(ex["landmarks"], want["landmarks"])
                else:
                    want = render.detection_example(cfg.seed, split, int(ex["image/id"]), spec)
                    np.testing.assert_array_equal(ex["image"], want["image"])
                    h, w = want["image"].shape[:2]
                    bb = want["faces"]["boxes"]
                    expect = (
                        np.stack([bb[:, 1] / h, bb[:, 0] / w, bb[:, 3] / h, bb[:, 2] / w], 1)
                        if len(bb)
                        else np.zeros((0, 4))
                    )
                    np.testing.assert_allclose(ex["faces"]["bbox"], expect, atol=1e-6)
                    np.testing.assert_array_equal(
                        ex["faces"]["occlusion"], want["faces"]["occlusion"]
                    )
        # Random access too (array_record mirror), from a fresh builder reading the prepared data.
        b2 = tfds.builder("synthetic_faces", config=cfg, data_dir=str(tmp_path))
        src = b2.as_data_source(split="train")
        assert len(src) == cfg.split_sizes()["train"]
        assert src[0]["image"].dtype == np.uint8

    # The same name with other fields must not silently reuse the prepared data.
    changed = builder_lib.SyntheticFacesConfig(
        name="attributes_tiny", kind="attributes", num_train=13, num_test=4, image_size=32
    )
    with pytest.raises(ValueError, match="prepared from a config with other values"):
        tfds.builder("synthetic_faces", config=changed, data_dir=str(tmp_path))


def test_parallel_generation_matches_serial():
    builder_lib = pytest.importorskip("jaxface.data.synthetic.builder")
    spec = render.Spec(attribute_image_size=32)
    serial = list(builder_lib.generate("attributes", 0, "train", 300, spec, workers=1))
    parallel = list(builder_lib.generate("attributes", 0, "train", 300, spec, workers=2))
    assert [i for i, _ in parallel] == list(range(300))
    for (_, a), (_, b) in zip(serial, parallel):
        assert a["image"].tobytes() == b["image"].tobytes()
        np.testing.assert_array_equal(a["attributes"], b["attributes"])
