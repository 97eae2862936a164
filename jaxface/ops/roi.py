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
    impl: str = "auto",
    window: Union[int, Sequence[int]] = 24,
) -> jax.Array:
    """RoIAlign (Mask R-CNN) with torchvision semantics, NHWC.

    Each output bin averages ``gh * gw`` bilinear samples placed at the centres of
    a regular grid inside the bin; samples farther than one pixel outside the map
    contribute 0 but still count in the average.

    Args:
      features: ``[B, H, W, C]``.
      rois: ``[R, 4]`` ``(x1, y1, x2, y2)`` in input-image coordinates.
      batch_indices: ``[R]`` int, the image of each RoI.
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
        Memory is ``R * PH * gh * PW * gw * C`` per corner.
      impl: how the four neighbours of every sample are read; all compute the same
        products and sums in the same order (XLA may still fuse them differently,
        so the last bit can differ). ``"gather"``: one batched
        gather from the whole map, the fast form on accelerators. ``"window"``: a
        loop over RoIs that copies each RoI's ``window`` of the map and gathers
        from that small, cache-resident copy (XLA's CPU gather is several times
        faster there); a RoI whose samples need more rows or columns than the
        window reads the whole map instead. ``"auto"`` (default): ``"window"`` on
        CPU, ``"gather"`` elsewhere. Under ``jax.vmap`` pass ``"gather"``: vmap turns
        the window form's per-RoI branch into a select that computes both sides.
      window: static ``(KH, KW)`` (or an int) of the ``"window"`` form, clipped to
        the map. Only speed depends on it.
    Returns:
      ``[R, PH, PW, C]`` pooled features, dtype of ``features``.
    """
    if impl not in ("auto", "gather", "window"):
        raise ValueError(f"impl must be 'auto', 'gather' or 'window', got {impl!r}")
    _check(features, rois, batch_indices)
    ph, pw = _pair(output_size)
    _, height, width, _ = features.shape
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
    wy_lo, wy_hi = wy_lo * my, wy_hi * my
    wx_lo, wx_hi = wx_lo * mx, wx_hi * mx

    f = features.astype(dtype)
    if impl == "auto":
        impl = "window" if jax.default_backend() == "cpu" else "gather"
    if impl == "gather":
        b = batch_indices.astype(jnp.int32)[:, None, None, None, None]
        out = _bilinear_sum(
            lambda yy, xx: f[b, yy, xx],
            (y_lo[:, :, :, None, None], y_hi[:, :, :, None, None]),
            (x_lo[:, None, None, :, :], x_hi[:, None, None, :, :]),
            (wy_lo[:, :, :, None, None, None], wy_hi[:, :, :, None, None, None]),
            (wx_lo[:, None, None, :, :, None], wx_hi[:, None, None, :, :, None]),
            count[:, None, None, None],
            axes=(2, 4),
        )
        return out.astype(features.dtype)

    kh, kw = _pair(window)
    kh, kw = max(1, min(kh, height)), max(1, min(kw, width))

    # Each RoI's window: from its first used row/column (samples that count), shifted
    # back so it stays inside the map; it fits if the last used row/column is inside.
    def band(lo, hi, m, size, k):
        used = m > 0
        first = jnp.min(jnp.where(used, lo, size), axis=(1, 2))
        last = jnp.max(jnp.where(used, hi, -1), axis=(1, 2))
        start = jnp.clip(first, 0, size - k)
        return start, last - start < k

    y0, fit_y = band(y_lo, y_hi, my, height, kh)
    x0, fit_x = band(x_lo, x_hi, mx, width, kw)
    channels = f.shape[-1]

    def one(args):
        b, ys, xs, fits, yl, yh, wyl, wyh, xl, xh, wxl, wxh, cnt = args

        def pool(src, yl, yh, xl, xh):
            return _bilinear_sum(
                lambda yy, xx: src[yy, xx],
                (yl[:, :, None, None], yh[:, :, None, None]),
                (xl[None, None], xh[None, None]),
                (wyl[:, :, None, None, None], wyh[:, :, None, None, None]),
                (wxl[None, None, :, :, None], wxh[None, None, :, :, None]),
                cnt,
                axes=(1, 3),
            )

        def in_window(_):
            src = jax.lax.dynamic_slice(f, (b, ys, xs, 0), (1, kh, kw, channels))[0]
            return pool(src, yl - ys, yh - ys, xl - xs, xh - xs)

        def whole_map(_):
            return pool(jax.lax.dynamic_index_in_dim(f, b, 0, keepdims=False), yl, yh, xl, xh)

        return jax.lax.cond(fits, in_window, whole_map, None)

    def step(carry, args):
        return carry, one(args)

    # A few RoIs per loop iteration: the per-iteration cost of XLA's CPU loop counts
    # at this size.
    _, out = jax.lax.scan(
        step,
        None,
        (
            batch_indices.astype(jnp.int32),
            y0,
            x0,
            fit_y & fit_x,
            y_lo,
            y_hi,
            wy_lo,
            wy_hi,
            x_lo,
            x_hi,
            wx_lo,
            wx_hi,
            count,
        ),
        unroll=4,
    )
    return out.astype(features.dtype)


def _bilinear_sum(read, ys, xs, wys, wxs, count, *, axes):
    """``sum over samples of the four weighted neighbours / count``, in one fixed
    expression order shared by every `roi_align` form."""
    (yl, yh), (xl, xh), (w_yl, w_yh), (w_xl, w_xh) = ys, xs, wys, wxs
    val = (
        w_yl * w_xl * read(yl, xl)
        + w_yl * w_xh * read(yl, xh)
        + w_yh * w_xl * read(yh, xl)
        + w_yh * w_xh * read(yh, xh)
    )  # [..., PH, SY, PW, SX, C]
    return val.sum(axis=axes) / count


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
