"""The official WIDER FACE eval_tools' arithmetic (``norm_score.m``, ``evaluation.m``,
``boxoverlap.m``, ``VOCap``), vectorised: score normalisation, the matching of
detections to faces, the per-threshold counts and the AP.

Vectorisation: all detections of all images are flattened. ``image_evaluation``'s
matching only needs, per detection, ``idx`` and whether ``m >= 0.5``: that does not
depend on the difficulty setting, so it is computed once for the three settings.
Candidate (detection, face) pairs come from a per-image sort of the faces by ``x1`` and
two ``searchsorted`` calls: a face can reach overlap >= 0.5 only if its ``x1`` lies in
``[x1_d - 2 W_d - 1, x2_d + 1]`` (``W`` are +1 widths, detection corners as they meet
the ground truth). Proof: overlap >= 0.5 needs ``3 * inter >= area_face`` (the
rounded union is at least the face area), so ``inter_w >= W_face / 3`` and
``W_face <= 3 * inter_w <= 3 W_d``; a face starting left of the detection overlaps
it by at most ``x1_face + W_face - x1_d``, so ``x1_face >= x1_d - 2 W_face / 3 >=
x1_d - 2 W_d``. The pruning is therefore exact, not a heuristic. "First detection to
reach a face" is a ``np.unique`` on the matched pairs, and the per-threshold sums are
one ``bincount`` over each detection's first passing threshold. Each setting then
costs a few vector ops.

`normalize_scores` also holds the Python port's normalisation (``semantics=
"python-port"``); the port's matching and AP are in `jaxface.evaluation.widerface_port`,
which shares `_first_matches` and `_count_setting` with this module.
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

import numpy as np

from jaxface.data.widerface import WiderFaceAnnotations
from jaxface.data.widerface_eval_files import Predictions
from jaxface.ops.boxes import (
    intersection_wh,
    iou,
    matlab_int32_boxoverlap,
    matlab_round,
    xywh_to_xyxy,
)

__all__ = [
    "SEMANTICS",
    "SettingResult",
    "normalize_scores",
    "match_detections",
    "voc_ap",
]

SEMANTICS: Tuple[str, ...] = ("official", "python-port")
_F32_REALMIN = float(np.finfo(np.float32).tiny)  # realmin('single')
_F32_REALMAX = float(np.finfo(np.float32).max)  # realmax('single')


def normalize_scores(scores: np.ndarray, *, semantics: str = "official") -> np.ndarray:
    """Normalised scores ``(s - min) / (max - min)`` of every detection of the run.

    ``"official"`` (``norm_score.m``): MATLAB single precision. ``min``/``max`` start
    as ``realmax``/``realmin('single')``, so they are single; MATLAB casts the double
    operand of a mixed single/double operation to single and computes in single,
    which float32 NumPy arithmetic reproduces.

    ``"python-port"`` (``norm_score`` of the Python port): float64, with ``max``
    starting at 0 and ``min`` at 1, so the range is ``[min(min(s), 1), max(max(s), 0)]``
    (logits above 1 are normalised from 1, not from their minimum).

    Args:
      scores: ``[D]`` raw scores (float64) of every detection of the run.
      semantics: ``"official"`` or ``"python-port"``.
    Returns:
      ``[D]`` float64 normalised scores (NaN when ``max == min``, as both tools do).
    """
    _check_semantics(semantics)
    s = np.asarray(scores, np.float64)
    if s.size == 0:
        return s.copy()
    if semantics == "python-port":
        hi = max(float(s.max()), 0.0)
        lo = min(float(s.min()), 1.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (s - lo) / np.float64(hi - lo)
    hi = np.float32(max(_F32_REALMIN, float(s.max())))
    lo = np.float32(min(_F32_REALMAX, float(s.min())))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        out = (s.astype(np.float32) - lo) / (hi - lo)
    return out.astype(np.float64)


def _check_semantics(semantics: str) -> None:
    if semantics not in SEMANTICS:
        raise ValueError(f"semantics must be one of {SEMANTICS}, got {semantics!r}")


@dataclasses.dataclass(frozen=True)
class _Matches:
    matched: np.ndarray  # [D] bool: max overlap >= threshold
    face: np.ndarray  # [D] int64 global face index of the arg-max (-1 if unmatched)
    first: np.ndarray  # [D] bool: matched and the first detection (in order) to match its face


def _no_matches(gt, preds) -> "_Matches":
    """Matches with no detection matched (checks that both cover the same images)."""
    if preds.num_images != gt.num_images:
        raise ValueError(
            f"predictions cover {preds.num_images} images, ground truth {gt.num_images}"
        )
    n_det = preds.num_detections
    return _Matches(np.zeros(n_det, bool), np.full(n_det, -1, np.int64), np.zeros(n_det, bool))


def match_detections(
    gt: WiderFaceAnnotations, preds: Predictions, *, iou_threshold: float = 0.5
) -> _Matches:
    """Setting-independent part of ``image_evaluation``: per detection, the official
    ``[m, idx] = max(boxoverlap(gt, det))`` and whether ``m >= iou_threshold``.

    Exact for any input (the candidate pruning is a proof, not a heuristic); see the
    module docstring. Integer ground truth uses MATLAB int32 arithmetic, float
    ground truth uses double IoU.
    """
    none = _no_matches(gt, preds)
    n_det = preds.num_detections
    if n_det == 0 or gt.num_faces == 0:
        return none
    integer_gt = gt.boxes.dtype.kind in "iu"
    if integer_gt and gt.boxes.dtype != np.int32:
        raise ValueError(
            f"{gt.source}: integer boxes must be int32 (MATLAB class emulated), got {gt.boxes.dtype}"
        )
    # Ground-truth corners [x, y, x + w, y + h] (int32 add saturates in MATLAB).
    g = gt.boxes.astype(np.float64)
    a = xywh_to_xyxy(g, xp=np)
    if integer_gt:
        a = np.clip(a, -(2.0**31), 2.0**31 - 1)
    # Detection corners in double, as the tool computes them.
    b = xywh_to_xyxy(preds.boxes, xp=np)
    b_area = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    bq = matlab_round(b, xp=np) if integer_gt else b  # corners as they meet the ground truth

    # Candidate faces per detection: same image, x1 in [x1_d - 2 W_d - 1, x2_d + 1].
    face_img = gt.image_index
    det_img = preds.image_index
    shift, big = 2.0**31, 2.0**33
    order = np.lexsort((a[:, 0], face_img))
    keys = face_img[order] * big + (a[order, 0] + shift)
    w_d = bq[:, 2] - bq[:, 0] + 1
    lo = np.clip(bq[:, 0] - 2 * w_d - 1, -shift, shift)
    hi = np.clip(bq[:, 2] + 1, -shift, shift)
    start = np.searchsorted(keys, det_img * big + lo + shift, side="left")
    end = np.searchsorted(keys, det_img * big + hi + shift, side="right")
    counts = np.where(w_d > 0, np.maximum(end - start, 0), 0)
    total = int(counts.sum())
    if total == 0:
        return none
    di = np.repeat(np.arange(n_det), counts)
    seg_start = np.cumsum(counts) - counts
    gs = np.arange(total) - np.repeat(seg_start - start, counts)  # positions in the sorted faces
    # Cheap necessary condition on 1-D columns first: the +1 intersection height
    # must be positive (otherwise boxoverlap sets the overlap to 0).
    ay1, ay2 = a[order, 1], a[order, 3]
    ih = np.minimum(ay2[gs], bq[di, 3]) - np.maximum(ay1[gs], bq[di, 1]) + 1
    ok = ih > 0
    di, gi = di[ok], order[gs[ok]]
    # Then the full intersection through the shared box op.
    iw, ih = intersection_wh(a[gi], bq[di], plus_one=True, xp=np)
    keep = (iw > 0) & (ih > 0)
    di, gi = di[keep], gi[keep]
    if integer_gt:
        o = matlab_int32_boxoverlap(a[gi], bq[di], b_area=b_area[di], xp=np)
    else:
        o = iou(a[gi], b[di], plus_one=True, xp=np)
    hit = o >= iou_threshold
    di, gi, o = di[hit], gi[hit], o[hit]
    if di.size == 0:
        return none
    # Arg-max per detection (largest overlap, then the first face in file order) and
    # the first detection (image-major, score-sorted) to match each face.
    return _first_matches(n_det, di, gi, o)


def _first_matches(n_det: int, di: np.ndarray, gi: np.ndarray, o: np.ndarray) -> _Matches:
    """Arg-max per detection over candidate pairs ``(di, gi, o)`` that passed the
    threshold (largest overlap, then the first face in file order), and the first
    detection (in the stored order) to reach each face."""
    srt = np.lexsort((gi, -o, di))
    di, gi = di[srt], gi[srt]
    head = np.ones(di.size, bool)
    head[1:] = di[1:] != di[:-1]
    d_m, g_m = di[head], gi[head]  # d_m ascending
    matched = np.zeros(n_det, bool)
    matched[d_m] = True
    face = np.full(n_det, -1, np.int64)
    face[d_m] = g_m
    _, first_pos = np.unique(g_m, return_index=True)
    first = np.zeros(n_det, bool)
    first[d_m[first_pos]] = True
    return _Matches(matched, face, first)


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """``VOCap(rec, prec)`` of the WIDER plot code (NaN precisions handled like MATLAB ``max``)."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.fmax.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))


@dataclasses.dataclass(frozen=True)
class SettingResult:
    """One difficulty setting.

    Attributes (``T`` thresholds):
      ap: average precision.
      thresholds: ``[T]`` ``1 - t/T``.
      precision, recall: ``[T]`` (precision NaN where nothing passes, as MATLAB).
      tp, proposals: ``[T]`` int64 sums of TPs and of non-dropped detections.
      num_faces: ``count_face``, the number of kept faces.
    """

    ap: float
    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    tp: np.ndarray
    proposals: np.ndarray
    num_faces: int


def _first_threshold(norm: np.ndarray, num_thresholds: int) -> np.ndarray:
    """Per detection the smallest ``t`` with ``s' >= 1 - t/T`` (``T + 1`` if none)."""
    tau = 1.0 - np.arange(1, num_thresholds + 1) / num_thresholds  # descending, as MATLAB
    k = np.searchsorted(tau[::-1], norm, side="right")  # number of tau <= s'
    k = np.where(np.isnan(norm), 0, k)
    return num_thresholds + 1 - k


def _score_sorted(preds: Predictions) -> Predictions:
    """``preds`` with each image sorted by descending score (stable), as ``read_pred.m``."""
    img = preds.image_index
    order = np.lexsort((-preds.scores, img))
    if np.array_equal(order, np.arange(order.size)):
        return preds
    return Predictions(offsets=preds.offsets, boxes=preds.boxes[order], scores=preds.scores[order])


def _setting_result(tp, prop, count_face, tau, ap_fn) -> SettingResult:
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / prop
        recall = tp / count_face if count_face else np.full(tp.shape, np.nan)
    return SettingResult(
        ap=ap_fn(recall, precision),
        thresholds=tau,
        precision=precision,
        recall=recall,
        tp=tp.astype(np.int64),
        proposals=prop.astype(np.int64),
        num_faces=count_face,
    )


def _count_setting(ann, m, evaluated, t_count, num_thresholds, tau, ap_fn) -> SettingResult:
    """One setting's PR curve from the matches ``m``: a kept face's first matching
    detection is a TP, a detection matching an ignored face is dropped, and detection
    ``k`` counts from threshold index ``t_count[k]`` on (only on ``evaluated`` images)."""
    kept_face = np.zeros(m.face.shape, bool)
    kept_face[m.matched] = ann.keep[m.face[m.matched]]
    dropped = m.matched & ~kept_face
    tp_mask = m.first & kept_face & evaluated
    prop_mask = evaluated & ~dropped
    nb = num_thresholds + 2
    tp = np.cumsum(np.bincount(t_count[tp_mask], minlength=nb))[1 : num_thresholds + 1]
    prop = np.cumsum(np.bincount(t_count[prop_mask], minlength=nb))[1 : num_thresholds + 1]
    count_face = int(ann.keep_list_lengths.sum())
    return _setting_result(tp, prop, count_face, tau, ap_fn)
