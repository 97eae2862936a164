"""Box ops against NumPy references, under jax.jit, on both array modules."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface import ops
from jaxface.ops import boxes as B


def _random_boxes(rng, n, scale=50.0):
    xy = rng.uniform(0, scale, (n, 2))
    wh = rng.uniform(0.5, scale / 2, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1)


def _iou_ref(a, b, plus_one):
    off = 1.0 if plus_one else 0.0
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            iw = min(p[2], q[2]) - max(p[0], q[0]) + off
            ih = min(p[3], q[3]) - max(p[1], q[1]) + off
            if iw <= 0 or ih <= 0:
                continue
            inter = iw * ih
            ua = (p[2] - p[0] + off) * (p[3] - p[1] + off) + (q[2] - q[0] + off) * (
                q[3] - q[1] + off
            )
            out[i, j] = inter / (ua - inter)
    return out


@pytest.mark.parametrize("plus_one", [False, True])
def test_iou_matrix_matches_reference_numpy_and_jit(plus_one):
    rng = np.random.default_rng(0)
    a = _random_boxes(rng, 13)
    b = _random_boxes(rng, 7)
    b[0] = a[0]  # identical pair
    b[1] = [200, 200, 210, 210]  # disjoint from everything
    ref = _iou_ref(a, b, plus_one)
    np.testing.assert_allclose(B.iou_matrix(a, b, plus_one=plus_one), ref, rtol=1e-12, atol=1e-12)
    f = jax.jit(lambda x, y: ops.iou_matrix(x, y, plus_one=plus_one))
    got = f(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    assert got.shape == (13, 7)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-6)
    assert np.isclose(ref[0, 0], 1.0)
    assert np.all(ref[:, 1] == 0)


def test_iou_plus_one_hand_value_and_degenerate_boxes():
    # WIDER convention: [0,0,9,9] and [5,0,14,9] are 10x10 boxes overlapping 5x10.
    a = np.array([[0.0, 0, 9, 9]])
    b = np.array([[5.0, 0, 14, 9]])
    assert B.iou_matrix(a, b, plus_one=True)[0, 0] == pytest.approx(50 / 150)
    assert B.iou_matrix(a, b)[0, 0] == pytest.approx(36 / 126)
    # Zero-size and inverted boxes give 0, never NaN, in both conventions.
    z = np.array([[3.0, 3, 3, 3], [5.0, 5, 4, 4]])
    for p1 in (False, True):
        m = np.asarray(jax.jit(lambda x, y: ops.iou_matrix(x, y, plus_one=p1))(z, z))
        assert np.all(np.isfinite(m))
    assert B.iou_matrix(z, z)[0, 0] == 0.0
    assert B.iou_matrix(z, z, plus_one=True)[0, 0] == 1.0  # a single pixel with +1
    assert B.iou_matrix(z, z, plus_one=True)[1, 1] == 0.0  # inverted by more than a pixel


def test_iou_batched_leading_dims():
    rng = np.random.default_rng(1)
    a = np.stack([_random_boxes(rng, 5) for _ in range(3)])
    b = np.stack([_random_boxes(rng, 4) for _ in range(3)])
    got = jax.jit(ops.iou_matrix)(a, b)
    assert got.shape == (3, 5, 4)
    for k in range(3):
        np.testing.assert_allclose(
            np.asarray(got[k]), _iou_ref(a[k], b[k], False), rtol=1e-5, atol=1e-6
        )


def test_array_module_dispatch():
    a = np.zeros((2, 4))
    assert isinstance(B.box_area(a), np.ndarray)
    assert isinstance(B.box_area(jnp.zeros((2, 4))), jax.Array)


def test_encode_decode_round_trip_and_reference():
    rng = np.random.default_rng(2)
    anchors = _random_boxes(rng, 20)
    gt = _random_boxes(rng, 20)
    w = (10.0, 10.0, 5.0, 5.0)
    d = np.asarray(jax.jit(lambda g, a: ops.encode_boxes(g, a, weights=w))(gt, anchors))
    # NumPy reference of the Faster R-CNN parameterisation.
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
    gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    gx, gy = gt[:, 0] + 0.5 * gw, gt[:, 1] + 0.5 * gh
    ref = np.stack(
        [10 * (gx - ax) / aw, 10 * (gy - ay) / ah, 5 * np.log(gw / aw), 5 * np.log(gh / ah)], 1
    )
    np.testing.assert_allclose(d, ref, rtol=1e-4, atol=1e-4)
    back = np.asarray(jax.jit(lambda d, a: ops.decode_boxes(d, a, weights=w))(d, anchors))
    np.testing.assert_allclose(back, gt, rtol=1e-4, atol=1e-3)
    # NumPy path is exact to float64 precision.
    np.testing.assert_allclose(B.decode_boxes(B.encode_boxes(gt, anchors), anchors), gt, atol=1e-9)


def test_decode_clamps_dw_dh():
    anchors = np.array([[0.0, 0.0, 10.0, 10.0]])
    deltas = np.array([[0.0, 0.0, 100.0, -3.0]])
    out = B.decode_boxes(deltas, anchors)
    w = out[0, 2] - out[0, 0]
    assert np.isfinite(out).all()
    assert w == pytest.approx(10 * math.exp(B.DEFAULT_BBOX_XFORM_CLIP))
    assert out[0, 3] - out[0, 1] == pytest.approx(10 * math.exp(-3.0))


def test_clip_and_conversions():
    boxes = np.array([[[-5.0, 2, 30, 40], [1, -1, 5, 5]], [[10, 10, 100, 100], [0, 0, 1, 1]]])
    sizes = np.array([[20, 25], [50, 60]])  # (height, width) per image
    got = np.asarray(jax.jit(ops.clip_boxes)(boxes, sizes))
    ref = boxes.copy()
    for k, (h, w) in enumerate(sizes):
        ref[k, :, [0, 2]] = np.clip(ref[k, :, [0, 2]], 0, w)
        ref[k, :, [1, 3]] = np.clip(ref[k, :, [1, 3]], 0, h)
    np.testing.assert_allclose(got, ref)
    np.testing.assert_allclose(B.clip_boxes(boxes[0], (20, 25)), ref[0])
    xywh = np.array([[1.0, 2.0, 3.0, 4.0]])
    assert B.xywh_to_xyxy(xywh).tolist() == [[1.0, 2.0, 4.0, 6.0]]
    np.testing.assert_allclose(B.xyxy_to_xywh(B.xywh_to_xyxy(xywh)), xywh)
    assert float(jax.jit(ops.box_area)(jnp.array([2.0, 2, 5, 6]))) == 12.0
    assert B.box_area(np.array([2.0, 2, 5, 6]), plus_one=True) == 20.0
    assert B.box_area(np.array([5.0, 5, 2, 2])) == 0.0


def test_matlab_round_half_away_and_saturation():
    x = np.array([0.5, -0.5, 1.5, 2.5, -2.5, 0.49999999999999994, 2.4, np.nan, 1e12, -1e12])
    assert B.matlab_round(x).tolist() == [1, -1, 2, 3, -3, 0, 2, 0, 2**31 - 1, -(2**31)]


def test_matlab_int32_boxoverlap_rounds_to_zero_or_one():
    gt = np.array([[0.0, 0, 10, 10]])  # int-valued corners, +1 => 11x11
    # Same box: 1; below IoU 0.5: 0.
    # [0,-0.4,10,4.6] has float +1 IoU 61.6/125.4 < 0.5, but MATLAB meets the int32
    # ground truth with the rounded corners [0,0,10,5]: inter 66, union
    # round(121 + 66) - 66 = 121, 66/121 rounds to 1.
    dets = np.array([[0.0, 0, 10, 10], [6.0, 0, 16, 10], [0.0, -0.4, 10, 4.6]])
    o = B.matlab_int32_boxoverlap(gt, dets)
    f = B.iou(gt, dets, plus_one=True)
    assert o.tolist() == [1.0, 0.0, 1.0]
    assert f[2] == pytest.approx(61.6 / 125.4) and f[2] < 0.5
    # jnp path gives the same numbers under jit.
    got = jax.jit(lambda a, b: ops.matlab_int32_boxoverlap(a, b))(
        jnp.asarray(gt, jnp.float32), jnp.asarray(dets, jnp.float32)
    )
    assert np.asarray(got).tolist() == o.tolist()
