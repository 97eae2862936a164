"""The scale a detector sees a photo at, its padded shape, and the merge of several scales.

Pure maths on sizes and boxes (`jaxface.detect_input` applies it to images):

* `face_size_scale`: the resize that maps a photo's plausible face sizes onto the face
  sizes a detector was trained for (``config.face_sizes``); the rule is below.
* `bucket_hw`: padded sides rounded up to a multiple of a bucket, so a folder of photos
  of many sizes compiles a bounded number of input shapes.
* `pyramid_scales`: the levels of a small image pyramid (``--scales 0.5,1,2``).
* `merge_detections`: one NMS over the detections of every level, in original-image
  pixels (jit-able, fixed shapes).

The face-size rule. A detector trained on faces ``lo..hi`` pixels tall finds faces of
that size. In a photo of ``H x W`` the faces can be anything from tiny to nearly the
frame: the plausible range is taken as ``lo`` (smaller faces need enlarging, which the
pyramid offers) to ``LARGEST_FACE_FRACTION x min(H, W)`` (the same cap the training
scenes use for their largest face, `jaxface.data.cfp_scenes`). At the photo's own
resolution (scale 1) the small end is covered; the large end is covered iff
``0.9 x min(H, W) <= hi``. When it is not, no single scale covers both ends, and the
scale is the geometric middle between 1 (every small face kept) and ``hi / (0.9 x
min(H, W))`` (every large face kept): ``sqrt(hi / (0.9 x min(H, W)))``, which misses
the same factor at both ends. Example: a detector trained for faces of 10-300 px on
a 1,280 x 886 group photo: scale 0.61, so its 100-140 px faces are seen at 61-86 px, in
the middle of the trained range (a fixed 320 px canvas would show them at 25-35 px).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax.numpy as jnp

from jaxface.ops.nms import batched_nms

__all__ = [
    "LARGEST_FACE_FRACTION",
    "round_up",
    "bucket_hw",
    "face_size_scale",
    "pyramid_scales",
    "merge_detections",
]

# The largest plausible face of a photo, as a fraction of its shorter side.
LARGEST_FACE_FRACTION = 0.9


def round_up(n: float, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is ``>= n`` (at least ``multiple``);
    ``n`` a product of floats that should be a multiple (``4000 x (1024 / 4000)``)
    counts as one, not as a hair above it."""
    return max(1, math.ceil(n / multiple - 1e-9)) * int(multiple)


def bucket_hw(height: float, width: float, bucket: int) -> tuple[int, int]:
    """Padded ``(H, W)`` of a (scaled) image: each side rounded up to a multiple of
    ``bucket``. Sides up to ``max_side`` give at most ``ceil(max_side / bucket) ** 2``
    shapes."""
    return round_up(height, bucket), round_up(width, bucket)


def face_size_scale(height: int, width: int, face_sizes: Sequence[float]) -> float:
    """The scale (detector pixels per photo pixel, <= 1) of the module docstring's rule."""
    lo, hi = (float(v) for v in face_sizes)
    if not 0 < lo < hi:
        raise ValueError(
            f"face_sizes must be (min_px, max_px) with 0 < min < max, got {face_sizes}"
        )
    largest = LARGEST_FACE_FRACTION * min(height, width)
    if largest <= hi:
        return 1.0
    return math.sqrt(hi / largest)


def pyramid_scales(
    base: float, factors: Sequence[float], height: int, width: int, max_side: int
) -> list[float]:
    """Sorted distinct scales ``base x f`` for every factor, each capped so the scaled
    longer side is at most ``max_side`` (capped levels that coincide are run once)."""
    cap = max_side / max(height, width)
    out = sorted({min(base * float(f), cap) for f in factors})
    if not out or out[0] <= 0:
        raise ValueError(f"pyramid factors must be > 0, got {tuple(factors)}")
    return out


def merge_detections(boxes, scores, valid, landmarks, *, iou_threshold: float, max_output: int):
    """Detections of several pyramid levels -> one set: ``boxes [B, N, 4]`` (original
    pixels, every level's rows concatenated), ``scores [B, N]``, ``valid [B, N]``,
    ``landmarks [B, N, 5, 2]``; greedy NMS at ``iou_threshold`` keeps the best-scoring
    box of each overlapping group. Returns dict ``boxes [B, K, 4]``, ``scores [B, K]``,
    ``valid [B, K]``, ``landmarks [B, K, 5, 2]`` (``K = max_output``, descending score)."""
    nms = batched_nms(
        boxes, scores, iou_threshold=iou_threshold, max_output=max_output, valid=valid
    )
    idx = jnp.maximum(nms.indices, 0)
    lmk = jnp.take_along_axis(landmarks, idx[..., None, None], axis=1)
    return {
        "boxes": nms.boxes,
        "scores": jnp.where(nms.valid, nms.scores, 0.0),
        "valid": nms.valid,
        "landmarks": jnp.where(nms.valid[..., None, None], lmk, 0.0),
    }
