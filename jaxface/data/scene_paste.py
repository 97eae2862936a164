"""Pasting patches into a scene: feathered alpha, rotation with its point map, free spots.

The geometry shared by the pasted-face scene builders (`jaxface.data.cfp_scenes`):
pure NumPy/PIL functions, exact about coordinates (pixel ``i`` spans ``[i, i + 1)``).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

__all__ = ["feather", "rotate", "rotated_box", "free_spot", "paste"]


def feather(h: int, w: int, width: float) -> np.ndarray:
    """float32 [h, w] alpha: 1 inside, smoothstep to 0 over ``width`` px at the border."""
    width = max(float(width), 1.0)
    ys = np.minimum(np.arange(h) + 0.5, h - np.arange(h) - 0.5) / width
    xs = np.minimum(np.arange(w) + 0.5, w - np.arange(w) - 0.5) / width
    t = np.clip(np.minimum(ys[:, None], xs[None, :]), 0.0, 1.0)
    return (t * t * (3 - 2 * t)).astype(np.float32)


def rotate(rgb: np.ndarray, alpha: np.ndarray, degrees: float):
    """A patch rotated by ``degrees`` about its centre onto a grid that holds all of it.

    Returns ``(rgb, alpha, map)``; ``map(pts)`` takes old patch pixels to new ones
    (the same affine map PIL resamples with, pixel ``i`` spanning ``[i, i + 1)``)."""
    h, w = alpha.shape
    t = math.radians(degrees)
    cos, sin = math.cos(t), math.sin(t)
    nw = int(math.ceil(abs(w * cos) + abs(h * sin)))
    nh = int(math.ceil(abs(w * sin) + abs(h * cos)))
    c_old = np.array([w / 2, h / 2])
    c_new = np.array([nw / 2, nh / 2])
    rot = np.array([[cos, -sin], [sin, cos]])
    inv = rot.T  # new -> old: p = R^T (q - c_new) + c_old
    off = c_old - inv @ c_new
    data = (inv[0, 0], inv[0, 1], off[0], inv[1, 0], inv[1, 1], off[1])
    out = Image.fromarray(rgb).transform((nw, nh), Image.AFFINE, data, resample=Image.BILINEAR)
    a8 = Image.fromarray(np.round(alpha * 255).astype(np.uint8))
    a_out = a8.transform((nw, nh), Image.AFFINE, data, resample=Image.BILINEAR)

    def to_new(pts):
        pts = np.asarray(pts, np.float64)
        return (pts - c_old) @ rot.T + c_new

    return np.asarray(out, np.uint8), np.asarray(a_out, np.float32) / 255.0, to_new, rot


def rotated_box(box: np.ndarray, to_new, rot: np.ndarray) -> np.ndarray:
    """The axis-aligned box of the ellipse inscribed in ``box`` after the rotation: a
    face's outline is close to that ellipse, so the box stays tight at any tilt."""
    a, b = (box[2] - box[0]) / 2, (box[3] - box[1]) / 2
    c = to_new(np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]))
    cos, sin = rot[0, 0], rot[1, 0]
    hw = math.sqrt((a * cos) ** 2 + (b * sin) ** 2)
    hh = math.sqrt((a * sin) ** 2 + (b * cos) ** 2)
    return np.array([c[0] - hw, c[1] - hh, c[0] + hw, c[1] + hh])


def free_spot(rng, rect_hw, inside, patches, tries=20):
    """An integer offset for a ``(ph, pw)`` patch, drawn uniformly from
    ``inside = (ox_lo, ox_hi, oy_lo, oy_hi)``, whose rectangle overlaps no rectangle
    of ``patches``; None after ``tries`` draws."""
    ph, pw = rect_hw
    ox_lo, ox_hi, oy_lo, oy_hi = inside
    if ox_hi < ox_lo or oy_hi < oy_lo:
        return None
    for _ in range(tries):
        ox, oy = int(rng.integers(ox_lo, ox_hi + 1)), int(rng.integers(oy_lo, oy_hi + 1))
        rect = (ox, oy, ox + pw, oy + ph)
        if all(
            rect[2] <= q[0] or q[2] <= rect[0] or rect[3] <= q[1] or q[3] <= rect[1]
            for q in patches
        ):
            return ox, oy
    return None


def paste(canvas, rgb, alpha, ox, oy):
    h, w = canvas.shape[:2]
    ph, pw = alpha.shape
    x0, y0, x1, y1 = max(ox, 0), max(oy, 0), min(ox + pw, w), min(oy + ph, h)
    if x1 <= x0 or y1 <= y0:
        return
    a = alpha[y0 - oy : y1 - oy, x0 - ox : x1 - ox, None]
    src = rgb[y0 - oy : y1 - oy, x0 - ox : x1 - ox].astype(np.float32)
    canvas[y0:y1, x0:x1] = a * src + (1 - a) * canvas[y0:y1, x0:x1]
