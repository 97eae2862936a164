"""The detector's input at the photo's own scale: the face-size rule, shape buckets, the
pyramid's levels and merge, and the resize + pad (against NumPy computations)."""

import math

import ml_collections
import numpy as np
import pytest

from jaxface import detect_input
from jaxface.detect_input import DetectOptions
from jaxface.ops import detect_scale


def _config(face_sizes=(10, 288)):
    """The fields of a detector config that the input rule reads."""
    c = ml_collections.ConfigDict(
        {
            "model": {"backbone": {"stem": "imagenet"}},
            "nms_iou": 0.4,
            "max_detections": 8,
        }
    )
    if face_sizes is not None:
        c.face_sizes = face_sizes
    return c


def test_face_size_rule():
    # A group photo: its largest plausible face (0.9 x 886) is beyond the trained 288 px,
    # so the scale is the geometric middle of 1 and 288 / (0.9 x 886).
    s = detect_scale.face_size_scale(886, 1280, (10, 288))
    assert s == pytest.approx(math.sqrt(288 / (0.9 * 886)), rel=1e-12)
    assert s == pytest.approx(math.sqrt(1.0 * (288 / (0.9 * 886))), rel=1e-12)
    # 100-140 px faces land at 60-84 px, inside the trained range.
    assert 10 < 100 * s < 140 * s < 288
    # A photo whose faces all fit the trained range is used at its own resolution.
    assert detect_scale.face_size_scale(250, 250, (10, 288)) == 1.0
    assert detect_scale.face_size_scale(320, 5000, (10, 288)) == 1.0  # 0.9 x 320 = 288
    with pytest.raises(ValueError, match="face_sizes"):
        detect_scale.face_size_scale(100, 100, (50, 20))


def test_levels_follow_the_rule_the_cap_and_the_bucket():
    c = _config()
    ((s, hw),) = detect_input.levels(886, 1280, c, DetectOptions())
    assert s == detect_scale.face_size_scale(886, 1280, (10, 288))
    assert hw == (128 * math.ceil(886 * s / 128), 128 * math.ceil(1280 * s / 128))
    # max_side caps the scale: a 4000 x 3000 photo whose faces fit (made up face sizes).
    ((s, hw),) = detect_input.levels(3000, 4000, _config((10, 5000)), DetectOptions(max_side=1024))
    assert s == 1024 / 4000 and hw == (768, 1024)
    # The fixed canvas: the longer side scaled to N on N x N.
    assert detect_input.levels(886, 1280, c, DetectOptions(canvas=320)) == [
        (320 / 1280, (320, 320))
    ]
    # A config without face_sizes needs them given (or a canvas).
    with pytest.raises(ValueError, match="--face-sizes"):
        detect_input.levels(100, 100, _config(None), DetectOptions())
    ((s, _),) = detect_input.levels(886, 1280, _config(None), DetectOptions(face_sizes=(10, 288)))
    assert s == detect_scale.face_size_scale(886, 1280, (10, 288))
    with pytest.raises(ValueError, match="not both"):
        DetectOptions(canvas=320, scales=(0.5, 1.0))


def test_bucket_bounds_the_shapes():
    rng = np.random.default_rng(0)
    c, opts = _config(), DetectOptions(max_side=1024)
    shapes = set()
    for _ in range(3000):
        h, w = (int(v) for v in rng.integers(40, 6000, 2))
        for s, (ph, pw) in detect_input.levels(h, w, c, opts):
            assert ph % 128 == 0 and pw % 128 == 0  # multiples of the bucket (and stride 32)
            assert h * s <= ph < h * s + 128 and w * s <= pw < w * s + 128
            assert max(ph, pw) <= 1024
            shapes.add((ph, pw))
    assert len(shapes) <= (1024 // 128) ** 2
    assert detect_input.export_side(c, opts) == 1024
    assert detect_input.export_side(c, DetectOptions(max_side=1000)) == 1024
    assert detect_input.bucket_for(c) == 128


def test_pyramid_scales_cap_and_dedup():
    # 0.5 x, 1 x, 2 x of 0.6 on a 1,280 px photo capped at 1,024 px: 2 x is capped to
    # 0.8; 4 x too, and runs once.
    got = detect_scale.pyramid_scales(0.6, (2, 0.5, 1, 4), 886, 1280, 1024)
    assert got == pytest.approx([0.3, 0.6, 0.8])
    assert len(got) == 3


def _nms_reference(boxes, scores, iou_thr, max_out):
    """Greedy NMS in NumPy: descending score (ties: lower index first), drop IoU > thr."""
    order = np.argsort(-scores, kind="stable")
    kept = []
    for i in order:
        ok = True
        for j in kept:
            x1, y1 = np.maximum(boxes[i, :2], boxes[j, :2])
            x2, y2 = np.minimum(boxes[i, 2:], boxes[j, 2:])
            inter = max(x2 - x1, 0) * max(y2 - y1, 0)
            area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
            if inter / (area(boxes[i]) + area(boxes[j]) - inter) > iou_thr:
                ok = False
                break
        if ok:
            kept.append(i)
    return kept[:max_out]


def test_pyramid_merge_dedups_across_levels():
    import jax

    # Level 0 and level 1 see the same two faces (boxes a few pixels apart, in original
    # pixels) and level 1 one more; one row of level 0 is invalid padding.
    lvl0 = np.array([[10, 10, 60, 70], [200, 40, 260, 110], [0, 0, 0, 0]], np.float32)
    lvl1 = np.array([[12, 11, 61, 72], [198, 42, 258, 108], [400, 300, 430, 340]], np.float32)
    boxes = np.concatenate([lvl0, lvl1])[None]
    scores = np.array([[0.9, 0.5, 0.99, 0.8, 0.7, 0.6]], np.float32)
    valid = np.array([[True, True, False, True, True, True]])
    landmarks = np.arange(6 * 10, dtype=np.float32).reshape(1, 6, 5, 2)
    out = jax.device_get(
        jax.jit(detect_scale.merge_detections, static_argnames=("iou_threshold", "max_output"))(
            boxes, scores, valid, landmarks, iou_threshold=0.4, max_output=5
        )
    )
    rows = np.flatnonzero(valid[0])
    ref = rows[_nms_reference(boxes[0][rows], scores[0][rows], 0.4, 5)]
    assert list(ref) == [0, 4, 5]  # the best of each duplicate pair, then the new face
    n = int(out["valid"][0].sum())
    assert n == 3 and not out["valid"][0][n:].any()
    np.testing.assert_array_equal(out["boxes"][0][:n], boxes[0][ref])
    np.testing.assert_array_equal(out["scores"][0][:n], scores[0][ref])
    np.testing.assert_array_equal(out["landmarks"][0][:n], landmarks[0][ref])


def test_prepare_maps_the_photo_by_one_affine_scale():
    """A bright rectangle at known photo coordinates lands at ``scale x`` them on the
    padded canvas (NumPy: the rectangle's extent on the canvas), the padding is black,
    and at scale 1 the photo is copied unchanged."""
    h, w = 300, 500
    image = np.full((h, w, 3), 40, np.uint8)
    box = np.array([120, 60, 280, 200])  # x1 y1 x2 y2, pixel edges
    image[box[1] : box[3], box[0] : box[2]] = 230
    s = 0.61
    out_hw = detect_scale.bucket_hw(h * s, w * s, 128)
    p = detect_input.prepare(image, s, out_hw)
    assert p["image"].shape == out_hw + (3,) and p["image"].dtype == np.float32
    np.testing.assert_allclose(p["image_hw"], [h * s, w * s], rtol=1e-6)
    assert p["scale"] == np.float32(s)
    bright = (p["image"][..., 0] + 1.0) * 127.5 > 135  # halfway between 40 and 230
    ys, xs = np.nonzero(bright)
    found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    np.testing.assert_allclose(found, box * s, atol=1.0)
    # Beyond the photo: zero pixels (-1 after normalisation).
    ih, iw = math.ceil(h * s) + 1, math.ceil(w * s) + 1
    assert np.all(p["image"][ih:] == -1.0) and np.all(p["image"][:, iw:] == -1.0)
    # Scale 1: the photo unchanged, then padding.
    noise = np.random.default_rng(0).integers(0, 256, (h, w, 3)).astype(np.uint8)
    p1 = detect_input.prepare(noise, 1.0, (384, 512))
    np.testing.assert_array_equal(
        p1["image"][:h, :w], noise.astype(np.float32) * (2.0 / 255.0) - 1.0
    )
    assert np.all(p1["image"][h:] == -1.0) and np.all(p1["image"][:, w:] == -1.0)
