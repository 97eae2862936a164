"""Target assignment for scale-variant detectors: RPN anchors, Fast R-CNN RoIs, OHEM.

Every function works on ONE image with fixed shapes (``N`` anchors or RoIs, ``G``
padded ground-truth slots with a validity mask); batch with ``jax.vmap``. No
Python loop touches a box.

ScaleFace (Yang et al., arXiv 1706.02863) trains each detector on the faces of its size range
only. The ground truth of an image therefore comes in three kinds, per branch:

* **targets**: valid faces whose size is inside the branch's range, not ignore;
* **out-of-range faces**: valid faces outside the range. They are neither
  positives nor negatives for this branch: a box that overlaps one of them by
  ``IoU >= out_of_range_iou`` is *ignored* (label ``-1``), so the branch is never
  taught that a face of another size is background;
* **ignore regions**: boxes flagged ``gt_ignore`` (WIDER's invalid faces, crowds,
  faces cut by an augmentation crop). A box whose intersection over its own area
  with one of them is ``>= ignore_ioa`` is ignored.

Labels: ``1`` positive, ``0`` negative, ``-1`` ignored (no loss).

Face size: the box height in pixels (WIDER FACE and its difficulty split measure
faces by height; `jaxface.data.synthetic.render.difficulty_subsets` does too).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from jaxface.ops.boxes import encode_boxes, encode_landmarks, ioa_matrix, iou_matrix
from jaxface.ops.nms import batched_nms

__all__ = [
    "Assignment",
    "face_sizes",
    "in_size_range",
    "assign_boxes",
    "rpn_targets",
    "roi_targets",
    "sample_balanced",
    "ohem_select",
]

RPN_BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
RCNN_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


class Assignment(NamedTuple):
    """Per-box assignment.

    Attributes:
      labels: ``[N]`` int32: 1 positive, 0 negative, -1 ignored.
      matched: ``[N]`` int32 index of the target face with the highest IoU (0 when
        the image has no target face); meaningful where ``labels == 1``.
      max_iou: ``[N]`` IoU with that face (0 when there is none).
    """

    labels: jax.Array
    matched: jax.Array
    max_iou: jax.Array


def face_sizes(boxes):
    """``[..., 4]`` corner boxes -> ``[...]`` face size (box height, pixels)."""
    return boxes[..., 3] - boxes[..., 1]


def in_size_range(boxes, size_range: Tuple[float, float]):
    """``[...]`` bool: ``lo <= height < hi``. ``hi <= 0`` means no upper bound."""
    lo, hi = float(size_range[0]), float(size_range[1])
    s = face_sizes(boxes)
    ok = s >= lo
    return ok & (s < hi) if hi > 0 else ok


def assign_boxes(
    boxes,
    gt_boxes,
    gt_valid,
    *,
    gt_in_range=None,
    gt_ignore=None,
    box_valid=None,
    pos_iou: float,
    neg_iou: float,
    out_of_range_iou: Optional[float] = None,
    ignore_ioa: float = 0.5,
    match_low_quality: bool = False,
) -> Assignment:
    """Labels anchors or RoIs against one image's faces (see the module docstring).

    Rules, for box ``n`` with ``t = max IoU`` over the target faces:

    * positive: ``t >= pos_iou``; with ``match_low_quality`` also every box that
      has the highest IoU (> 0) with some target face (Faster R-CNN's RPN rule, so
      every face gets at least one anchor);
    * negative: not positive, ``t < neg_iou``, IoU with every out-of-range face
      ``< out_of_range_iou`` (default ``neg_iou``) and IoA with every ignore region
      ``< ignore_ioa``;
    * ignored otherwise, and wherever ``box_valid`` is False.

    Args:
      boxes: ``[N, 4]`` anchors or RoIs (corner boxes).
      gt_boxes: ``[G, 4]`` faces, padded.
      gt_valid: ``[G]`` bool, real (non-padding) faces.
      gt_in_range: ``[G]`` bool, faces inside this branch's size range (default all).
      gt_ignore: ``[G]`` bool, faces that are ignore regions (default none).
      box_valid: ``[N]`` bool (default all).
      pos_iou, neg_iou: the IoU thresholds.
      out_of_range_iou: IoU with an out-of-range face from which a box is ignored.
      ignore_ioa: IoA with an ignore region from which a box is ignored.
      match_low_quality: add each target face's best boxes to the positives.
    Returns:
      `Assignment`.
    """
    g = gt_boxes.shape[0]
    gt_valid = jnp.asarray(gt_valid, bool)
    gt_in_range = jnp.ones((g,), bool) if gt_in_range is None else jnp.asarray(gt_in_range, bool)
    gt_ignore = jnp.zeros((g,), bool) if gt_ignore is None else jnp.asarray(gt_ignore, bool)
    target = gt_valid & gt_in_range & ~gt_ignore
    out_of_range = gt_valid & ~gt_in_range & ~gt_ignore
    ignore = gt_valid & gt_ignore
    oor_thr = neg_iou if out_of_range_iou is None else out_of_range_iou

    iou = iou_matrix(boxes, gt_boxes)  # [N, G]
    iou_t = jnp.where(target[None, :], iou, -1.0)
    matched = jnp.argmax(iou_t, axis=1).astype(jnp.int32)
    max_t = jnp.max(iou_t, axis=1)
    pos = max_t >= pos_iou
    if match_low_quality:
        best_per_gt = jnp.max(iou_t, axis=0)  # [G]
        is_best = (iou_t == best_per_gt[None, :]) & (best_per_gt[None, :] > 0) & target[None, :]
        pos = pos | jnp.any(is_best, axis=1)
    max_oor = jnp.max(jnp.where(out_of_range[None, :], iou, 0.0), axis=1)
    max_ioa = jnp.max(jnp.where(ignore[None, :], ioa_matrix(boxes, gt_boxes), 0.0), axis=1)
    neg = ~pos & (max_t < neg_iou) & (max_oor < oor_thr) & (max_ioa < ignore_ioa)
    labels = jnp.where(pos, 1, jnp.where(neg, 0, -1)).astype(jnp.int32)
    if box_valid is not None:
        labels = jnp.where(jnp.asarray(box_valid, bool), labels, -1)
    has_target = jnp.any(target)
    return Assignment(
        labels=labels,
        matched=jnp.where(has_target, matched, 0),
        max_iou=jnp.maximum(jnp.where(has_target, max_t, 0.0), 0.0),
    )


def rpn_targets(
    anchors,
    gt_boxes,
    gt_valid,
    *,
    gt_in_range=None,
    gt_ignore=None,
    pos_iou: float = 0.7,
    neg_iou: float = 0.3,
    out_of_range_iou: Optional[float] = None,
    ignore_ioa: float = 0.5,
    box_weights: Sequence[float] = RPN_BOX_WEIGHTS,
):
    """RPN labels and box-regression targets of one image's anchors.

    Returns:
      ``(labels [N] int32, deltas [N, 4])``; deltas are zero where ``labels != 1``.
    """
    a = assign_boxes(
        anchors,
        gt_boxes,
        gt_valid,
        gt_in_range=gt_in_range,
        gt_ignore=gt_ignore,
        pos_iou=pos_iou,
        neg_iou=neg_iou,
        out_of_range_iou=out_of_range_iou,
        ignore_ioa=ignore_ioa,
        match_low_quality=True,
    )
    deltas = _safe_encode(gt_boxes[a.matched], anchors, a.labels == 1, box_weights)
    return a.labels, deltas


def roi_targets(
    rois,
    roi_valid,
    gt_boxes,
    gt_valid,
    *,
    gt_in_range=None,
    gt_ignore=None,
    gt_landmarks=None,
    gt_landmarks_valid=None,
    fg_iou: float = 0.5,
    bg_iou: float = 0.5,
    out_of_range_iou: Optional[float] = 0.5,
    ignore_ioa: float = 0.5,
    box_weights: Sequence[float] = RCNN_BOX_WEIGHTS,
):
    """Fast R-CNN targets of one image's RoIs.

    Foreground: IoU ``>= fg_iou`` with a target face; background: ``< bg_iou`` with
    every target face and not ignored by an out-of-range face (IoU ``>=
    out_of_range_iou``) or an ignore region (IoA ``>= ignore_ioa``).

    Args:
      rois: ``[R, 4]``; roi_valid: ``[R]`` bool.
      gt_*: as in `assign_boxes`; ``gt_landmarks`` ``[G, L, 2]`` pixels and
        ``gt_landmarks_valid`` ``[G]`` bool are optional.
    Returns:
      dict with ``labels`` ``[R]`` int32 (1/0/-1), ``deltas`` ``[R, 4]``, ``matched``
      ``[R]``, ``max_iou`` ``[R]`` and, with landmarks, ``landmarks`` ``[R, L, 2]``
      (`encode_landmarks` offsets) and ``landmarks_valid`` ``[R]`` bool.
    """
    a = assign_boxes(
        rois,
        gt_boxes,
        gt_valid,
        gt_in_range=gt_in_range,
        gt_ignore=gt_ignore,
        box_valid=roi_valid,
        pos_iou=fg_iou,
        neg_iou=bg_iou,
        out_of_range_iou=out_of_range_iou,
        ignore_ioa=ignore_ioa,
        match_low_quality=False,
    )
    pos = a.labels == 1
    out = {
        "labels": a.labels,
        "matched": a.matched,
        "max_iou": a.max_iou,
        "deltas": _safe_encode(gt_boxes[a.matched], rois, pos, box_weights),
    }
    if gt_landmarks is not None:
        lm_valid = (
            pos
            if gt_landmarks_valid is None
            else pos & jnp.asarray(gt_landmarks_valid, bool)[a.matched]
        )
        safe_rois = jnp.where(pos[:, None], rois, jnp.array([0.0, 0.0, 1.0, 1.0], rois.dtype))
        lm = encode_landmarks(gt_landmarks[a.matched], safe_rois)
        out["landmarks"] = jnp.where(lm_valid[:, None, None], lm, 0.0)
        out["landmarks_valid"] = lm_valid
    return out


def _safe_encode(boxes, refs, where, weights):
    """`encode_boxes` that is finite everywhere (dummy unit boxes where not ``where``)."""
    unit = jnp.array([0.0, 0.0, 1.0, 1.0], refs.dtype)
    ok = (
        where
        & (boxes[:, 2] > boxes[:, 0])
        & (boxes[:, 3] > boxes[:, 1])
        & (refs[:, 2] > refs[:, 0])
        & (refs[:, 3] > refs[:, 1])
    )
    d = encode_boxes(
        jnp.where(ok[:, None], boxes, unit), jnp.where(ok[:, None], refs, unit), weights=weights
    )
    return jnp.where(ok[:, None], d, 0.0)


def _ranks(key):
    """Rank of each entry along the last axis in descending ``key`` order (stable:
    equal keys rank by position)."""
    order = jnp.argsort(-key, axis=-1, stable=True)
    return jnp.argsort(order, axis=-1)


def sample_balanced(labels, rng, *, num_samples: int, positive_fraction: float = 0.5):
    """Fixed-size random minibatch of boxes (Faster R-CNN sampling), one image.

    At most ``floor(num_samples * positive_fraction)`` positives, drawn uniformly;
    negatives fill the rest of ``num_samples`` (fewer if there are not enough).

    Args:
      labels: ``[N]`` int (1/0/-1).
      rng: a PRNG key.
    Returns:
      ``(positive_mask [N] bool, negative_mask [N] bool)``.
    """
    u = jax.random.uniform(rng, labels.shape)
    pos, neg = labels == 1, labels == 0
    num_pos = jnp.minimum(jnp.sum(pos), int(num_samples * positive_fraction))
    num_neg = num_samples - num_pos
    pos_sel = pos & (_ranks(jnp.where(pos, u, -1.0)) < num_pos)
    neg_sel = neg & (_ranks(jnp.where(neg, u, -1.0)) < num_neg)
    return pos_sel, neg_sel


def ohem_select(
    losses,
    candidates,
    num_keep: int,
    *,
    boxes=None,
    nms_iou: Optional[float] = None,
):
    """Online hard example mining (Shrivastava et al. 2016): keep the ``num_keep``
    highest-loss candidates of each row.

    Selection is on ``stop_gradient(losses)``; ties keep the lower index (a stable
    sort). Rows with fewer candidates keep all of them.

    With ``nms_iou`` (OHEM's own step; the paper uses 0.7), overlapping RoIs first go
    through greedy NMS ranked by loss (`jaxface.ops.nms.batched_nms`: a RoI is dropped when
    its IoU with a kept, higher-loss RoI is > ``nms_iou``), so one hard region cannot fill
    the budget with near-duplicates; the ``num_keep`` highest-loss survivors are kept.
    ``None`` or ``<= 0``: no NMS. Shapes stay static either way (jit-able).

    Args:
      losses: ``[..., N]`` per-box loss (classification + regression).
      candidates: ``[..., N]`` bool, the boxes eligible (labelled, not ignored).
      num_keep: static number to keep per row.
      boxes: ``[..., N, 4]`` corner boxes of the RoIs (needed with ``nms_iou``).
      nms_iou: static IoU threshold of the NMS over the RoIs, or None.
    Returns:
      ``[..., N]`` bool mask of the kept boxes.
    """
    if nms_iou is not None and float(nms_iou) > 0:
        if boxes is None:
            raise ValueError("ohem_select: nms_iou needs the RoI boxes")
        n = losses.shape[-1]
        if boxes.shape != (*losses.shape, 4):
            raise ValueError(f"ohem_select: boxes {boxes.shape} for losses {losses.shape}")
        rows = int(math.prod(losses.shape[:-1]))
        kept = batched_nms(
            jax.lax.stop_gradient(boxes).reshape(rows, n, 4),
            jax.lax.stop_gradient(losses).reshape(rows, n),
            iou_threshold=float(nms_iou),
            max_output=int(num_keep),
            valid=jnp.asarray(candidates, bool).reshape(rows, n),
        )
        # Scatter the kept indices back to a mask (invalid slots land out of range, dropped).
        slot = jnp.where(kept.valid, kept.indices, n)
        mask = jnp.zeros((rows, n), bool).at[jnp.arange(rows)[:, None], slot].set(True, mode="drop")
        return mask.reshape(losses.shape)
    key = jnp.where(candidates, jax.lax.stop_gradient(losses), -jnp.inf)
    return candidates & (_ranks(key) < num_keep)
