"""Box operations: the one place in jaxface where box maths lives.

Every function is pure, elementwise over leading dimensions, has fixed output
shapes and jits. Boxes are ``[..., 4]`` arrays; unless a name says otherwise
they are corner boxes ``(x1, y1, x2, y2)`` in pixels.

Array module: each function takes ``xp=None``; by default it uses NumPy when
every array argument is a ``numpy.ndarray`` (or a Python scalar) and
``jax.numpy`` otherwise (so tracers under ``jax.jit`` get ``jnp``). The WIDER
evaluator calls the very same functions with NumPy arrays for speed; there is no
second copy of the IoU anywhere in the project.

Pixel conventions:
  * ``plus_one=False`` (default, torchvision/Detectron2): width = x2 - x1.
  * ``plus_one=True`` (PASCAL VOC / WIDER FACE eval_tools): width = x2 - x1 + 1,
    i.e. both corner pixels are inside the box.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

__all__ = [
    "array_module",
    "box_area",
    "xywh_to_xyxy",
    "xyxy_to_xywh",
    "clip_boxes",
    "intersection_wh",
    "iou",
    "iou_matrix",
    "encode_boxes",
    "decode_boxes",
    "ioa_matrix",
    "encode_landmarks",
    "decode_landmarks",
    "matlab_round",
    "matlab_int32_boxoverlap",
    "DEFAULT_BBOX_XFORM_CLIP",
]

# Largest allowed log-scale delta in `decode_boxes` (torchvision / Detectron).
DEFAULT_BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def array_module(*arrays: Any, xp=None):
    """Returns ``xp`` if given, else NumPy when all arrays are NumPy/scalars, else ``jnp``."""
    if xp is not None:
        return xp
    for a in arrays:
        if a is None or isinstance(a, (int, float, np.ndarray, np.generic)):
            continue
        return jnp
    return np


def _split(boxes):
    return boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]


def box_area(boxes, *, plus_one: bool = False, xp=None):
    """Area of corner boxes; inverted (negative-size) boxes have area 0.

    Args:
      boxes: ``[..., 4]`` ``(x1, y1, x2, y2)``.
      plus_one: width = x2 - x1 + 1 (VOC/WIDER convention) instead of x2 - x1.
    Returns:
      ``[...]`` areas, same dtype as ``boxes`` (float) .
    """
    xp = array_module(boxes, xp=xp)
    off = 1 if plus_one else 0
    x1, y1, x2, y2 = _split(boxes)
    w = xp.maximum(x2 - x1 + off, 0)
    h = xp.maximum(y2 - y1 + off, 0)
    return w * h


def xywh_to_xyxy(boxes, *, xp=None):
    """``(x, y, w, h)`` (top-left corner, size) -> ``(x1, y1, x1 + w, y1 + h)``; ``[..., 4]``.

    The WIDER FACE files store ``x y w h``; their eval_tools build the corner box
    as ``x + w`` (and then use ``plus_one=True`` IoU), which is this function.
    """
    xp = array_module(boxes, xp=xp)
    x, y, w, h = _split(boxes)
    return xp.stack([x, y, x + w, y + h], axis=-1)


def xyxy_to_xywh(boxes, *, xp=None):
    """``(x1, y1, x2, y2)`` -> ``(x1, y1, x2 - x1, y2 - y1)``; ``[..., 4]``. Inverse of `xywh_to_xyxy`."""
    xp = array_module(boxes, xp=xp)
    x1, y1, x2, y2 = _split(boxes)
    return xp.stack([x1, y1, x2 - x1, y2 - y1], axis=-1)


def clip_boxes(boxes, image_size, *, xp=None):
    """Clips corner boxes to the image: x into ``[0, width]``, y into ``[0, height]``.

    Args:
      boxes: ``[..., N, 4]`` ``(x1, y1, x2, y2)``.
      image_size: ``(height, width)`` as a pair of numbers, or an array ``[..., 2]``
        whose leading dims broadcast against ``boxes[..., 0, 0]`` (e.g. ``[B, 2]``
        with boxes ``[B, N, 4]``, one size per image).
    Returns:
      ``[..., N, 4]`` clipped boxes (torchvision ``clip_boxes_to_image`` semantics).
    """
    xp = array_module(
        boxes, image_size if not isinstance(image_size, (tuple, list)) else None, xp=xp
    )
    size = xp.asarray(image_size, dtype=boxes.dtype)
    h = size[..., 0][..., None]
    w = size[..., 1][..., None]
    x1, y1, x2, y2 = _split(boxes)
    return xp.stack(
        [xp.clip(x1, 0, w), xp.clip(y1, 0, h), xp.clip(x2, 0, w), xp.clip(y2, 0, h)], axis=-1
    )


def intersection_wh(a, b, *, plus_one: bool = False, xp=None):
    """Signed width and height of the intersection of two broadcastable box arrays.

    ``iw = min(a.x2, b.x2) - max(a.x1, b.x1) (+ 1)``; ``<= 0`` means no overlap.
    Integer inputs give integer outputs (exact).

    Args:
      a: ``[..., 4]`` corner boxes.
      b: ``[..., 4]`` corner boxes, broadcastable against ``a``.
    Returns:
      ``(iw, ih)``, each of the broadcast shape ``[...]``.
    """
    xp = array_module(a, b, xp=xp)
    off = 1 if plus_one else 0
    ax1, ay1, ax2, ay2 = _split(a)
    bx1, by1, bx2, by2 = _split(b)
    iw = xp.minimum(ax2, bx2) - xp.maximum(ax1, bx1) + off
    ih = xp.minimum(ay2, by2) - xp.maximum(ay1, by1) + off
    return iw, ih


def iou(a, b, *, plus_one: bool = False, xp=None):
    """Elementwise intersection over union of broadcastable corner boxes.

    Pairs that do not overlap (``iw <= 0`` or ``ih <= 0``, which includes every
    pair with an inverted box) have IoU 0, never NaN. With ``plus_one=True`` this is
    exactly the float maths of PASCAL VOC / WIDER ``boxoverlap.m``.

    Args:
      a: ``[..., 4]``; b: ``[..., 4]`` broadcastable against ``a``.
      plus_one: VOC/WIDER "+1 pixel" convention.
    Returns:
      ``[...]`` IoU in ``[0, 1]``, floating dtype.
    """
    xp = array_module(a, b, xp=xp)
    iw, ih = intersection_wh(a, b, plus_one=plus_one, xp=xp)
    valid = (iw > 0) & (ih > 0)
    inter = xp.where(valid, iw * ih, 0)
    off = 1 if plus_one else 0
    # When iw, ih > 0 both boxes have positive (+1) width and height >= iw, ih,
    # so union >= max(area_a, area_b) > 0: the guarded division is exact there.
    area_a = (a[..., 2] - a[..., 0] + off) * (a[..., 3] - a[..., 1] + off)
    area_b = (b[..., 2] - b[..., 0] + off) * (b[..., 3] - b[..., 1] + off)
    union = area_a + area_b - inter
    safe = xp.where(valid, union, 1)
    out = inter / safe
    return xp.where(valid, out, xp.zeros_like(out))


def iou_matrix(a, b, *, plus_one: bool = False, xp=None):
    """All-pairs IoU.

    Args:
      a: ``[..., N, 4]`` corner boxes.
      b: ``[..., M, 4]`` corner boxes (leading dims broadcast with ``a``'s).
      plus_one: VOC/WIDER "+1 pixel" convention (use it on WIDER ``x y w h``
        boxes converted with `xywh_to_xyxy`).
    Returns:
      ``[..., N, M]`` IoU.
    """
    return iou(a[..., :, None, :], b[..., None, :, :], plus_one=plus_one, xp=xp)


def _box_center_size(boxes, xp):
    x1, y1, x2, y2 = _split(boxes)
    w = x2 - x1
    h = y2 - y1
    return x1 + 0.5 * w, y1 + 0.5 * h, w, h


def encode_boxes(boxes, anchors, *, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), xp=None):
    """Faster R-CNN regression targets of ``boxes`` relative to ``anchors``.

    ``dx = wx (cx_b - cx_a) / w_a``, ``dy = wy (cy_b - cy_a) / h_a``,
    ``dw = ww log(w_b / w_a)``, ``dh = wh log(h_b / h_a)``, with ``w = x2 - x1``
    (torchvision ``BoxCoder`` convention). Both arrays must have positive sizes
    wherever the result is used; mask the rest (e.g. padded anchors) yourself.

    Args:
      boxes: ``[..., 4]`` target corner boxes.
      anchors: ``[..., 4]`` reference corner boxes, broadcastable with ``boxes``.
      weights: ``(wx, wy, ww, wh)``, e.g. ``(10, 10, 5, 5)`` for a Fast R-CNN head.
    Returns:
      ``[..., 4]`` deltas ``(dx, dy, dw, dh)``.
    """
    xp = array_module(boxes, anchors, xp=xp)
    wx, wy, ww, wh = weights
    bx, by, bw, bh = _box_center_size(boxes, xp)
    ax, ay, aw, ah = _box_center_size(anchors, xp)
    return xp.stack(
        [wx * (bx - ax) / aw, wy * (by - ay) / ah, ww * xp.log(bw / aw), wh * xp.log(bh / ah)],
        axis=-1,
    )


def decode_boxes(
    deltas,
    anchors,
    *,
    weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    clip: float = DEFAULT_BBOX_XFORM_CLIP,
    xp=None,
):
    """Inverse of `encode_boxes`: applies deltas to anchors.

    ``dw`` and ``dh`` (after dividing by their weights) are clamped to ``clip``
    (default ``log(1000 / 16)``) so ``exp`` cannot overflow on untrained heads.

    Args:
      deltas: ``[..., 4]`` ``(dx, dy, dw, dh)``.
      anchors: ``[..., 4]`` corner boxes broadcastable with ``deltas``.
      weights: the ``(wx, wy, ww, wh)`` used to encode.
      clip: upper bound for the scaled ``dw``, ``dh``.
    Returns:
      ``[..., 4]`` decoded corner boxes.
    """
    xp = array_module(deltas, anchors, xp=xp)
    wx, wy, ww, wh = weights
    ax, ay, aw, ah = _box_center_size(anchors, xp)
    dx = deltas[..., 0] / wx
    dy = deltas[..., 1] / wy
    dw = xp.minimum(deltas[..., 2] / ww, clip)
    dh = xp.minimum(deltas[..., 3] / wh, clip)
    cx = dx * aw + ax
    cy = dy * ah + ay
    w = xp.exp(dw) * aw
    h = xp.exp(dh) * ah
    return xp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def ioa_matrix(a, b, *, xp=None):
    """All-pairs intersection over the area of ``a``: ``|a ∩ b| / |a|``.

    Used to ignore anchors/RoIs lying mostly inside an ignore region ``b`` (a crowd,
    an invalid face), whatever the region's size. ``a`` with zero area gives 0.

    Args:
      a: ``[..., N, 4]`` corner boxes; b: ``[..., M, 4]`` corner boxes.
    Returns:
      ``[..., N, M]`` in ``[0, 1]``.
    """
    xp = array_module(a, b, xp=xp)
    iw, ih = intersection_wh(a[..., :, None, :], b[..., None, :, :], xp=xp)
    inter = xp.maximum(iw, 0) * xp.maximum(ih, 0)
    area = box_area(a, xp=xp)[..., :, None]
    return xp.where(area > 0, inter / xp.where(area > 0, area, 1), 0)


def encode_landmarks(points, boxes, *, xp=None):
    """Landmark regression targets relative to a box: ``((x - cx) / w, (y - cy) / h)``.

    Args:
      points: ``[..., L, 2]`` ``(x, y)`` pixels.
      boxes: ``[..., 4]`` corner boxes (positive sizes where the result is used).
    Returns:
      ``[..., L, 2]`` normalised offsets; `decode_landmarks` inverts it.
    """
    xp = array_module(points, boxes, xp=xp)
    cx, cy, w, h = _box_center_size(boxes, xp)
    return xp.stack(
        [
            (points[..., 0] - cx[..., None]) / w[..., None],
            (points[..., 1] - cy[..., None]) / h[..., None],
        ],
        axis=-1,
    )


def decode_landmarks(deltas, boxes, *, xp=None):
    """Inverse of `encode_landmarks`: ``[..., L, 2]`` offsets + ``[..., 4]`` boxes -> pixels."""
    xp = array_module(deltas, boxes, xp=xp)
    cx, cy, w, h = _box_center_size(boxes, xp)
    return xp.stack(
        [
            deltas[..., 0] * w[..., None] + cx[..., None],
            deltas[..., 1] * h[..., None] + cy[..., None],
        ],
        axis=-1,
    )


# ---------------------------------------------------------------------------
# MATLAB integer-class arithmetic, for the exact WIDER FACE eval_tools overlap.
# ---------------------------------------------------------------------------
_INT32_MIN = -(2.0**31)
_INT32_MAX = 2.0**31 - 1


def matlab_round(x, *, xp=None):
    """MATLAB's conversion of a double to ``int32``: round half away from zero,
    saturate to the int32 range, NaN -> 0. Returns floats holding integers.

    Written as ``trunc(x) + sign(x) * (|x - trunc(x)| >= 0.5)`` because
    ``floor(x + 0.5)`` is wrong for ``x = 0.49999999999999994``.
    """
    xp = array_module(x, xp=xp)
    t = xp.trunc(x)
    d = x - t  # exact; same sign as x
    r = t + (d >= 0.5) - (d <= -0.5)
    r = xp.clip(r, _INT32_MIN, _INT32_MAX)
    return xp.where(r != r, 0, r)  # NaN -> 0


def matlab_int32_boxoverlap(a, b, *, b_area=None, xp=None):
    """WIDER FACE eval_tools ``boxoverlap(a, b)`` evaluated exactly as MATLAB does
    when ``a`` (the ground truth, loaded from the ``.mat`` files) is ``int32`` and
    ``b`` (a detection, read with ``str2num``) is ``double``.

    MATLAB computes every integer/double-scalar operation in double and converts
    the result back to ``int32`` (round half away from zero, saturating), so:
    the detection's corners are rounded where they meet the ground truth
    (``max(a(:,1), b(1))`` is ``int32``), the union ``aarea + barea - inter`` is
    rounded, and ``inter ./ union`` is an *integer* division rounded to the
    nearest integer: the "overlap" is 0 below IoU 0.5 and 1 from 0.5 up (a
    0/0 is 0, x/0 saturates). Entries with intersection width or height ``<= 0``
    are set to 0, as in the original. This makes ``[m, idx] = max(overlap)`` pick
    the *first* ground truth with IoU >= 0.5, not the best one.

    Args:
      a: ``[..., 4]`` integer-valued corner boxes ``(x, y, x + w, y + h)``.
      b: ``[..., 4]`` float corner boxes ``(x, y, x + w, y + h)`` (computed in double
        as the tool does), broadcastable with ``a``.
      b_area: optional ``[...]`` precomputed ``(b3 - b1 + 1) * (b4 - b2 + 1)`` of the
        *unrounded* ``b``; lets callers pass already-rounded ``b`` corners (rounding
        is idempotent) and save work.
    Returns:
      ``[...]`` float array of the int32 overlap values (0, 1, or larger in
      degenerate cases).
    """
    xp = array_module(a, b, xp=xp)
    if b_area is None:
        b_area = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    r = lambda v: matlab_round(v, xp=xp)  # noqa: E731
    iw, ih = intersection_wh(a, r(b), plus_one=True, xp=xp)  # exact in integers
    iw = xp.clip(iw, _INT32_MIN, _INT32_MAX)
    ih = xp.clip(ih, _INT32_MIN, _INT32_MAX)
    inter = xp.clip(iw * ih, _INT32_MIN, _INT32_MAX)
    ax1, ay1, ax2, ay2 = _split(a)
    a_w = xp.clip(ax2 - ax1 + 1, _INT32_MIN, _INT32_MAX)
    a_h = xp.clip(ay2 - ay1 + 1, _INT32_MIN, _INT32_MAX)
    a_area = xp.clip(a_w * a_h, _INT32_MIN, _INT32_MAX)
    union = xp.clip(r(a_area + b_area) - inter, _INT32_MIN, _INT32_MAX)
    # Integer division in double then int32: x/0 -> +-inf -> saturate; 0/0 -> NaN -> 0.
    nz = union != 0
    q = inter / xp.where(nz, union, 1)
    zero_div = xp.where(inter > 0, _INT32_MAX, xp.where(inter < 0, _INT32_MIN, 0))
    o = xp.where(nz, r(q), zero_div)
    return xp.where((iw > 0) & (ih > 0), o, 0)
