"""RoIAlign and RoIPool on NHWC feature maps, batched over images (fixed shapes, jit-able).

Semantics follow torchvision's ``roi_align`` / ``roi_pool`` (CPU kernels), with
the features laid out NHWC and every RoI carrying the index of its image.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp

__all__ = ["roi_align", "roi_pool"]


def _pair(size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _check(features, rois, batch_indices):
    if features.ndim != 4:
        raise ValueError(f"features must be NHWC [B, H, W, C], got shape {features.shape}")
    if rois.ndim != 2 or rois.shape[-1] != 4:
        raise ValueError(f"rois must be [R, 4] (x1, y1, x2, y2), got shape {rois.shape}")
    if batch_indices.shape != rois.shape[:1]:
        raise ValueError(
            f"batch_indices must be [R] = {rois.shape[:1]}, got shape {batch_indices.shape}"
        )


def _bilinear_axis(coord, size):
    """torchvision ``bilinear_interpolate`` along one axis.

    Returns (low index, high index, weight of low, weight of high, in-range mask),
    all of ``coord``'s shape. A sample outside ``[-1, size]`` contributes 0.
    """
    ok = (coord >= -1.0) & (coord <= size)
    c = jnp.maximum(coord, 0.0)
    low = jnp.floor(c).astype(jnp.int32)
    at_end = low >= size - 1
    high = jnp.where(at_end, size - 1, low + 1)
    low = jnp.where(at_end, size - 1, low)
    c = jnp.where(at_end, low.astype(c.dtype), c)
    l = c - low.astype(c.dtype)
    return low, high, 1.0 - l, l, ok


def roi_align(
    features: jax.Array,
    rois: jax.Array,
    batch_indices: jax.Array,
    output_size: Union[int, Sequence[int]],
    *,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    max_sampling_ratio: Optional[int] = None,
) -> jax.Array:
    """RoIAlign (Mask R-CNN) with torchvision semantics, NHWC.

    Each output bin averages ``gh * gw`` bilinear samples placed at the centres of
    a regular grid inside the bin; samples farther than one pixel outside the map
    contribute 0 but still count in the average.

    How it is computed: the sum over a bin's samples and their four neighbours is
    written as a sum of ``4 * gh * gw`` arrays of the output's shape ``[R, PH, PW, C]``,
    each one gather of whole channel vectors times its weight. XLA fuses that sum
    into one elementwise loop over the output, vectorised along the channels, with no
    intermediate of the samples' size (a gather followed by a reduction over sample
    axes compiles, on CPU, to a scalar loop several times slower). Grids of more than
    16 samples per bin run their rows in a ``fori_loop``, the columns fused.

    Args:
      features: ``[B, H, W, C]``.
      rois: ``[R, 4]`` ``(x1, y1, x2, y2)`` in input-image coordinates.
      batch_indices: ``[R]`` int, the image of each RoI (clamped to ``[0, B)``).
      output_size: ``(PH, PW)`` or an int.
      spatial_scale: feature stride reciprocal (e.g. 1/16).
      sampling_ratio: samples per bin along each axis; ``<= 0`` means adaptive,
        ``ceil(roi_size / output_size)`` per RoI, as torchvision.
      aligned: subtract half a pixel from the scaled RoI (pixel-centre model) and
        do not force RoIs to be at least 1x1 (``aligned=True`` in torchvision).
      max_sampling_ratio: only for adaptive sampling: the static cap on the grid
        per axis (shapes must be fixed under jit). Default ``ceil(H / PH)`` and
        ``ceil(W / PW)``, exact for every RoI that lies inside the feature map;
        a RoI needing more samples uses the cap (a documented difference).
        The work is proportional to the cap's square.
    Returns:
      ``[R, PH, PW, C]`` pooled features, dtype of ``features``.
    """
    _check(features, rois, batch_indices)
    ph, pw = _pair(output_size)
    nb, height, width, channels = features.shape
    dtype = jnp.promote_types(features.dtype, jnp.float32)
    rois = rois.astype(dtype)
    off = 0.5 if aligned else 0.0
    x1 = rois[:, 0] * spatial_scale - off
    y1 = rois[:, 1] * spatial_scale - off
    x2 = rois[:, 2] * spatial_scale - off
    y2 = rois[:, 3] * spatial_scale - off
    rw = x2 - x1
    rh = y2 - y1
    if not aligned:
        rw = jnp.maximum(rw, 1.0)
        rh = jnp.maximum(rh, 1.0)
    bin_h = rh / ph
    bin_w = rw / pw
    if sampling_ratio > 0:
        sy = sx = int(sampling_ratio)
        gh = jnp.full_like(rh, sy)
        gw = jnp.full_like(rw, sx)
    else:
        if max_sampling_ratio is None:
            sy = max(1, math.ceil(height / ph))
            sx = max(1, math.ceil(width / pw))
        else:
            sy = sx = int(max_sampling_ratio)
        gh = jnp.clip(jnp.ceil(rh / ph), 0, sy)
        gw = jnp.clip(jnp.ceil(rw / pw), 0, sx)
    count = jnp.maximum(gh * gw, 1.0)  # [R]

    iy = jnp.arange(sy, dtype=dtype)
    ix = jnp.arange(sx, dtype=dtype)
    # Sample coordinates: [R, PH, SY] and [R, PW, SX].
    ys = (
        y1[:, None, None]
        + jnp.arange(ph, dtype=dtype)[None, :, None] * bin_h[:, None, None]
        + (iy[None, None, :] + 0.5) * (bin_h / jnp.maximum(gh, 1.0))[:, None, None]
    )
    xs = (
        x1[:, None, None]
        + jnp.arange(pw, dtype=dtype)[None, :, None] * bin_w[:, None, None]
        + (ix[None, None, :] + 0.5) * (bin_w / jnp.maximum(gw, 1.0))[:, None, None]
    )
    y_lo, y_hi, wy_lo, wy_hi, oky = _bilinear_axis(ys, height)
    x_lo, x_hi, wx_lo, wx_hi, okx = _bilinear_axis(xs, width)
    my = (oky & (iy[None, None, :] < gh[:, None, None])).astype(dtype)
    mx = (okx & (ix[None, None, :] < gw[:, None, None])).astype(dtype)
    # Per axis, the two neighbours stacked last: rows as flat offsets into the
    # [B * H * W, C] map, columns as offsets within a row.
    b = jnp.clip(batch_indices.astype(jnp.int32), 0, nb - 1)
    rows = (b[:, None, None, None] * height + jnp.stack([y_lo, y_hi], -1)) * width
    cols = jnp.stack([x_lo, x_hi], -1)
    wy = jnp.stack([wy_lo * my, wy_hi * my], -1)  # [R, PH, SY, 2]
    wx = jnp.stack([wx_lo * mx, wx_hi * mx], -1)  # [R, PW, SX, 2]
    flat = jnp.asarray(features).reshape(nb * height * width, channels)

    def sample_row(acc, rows_s, wy_s):
        """``acc`` plus the contributions of one row of samples: ``rows_s`` / ``wy_s``
        are ``[R, PH, 2]``; every column of samples, both neighbours each way."""
        for j in range(sx):
            for a in range(2):
                for c in range(2):
                    idx = rows_s[:, :, None, a] + cols[:, None, :, j, c]  # [R, PH, PW]
                    w = wy_s[:, :, None, a] * wx[:, None, :, j, c]
                    acc = acc + w[..., None] * flat.at[idx].get(mode="clip")
        return acc

    acc = jnp.zeros((rois.shape[0], ph, pw, channels), dtype)
    if sy * sx <= 16:
        for i in range(sy):
            acc = sample_row(acc, rows[:, :, i], wy[:, :, i])
    else:
        acc = jax.lax.fori_loop(
            0,
            sy,
            lambda i, a: sample_row(
                a,
                jax.lax.dynamic_index_in_dim(rows, i, 2, keepdims=False),
                jax.lax.dynamic_index_in_dim(wy, i, 2, keepdims=False),
            ),
            acc,
        )
    return (acc / count[:, None, None, None]).astype(features.dtype)


def _c_round(x):
    """C ``round``: half away from zero."""
    t = jnp.trunc(x)
    return t + jnp.where(jnp.abs(x - t) >= 0.5, jnp.sign(x), 0.0)


def roi_pool(
    features: jax.Array,
    rois: jax.Array,
    batch_indices: jax.Array,
    output_size: Union[int, Sequence[int]],
    *,
    spatial_scale: float = 1.0,
    max_bin_size: Optional[Union[int, Sequence[int]]] = None,
) -> jax.Array:
    """RoIPool (Fast R-CNN) with torchvision semantics, NHWC: max over integer bins.

    The RoI corners are rounded (half away from zero) after scaling; the RoI spans
    ``round(x2) - round(x1) + 1`` cells (at least 1); bin ``p`` covers cells
    ``[floor(p * bin) , ceil((p + 1) * bin))`` offset by the RoI start and clipped
    to the map; an empty bin outputs 0.

    Args:
      features: ``[B, H, W, C]``.
      rois: ``[R, 4]`` ``(x1, y1, x2, y2)`` in input-image coordinates.
      batch_indices: ``[R]`` int, the image of each RoI.
      output_size: ``(PH, PW)`` or an int.
      spatial_scale: feature stride reciprocal.
      max_bin_size: static ``(KH, KW)`` bound on a bin's extent in cells (shapes
        must be fixed). Default ``ceil(H / PH) + 1`` / ``ceil(W / PW) + 1``, which is
        exact for every RoI inside the feature map (clip proposals to the image);
        pass ``(H, W)`` for exactness on any RoI.
    Returns:
      ``[R, PH, PW, C]``.
    """
    _check(features, rois, batch_indices)
    ph, pw = _pair(output_size)
    _, height, width, _ = features.shape
    if max_bin_size is None:
        kh = min(height, math.ceil(height / ph) + 1)
        kw = min(width, math.ceil(width / pw) + 1)
    else:
        kh, kw = _pair(max_bin_size)
    r = rois.astype(jnp.float32)
    sx1 = _c_round(r[:, 0] * spatial_scale)
    sy1 = _c_round(r[:, 1] * spatial_scale)
    sx2 = _c_round(r[:, 2] * spatial_scale)
    sy2 = _c_round(r[:, 3] * spatial_scale)
    rw = jnp.maximum(sx2 - sx1 + 1, 1.0)
    rh = jnp.maximum(sy2 - sy1 + 1, 1.0)
    bin_h = rh / ph
    bin_w = rw / pw

    def bounds(start, bin_size, n, size):
        p = jnp.arange(n, dtype=jnp.float32)[None, :]
        lo = jnp.floor(p * bin_size[:, None]) + start[:, None]
        hi = jnp.ceil((p + 1) * bin_size[:, None]) + start[:, None]
        return jnp.clip(lo, 0, size).astype(jnp.int32), jnp.clip(hi, 0, size).astype(jnp.int32)

    hs, he = bounds(sy1, bin_h, ph, height)  # [R, PH]
    ws, we = bounds(sx1, bin_w, pw, width)  # [R, PW]
    neg = jnp.array(-jnp.inf, features.dtype)

    rows = hs[:, :, None] + jnp.arange(kh)[None, None, :]  # [R, PH, KH]
    row_ok = rows < he[:, :, None]
    rows = jnp.minimum(rows, height - 1)
    b = batch_indices.astype(jnp.int32)
    g = features[b[:, None, None], rows]  # [R, PH, KH, W, C]
    g = jnp.where(row_ok[..., None, None], g, neg).max(axis=2)  # [R, PH, W, C]

    cols = ws[:, :, None] + jnp.arange(kw)[None, None, :]  # [R, PW, KW]
    col_ok = cols < we[:, :, None]
    cols = jnp.minimum(cols, width - 1)
    r_idx = jnp.arange(rois.shape[0])[:, None, None, None]
    p_idx = jnp.arange(ph)[None, :, None, None]
    v = g[r_idx, p_idx, cols[:, None, :, :]]  # [R, PH, PW, KW, C]
    v = jnp.where(col_ok[:, None, :, :, None], v, neg).max(axis=3)  # [R, PH, PW, C]
    empty = (he <= hs)[:, :, None] | (we <= ws)[:, None, :]
    return jnp.where(empty[..., None], jnp.zeros((), features.dtype), v)
