"""CFP's fiducials -> 5 landmarks / face box, and the ``cfp_scenes`` detection builder.

Real-data tests read cfp/ in the real-data folder (tests/conftest.py) and skip when it is
absent; the geometry of `five_points` is also checked against hand-built faces, which need
no data.
"""

import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxface.data import cfp_landmarks as cl

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


# ---------------------------------------------------------------------------------------
# five_points / face_box without data: a hand-built symmetric face
# ---------------------------------------------------------------------------------------


def _symmetric_face():
    """30 CFP-ordered points of a left-right symmetric face about x = 100 (image-left half
    labelled, as CFP does for frontal faces) and the true other-side eye / mouth corner."""
    f = np.zeros((30, 2))
    f[0:9] = np.stack([np.linspace(40, 100, 9), np.linspace(90, 190, 9)], -1)  # jaw to chin
    f[8] = (100, 190)
    f[9:12] = [(55, 70), (70, 64), (88, 68)]  # brow
    eye = np.array([(55, 90), (62, 86), (72, 86), (80, 90), (72, 94), (62, 94)], float)
    f[12:18] = eye
    f[18:22] = [(100, 85), (100, 100), (100, 115), (100, 128)]  # bridge .. tip
    f[22:25] = [(100, 135), (93, 134), (86, 132)]
    f[25] = (75, 155)  # mouth corner
    f[26], f[27], f[29], f[28] = (100, 146), (100, 153), (100, 157), (100, 165)
    other_eye = np.array([200 - eye[:, 0].mean(), eye[:, 1].mean()])
    other_mouth = np.array([125.0, 155.0])
    return f, other_eye, other_mouth


def _rotate(p, deg, centre=(100.0, 120.0)):
    t = np.deg2rad(deg)
    r = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return (np.asarray(p) - centre) @ r.T + centre


def test_five_points_frontal_recovers_the_mirrored_half_and_follows_roll():
    f, other_eye, other_mouth = _symmetric_face()
    five = cl.five_points(f, False)
    want = np.stack([f[12:18].mean(0), other_eye, f[21], f[25], other_mouth])
    np.testing.assert_allclose(five, want, atol=1e-4)
    # Rolled face: the points roll with it (the midline is fitted, not assumed vertical).
    five_r = cl.five_points(_rotate(f, 20.0), False)
    np.testing.assert_allclose(five_r, _rotate(want, 20.0), atol=1e-3)
    # Box: the labelled half plus its mirror, forehead raised by FOREHEAD x brow-to-chin.
    box = cl.face_box(f, False)
    np.testing.assert_allclose(box, [40, 64 - cl.FOREHEAD * (190 - 64), 160, 190], atol=1e-4)


def test_five_points_profile_hidden_points_halfway_to_the_silhouette():
    f, _, _ = _symmetric_face()
    five = cl.five_points(f, True)
    eye = f[12:18].mean(0)  # (66.83, 90); bridge at y = 90 is x = 100
    np.testing.assert_allclose(five[1], [(eye[0] + 100) / 2, 90], atol=1e-4)
    np.testing.assert_allclose(five[0], eye, atol=1e-4)
    np.testing.assert_allclose(five[4], [(75 + 100) / 2, 155], atol=1e-4)
    # Mirrored in x (a profile looking the other way): the image-left slot swaps.
    fm = f.copy()
    fm[:, 0] = 300 - fm[:, 0]
    five_m = cl.five_points(fm, True)
    np.testing.assert_allclose(five_m[[1, 0, 2, 4, 3], 0], 300 - five[:, 0], atol=1e-4)


# ---------------------------------------------------------------------------------------
# five_points on the real CFP files
# ---------------------------------------------------------------------------------------


def _cfp_files(root, kind, every):
    files = sorted((root / "Data" / "Fiducials").glob(f"*/{kind}/*.txt"))[::every]
    return [(p, np.loadtxt(p, delimiter=",")) for p in files]


@pytest.mark.parametrize("kind", ["frontal", "profile"])
def test_five_points_on_real_cfp(real_data, kind):
    root = real_data("cfp")
    items = _cfp_files(root, kind, 10)
    assert len(items) >= 200
    for path, f in items:
        five = cl.five_points(f, kind == "profile")
        box = cl.face_box(f, kind == "profile")
        assert five.shape == (5, 2) and np.isfinite(five).all(), path
        assert np.all((five >= box[:2] - 1e-3) & (five <= box[2:] + 1e-3)), path
        assert max(five[0, 1], five[1, 1]) < min(five[3, 1], five[4, 1]), path  # eyes above
        assert five[0, 0] <= five[1, 0], path  # left eye is image-left
        if kind == "frontal":
            # Left eye / mouth corner left of the nose tip, right ones to its right, and the
            # nose tip between the eyes and the mouth in height.
            assert five[0, 0] < five[2, 0] < five[1, 0], path
            assert five[3, 0] < five[2, 0] < five[4, 0], path
            assert max(five[0, 1], five[1, 1]) < five[2, 1] < min(five[3, 1], five[4, 1]), path
            # The reflected eye lies as far from the nose tip as the labelled one (+-35 %).
            d0, d1 = np.linalg.norm(five[0] - five[2]), np.linalg.norm(five[1] - five[2])
            assert 0.65 < d0 / d1 < 1.0 / 0.65, path
        else:
            # Both eyes on the same side of the nose tip (the hidden one behind the bridge).
            assert np.sign(five[0, 0] - five[2, 0]) == np.sign(five[1, 0] - five[2, 0]), path


# ---------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pools():
    # The real_data fixture is per test; this module-wide one mirrors conftest's lookup.
    root = (
        pathlib.Path(os.environ.get("JAXFACE_SHARED_DATA", CONFIGS.parents[1] / "shared" / "data"))
        / "cfp"
    )
    if not root.exists():
        pytest.skip(f"real data not present: {root}")
    from jaxface.data import cfp_scenes as cs

    return cs.face_pool(root, range(1, 9)), cs.face_pool(root, (9, 10))


def test_backgrounds_are_bundled_photographs():
    from jaxface.data import cfp_scenes as cs

    assert "astronaut" not in cs.BACKGROUNDS and "camera" not in cs.BACKGROUNDS
    for name in cs.BACKGROUNDS:
        im = cs.load_background(name)
        assert im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3
        assert min(im.shape[:2]) >= 150 and im.std() > 5, name


def test_scenes_on_real_cfp(pools):
    from jaxface.data import cfp, cfp_scenes as cs
    from jaxface.evaluation import verification

    train_pool, test_pool = pools
    root = pathlib.Path(train_pool.paths[0]).parents[4]
    per_id = cfp.identity_splits(verification.parse_cfp_protocol(root))
    assert set(per_id[train_pool.identity]) <= set(range(1, 9))
    assert set(per_id[test_pool.identity]) == {9, 10}
    assert not set(train_pool.identity) & set(test_pool.identity)
    assert len(test_pool) == 100 * 14 and test_pool.is_profile.sum() == 100 * 4

    spec = cs.ScenesSpec(seed=3)
    n_faces = 0
    for split, pool in (("train", train_pool), ("test", test_pool)):
        ids = set(pool.identity.tolist())
        for i in range(4):
            ex = cs.scene_example(spec, split, i, pool)
            h, w = ex["image"].shape[:2]
            assert spec.min_side <= h <= spec.max_side and spec.min_side <= w <= spec.max_side
            f = ex["faces"]
            b, lm = f["boxes"], f["landmarks"]
            assert len(b) >= 1
            n_faces += len(b)
            assert np.all(b[:, :2] >= -1e-3) and np.all(b[:, 2] <= w + 1e-3)
            assert np.all(b[:, 3] <= h + 1e-3)
            hts = b[:, 3] - b[:, 1]
            assert np.all(hts >= spec.min_face - 0.5) and np.all(hts <= 0.9 * min(h, w) + 0.5)
            inside = (lm >= b[:, None, :2] - 0.5) & (lm <= b[:, None, 2:] + 0.5)
            assert inside.all(), (split, i)
            assert set(f["identity"].tolist()) <= ids, (split, i)
            np.testing.assert_array_equal(f["pose"], f["is_profile"].astype(np.int32))
            # Face boxes never overlap (patches do not): occlusion 0 is true.
            for a in range(len(b)):
                for c in range(a + 1, len(b)):
                    ix = min(b[a, 2], b[c, 2]) - max(b[a, 0], b[c, 0])
                    iy = min(b[a, 3], b[c, 3]) - max(b[a, 1], b[c, 1])
                    assert ix <= 0 or iy <= 0
    assert n_faces >= 8
    # Deterministic: the same (seed, split, index) gives the same bytes; another index not.
    a = cs.scene_example(spec, "test", 1, test_pool)
    b2 = cs.scene_example(spec, "test", 1, test_pool)
    np.testing.assert_array_equal(a["image"], b2["image"])
    np.testing.assert_array_equal(a["faces"]["boxes"], b2["faces"]["boxes"])
    c = cs.scene_example(spec, "test", 2, test_pool)["image"]
    assert c.shape != a["image"].shape or not np.array_equal(c, a["image"])


def test_pasted_pixels_are_the_cfp_face_at_the_gt_box(pools):
    """Independent of the builder's own mapping: cut the CFP image's face box with PIL,
    resize it to the scene box and compare with the scene's pixels there."""
    from jaxface.data import cfp_scenes as cs

    _, pool = pools
    spec = cs.ScenesSpec(seed=0)
    checked = 0
    for i in range(12):
        ex = cs.scene_example(spec, "test", i, pool)
        f = ex["faces"]
        for k, b in enumerate(f["boxes"]):
            if b[3] - b[1] < 60:
                continue
            # The drawn face of this identity: find the pool image whose face matches best.
            x0, y0, x1, y1 = (int(round(v)) for v in b)
            scene = ex["image"][y0:y1, x0:x1].astype(np.float64)
            cands = np.flatnonzero(
                (pool.identity == f["identity"][k]) & (pool.is_profile == f["is_profile"][k])
            )
            errs = []
            for c in cands:
                with Image.open(pool.paths[c]) as im:
                    im = im.convert("RGB")
                    box = np.clip(
                        cl.face_box(pool.fiducials[c], bool(pool.is_profile[c])),
                        0,
                        [im.width, im.height, im.width, im.height],
                    )
                    ref = np.asarray(
                        im.resize((x1 - x0, y1 - y0), Image.BILINEAR, box=tuple(box)), np.float64
                    )
                # Centre 60 % (away from the feathered border and rounding at the edges).
                hh, ww = ref.shape[:2]
                sl = (slice(hh // 5, hh - hh // 5), slice(ww // 5, ww - ww // 5))
                errs.append(np.abs(ref[sl] - scene[sl]).mean())
            assert min(errs) < 12.0, (i, k, sorted(errs)[:3])
            checked += 1
    assert checked >= 3


def test_builder_features_match_the_generator(pools, tmp_path):
    from jaxface.data import cfp_scenes as cs, sources
    from jaxface.tasks.detection_data import faces_of

    _, test_pool = pools
    root = pathlib.Path(test_pool.paths[0]).parents[4]
    b = sources.get_builder(
        "cfp_scenes",
        "default",
        data_dir=str(tmp_path),
        manual_dir=str(root),
        config_overrides={"num_train": 2, "num_test": 3},
    )
    src = b.as_data_source("test")
    assert len(src) == 3
    spec = b.builder_config.spec()
    ids = []
    for i in range(3):
        ex = src[i]  # tfds stores the records in its own (shuffled) order: match by image/id
        ids.append(int(ex["image/id"]))
        ref = cs.scene_example(spec, "test", ids[-1], test_pool)
        np.testing.assert_array_equal(ex["image"], ref["image"])
        faces = faces_of(ex)
        np.testing.assert_allclose(faces["boxes"], ref["faces"]["boxes"], atol=0.05)
        np.testing.assert_allclose(faces["landmarks"], ref["faces"]["landmarks"], atol=1e-4)
        assert faces["has_landmarks"].all()
    assert sorted(ids) == [0, 1, 2]


# ---------------------------------------------------------------------------------------
# The config and the sample-detection images
# ---------------------------------------------------------------------------------------


def test_cfp_scenes_config_traces_init_loss_and_predict():
    from jaxface.quickstart import load_config
    from jaxface.tasks import detection as det

    config = load_config(CONFIGS / "scaleface.py", "cfp_scenes")
    assert config.data.builder == "cfp_scenes" and config.model.landmarks
    assert config.eval_split == "test" and "wider" in config.evals
    task = det.DetectionTask(config)
    s, m = int(config.image_size), int(config.max_faces)
    batch = {
        "image": jnp.zeros((2, s, s, 3)),
        "gt_boxes": jnp.tile(jnp.array([[20.0, 20.0, 60.0, 70.0]]), (2, m, 1)),
        "gt_valid": jnp.zeros((2, m), bool).at[:, 0].set(True),
        "gt_ignore": jnp.zeros((2, m), bool),
        "gt_landmarks": jnp.zeros((2, m, 5, 2)),
        "gt_landmarks_valid": jnp.zeros((2, m), bool).at[:, 0].set(True),
        "image_hw": jnp.full((2, 2), float(s)),
        "scale": jnp.ones((2,)),
    }
    variables = jax.eval_shape(task.init_variables, jax.random.key(0), batch)
    params = variables["params"]
    state = {k: v for k, v in variables.items() if k != "params"}
    loss, _ = jax.eval_shape(
        lambda p, st, b: task.loss(p, st, b, jax.random.key(1), {}), params, state, batch
    )
    assert loss.shape == ()
    out = jax.eval_shape(task.predict, variables, batch)
    assert out["landmarks"].shape == (2, config.max_detections, 5, 2)


def test_sample_detections_are_drawn_and_written(tmp_path):
    from jaxface.evaluation import draw
    from jaxface.quickstart import load_config
    from jaxface.tasks import detection as det
    from jaxface.tasks import detection_evaluators
    from jaxface.training import eval_writer

    image = np.full((60, 80, 3), 40, np.uint8)
    drawn = draw.draw_detections(
        image,
        np.array([[10, 10, 40, 50], [50, 5, 70, 20]], np.float32),
        np.array([0.9, 0.1], np.float32),
        landmarks=np.tile(np.array([[20, 25]], np.float32), (2, 5, 1)),
        gt_boxes=np.array([[12, 12, 38, 48]], np.float32),
    )
    assert drawn.shape == image.shape
    assert (drawn[10, 10:41] == [255, 255, 0]).all()  # the kept box's top edge, yellow
    assert (drawn[5, 50:71] == 40).all()  # the 0.1 detection is below the threshold
    assert (drawn[30, 12] == [0, 255, 0]).all()  # ground truth, green
    assert tuple(drawn[25, 20]) in {tuple(c) for c in draw.LANDMARK_COLOURS}

    class Writer:
        def __init__(self):
            self.images = {}

        def write_images(self, step, images):
            self.images[step] = images

    config = load_config(CONFIGS / "scaleface.py", "cfp_scenes")
    config.eval_sample_images = 2
    task = det.DetectionTask(config)
    writer = Writer()
    # Ground truth comes from the example's faces when the evaluator passes none.
    gt_face = {"bbox": np.array([[0.5, 0.5, 0.9, 0.9]], np.float32)}  # ymin xmin ymax xmax
    src = [
        {"image": image},
        {"image": np.zeros((50, 90, 3), np.uint8), "faces": gt_face},
        {"image": image},
    ]
    out = {
        "boxes": np.array([[[10, 10, 40, 50]]] * 3, np.float32),
        "scores": np.array([[0.9]] * 3, np.float32),
        "valid": np.ones((3, 1), bool),
        "landmarks": np.zeros((3, 1, 5, 2), np.float32),
    }
    artefacts = detection_evaluators.sample_detections(task, src, out)
    eval_writer.write_artefacts(str(tmp_path), 7, artefacts, writer=writer)
    grid = writer.images[7]["eval/sample_detections"]
    assert grid.shape == (2, 60, 90, 3) and grid.dtype == np.uint8
    assert (grid[1, 35, 45] == [0, 255, 0]).all()  # GT box x 45..81, y 25..45: left edge
    assert not (grid[0] == [0, 255, 0]).all(-1).any()  # no faces: no ground truth drawn
    png = np.asarray(Image.open(tmp_path / "sample_detections_step7.png"))
    assert png.shape == (60, 180, 3)
