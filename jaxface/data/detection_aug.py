"""Detection augmentation that keeps boxes and landmarks right (host-side NumPy/PIL).

One affine placement does random scale, crop and padding at once: the output
``S x S`` canvas pixel ``(x, y)`` shows input point ``((x + ox) / s, (y + oy) / s)``,
so a box ``b`` becomes ``b * s - (ox, oy, ox, oy)`` and a landmark likewise. With
``ox < 0`` the (shrunk) image lands inside the canvas ("zoom out"); with ``ox > 0``
the canvas is a crop of the (enlarged) image.

Faces cut by the canvas: a face keeping less than ``min_visible`` of its area
becomes an *ignore* region (``ignore = True``), so no detector is taught that half
a face is background; faces entirely outside are dropped (``keep = False``).

Horizontal flip mirrors boxes (``x1' = W - x2``) and landmarks, and swaps the
left/right landmarks (5-point order: left eye, right eye, nose, left mouth
corner, right mouth corner).

Photometric jitter: brightness, contrast and saturation, applied before placement.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np
from PIL import Image

from jaxface.ops.boxes import box_area, clip_boxes

__all__ = [
    "FLIP_LANDMARKS",
    "Placement",
    "random_placement",
    "fit_placement",
    "place",
    "flip_horizontal",
    "photometric_jitter",
]

FLIP_LANDMARKS = np.array([1, 0, 2, 4, 3])


@dataclasses.dataclass(frozen=True)
class Placement:
    """``out = in * scale - offset``; ``offset = (ox, oy)`` in output pixels."""

    scale: float
    offset: tuple
    out_size: int


SCALE_REFERENCES = ("fit", "native")


def fit_placement(height: int, width: int, out_size: int, *, reference: str = "fit") -> Placement:
    """Evaluation placement at the top-left corner (padding right / bottom): the whole
    image scaled so its longer side is ``out_size`` (``reference="fit"``), or at its own
    resolution, shrunk only to fit (``"native"``)."""
    scale = out_size / max(height, width)
    if _reference(reference) == "native":
        scale = min(1.0, scale)
    return Placement(scale=scale, offset=(0.0, 0.0), out_size=out_size)


def _reference(reference: str) -> str:
    if reference not in SCALE_REFERENCES:
        raise ValueError(f"scale reference must be one of {SCALE_REFERENCES}, got {reference!r}")
    return reference


def random_placement(
    rng: np.random.Generator,
    height: int,
    width: int,
    out_size: int,
    *,
    scale_range=(0.5, 2.0),
    reference: str = "fit",
) -> Placement:
    """A random scale, log-uniform in ``scale_range`` times the fit scale
    (``reference="fit"``: the longer side on the canvas) or times 1 (``"native"``: the
    image's own pixels, so its faces keep their sizes up to the factor and a large image
    is cropped), and a uniformly random crop/position of the scaled image on the canvas."""
    lo, hi = (float(v) for v in scale_range)
    base = out_size / max(height, width) if _reference(reference) == "fit" else 1.0
    s = base * math.exp(rng.uniform(math.log(lo), math.log(hi)))
    offs = []
    for n in (width, height):
        extra = n * s - out_size  # > 0: crop; < 0: pad around
        offs.append(float(rng.uniform(min(0.0, extra), max(0.0, extra))))
    return Placement(scale=s, offset=(offs[0], offs[1]), out_size=out_size)


def flip_horizontal(image: np.ndarray, boxes: np.ndarray, landmarks: Optional[np.ndarray] = None):
    """Mirrors an ``[H, W, 3]`` image, its ``[n, 4]`` corner boxes and ``[n, 5, 2]`` landmarks."""
    w = image.shape[1]
    image = image[:, ::-1]
    boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], axis=-1)
    if landmarks is not None:
        landmarks = landmarks[:, FLIP_LANDMARKS].copy()
        landmarks[..., 0] = w - landmarks[..., 0]
    return image, boxes, landmarks


def photometric_jitter(
    rng: np.random.Generator,
    image: np.ndarray,
    *,
    brightness: float = 0.2,
    contrast: float = 0.3,
    saturation: float = 0.3,
) -> np.ndarray:
    """uint8 ``[H, W, 3]`` -> uint8 with random brightness (+- ``brightness`` * 255),
    contrast and saturation (factors in ``1 +- value``), in random order of the last two."""
    x = image.astype(np.float32)
    x = x + rng.uniform(-brightness, brightness) * 255.0
    ops = [
        ("c", rng.uniform(1 - contrast, 1 + contrast)),
        ("s", rng.uniform(1 - saturation, 1 + saturation)),
    ]
    if rng.random() < 0.5:
        ops.reverse()
    for kind, f in ops:
        if kind == "c":
            m = x.mean()
            x = (x - m) * f + m
        else:
            g = x @ np.array([0.299, 0.587, 0.114], np.float32)
            x = (x - g[..., None]) * f + g[..., None]
    return np.clip(x, 0, 255).astype(np.uint8)


def place(
    image: np.ndarray,
    boxes: np.ndarray,
    placement: Placement,
    *,
    landmarks: Optional[np.ndarray] = None,
    min_visible: float = 0.5,
    fill: int = 0,
):
    """Applies a `Placement` to an image and its annotations.

    Args:
      image: uint8 ``[H, W, 3]``.
      boxes: ``[n, 4]`` corner boxes, input pixels.
      placement: from `random_placement` / `fit_placement`.
      landmarks: optional ``[n, L, 2]`` pixels.
      min_visible: faces keeping less of their area become ignore regions.
    Returns:
      dict ``image`` uint8 ``[S, S, 3]``, ``boxes`` ``[n, 4]`` (clipped to the canvas),
      ``landmarks`` (if given), ``keep`` ``[n]`` bool (some part of the face is on the
      canvas), ``ignore`` ``[n]`` bool (cut to less than ``min_visible``), ``image_hw``
      ``[2]`` the canvas region covered by the image.
    """
    s, (ox, oy), size = placement.scale, placement.offset, placement.out_size
    pil = Image.fromarray(np.asarray(image, np.uint8))
    out = pil.transform(
        (size, size),
        Image.AFFINE,
        (1.0 / s, 0.0, ox / s, 0.0, 1.0 / s, oy / s),
        resample=Image.BILINEAR,
        fillcolor=(fill,) * 3,
    )
    shift = np.array([ox, oy, ox, oy], np.float32)
    b = np.asarray(boxes, np.float32).reshape(-1, 4) * s - shift
    clipped = clip_boxes(b, (size, size))
    full = box_area(b)
    vis = np.where(full > 0, box_area(clipped) / np.maximum(full, 1e-6), 0.0)
    keep = ((clipped[:, 2] - clipped[:, 0]) >= 1) & ((clipped[:, 3] - clipped[:, 1]) >= 1)
    res = {
        "image": np.asarray(out, np.uint8),
        "boxes": clipped.astype(np.float32),
        "keep": keep,
        "ignore": keep & (vis < min_visible),
    }
    if landmarks is not None:
        res["landmarks"] = (np.asarray(landmarks, np.float32) * s - shift[:2]).astype(np.float32)
    h, w = image.shape[:2]
    res["image_hw"] = np.array(
        [np.clip(h * s - oy, 0, size), np.clip(w * s - ox, 0, size)], np.float32
    )
    return res
