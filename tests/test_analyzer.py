"""FaceAnalyzer on tiny trained checkpoints, against independent references."""

import jax
import numpy as np
import pytest

import _tiny_models


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return _tiny_models.workdirs(tmp_path_factory)


@pytest.fixture(scope="session")
def analyzer(tiny):
    from jaxface import FaceAnalyzer  # the lazy top-level export

    return FaceAnalyzer.from_checkpoints(
        detector=tiny["detector"],
        recognizer=tiny["recognizer"],
        attributes=tiny["attributes"],
        score_threshold=0.0,
        detect_batch=2,
    )


def test_canvas_option_reproduces_the_task_input_and_detections(analyzer, tiny, monkeypatch):
    """``canvas = config.image_size``: the detection task's own evaluation input, bit for
    bit, and the detections of that input run as a padded batch of the analyzer's size."""
    from jaxface import detect_input

    image, _ = _tiny_models.synthetic_scene(tiny["data_dir"], 0)
    image2, _ = _tiny_models.synthetic_scene(tiny["data_dir"], 1)
    task = analyzer.detector.task
    size = int(analyzer.detector.config.image_size)
    monkeypatch.setattr(analyzer, "detect_options", detect_input.DetectOptions(canvas=size))
    ref_in = task.prepare(image, None, None, train=False)
    (got_in,) = _inputs(analyzer, image)
    for k in ("image", "image_hw", "scale"):
        assert got_in[k].dtype == ref_in[k].dtype
        np.testing.assert_array_equal(got_in[k], ref_in[k])
    det = analyzer.detect(image)
    n = len(det["scores"])
    assert det["boxes"].shape == (n, 4) and det["landmarks"].shape == (n, 5, 2) and n > 0
    # Reference: the task's input, a batch of detect_batch copies, valid rows by score.
    batch = {
        k: np.stack([ref_in[k]] * analyzer.detect_batch) for k in ("image", "image_hw", "scale")
    }
    ref = jax.device_get(
        analyzer._detect(
            analyzer.detector.variables, batch["image"], batch["image_hw"], batch["scale"]
        )
    )
    keep = ref["valid"][0] & (ref["scores"][0] >= 0.0)
    order = np.argsort(-ref["scores"][0][keep], kind="stable")
    for k in ("boxes", "scores", "landmarks"):
        np.testing.assert_array_equal(det[k], ref[k][0][keep][order])
    # A list of images (batched, padded) gives the same as one by one.
    both = analyzer.detect([image2, image, image2])
    np.testing.assert_allclose(both[1]["boxes"], det["boxes"], atol=1e-3)
    np.testing.assert_allclose(both[0]["scores"], both[2]["scores"], atol=1e-6)
    # The threshold filters.
    hi = analyzer.detect(image, score_threshold=float(np.median(det["scores"])))
    assert len(hi["scores"]) <= n and np.all(hi["scores"] >= np.median(det["scores"]))


def _inputs(analyzer, image):
    """The detector's input per level of the analyzer's options."""
    from jaxface import detect_input

    h, w = image.shape[:2]
    config, options = analyzer.detector.config, analyzer.detect_options
    return [
        detect_input.prepare(image, s, hw) for s, hw in detect_input.levels(h, w, config, options)
    ]


def _wide_photo(tiny):
    """A 200 x 300 photo (a synthetic scene enlarged): its faces may reach 0.9 x 200 px,
    beyond the tiny detector's trained 95 px, so the default scale is below 1."""
    from PIL import Image

    scene, _ = _tiny_models.synthetic_scene(tiny["data_dir"], 0)
    return np.asarray(Image.fromarray(scene).resize((300, 200), Image.BILINEAR))


def test_default_input_maps_detections_back_to_photo_pixels(analyzer, tiny):
    """Default options on a non-square photo: the scale of the face-size rule, a padded
    bucket, and boxes / landmarks equal to the model's canvas outputs divided by the
    scale (NumPy), the model run directly (`scaleface.detect`, canvas pixels)."""
    from jaxface.models import scaleface

    photo = _wide_photo(tiny)
    c = analyzer.detector.config
    lo, hi = c.face_sizes
    s = np.sqrt(hi / (0.9 * 200))
    (p,) = _inputs(analyzer, photo)
    assert float(p["scale"]) == pytest.approx(s, rel=1e-6) and s < 1
    assert p["image"].shape == (256, 256, 3)  # 145 x 218 rounded up to 128-multiples
    np.testing.assert_allclose(p["image_hw"], [200 * s, 300 * s], rtol=1e-6)
    det = analyzer.detect(photo)
    assert len(det["scores"]) > 0
    batch = {k: np.stack([p[k]] * analyzer.detect_batch) for k in p}
    canvas = jax.device_get(
        jax.jit(
            lambda v, x, hw: scaleface.detect(
                analyzer.detector.task.model,
                v,
                x,
                hw,
                pre_nms_topk=int(c.test_pre_nms_topk),
                post_nms_topk=int(c.test_post_nms_topk),
                rpn_nms_iou=float(c.rpn_nms_iou),
                max_detections=int(c.max_detections),
                nms_iou=float(c.nms_iou),
                score_threshold=float(c.score_threshold),
                range_slack=float(c.range_slack),
            )
        )(analyzer.detector.variables, batch["image"], batch["image_hw"])
    )
    keep = canvas["valid"][0]
    order = np.argsort(-canvas["scores"][0][keep], kind="stable")
    scale = np.float32(p["scale"])
    # (Two compilations of the model may round differently in the last bits.)
    np.testing.assert_allclose(
        det["boxes"], canvas["boxes"][0][keep][order] / scale, rtol=1e-5, atol=1e-4
    )
    np.testing.assert_allclose(
        det["landmarks"], canvas["landmarks"][0][keep][order] / scale, rtol=1e-5, atol=1e-4
    )
    # In photo pixels: inside the photo (the canvas clips to the photo's region).
    assert det["boxes"][:, 2].max() <= 300 + 1e-3 and det["boxes"][:, 3].max() <= 200 + 1e-3


def test_pyramid_merges_the_levels_by_nms(analyzer, tiny, monkeypatch):
    """``scales=(0.5, 1)``: the levels' detections, each the single-scale result at that
    factor, merged by a NumPy greedy NMS at the detector's nms_iou."""
    from jaxface import detect_input

    photo = _wide_photo(tiny)
    c = analyzer.detector.config
    levels = []
    for f in (0.5, 1.0):
        monkeypatch.setattr(analyzer, "detect_options", detect_input.DetectOptions(scales=(f,)))
        levels.append(analyzer.detect(photo))
    monkeypatch.setattr(analyzer, "detect_options", detect_input.DetectOptions(scales=(0.5, 1.0)))
    got = analyzer.detect(photo)
    boxes = np.concatenate([d["boxes"] for d in levels]).astype(np.float64)
    scores = np.concatenate([d["scores"] for d in levels])
    lms = np.concatenate([d["landmarks"] for d in levels])
    order = np.argsort(-scores, kind="stable")
    kept = []
    for i in order:
        if len(kept) == int(c.max_detections):
            break
        if all(_iou(boxes[i], boxes[j]) <= float(c.nms_iou) for j in kept):
            kept.append(i)
    assert len(kept) < len(scores)  # the levels overlap: NMS removed some
    np.testing.assert_allclose(got["boxes"], boxes[kept], atol=1e-4)
    np.testing.assert_array_equal(got["scores"], scores[kept])
    np.testing.assert_array_equal(got["landmarks"], lms[kept])


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def test_align_matches_opencv(analyzer):
    cv2 = pytest.importorskip("cv2")
    from jaxface.ops import align as align_ops

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (70, 90, 3)).astype(np.uint8)
    tpl = align_ops.ARCFACE_TEMPLATE_112
    lm = np.stack([tpl * 0.4 + [10, 5], tpl * 0.3 + [50, 30]]).astype(np.float32)
    crops = analyzer.align(image, lm, supersample=2)
    s = analyzer.crop_size
    assert crops.shape == (2, s, s, 3)
    settings = analyzer.align_settings
    # By default k follows the faces' shrink factor (here < 2: the recogniser's own k).
    np.testing.assert_array_equal(analyzer.align(image, lm), crops)
    dst = align_ops.arcface_template(s, settings["zoom"])
    for i in range(2):
        # Reference: least-squares similarity (NumPy) + OpenCV warp at 2x, box-averaged.
        a = []
        b = []
        for (x, y), (u, v) in zip(lm[i].astype(np.float64), dst.astype(np.float64)):
            a += [[x, -y, 1, 0], [y, x, 0, 1]]
            b += [u, v]
        (p, q, tx, ty), *_ = np.linalg.lstsq(np.array(a), np.array(b), rcond=None)
        M = np.array([[p, -q, tx], [q, p, ty]])
        # Output pixel j of the 2x grid samples at j/2 - 1/4 in crop pixels.
        up = np.array([[2.0, 0, 0.5], [0, 2.0, 0.5]])
        M2 = up @ np.vstack([M, [0, 0, 1]])
        big = cv2.warpAffine(
            image.astype(np.float32),
            M2,
            (2 * s, 2 * s),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT
            if settings["border"] == "constant"
            else cv2.BORDER_REPLICATE,
        )
        ref = big.reshape(s, 2, s, 2, 3).mean(axis=(1, 3))
        diff = np.abs(crops[i] - ref)
        assert diff.mean() < 1.0 and diff.max() < 8.0, (diff.mean(), diff.max())


def test_embed_matches_task_predict_fused(analyzer, tiny):
    import jax

    from jaxface.evaluation.verification import fuse_flip
    from jaxface.ops import pose

    images, _ = _tiny_models.identity_images(tiny["data_dir"], 3)
    s = analyzer.crop_size
    crops = images.astype(np.float32)
    assert crops.shape[1:3] == (s, s)
    lm = np.tile(
        np.float32([[10, 12], [21, 12], [16, 17], [11, 23], [21, 23]]), (3, 1, 1)
    ) + np.float32([[[0, 0]], [[1, 0]], [[-1, 1]]])
    out = analyzer.embed(crops, landmarks=lm)
    yaw_ref = np.asarray(pose.yaw_from_landmarks(lm))
    np.testing.assert_allclose(out["yaw"], yaw_ref, atol=1e-3)
    # Reference: the recognition task's predict (embedding + mirrored embedding) and the
    # evaluators' flip fusion, in NumPy.
    task = analyzer.recognizer.task
    batch = {"image": crops * (2 / 255) - 1, "landmarks": lm}
    ref = jax.device_get(jax.jit(task.predict)(analyzer.recognizer.variables, batch))
    fused = fuse_flip(ref["embedding"], ref["embedding_flip"])
    np.testing.assert_allclose(out["embedding"], fused, atol=2e-4)
    np.testing.assert_allclose(np.linalg.norm(out["embedding"], axis=1), 1.0, atol=1e-5)
    # Batch size (padding to 4) does not change a face's embedding.
    one = analyzer.embed(crops[1:2], yaw=out["yaw"][1:2])
    np.testing.assert_allclose(one["embedding"][0], out["embedding"][1], atol=1e-5)


def test_attributes_match_cluster_knn(analyzer, tiny):
    import jax

    from jaxface.tasks.attributes_lmle import knn_predict_all_attributes

    images, _ = _tiny_models.identity_images(tiny["data_dir"], 3)
    crops = images.astype(np.float32)  # 32 px, the attribute model's size
    res = analyzer.attributes(crops)
    assert len(res["names"]) == 40 and res["names"][0] == "5_o_Clock_Shadow"
    assert res["decisions"].shape == (3, 40) and set(np.unique(res["decisions"])) <= {0, 1}
    assert res["rule"] == "cluster_knn"
    m = analyzer.attribute_model
    out = jax.device_get(jax.jit(m.task.predict)(m.variables, {"image": crops * (2 / 255) - 1}))
    ts = m.task_state
    ref = knn_predict_all_attributes(
        out["embedding"], ts["centroids"], ts["centroid_valid"], k=int(m.config.knn_k)
    )
    np.testing.assert_array_equal(res["decisions"], np.asarray(ref))
    assert int(ts["clustered_at"]) == 7  # the saved task state, not a fresh init


def test_analyze_every_face(analyzer, tiny):
    image, _ = _tiny_models.synthetic_scene(tiny["data_dir"], 0)
    faces = analyzer.analyze(image, score_threshold=0.0)
    det = analyzer.detect(image)
    assert len(faces) == len(det["scores"]) > 0
    f = faces[0]
    assert set(f) >= {"box", "score", "landmarks", "embedding", "yaw", "gate", "attributes"}
    assert f["embedding"].shape == (int(analyzer.recognizer.config.model.embed_dim),)
    assert len(f["attributes"]) == 40
    # Every face of the image in one batch == each face alone.
    crops = analyzer.align(image, det["landmarks"])
    alone = analyzer.embed(crops[-1:], landmarks=det["landmarks"][-1:])
    np.testing.assert_allclose(faces[-1]["embedding"], alone["embedding"][0], atol=1e-5)


def test_wrong_workdir_kind_is_an_error(tiny):
    from jaxface.analyzer import FaceAnalyzer

    with pytest.raises(ValueError, match="expected a 'detection'"):
        FaceAnalyzer.from_checkpoints(detector=tiny["recognizer"], recognizer=tiny["recognizer"])
    with pytest.raises(FileNotFoundError, match="config.json"):
        FaceAnalyzer.from_checkpoints(detector="/nonexistent", recognizer=tiny["recognizer"])


def test_align_prefilter_follows_the_shrink_factor(analyzer):
    from jaxface.analyzer import MAX_SUPERSAMPLE, shrink_factor
    from jaxface.ops import align as align_ops

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (400, 400, 3)).astype(np.uint8)
    lm = (align_ops.ARCFACE_TEMPLATE_112 * 1.5 + 20).astype(np.float32)[None]
    s, zoom = analyzer.crop_size, analyzer.align_settings["zoom"]
    k = shrink_factor(lm, s, zoom)
    assert k == min(MAX_SUPERSAMPLE, int(np.ceil(1.5 * 112 / s / zoom)))
    np.testing.assert_array_equal(
        analyzer.align(image, lm), analyzer.align(image, lm, supersample=k)
    )
    # On noise, a 2x2 prefilter at a 5x shrink aliases: far more variance survives.
    assert analyzer.align(image, lm, supersample=2).std() > 1.3 * analyzer.align(image, lm).std()


def test_recluster_attributes_replaces_stale_centroids(tiny, tmp_path):
    import shutil

    from jaxface import analyzer as analyzer_lib

    wd = tmp_path / "attributes"
    shutil.copytree(tiny["attributes"], wd)
    m = analyzer_lib.load_model(str(wd))
    assert int(m.task_state["clustered_at"]) == 7  # stale: not the checkpoint's step (1)
    info = analyzer_lib.recluster_attributes(m)
    assert info["step"] == m.step == 1
    again = analyzer_lib.load_model(str(wd))
    assert int(again.task_state["clustered_at"]) == 1
    # The clustering is the task's own (what its cluster_knn evaluator computes).
    np.testing.assert_allclose(
        np.asarray(again.task_state["centroids"]), np.asarray(m.task_state["centroids"])
    )
    assert not np.allclose(np.asarray(again.task_state["centroids"]), 0.0)
