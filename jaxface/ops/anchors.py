"""Anchor generation for region proposal networks (fixed shapes, NumPy or jnp).

Anchors are corner boxes ``(x1, y1, x2, y2)`` in input-image pixels, laid out
location-major: anchor ``(y, x, a)`` of a ``[H, W]`` feature map with ``A``
anchor shapes sits at flat index ``(y * W + x) * A + a``, the same order as an
RPN head's ``[B, H, W, A]`` output reshaped to ``[B, H * W * A]``.

ScaleFace (Yang et al., arXiv 1706.02863) gives each scale-variant detector its own stride and
anchor sides (square anchors, ratio 1:1); `branch_anchors` builds them from a
branch's config. The anchor shapes are a pure function of static numbers, so
they are computed in NumPy at trace time and enter the jitted program as
constants.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

__all__ = ["anchor_shapes", "grid_anchors", "feature_map_size", "num_anchors_per_location"]


def anchor_shapes(sizes: Sequence[float], ratios: Sequence[float] = (1.0,)) -> np.ndarray:
    """``[A, 2]`` anchor ``(width, height)`` for every ``(size, ratio)`` pair.

    ``ratio = height / width`` and the area is ``size ** 2`` (Faster R-CNN
    convention), so ratio 1 gives ``size x size`` squares. Order: sizes major.
    """
    sizes = np.asarray(sizes, np.float64).reshape(-1)
    ratios = np.asarray(ratios, np.float64).reshape(-1)
    if sizes.size == 0 or ratios.size == 0:
        raise ValueError(f"anchor_shapes: need at least one size and ratio, got {sizes}, {ratios}")
    if np.any(sizes <= 0) or np.any(ratios <= 0):
        raise ValueError(f"anchor_shapes: sizes and ratios must be positive, got {sizes}, {ratios}")
    w = sizes[:, None] / np.sqrt(ratios)[None, :]
    h = sizes[:, None] * np.sqrt(ratios)[None, :]
    return np.stack([w.reshape(-1), h.reshape(-1)], axis=-1)


def num_anchors_per_location(sizes: Sequence[float], ratios: Sequence[float] = (1.0,)) -> int:
    return len(sizes) * len(ratios)


def feature_map_size(image_size: Tuple[int, int], stride: int) -> Tuple[int, int]:
    """``ceil(size / stride)`` per axis: the map size of a stride-``s`` stage with
    'SAME' padding (what the ResNet stages produce)."""
    return (-(-int(image_size[0]) // stride), -(-int(image_size[1]) // stride))


def grid_anchors(
    feature_size: Tuple[int, int],
    stride: float,
    sizes: Sequence[float],
    ratios: Sequence[float] = (1.0,),
    *,
    offset: float = 0.5,
    dtype=np.float32,
) -> np.ndarray:
    """All anchors of a ``[H, W]`` feature map of the given stride.

    Cell ``(y, x)`` is centred at ``((x + offset) * stride, (y + offset) * stride)``
    (``offset=0.5``: the centre of the input pixels the cell covers).

    Args:
      feature_size: ``(H, W)`` of the feature map.
      stride: input pixels per feature cell.
      sizes: anchor sides (``sqrt`` of the area), e.g. ``(12, 16, 24, 40)``.
      ratios: ``height / width`` ratios.
      offset: cell centre offset in cells.
    Returns:
      ``[H * W * A, 4]`` corner boxes, location-major (see module docstring).
    """
    fh, fw = int(feature_size[0]), int(feature_size[1])
    shapes = anchor_shapes(sizes, ratios)  # [A, 2]
    cy = (np.arange(fh, dtype=np.float64) + offset) * stride
    cx = (np.arange(fw, dtype=np.float64) + offset) * stride
    cyy, cxx = np.meshgrid(cy, cx, indexing="ij")  # [H, W]
    centers = np.stack([cxx, cyy], axis=-1)[:, :, None, :]  # [H, W, 1, 2]
    half = shapes[None, None, :, :] / 2.0  # [1, 1, A, 2]
    boxes = np.concatenate([centers - half, centers + half], axis=-1)  # [H, W, A, 4]
    return boxes.reshape(-1, 4).astype(dtype)
