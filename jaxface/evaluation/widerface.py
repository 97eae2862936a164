"""The WIDER FACE evaluation, exactly as the official MATLAB eval_tools compute it, vectorised.

Official tool (``wider_eval.m`` -> ``read_pred.m``, ``norm_score.m``,
``evaluation.m``, ``boxoverlap.m``, ``VOCap``), step by step, and how it is done here:

1. ``read_pred``: for each image of ``wider_face_val.mat`` read
   ``<pred>/<event>/<image>.txt`` (image name, count ``N``, ``N`` lines
   ``x y w h score``) and sort it by descending score (stable). A missing file means
   no detections. Here: same, but a malformed file is an error naming the file and
   line (the official tool prints "Invalid format" and silently drops the image).
2. ``norm_score``: ``s' = (s - min) / (max - min)`` over every detection of the run.
   MATLAB starts from ``max = realmin('single')``, ``min = realmax('single')``, so
   both bounds are *single precision* (and ``max`` is at least 1.18e-38), and the
   normalised score is computed in single precision; it is then stored back into a
   double matrix. Reproduced with float32 arithmetic. If all scores are equal the
   result is 0/0 = NaN and no detection passes any threshold (official behaviour).
3. ``image_evaluation``: corners ``[x, y, x + w, y + h]``; for each detection in score
   order the "overlap" with every face via ``boxoverlap`` ("+1 pixel" convention)
   and ``[m, idx] = max(overlap)``. The ground truth is ``int32`` in the .mat files,
   so MATLAB evaluates ``boxoverlap`` in integer arithmetic: the overlap is the IoU
   rounded to the nearest integer (0 or 1) and ``idx`` is the *first* face (in file
   order) with IoU >= 0.5, not the best one; detection corners are rounded where
   they meet the ground truth and the union is rounded. Reproduced exactly by
   `jaxface.ops.boxes.matlab_int32_boxoverlap` (with float ground truth, plain
   float IoU and first arg-max are used, again as MATLAB would).
4. If ``m >= 0.5``: an *ignored* face (not in the setting's ``gt_list``) makes the
   detection "dropped" (neither TP nor FP); a kept face not yet matched makes it a
   TP; otherwise (already matched, or ``m < 0.5``) it is a FP.
5. ``image_pr_info``: thresholds ``tau_t = 1 - t/1000``, ``t = 1..1000``; per image
   the number of non-dropped detections and of TPs among those with ``s' >= tau``.
   Images with no detections or no ground-truth box are skipped (their detections
   are not counted at all) but their kept faces still count in ``count_face``
   (``sum length(gt_list{j})``).
6. precision ``= sum TP / sum non-dropped`` (0/0 = NaN kept, as MATLAB),
   recall ``= sum TP / count_face``.
7. ``VOCap``: ``mrec = [0; rec; 1]``, ``mpre = [0; prec; 0]``, precision made
   non-increasing from the right with NaN-ignoring ``max``, ``AP = sum (mrec(i) -
   mrec(i-1)) * mpre(i)`` over the points where recall changes.

Vectorisation: all detections of all images are flattened. Steps 3-4 only need,
per detection, ``idx`` and whether ``m >= 0.5``: that does not depend on the
difficulty setting, so it is computed once for the three settings. Candidate
(detection, face) pairs come from a per-image sort of the faces by ``x1`` and two
``searchsorted`` calls: a face can reach overlap >= 0.5 only if its ``x1`` lies in
``[x1_d - 2 W_d - 1, x2_d + 1]`` (``W`` are +1 widths, detection corners as they meet
the ground truth). Proof: overlap >= 0.5 needs ``3 * inter >= area_face`` (the
rounded union is at least the face area), so ``inter_w >= W_face / 3`` and
``W_face <= 3 * inter_w <= 3 W_d``; a face starting left of the detection overlaps
it by at most ``x1_face + W_face - x1_d``, so ``x1_face >= x1_d - 2 W_face / 3 >=
x1_d - 2 W_d``. The pruning is therefore exact, not a heuristic. "First detection to reach a face" is a ``np.unique`` on the
matched pairs, and the per-threshold sums are one ``bincount`` over each
detection's first passing threshold. Each setting then costs a few vector ops.

``semantics="python-port"`` instead reproduces the Python port
(wondervictor/WiderFace-Evaluation, ``evaluation.py`` at commit 53474e0) behind most
published numbers: detections in file order, float64 normalisation from max 0 / min 1,
float IoU with the best face, its prefix counting per threshold and its ``voc_ap``
(see `_evaluate_python_port` and docs/widerface_semantics.md).

Detection-file rules (documented choices where the official tool is undefined):
  * non-finite values (NaN/inf) in any column -> `PredictionFormatError` (file, line);
    MATLAB would let one ``inf`` score turn every normalised score into NaN.
  * negative widths/heights are kept and go through the official arithmetic
    unchanged: such a box is in practice a false positive (only a width or height
    in (-1, 0) can still meet a tiny face after MATLAB's corner rounding).
  * columns are separated by whitespace or commas; exactly 5 per line; the count
    line must be a non-negative integer; blank lines may only follow the last box.
  * the first line (image name) is not checked, like the official tool.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import sys
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from jaxface.data.widerface import (
    WiderFaceAnnotations,
    read_mat,
    resolve_in_root,
)
from jaxface.ops.boxes import (
    intersection_wh,
    iou,
    matlab_int32_boxoverlap,
    matlab_round,
    xywh_to_xyxy,
)

__all__ = [
    "SETTINGS",
    "SEMANTICS",
    "PredictionFormatError",
    "Predictions",
    "WiderGroundTruth",
    "SettingResult",
    "read_prediction_file",
    "read_predictions",
    "write_prediction_file",
    "write_predictions",
    "load_ground_truth",
    "normalize_scores",
    "match_detections",
    "match_detections_python_port",
    "evaluate",
    "voc_ap",
    "voc_ap_python_port",
    "save_results",
    "matched_prediction_files",
    "main",
]

PathLike = Union[str, os.PathLike]
SETTINGS: Tuple[str, ...] = ("easy", "medium", "hard")
SEMANTICS: Tuple[str, ...] = ("official", "python-port")
_F32_REALMIN = float(np.finfo(np.float32).tiny)  # realmin('single')
_F32_REALMAX = float(np.finfo(np.float32).max)  # realmax('single')


class PredictionFormatError(ValueError):
    """A prediction file is malformed (the message names the file and line)."""


# ---------------------------------------------------------------------------
# Predictions: flat container, reading and writing the standard folder.
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Predictions:
    """Detections of every image of a ground-truth list, flat.

    Attributes (``I`` images in ground-truth order, ``D`` detections):
      offsets: ``[I + 1]`` int64; image ``i`` owns detections ``offsets[i]:offsets[i+1]``.
      boxes: ``[D, 4]`` float64 ``x y w h``.
      scores: ``[D]`` float64 raw scores.
    Within an image detections are sorted by descending score (stable), as
    ``read_pred.m`` does (`from_lists` sorts by default), or kept in file order
    (``sort=False``) for ``semantics="python-port"``; the official evaluation sorts
    them itself, so either order gives the official result.
    """

    offsets: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray

    @property
    def num_images(self) -> int:
        return int(self.offsets.shape[0] - 1)

    @property
    def num_detections(self) -> int:
        return int(self.scores.shape[0])

    @property
    def image_index(self) -> np.ndarray:
        """``[D]`` int64 image of each detection."""
        return np.repeat(np.arange(self.num_images), np.diff(self.offsets))

    @classmethod
    def from_lists(
        cls, per_image: Sequence[Optional[Tuple[np.ndarray, np.ndarray]]], *, sort: bool = True
    ) -> "Predictions":
        """Builds from ``[(boxes [n, 4] xywh, scores [n]) or None]`` per image.

        ``sort=True`` sorts each image by descending score (stable), as ``read_pred.m``;
        ``sort=False`` keeps the given (file) order, which ``semantics="python-port"``
        evaluates.
        """
        boxes, scores, counts = [], [], []
        for k, item in enumerate(per_image):
            if item is None:
                counts.append(0)
                continue
            b = np.asarray(item[0], np.float64).reshape(-1, 4)
            s = np.asarray(item[1], np.float64).reshape(-1)
            if b.shape[0] != s.shape[0]:
                raise ValueError(f"image {k}: {b.shape[0]} boxes but {s.shape[0]} scores")
            if not (np.isfinite(b).all() and np.isfinite(s).all()):
                raise ValueError(f"image {k}: non-finite box or score")
            order = np.argsort(-s, kind="stable") if sort else np.arange(s.shape[0])
            boxes.append(b[order])
            scores.append(s[order])
            counts.append(s.shape[0])
        return cls(
            offsets=np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]),
            boxes=np.concatenate(boxes) if boxes else np.zeros((0, 4)),
            scores=np.concatenate(scores) if scores else np.zeros((0,)),
        )


def _parse_count(s: str) -> Optional[int]:
    s = s.strip()
    try:
        return int(s)
    except ValueError:
        pass
    try:
        v = float(s)
    except ValueError:
        return None
    return int(v) if math.isfinite(v) and v.is_integer() else None


def read_prediction_file(path: PathLike) -> Tuple[np.ndarray, np.ndarray]:
    """Reads one ``<event>/<image>.txt`` prediction file.

    Returns:
      ``(boxes [n, 4] float64 x y w h, scores [n] float64)`` in file order.
    Raises:
      PredictionFormatError: naming the file and 1-based line.
    """
    path = os.fspath(path)
    try:
        with open(path, "r", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise PredictionFormatError(f"{path}: not UTF-8 text: {e}") from e
    if len(lines) < 2:
        raise PredictionFormatError(
            f"{path}:{len(lines) + 1}: missing the detection count (line 1: image name, line 2: count)"
        )
    n = _parse_count(lines[1])
    if n is None or n < 0:
        raise PredictionFormatError(
            f"{path}:2: expected the number of detections (a non-negative integer), got {lines[1]!r}"
        )
    body = lines[2 : 2 + n]
    if len(body) < n:
        raise PredictionFormatError(
            f"{path}:{len(lines) + 1}: count says {n} detections but the file has {len(body)} box line(s)"
        )
    for k in range(2 + n, len(lines)):
        if lines[k].strip():
            raise PredictionFormatError(
                f"{path}:{k + 1}: unexpected content after the {n} detections: {lines[k]!r}"
            )
    if n == 0:
        return np.zeros((0, 4)), np.zeros((0,))
    toks = [ln.replace(",", " ").split() for ln in body]
    for k, t in enumerate(toks):
        if len(t) != 5:
            raise PredictionFormatError(
                f"{path}:{k + 3}: expected 5 numbers 'x y w h score', got {body[k]!r}"
            )
    try:
        arr = np.array(toks, dtype=np.float64)
    except ValueError:
        for k, t in enumerate(toks):
            try:
                [float(v) for v in t]
            except ValueError:
                raise PredictionFormatError(
                    f"{path}:{k + 3}: expected 5 numbers 'x y w h score', got {body[k]!r}"
                ) from None
        raise
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        k = int(np.flatnonzero(~finite)[0])
        raise PredictionFormatError(
            f"{path}:{k + 3}: non-finite value (NaN/inf) in 'x y w h score': {body[k]!r}"
        )
    big = np.abs(arr[:, 4]) > _F32_REALMAX
    if big.any():
        k = int(np.flatnonzero(big)[0])
        raise PredictionFormatError(
            f"{path}:{k + 3}: score {body[k].split()[-1]} overflows single precision (the "
            f"official normalisation computes in float32, |score| <= {_F32_REALMAX:.6g})"
        )
    return arr[:, :4], arr[:, 4]


def read_predictions(
    pred_dir: PathLike, gt: WiderFaceAnnotations, *, sort: bool = True
) -> Predictions:
    """Reads ``pred_dir/<event>/<image>.txt`` for every image of ``gt`` (in its order).

    A missing file means the image has no detections (official behaviour); files
    for images not in ``gt`` are ignored. ``sort=False`` keeps each file's order
    (what ``semantics="python-port"`` evaluates).
    """
    per_image: List[Optional[Tuple[np.ndarray, np.ndarray]]] = []
    root = pathlib.Path(pred_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"prediction directory not found: {root}")
    hi = lo = None  # (score, file, line) of the run's largest / smallest score
    for i in range(gt.num_images):
        event = gt.events[int(gt.image_event[i])]
        rel = f"{event}/{gt.image_names[i]}.txt"
        p = root / rel  # names were validated by the ground-truth reader
        if not p.is_file():
            per_image.append(None)
            continue
        boxes, scores = read_prediction_file(p)
        if len(scores):
            k_hi, k_lo = int(np.argmax(scores)), int(np.argmin(scores))
            if hi is None or scores[k_hi] > hi[0]:
                hi = (float(scores[k_hi]), p, k_hi + 3)
            if lo is None or scores[k_lo] < lo[0]:
                lo = (float(scores[k_lo]), p, k_lo + 3)
        per_image.append((boxes, scores))
    if hi is not None:
        # norm_score.m divides by (max - min) in single precision: the range must fit too.
        with np.errstate(over="ignore"):
            span = np.float32(hi[0]) - np.float32(lo[0])
        if not np.isfinite(span):
            raise PredictionFormatError(
                f"{hi[1]}:{hi[2]}: score {hi[0]!r} and {lo[1]}:{lo[2]}: score {lo[0]!r} span "
                "more than single precision holds (the official normalisation divides by "
                "max - min in float32)"
            )
    return Predictions.from_lists(per_image, sort=sort)


def matched_prediction_files(pred_dir: PathLike, gt: WiderFaceAnnotations) -> int:
    """How many images of ``gt`` have a prediction file ``pred_dir/<event>/<image>.txt``."""
    root = pathlib.Path(pred_dir)
    return sum(
        (root / gt.events[int(gt.image_event[i])] / f"{gt.image_names[i]}.txt").is_file()
        for i in range(gt.num_images)
    )


def _fmt(v: float) -> str:
    return repr(float(v))


def write_prediction_file(path: PathLike, name: str, boxes_xywh, scores) -> None:
    """Writes one prediction file: ``name``, the count, then ``x y w h score`` lines.

    Numbers are written with Python's shortest round-trip ``repr`` so reading
    the file back gives the same float64 values.
    """
    b = np.asarray(boxes_xywh, np.float64).reshape(-1, 4)
    s = np.asarray(scores, np.float64).reshape(-1)
    if b.shape[0] != s.shape[0]:
        raise ValueError(f"{path}: {b.shape[0]} boxes but {s.shape[0]} scores")
    if not (np.isfinite(b).all() and np.isfinite(s).all()):
        raise ValueError(f"{path}: refusing to write non-finite boxes or scores")
    rows = np.concatenate([b, s[:, None]], axis=1).tolist()
    out = [name, str(len(rows))] + [" ".join(map(_fmt, r)) for r in rows]
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")


def write_predictions(
    out_dir: PathLike,
    image_paths: Sequence[str],
    boxes: Sequence[np.ndarray],
    scores: Sequence[np.ndarray],
) -> None:
    """Writes the standard folder ``out_dir/<event>/<image>.txt``.

    Args:
      out_dir: destination root.
      image_paths: per image ``"<event>/<image>.jpg"`` (any extension; it is
        replaced by ``.txt``); must stay inside ``out_dir``.
      boxes: per image ``[n, 4]`` ``x y w h``.
      scores: per image ``[n]``.
    """
    if not (len(image_paths) == len(boxes) == len(scores)):
        raise ValueError("image_paths, boxes and scores must have the same length")
    for rel, b, s in zip(image_paths, boxes, scores):
        stem = rel.rsplit(".", 1)[0] if "." in rel.rsplit("/", 1)[-1] else rel
        target = resolve_in_root(out_dir, stem + ".txt", where="write_predictions")
        write_prediction_file(target, stem.rsplit("/", 1)[-1], b, s)


# ---------------------------------------------------------------------------
# Ground truth.
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class WiderGroundTruth:
    """The four eval_tools files: ``face`` (image list for reading predictions) and
    one annotation per difficulty setting (with ``keep``)."""

    face: WiderFaceAnnotations
    settings: Mapping[str, WiderFaceAnnotations]


def load_ground_truth(gt_dir: PathLike, settings: Sequence[str] = SETTINGS) -> WiderGroundTruth:
    """Reads ``wider_face_val.mat`` and ``wider_<setting>_val.mat`` from ``gt_dir``.

    Raises:
      FileNotFoundError: a file is missing.
      ValueError: a setting file lacks ``gt_list`` or lists other images than
        ``wider_face_val.mat`` (the official tool would silently misalign them).
    """
    gt_dir = pathlib.Path(gt_dir)
    face_p = gt_dir / "wider_face_val.mat"
    if not face_p.is_file():
        raise FileNotFoundError(f"missing ground truth file {face_p}")
    face = read_mat(face_p)
    out = {}
    for s in settings:
        p = gt_dir / f"wider_{s}_val.mat"
        if not p.is_file():
            raise FileNotFoundError(f"missing ground truth file {p}")
        ann = read_mat(p)
        if ann.keep is None:
            raise ValueError(f"{p}: no 'gt_list' field; not an eval_tools difficulty file")
        if ann.events != face.events or ann.image_names != face.image_names:
            raise ValueError(f"{p}: event/file lists differ from {face_p}")
        out[s] = ann
    return WiderGroundTruth(face=face, settings=out)


# ---------------------------------------------------------------------------
# The evaluation.
# ---------------------------------------------------------------------------
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


def evaluate(
    gt: WiderGroundTruth,
    preds: Predictions,
    *,
    settings: Optional[Sequence[str]] = None,
    iou_threshold: float = 0.5,
    num_thresholds: int = 1000,
    semantics: str = "official",
) -> Dict[str, SettingResult]:
    """The WIDER FACE evaluation of ``preds`` (aligned with ``gt.face``) in each setting.

    ``semantics="official"`` (default) reproduces the MATLAB eval_tools (the order of
    ``preds`` within an image does not matter). ``semantics="python-port"``
    reproduces the Python port (wondervictor/WiderFace-Evaluation), which evaluates
    each image's detections in the stored (file) order; see `_evaluate_python_port`.
    """
    _check_semantics(semantics)
    settings = tuple(gt.settings) if settings is None else tuple(settings)
    if preds.num_images != gt.face.num_images:
        raise ValueError(
            f"predictions cover {preds.num_images} images but {gt.face.source} lists {gt.face.num_images}"
        )
    if semantics == "python-port":
        return _evaluate_python_port(gt, preds, settings, iou_threshold, num_thresholds)
    preds = _score_sorted(preds)
    norm = normalize_scores(preds.scores)
    t_first = _first_threshold(norm, num_thresholds)
    det_img = preds.image_index
    tau = 1.0 - np.arange(1, num_thresholds + 1) / num_thresholds
    cache: List[Tuple[WiderFaceAnnotations, _Matches]] = []
    out = {}
    for s in settings:
        ann = gt.settings[s]
        m = None
        for other, mm in cache:  # share the matching between settings with the same boxes
            if (
                other.boxes.dtype == ann.boxes.dtype
                and np.array_equal(other.face_offsets, ann.face_offsets)
                and np.array_equal(other.boxes, ann.boxes)
            ):
                m = mm
                break
        if m is None:
            m = match_detections(ann, preds, iou_threshold=iou_threshold)
            cache.append((ann, m))
        evaluated = ann.faces_per_image[det_img] > 0  # images with an empty face list are skipped
        out[s] = _count_setting(ann, m, evaluated, t_first, num_thresholds, tau, voc_ap)
    return out


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


# ---------------------------------------------------------------------------
# Outputs and command line.
# ---------------------------------------------------------------------------
def _nan_to_none(x: np.ndarray) -> list:
    return [None if not math.isfinite(v) else float(v) for v in np.asarray(x, np.float64).tolist()]


def save_results(
    results: Mapping[str, SettingResult], out_dir: PathLike, *, label: str = "jaxface"
) -> None:
    """Writes ``widerface_results.json`` and ``pr_<setting>.png`` (matplotlib Agg)."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        s: {
            "ap": r.ap,
            "num_faces": r.num_faces,
            "thresholds": _nan_to_none(r.thresholds),
            "precision": _nan_to_none(r.precision),
            "recall": _nan_to_none(r.recall),
            "tp": r.tp.tolist(),
            "proposals": r.proposals.tolist(),
        }
        for s, r in results.items()
    }
    with open(out / "widerface_results.json", "w", encoding="utf-8") as f:
        json.dump(payload, f)
    for s, r in results.items():
        plot_pr({s: r}, out / f"pr_{s}.png", title=f"WIDER FACE val, {s}", label=label)


def plot_pr(
    results: Mapping[str, SettingResult],
    path: PathLike,
    *,
    title: str = "WIDER FACE protocol",
    label: str = "",
) -> pathlib.Path:
    """One PNG with the precision-recall curve of each setting (legend: setting and AP)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for s, r in results.items():
        ok = np.isfinite(r.precision)
        name = f"{label}-{r.ap:.3f}" if label else f"{s} (AP {r.ap:.3f})"
        ax.plot(r.recall[ok], r.precision[ok], lw=2, label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("Recall")
    ax.set_ylabel("Precision")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``jaxface widerface-eval --pred PRED_DIR --gt GT_DIR [--out OUT_DIR] [--semantics S]``;
    prints the three APs."""
    parser = argparse.ArgumentParser(
        prog="jaxface widerface-eval",
        description="Official WIDER FACE validation evaluation (easy / medium / hard AP).",
    )
    parser.add_argument(
        "--pred", required=True, help="folder with <event>/<image>.txt prediction files"
    )
    parser.add_argument(
        "--gt",
        required=True,
        help="folder with wider_face_val.mat and wider_{easy,medium,hard}_val.mat",
    )
    parser.add_argument(
        "--out", default=None, help="write widerface_results.json and pr_<setting>.png here"
    )
    parser.add_argument("--label", default="jaxface", help="legend name in the plots")
    parser.add_argument(
        "--semantics",
        choices=SEMANTICS,
        default="official",
        help="official (default): the MATLAB eval_tools exactly. python-port: the Python "
        "port (github.com/wondervictor/WiderFace-Evaluation) behind most WIDER numbers "
        "published since 2019 (RetinaFace, SCRFD, ...): float IoU with the best face, "
        "float64 score normalisation from max 0 / min 1, detections in file order. Its APs "
        "differ from the official ones: on the real val set with synthetic predictions, "
        "hard 0.6134 (python-port) vs 0.6062 (official); see docs/widerface_semantics.md",
    )
    args = parser.parse_args(argv)
    try:
        gt = load_ground_truth(args.gt)
        preds = read_predictions(args.pred, gt.face, sort=args.semantics == "official")
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    matched = matched_prediction_files(args.pred, gt.face)
    if matched == 0:
        print(
            f"error: no prediction file in {args.pred} matches the ground truth (expected "
            f"<event>/<image>.txt for {gt.face.num_images} images, e.g. "
            f"{gt.face.events[int(gt.face.image_event[0])]}/{gt.face.image_names[0]}.txt); "
            "nothing to evaluate",
            file=sys.stderr,
        )
        return 1
    if matched < gt.face.num_images:
        print(
            f"warning: {gt.face.num_images - matched} of {gt.face.num_images} images have no "
            f"prediction file in {args.pred}; they count as no detections (official rule)",
            file=sys.stderr,
        )
    results = evaluate(gt, preds, semantics=args.semantics)
    print(f"semantics: {args.semantics}")
    for s in SETTINGS:
        if s in results:
            print(f"{s.capitalize()} Val AP: {results[s].ap:.4f}")
    if args.out:
        save_results(results, args.out, label=args.label)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
