"""RoIAlign vs a NumPy bilinear reference, RoIPool vs a NumPy max reference (torchvision semantics)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxface import ops


def _bilinear(f, y, x):
    """torchvision bilinear_interpolate on one [H, W, C] map, straight-line."""
    h, w = f.shape[:2]
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return np.zeros(f.shape[2])
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    hy, hx = 1 - ly, 1 - lx
    return hy * hx * f[y0, x0] + hy * lx * f[y0, x1] + ly * hx * f[y1, x0] + ly * lx * f[y1, x1]


def roi_align_reference(feat, rois, bidx, out_hw, scale, sampling, aligned):
    ph, pw = out_hw
    out = np.zeros((len(rois), ph, pw, feat.shape[-1]))
    off = 0.5 if aligned else 0.0
    for r, (roi, b) in enumerate(zip(rois, bidx)):
        x1, y1, x2, y2 = roi * scale - off
        rw, rh = x2 - x1, y2 - y1
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / ph, rw / pw
        gh = sampling if sampling > 0 else math.ceil(rh / ph)
        gw = sampling if sampling > 0 else math.ceil(rw / pw)
        cnt = max(gh * gw, 1)
        for i in range(ph):
            for j in range(pw):
                acc = np.zeros(feat.shape[-1])
                for iy in range(gh):
                    y = y1 + i * bh + (iy + 0.5) * bh / gh
                    for ix in range(gw):
                        x = x1 + j * bw + (ix + 0.5) * bw / gw
                        acc += _bilinear(feat[b], y, x)
                out[r, i, j] = acc / cnt
    return out


def roi_pool_reference(feat, rois, bidx, out_hw, scale):
    ph, pw = out_hw
    h, w = feat.shape[1:3]
    out = np.zeros((len(rois), ph, pw, feat.shape[-1]))
    rnd = lambda v: math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)  # noqa: E731
    for r, (roi, b) in enumerate(zip(rois, bidx)):
        sx, sy, ex, ey = (rnd(v * scale) for v in roi)
        rw, rh = max(ex - sx + 1, 1), max(ey - sy + 1, 1)
        bh, bw = rh / ph, rw / pw
        for i in range(ph):
            for j in range(pw):
                hs = min(max(math.floor(i * bh) + sy, 0), h)
                he = min(max(math.ceil((i + 1) * bh) + sy, 0), h)
                ws = min(max(math.floor(j * bw) + sx, 0), w)
                we = min(max(math.ceil((j + 1) * bw) + sx, 0), w)
                if he <= hs or we <= ws:
                    continue
                out[r, i, j] = feat[b, hs:he, ws:we].reshape(-1, feat.shape[-1]).max(0)
    return out


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    feat = rng.normal(size=(2, 12, 15, 3)).astype(np.float32)
    rois = np.array(
        [
            [0.0, 0.0, 20.0, 16.0],
            [5.3, 7.1, 40.2, 30.9],
            [-6.0, -4.0, 10.0, 9.0],  # partly outside
            [50.0, 40.0, 58.0, 47.0],  # near the far edge
            [10.0, 10.0, 10.5, 10.2],  # tiny
            [30.0, 20.0, 62.0, 50.0],
        ],
        np.float32,
    )
    bidx = np.array([0, 1, 0, 1, 1, 0], np.int32)
    return feat, rois, bidx


@pytest.mark.parametrize(
    "sampling,aligned", [(2, False), (2, True), (-1, False), (-1, True), (5, True)]
)
def test_roi_align_matches_reference(data, sampling, aligned):
    """Fixed grids (2x2: the unrolled sum; 5x5 = 25 samples: the loop over sample
    rows) and adaptive grids (here capped at 4x4 by the 12x15 map)."""
    feat, rois, bidx = data
    scale = 0.25
    f = jax.jit(
        lambda x, r, b: ops.roi_align(
            x,
            r,
            b,
            (3, 4),
            spatial_scale=scale,
            sampling_ratio=sampling,
            aligned=aligned,
        )
    )
    got = np.asarray(f(feat, rois, bidx))
    ref = roi_align_reference(
        feat.astype(np.float64), rois.astype(np.float64), bidx, (3, 4), scale, sampling, aligned
    )
    assert got.shape == (6, 3, 4, 3)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_roi_align_constant_map_and_grad(data):
    feat, rois, bidx = data
    const = np.full_like(feat, 2.5)
    inside = rois[:2] * np.float32(0.5)
    got = ops.roi_align(
        jnp.asarray(const), inside, bidx[:2], 2, spatial_scale=0.25, sampling_ratio=2
    )
    np.testing.assert_allclose(np.asarray(got), 2.5, rtol=1e-6)
    fn = lambda x: ops.roi_align(x, rois, bidx, (2, 2), spatial_scale=0.25, sampling_ratio=2).sum()  # noqa: E731
    check_grads(
        fn, (jnp.asarray(feat, jnp.float32),), order=1, modes=("rev",), atol=1e-2, rtol=1e-2
    )


def test_roi_pool_matches_reference(data):
    feat, rois, bidx = data
    scale = 0.25
    got = np.asarray(
        jax.jit(lambda x, r, b: ops.roi_pool(x, r, b, (3, 2), spatial_scale=scale))(
            feat, rois, bidx
        )
    )
    ref = roi_pool_reference(feat.astype(np.float64), rois.astype(np.float64), bidx, (3, 2), scale)
    assert got.shape == (6, 3, 2, 3)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_roi_shape_errors(data):
    feat, rois, bidx = data
    with pytest.raises(ValueError, match="NHWC"):
        ops.roi_align(feat[0], rois, bidx, 2)
    with pytest.raises(ValueError, match="batch_indices"):
        ops.roi_pool(feat, rois, bidx[:2], 2)


@pytest.mark.parametrize("sampling,aligned", [(2, True), (-1, False)])
def test_roi_align_hostile_rois_and_bf16(sampling, aligned):
    """RoIs wholly outside the map, covering all of it and beyond, sub-pixel, and
    batch indices of every image: against the NumPy reference; a bfloat16 map gives
    the float32 result of its bfloat16 values, in bfloat16; the gradient is the
    reference's adjoint (a linear map: <grad, x> = <cotangent, f(x)>)."""
    rng = np.random.default_rng(1)
    feat = rng.normal(size=(3, 20, 17, 5)).astype(np.float32)
    xy = rng.uniform(-8, 18, (40, 2))
    wh = rng.uniform(0.2, 14, (40, 2))
    rois = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    rois[0] = [-30, -30, -20, -20]  # outside the map
    rois[1] = [-2, -2, 22, 25]  # the whole map and beyond
    rois[2] = [4.1, 4.2, 4.15, 4.3]  # sub-pixel
    bidx = rng.integers(0, 3, 40).astype(np.int32)

    def run(x):
        # Adaptive: a cap of 8 covers the largest RoI (27 px / 4 bins), exact.
        return ops.roi_align(
            x, rois, bidx, (4, 3), sampling_ratio=sampling, aligned=aligned, max_sampling_ratio=8
        )

    ref = roi_align_reference(
        feat.astype(np.float64), rois.astype(np.float64), bidx, (4, 3), 1.0, sampling, aligned
    )
    got = np.asarray(jax.jit(run)(jnp.asarray(feat)))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(got[0], 0.0)

    fb = jnp.asarray(feat, jnp.bfloat16)
    got_b = jax.jit(run)(fb)
    assert got_b.dtype == jnp.bfloat16
    ref_b = roi_align_reference(
        np.asarray(fb.astype(jnp.float32), np.float64),
        rois.astype(np.float64),
        bidx,
        (4, 3),
        1.0,
        sampling,
        aligned,
    )
    np.testing.assert_allclose(np.asarray(got_b, np.float64), ref_b, rtol=1e-2, atol=1e-2)

    cot = rng.normal(size=(40, 4, 3, 5))
    grad = np.asarray(
        jax.grad(lambda x: (run(x) * jnp.asarray(cot, jnp.float32)).sum())(jnp.asarray(feat))
    )
    probe = rng.normal(size=feat.shape)
    lhs = float((grad * probe).sum())
    rhs = float(
        (
            cot
            * roi_align_reference(
                probe, rois.astype(np.float64), bidx, (4, 3), 1.0, sampling, aligned
            )
        ).sum()
    )
    assert abs(lhs - rhs) <= 1e-4 * max(1.0, abs(rhs))
    assert np.abs(grad).sum() > 0
