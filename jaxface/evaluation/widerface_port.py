"""The WIDER FACE evaluation as the Python port computes it
(wondervictor/WiderFace-Evaluation, ``evaluation.py`` at commit 53474e0), vectorised:
``evaluate(..., semantics="python-port")`` of `jaxface.evaluation.widerface`.

The port is behind most published WIDER numbers; it differs from the official
MATLAB tool in the detection order (file order), the score normalisation (float64
from max 0 / min 1, `jaxface.evaluation.widerface_official.normalize_scores`), the IoU
(float, with the best face) and its prefix counting per threshold and ``voc_ap``
(see docs/widerface_semantics.md).
"""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

from jaxface.data.widerface import WiderFaceAnnotations
from jaxface.data.widerface_eval_files import Predictions, WiderGroundTruth
from jaxface.evaluation.widerface_official import (
    SettingResult,
    _count_setting,
    _first_matches,
    _first_threshold,
    _Matches,
    _no_matches,
    normalize_scores,
)

__all__ = ["match_detections_python_port", "voc_ap_python_port"]


def match_detections_python_port(
    gt: WiderFaceAnnotations, preds: Predictions, *, iou_threshold: float = 0.5
) -> _Matches:
    """``image_eval`` of the Python port: per detection (in the stored order) the
    float64 ``bbox_overlaps`` with every face of its image ("+1 pixel" convention,
    ground truth cast to float64), ``max``/``argmax`` (the *best* face, the first
    one on ties) and whether ``max >= iou_threshold``.

    The overlap is computed with the port's operation order (``ua = area_d +
    area_g - iw * ih``, ``iw * ih / ua``), so it is bit-identical to its Cython
    ``bbox_overlaps``. Candidate faces per detection are those of its image with
    ``x1`` in ``[x1_d - W_d / t - 1, x2_d + 1]`` (``t = iou_threshold``, ``W`` the
    +1 widths): ``iou >= t`` needs ``iw >= t W_face`` and ``iw <= W_d``, so
    ``W_face <= W_d / t``, and a face starting left of the detection overlaps it
    by at most ``x1_face + W_face - x1_d``, so ``x1_face >= x1_d - (1 - t) W_d / t``;
    the extra ``W_d + 1`` margin absorbs rounding. The window is searched on integer
    ranks of the faces' ``x1``, so the pruning is exact.
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    none = _no_matches(gt, preds)
    n_det = preds.num_detections
    if n_det == 0 or gt.num_faces == 0:
        return none
    g = gt.boxes.astype(np.float64)  # ``gt_boxes.astype('float')``
    a = np.stack([g[:, 0], g[:, 1], g[:, 2] + g[:, 0], g[:, 3] + g[:, 1]], axis=1)
    p = preds.boxes
    b = np.stack([p[:, 0], p[:, 1], p[:, 2] + p[:, 0], p[:, 3] + p[:, 1]], axis=1)
    face_img = gt.image_index
    det_img = preds.image_index
    w_d = b[:, 2] - b[:, 0] + 1  # a detection with w_d <= 0 has iw <= w_d <= 0 with every face
    lo = b[:, 0] - (w_d / iou_threshold + w_d + 1)
    hi = b[:, 2] + 1
    ux = np.unique(a[:, 0])
    m = ux.size + 1
    rank = np.searchsorted(ux, a[:, 0])
    order = np.lexsort((a[:, 0], face_img))
    keys = face_img[order] * m + rank[order]
    start = np.searchsorted(keys, det_img * m + np.searchsorted(ux, lo, side="left"), side="left")
    end = np.searchsorted(keys, det_img * m + np.searchsorted(ux, hi, side="right"), side="left")
    counts = np.where(w_d > 0, np.maximum(end - start, 0), 0)
    total = int(counts.sum())
    if total == 0:
        return none
    di = np.repeat(np.arange(n_det), counts)
    seg_start = np.cumsum(counts) - counts
    gi = order[np.arange(total) - np.repeat(seg_start - start, counts)]
    # bbox_overlaps(_pred, _gt)[di, gi], in the Cython expression order.
    ag, bd = a[gi], b[di]
    iw = np.minimum(bd[:, 2], ag[:, 2]) - np.maximum(bd[:, 0], ag[:, 0]) + 1
    ih = np.minimum(bd[:, 3], ag[:, 3]) - np.maximum(bd[:, 1], ag[:, 1]) + 1
    ok = (iw > 0) & (ih > 0)
    di, gi, ag, bd, iw, ih = di[ok], gi[ok], ag[ok], bd[ok], iw[ok], ih[ok]
    box_area = (ag[:, 2] - ag[:, 0] + 1) * (ag[:, 3] - ag[:, 1] + 1)
    ua = (bd[:, 2] - bd[:, 0] + 1) * (bd[:, 3] - bd[:, 1] + 1) + box_area - iw * ih
    o = iw * ih / ua
    hit = o >= iou_threshold
    if not hit.any():
        return none
    return _first_matches(n_det, di[hit], gi[hit], o[hit])


def voc_ap_python_port(recall: np.ndarray, precision: np.ndarray) -> float:
    """The Python port's ``voc_ap``: like `voc_ap`, but the precision envelope uses
    ``np.maximum``, which propagates NaN (only to points where recall is still 0,
    so the AP is the same unless a recall is NaN)."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _evaluate_python_port(
    gt: WiderGroundTruth,
    preds: Predictions,
    settings: Sequence[str],
    iou_threshold: float,
    num_thresholds: int,
) -> Dict[str, SettingResult]:
    """``evaluation()`` of wondervictor/WiderFace-Evaluation (``evaluation.py`` at
    commit 53474e0), vectorised.

    The port's steps and their vector form:
      * ``norm_score``: float64, ``max`` from 0 and ``min`` from 1 (`normalize_scores`).
      * ``image_eval``: boxes of ``wider_face_val.mat`` for every setting, detections
        in file order (not sorted), float IoU with the best face
        (`match_detections_python_port`); a kept face's first matching detection is a
        TP, a detection matching an ignored face is dropped.
      * ``img_pr_info``: at threshold ``tau_t`` it takes the *last* detection ``r``
        (in file order) with ``s' >= tau_t`` and counts the non-dropped detections
        and the TPs among ``0..r``, whatever their scores. So detection ``k`` counts
        from the first threshold that any detection at or after ``k`` passes: the
        suffix minimum of the per-detection first thresholds. With score-sorted
        files this is the official per-detection count.
      * images with no ground-truth box or no detection are skipped; ``count_face``
        sums the ``gt_list`` lengths; ``voc_ap`` as `voc_ap_python_port`.
    """
    face = gt.face
    tau = 1.0 - np.arange(1, num_thresholds + 1) / num_thresholds
    norm = normalize_scores(preds.scores, semantics="python-port")
    t_first = _first_threshold(norm, num_thresholds)
    det_img = preds.image_index
    # Per-image suffix minimum: offsetting image i by i * (T + 2) makes every later
    # image's values larger than this image's, so one reversed running minimum
    # restarts at each image boundary.
    off = det_img * (num_thresholds + 2)
    incl = np.minimum.accumulate((t_first + off)[::-1])[::-1] - off
    m = match_detections_python_port(face, preds, iou_threshold=iou_threshold)
    evaluated = face.faces_per_image[det_img] > 0
    out = {}
    for s in settings:
        ann = gt.settings[s]
        if not np.array_equal(ann.face_offsets, face.face_offsets):
            raise ValueError(
                f"{ann.source}: face lists differ in length from {face.source}; the port "
                "indexes the face boxes of wider_face_val.mat with the setting's gt_list"
            )
        out[s] = _count_setting(ann, m, evaluated, incl, num_thresholds, tau, voc_ap_python_port)
    return out
