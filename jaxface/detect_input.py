"""The detector's input at the photo's own scale: resize, pad, shape buckets, pyramid.

Used alike by `jaxface.analyzer.FaceAnalyzer.detect` (and so every inference command)
and by `jaxface.export`. `DetectOptions` says how a photo is fed to the detector:

* default: the photo at its own resolution, shrunk only when (a) its plausible faces
  reach beyond the sizes the detector was trained for (``config.face_sizes``; the rule
  is `jaxface.ops.detect_scale.face_size_scale`) or (b) its longer side exceeds
  ``max_side``. The scaled image is placed top-left on a zero canvas whose sides are
  rounded up to a multiple of `BUCKET` (a multiple of the backbone's largest stride),
  so photos of many sizes share a bounded set of compiled shapes.
* ``canvas=N``: the longer side scaled to ``N`` on an ``N x N`` canvas: the
  training-time evaluation input of a detector whose ``augment.scale_reference`` is
  ``"fit"`` (`jaxface.tasks.detection.DetectionTask.prepare` with ``image_size = N``,
  pixel for pixel).
* ``scales=(0.5, 1, 2)``: a pyramid: the detector runs at each multiple of the default
  scale (each capped by ``max_side``) and the detections of all levels, mapped to
  original pixels, are merged by one NMS at the detector's ``config.nms_iou``.

Every level's boxes and landmarks come back in original-image pixels: the resize is one
affine map ``canvas = scale x original`` (no per-axis rounding), and the detection
task's ``predict`` divides by ``scale``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Optional, Sequence

import jax
import numpy as np
from PIL import Image

from jaxface.ops import detect_scale

__all__ = [
    "BUCKET",
    "DEFAULT_MAX_SIDE",
    "DetectOptions",
    "bucket_for",
    "face_sizes_of",
    "levels",
    "prepare",
    "export_side",
    "detect_images",
]

# 1,024 px: the width of WIDER FACE's images, the benchmark this detector family is
# built for, so such photos are seen whole at their own resolution. Larger ones (a phone
# camera's 4,000 px) are shrunk to it: the backbone's time and memory grow with the
# pixel count (1,024^2 is ten times the 320^2 training canvas of the CPU detectors), and
# the faces the shrink loses are those under ~4x the smallest trained face (40 px for
# 10 px), a sliver of such a photo. --max-side raises the limit.
DEFAULT_MAX_SIDE = 1024
# Padded sides are rounded up to a multiple of 128 px (and of the largest stride): at
# most 8 x 8 = 64 shapes up to 1,024 px, and at most 127 px of padding per side.
BUCKET = 128


@dataclasses.dataclass(frozen=True)
class DetectOptions:
    """How a photo is fed to the detector (see the module docstring).

    max_side: the longest side (detector pixels) a photo is scaled to at most.
    canvas: ``N``: the fixed ``N x N`` canvas instead (the longer side scaled to ``N``).
    scales: pyramid factors of the default scale; ``(1.0,)`` is a single scale.
    face_sizes: ``(min_px, max_px)`` replacing the detector config's ``face_sizes``.
    """

    max_side: int = DEFAULT_MAX_SIDE
    canvas: Optional[int] = None
    scales: tuple = (1.0,)
    face_sizes: Optional[tuple] = None

    def __post_init__(self):
        if int(self.max_side) < 1:
            raise ValueError(f"max_side must be >= 1, got {self.max_side}")
        if self.canvas is not None and int(self.canvas) < 1:
            raise ValueError(f"canvas must be >= 1, got {self.canvas}")
        if not self.scales or any(not (math.isfinite(f) and f > 0) for f in self.scales):
            raise ValueError(f"scales must be positive numbers, got {self.scales}")
        if self.canvas is not None and tuple(self.scales) != (1.0,):
            raise ValueError("a fixed canvas runs at one scale: give canvas or scales, not both")


def largest_stride(config) -> int:
    """Input pixels per cell of the backbone's coarsest stage."""
    from jaxface.models.scaleface import stage_strides  # pylint: disable=import-outside-toplevel

    return max(stage_strides(config.model.backbone.get("stem", "imagenet")).values())


def bucket_for(config) -> int:
    """`BUCKET` rounded to a multiple of the detector's largest stride."""
    return math.lcm(BUCKET, largest_stride(config))


def face_sizes_of(config, options: DetectOptions) -> tuple[float, float]:
    """``options.face_sizes`` or the detector config's ``face_sizes``; a config without
    them (a config.json without the field) is an error naming the remedies."""
    sizes = options.face_sizes or config.get("face_sizes", None)
    if not sizes:
        raise ValueError(
            "the detector's config has no face_sizes (the face heights it was trained for, "
            "see configs/scaleface.py); give them (--face-sizes MIN,MAX) or use a fixed "
            "canvas (--canvas N)"
        )
    lo, hi = (float(v) for v in sizes)
    return lo, hi


def levels(height: int, width: int, config, options: DetectOptions) -> list[tuple]:
    """``[(scale, (H, W))]``: per pyramid level, detector pixels per photo pixel and the
    padded input shape."""
    if options.canvas is not None:
        n = int(options.canvas)
        return [(n / max(height, width), (n, n))]
    base = detect_scale.face_size_scale(height, width, face_sizes_of(config, options))
    bucket = bucket_for(config)
    return [
        (s, detect_scale.bucket_hw(height * s, width * s, bucket))
        for s in detect_scale.pyramid_scales(
            base, options.scales, height, width, int(options.max_side)
        )
    ]


def export_side(config, options: DetectOptions) -> int:
    """The square input side of an exported detector: the canvas, or ``max_side``
    rounded up to the largest stride (every scaled photo fits on it)."""
    if options.canvas is not None:
        return int(options.canvas)
    return detect_scale.round_up(int(options.max_side), largest_stride(config))


def prepare(image: np.ndarray, scale: float, out_hw: Sequence[int]) -> dict:
    """uint8 RGB ``[h, w, 3]`` -> the detector's input: ``image`` float32 ``[H, W, 3]``
    normalised (the photo scaled by ``scale``, PIL bilinear, top-left on a zero canvas
    of ``out_hw``), ``image_hw`` ``[2]`` (the region the photo covers) and ``scale``."""
    from jaxface.tasks.common import normalize_image  # pylint: disable=import-outside-toplevel

    image = np.asarray(image, np.uint8)
    h, w = image.shape[:2]
    oh, ow = (int(v) for v in out_hw)
    s = float(scale)
    canvas = Image.fromarray(image).transform(
        (ow, oh),
        Image.AFFINE,
        (1.0 / s, 0.0, 0.0, 0.0, 1.0 / s, 0.0),
        resample=Image.BILINEAR,
        fillcolor=(0, 0, 0),
    )
    return {
        "image": normalize_image(np.asarray(canvas, np.uint8)),
        "image_hw": np.array([np.clip(h * s, 0, oh), np.clip(w * s, 0, ow)], np.float32),
        "scale": np.float32(s),
    }


@functools.lru_cache(maxsize=None)
def _merge_fn(iou_threshold: float, max_output: int) -> Callable:
    return jax.jit(
        functools.partial(
            detect_scale.merge_detections, iou_threshold=iou_threshold, max_output=max_output
        )
    )


def detect_images(
    detect_fn: Callable, variables, images: Sequence[np.ndarray], config, options, batch: int
) -> list[dict]:
    """Runs ``detect_fn(variables, image, image_hw, scale)`` (the detection task's
    ``predict``, jitted) on every pyramid level of every image, in batches of ``batch``
    inputs of one padded shape (a short batch repeats its first input). Returns per
    image the NumPy dict ``boxes [K, 4]``, ``scores [K]``, ``valid [K]``, ``landmarks
    [K, 5, 2]`` in original pixels (the pyramid's levels merged)."""
    work: dict[tuple, list] = {}  # padded shape -> [(image, level, scale)]
    n_levels = []
    for i, im in enumerate(images):
        lv = levels(im.shape[0], im.shape[1], config, options)
        n_levels.append(len(lv))
        for j, (s, hw) in enumerate(lv):
            work.setdefault(hw, []).append((i, j, s))
    outs: dict[tuple, dict] = {}
    for hw, items in work.items():
        for start in range(0, len(items), batch):
            chunk = items[start : start + batch]
            prepared = [prepare(images[i], s, hw) for i, _, s in chunk]
            prepared += [prepared[0]] * (batch - len(chunk))
            stacked = {k: np.stack([p[k] for p in prepared]) for k in prepared[0]}
            out = jax.device_get(
                detect_fn(variables, stacked["image"], stacked["image_hw"], stacked["scale"])
            )
            for r, (i, j, _) in enumerate(chunk):
                outs[i, j] = {k: np.asarray(v[r]) for k, v in out.items()}
    results = []
    merge = _merge_fn(float(config.nms_iou), int(config.max_detections))
    for i, n in enumerate(n_levels):
        if n == 1:
            results.append(outs[i, 0])
            continue
        cat = {
            k: np.concatenate([outs[i, j][k] for j in range(n)])[None]
            for k in ("boxes", "scores", "valid", "landmarks")
        }
        merged = jax.device_get(merge(cat["boxes"], cat["scores"], cat["valid"], cat["landmarks"]))
        results.append({k: np.asarray(v[0]) for k, v in merged.items()})
    return results
