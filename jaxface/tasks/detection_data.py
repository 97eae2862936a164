"""The detection task's data transform: a builder example to a fixed-shape input.

Every image is placed on a fixed ``config.image_size`` square canvas (random scale /
crop / flip / photometric jitter in training, `jaxface.data.detection_aug`; fit-and-pad
in evaluation) and its faces are padded to ``config.max_faces`` slots with a validity
mask, so one compiled step serves every batch. Invalid faces, and faces cut by the
crop, are ignore regions.
"""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

from jaxface.data import detection_aug
from jaxface.tasks import common


def faces_of(example: Mapping) -> dict:
    """A builder example's faces in pixels: ``boxes`` [n, 4] x1 y1 x2 y2 float32 and the
    labels (missing ones default to 0; ``has_landmarks`` False without landmarks)."""
    h, w = np.asarray(example["image"]).shape[:2]
    f = example["faces"]
    bbox = np.asarray(f["bbox"], np.float32).reshape(-1, 4)
    n = bbox.shape[0]
    boxes = np.stack([bbox[:, 1] * w, bbox[:, 0] * h, bbox[:, 3] * w, bbox[:, 2] * h], axis=-1)
    out = {"boxes": boxes.astype(np.float32)}
    for k in ("blur", "occlusion", "pose", "invalid"):
        v = f.get(k)
        out[k] = np.zeros((n,), np.int32) if v is None else np.asarray(v, np.int32).reshape(n)
    lm = f.get("landmarks")
    if lm is None or np.asarray(lm).size != n * 10:
        out["landmarks"] = np.zeros((n, 5, 2), np.float32)
        out["has_landmarks"] = np.zeros((n,), bool)
    else:
        out["landmarks"] = np.asarray(lm, np.float32).reshape(n, 5, 2)
        out["has_landmarks"] = np.ones((n,), bool)
    return out


def prepare(
    config,
    image: np.ndarray,
    faces: Optional[dict],
    rng: Optional[np.random.Generator],
    *,
    train: bool,
) -> dict:
    """One image (+ faces, `faces_of`; None: no face) -> the fixed-shape model input of
    the detection task with ``config``: training places it at a random scale and
    position with flip and photometric jitter (``rng``), evaluation fits and pads it."""
    c = config
    max_faces = int(c.max_faces)
    # Training crops the ``image_size`` canvas; evaluation may use a larger one.
    size = int(c.image_size if train or not c.get("eval_image_size") else c.eval_image_size)
    reference = str(c.augment.get("scale_reference", "fit"))
    image = np.asarray(image, np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    image = image[..., :3]
    h, w = image.shape[:2]
    if faces is None:
        faces = {
            "boxes": np.zeros((0, 4), np.float32),
            "invalid": np.zeros((0,), np.int32),
            "landmarks": np.zeros((0, 5, 2), np.float32),
            "has_landmarks": np.zeros((0,), bool),
        }
    boxes, landmarks = faces["boxes"], faces["landmarks"]
    aug = c.augment
    if train:
        if aug.flip and rng.random() < 0.5:
            image, boxes, landmarks = detection_aug.flip_horizontal(image, boxes, landmarks)
        if aug.photometric:
            image = detection_aug.photometric_jitter(rng, image)
        placement = detection_aug.random_placement(
            rng, h, w, size, scale_range=tuple(aug.scale_range), reference=reference
        )
    else:
        placement = detection_aug.fit_placement(h, w, size, reference=reference)
    placed = detection_aug.place(
        image, boxes, placement, landmarks=landmarks, min_visible=float(aug.min_visible)
    )
    keep = placed["keep"]
    idx = np.flatnonzero(keep)[:max_faces]
    n = len(idx)
    gt_boxes = np.zeros((max_faces, 4), np.float32)
    gt_boxes[:n] = placed["boxes"][idx]
    gt_valid = np.zeros((max_faces,), bool)
    gt_valid[:n] = True
    gt_ignore = np.zeros((max_faces,), bool)
    gt_ignore[:n] = placed["ignore"][idx] | (np.asarray(faces["invalid"])[idx] > 0)
    gt_lm = np.zeros((max_faces, 5, 2), np.float32)
    gt_lm[:n] = placed["landmarks"][idx]
    gt_lm_valid = np.zeros((max_faces,), bool)
    gt_lm_valid[:n] = np.asarray(faces["has_landmarks"])[idx] & ~gt_ignore[:n]
    return {
        "image": common.normalize_image(placed["image"]),
        "gt_boxes": gt_boxes,
        "gt_valid": gt_valid,
        "gt_ignore": gt_ignore,
        "gt_landmarks": gt_lm,
        "gt_landmarks_valid": gt_lm_valid,
        "image_hw": placed["image_hw"],
        "scale": np.float32(placement.scale),
    }
