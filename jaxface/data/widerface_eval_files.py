"""The files of the WIDER FACE evaluation: prediction folders and the eval_tools ground truth.

Prediction folder (what ``read_pred.m`` of the official eval_tools reads, and what
``jaxface predict-wider`` writes): ``<pred>/<event>/<image>.txt`` per image of
``wider_face_val.mat``, holding the image name, the count ``N`` and ``N`` lines
``x y w h score``. The official tool sorts each file by descending score (stable); a
missing file means no detections. Here: same, but a malformed file is an error naming
the file and line (the official tool prints "Invalid format" and silently drops the
image).

Detection-file rules (documented choices where the official tool is undefined):
  * non-finite values (NaN/inf) in any column -> `PredictionFormatError` (file, line);
    MATLAB would let one ``inf`` score turn every normalised score into NaN.
  * negative widths/heights are kept and go through the official arithmetic
    unchanged: such a box is in practice a false positive (only a width or height
    in (-1, 0) can still meet a tiny face after MATLAB's corner rounding).
  * columns are separated by whitespace or commas; exactly 5 per line; the count
    line must be a non-negative integer; blank lines may only follow the last box.
  * the first line (image name) is not checked, like the official tool.
  * scores must fit single precision, and so must the run's score range: the
    official normalisation computes in float32.

Ground truth (``eval_tools/ground_truth``): ``wider_face_val.mat`` (every face, the
image list predictions are read against) and ``wider_<setting>_val.mat`` per
difficulty setting (its ``gt_list`` names the faces kept), parsed by
`jaxface.data.widerface.read_mat`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
from typing import List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from jaxface.data.widerface import (
    WiderFaceAnnotations,
    read_mat,
    resolve_in_root,
)

__all__ = [
    "SETTINGS",
    "PredictionFormatError",
    "Predictions",
    "WiderGroundTruth",
    "read_prediction_file",
    "read_predictions",
    "matched_prediction_files",
    "write_prediction_file",
    "write_predictions",
    "load_ground_truth",
]

PathLike = Union[str, os.PathLike]
SETTINGS: Tuple[str, ...] = ("easy", "medium", "hard")
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
