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

The prediction folders and the ground truth are read by
`jaxface.data.widerface_eval_files`; steps 2-7 are vectorised in
`jaxface.evaluation.widerface_official` (which explains how).

``semantics="python-port"`` instead reproduces the Python port
(wondervictor/WiderFace-Evaluation, ``evaluation.py`` at commit 53474e0) behind most
published numbers: detections in file order, float64 normalisation from max 0 / min 1,
float IoU with the best face, its prefix counting per threshold and its ``voc_ap``
(`jaxface.evaluation.widerface_port`, docs/widerface_semantics.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from jaxface.data.widerface import WiderFaceAnnotations
from jaxface.data.widerface_eval_files import (
    SETTINGS,
    PredictionFormatError,
    Predictions,
    WiderGroundTruth,
    load_ground_truth,
    matched_prediction_files,
    read_prediction_file,
    read_predictions,
    write_prediction_file,
    write_predictions,
)
from jaxface.evaluation.widerface_official import (
    SEMANTICS,
    SettingResult,
    _check_semantics,
    _count_setting,
    _first_threshold,
    _Matches,
    _score_sorted,
    match_detections,
    normalize_scores,
    voc_ap,
)
from jaxface.evaluation.widerface_port import (
    _evaluate_python_port,
    match_detections_python_port,
    voc_ap_python_port,
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
