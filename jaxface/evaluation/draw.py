"""Pictures of detections: the image the detection evaluator logs and ``jaxface detect`` saves."""

from __future__ import annotations

from typing import Optional

import numpy as np
from PIL import Image

__all__ = ["LANDMARK_COLOURS", "draw_detections"]

LANDMARK_COLOURS = ((255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 0, 255), (0, 255, 255))


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    *,
    landmarks: Optional[np.ndarray] = None,
    gt_boxes: Optional[np.ndarray] = None,
    threshold: float = 0.5,
) -> np.ndarray:
    """uint8 [H, W, 3]: ``image`` with the detections scoring >= ``threshold`` drawn.

    Detections (``boxes`` [n, 4] x1 y1 x2 y2 pixels, ``scores`` [n]) in yellow with their
    score; ``landmarks`` [n, 5, 2] as dots (left eye red, right eye blue, nose green,
    left / right mouth corner magenta / cyan); ``gt_boxes`` [m, 4] in green underneath.
    """
    from PIL import ImageDraw  # pylint: disable=import-outside-toplevel

    im = np.asarray(image, np.uint8)
    if im.ndim == 2:
        im = np.repeat(im[..., None], 3, axis=-1)
    canvas = Image.fromarray(np.ascontiguousarray(im[..., :3]))
    d = ImageDraw.Draw(canvas)
    for b in np.asarray(gt_boxes if gt_boxes is not None else np.zeros((0, 4)), np.float64):
        d.rectangle([float(v) for v in b], outline=(0, 255, 0), width=1)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    lms = None if landmarks is None else np.asarray(landmarks, np.float64).reshape(-1, 5, 2)
    for j in np.argsort(scores):  # best drawn last (on top)
        if scores[j] < threshold:
            continue
        b = boxes[j]
        d.rectangle([float(v) for v in b], outline=(255, 255, 0), width=2)
        d.text((float(b[0]) + 2, float(b[1]) + 1), f"{scores[j]:.2f}", fill=(255, 255, 0))
        if lms is not None:
            r = max(1.5, 0.02 * float(b[3] - b[1]))
            for (x, y), c in zip(lms[j], LANDMARK_COLOURS):
                d.ellipse([x - r, y - r, x + r, y + r], fill=c)
    return np.asarray(canvas, np.uint8)
