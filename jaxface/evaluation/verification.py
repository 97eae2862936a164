"""Face verification protocols: LFW View 2, CFP (FF / FP), ROC metrics, TAR@FAR, plots.

Everything here is NumPy on the host: the inputs are at most a few thousand pair
scores. (All-pairs TAR@FAR over large sets, streamed on device, lives in
`jaxface.evaluation.identification`.)

Conventions:
- LFW: embedding = L2-normalise(f(x) + f(flip x)) (`fuse_flip`), distance = squared
  L2 (`pair_distances`); per fold the threshold with the best accuracy on the other
  nine folds, thresholds ``0:0.01:4`` (MATLAB notation, 401 values, inclusive; the
  facenet / insightface scripts use ``np.arange(0, 4, 0.01)``, 400 values -- the
  difference is a threshold at 4.0, the largest possible squared distance of unit
  vectors). Ties between thresholds go to the smallest one (``np.argmax``), as in
  facenet / insightface.
- Scores are "distance" (smaller = same) or "similarity" (larger = same); every
  metric takes ``kind=`` and converts internally (similarity = -distance).
- EER = the FPR at the ROC point minimising ``|FPR + TPR - 1|`` (CFP's definition);
  AUC = trapezoidal area under the full ROC (equals sklearn's ``roc_auc_score``).
- TAR@FAR: ``method="closest"`` is the IJB-B/C convention (insightface's
  ``IJB_11.py``: the TPR at the ROC point whose FPR is closest to the target,
  the first such point on ties); ``"closest_upper"`` takes the best TPR at that
  FPR; ``method="interpolated"`` linearly interpolates TPR over FPR on the ROC.
  `kfold_tar_at_far` is the LFW variant (facenet's
  ``calculate_val``): the threshold reaching the target FAR on the 9 training
  folds, interpolated over the threshold grid, applied to the held-out fold.
"""

from __future__ import annotations

import os
import pathlib
from typing import Mapping, Sequence

import numpy as np

# The protocol files are parsed in the data layer; re-exported here with the metrics.
from jaxface.data.protocol_files import (
    CFPProtocol,
    LFWPairs,
    check_finite,
    lfw_image_path,
    parse_cfp_protocol,
    parse_lfw_pairs,
    read_cfp_fiducials,
)
from jaxface.ops import norm

__all__ = [
    "LFWPairs",
    "parse_lfw_pairs",
    "lfw_image_path",
    "CFPProtocol",
    "parse_cfp_protocol",
    "read_cfp_fiducials",
    "fuse_flip",
    "pair_distances",
    "check_finite",
    "roc_curve",
    "roc_auc",
    "eer",
    "tar_at_far",
    "read_roc",
    "threshold_at_far",
    "kfold_accuracy",
    "kfold_tar_at_far",
    "evaluate_folds",
    "plot_roc",
    "LFW_THRESHOLDS",
]

LFW_THRESHOLDS = np.round(np.arange(401) * 0.01, 2)  # 0:0.01:4 inclusive


# --------------------------------------------------------------------------- checks


def _scores_labels(scores, same, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert to (similarity scores float64, bool labels)."""
    s = check_finite("scores", scores).astype(np.float64).ravel()
    y = np.asarray(same)
    if y.dtype != bool:
        if not np.all(np.isin(y, (0, 1))):
            raise ValueError("same: expected booleans or 0/1 labels")
        y = y.astype(bool)
    y = y.ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.shape}) and same ({y.shape}) must have the same length")
    if kind == "distance":
        s = -s
    elif kind != "similarity":
        raise ValueError(f"kind: expected 'distance' or 'similarity', got {kind!r}")
    return s, y


# --------------------------------------------------------------------------- scores


def fuse_flip(emb, emb_flip) -> np.ndarray:
    """LFW embedding: ``L2-normalise(f(x) + f(flip x))``, ``[N, D]`` float64.

    `jaxface.ops.norm.fuse_flip` (the one definition, also jitted in the analyzer's
    ``embed``) computed in NumPy float64, after checking that both arrays are finite; a
    row whose sum is zero has no direction and is an error naming the row."""
    e = check_finite("emb", emb).astype(np.float64)
    fused = norm.fuse_flip(e, check_finite("emb_flip", emb_flip), xp=np)
    zero = ~fused.any(axis=1)
    if zero.any():
        raise ValueError(f"fuse_flip: zero embedding at row {int(np.argmax(zero))}")
    return fused


def pair_distances(emb1, emb2) -> np.ndarray:
    """Squared L2 distance per row of two ``[N, D]`` arrays (both should be L2-normalised)."""
    a = check_finite("emb1", emb1).astype(np.float64)
    b = check_finite("emb2", emb2).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"emb1 {a.shape} and emb2 {b.shape} differ in shape")
    return np.sum((a - b) ** 2, axis=1)


# --------------------------------------------------------------------------- ROC


def roc_curve(
    scores, same, *, kind: str = "similarity"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC over all distinct thresholds: (fpr, tpr, thresholds), like sklearn's ``roc_curve``
    with ``drop_intermediate=False``: starts at (0, 0) with threshold +inf, then one point
    per distinct score in decreasing order (predict "same" when score >= threshold).
    Thresholds are in the caller's units (distances for ``kind="distance"``; then
    "same" means distance <= threshold)."""
    s, y = _scores_labels(scores, same, kind)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"ROC needs both genuine and impostor pairs (got {n_pos} and {n_neg})")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    thr = np.r_[np.inf, s[distinct]]
    if kind == "distance":
        thr = -thr
    return fpr, tpr, thr


def roc_auc(scores, same, *, kind: str = "similarity") -> float:
    """Area under the ROC (trapezoidal; ties count one half, as sklearn's ``roc_auc_score``)."""
    fpr, tpr, _ = roc_curve(scores, same, kind=kind)
    return float(np.trapezoid(tpr, fpr))


def eer(scores, same, *, kind: str = "similarity") -> float:
    """Equal error rate: the FPR at the ROC point minimising ``|FPR + TPR - 1|`` (CFP's definition)."""
    fpr, tpr, _ = roc_curve(scores, same, kind=kind)
    return float(fpr[np.argmin(np.abs(fpr + tpr - 1.0))])


def tar_at_far(
    scores,
    same,
    far_targets: float | Sequence[float],
    *,
    kind: str = "similarity",
    method: str = "closest",
) -> np.ndarray:
    """TAR at each target FAR on a list of pairs.

    ``method="closest"``: IJB-B/C convention exactly as insightface's ``IJB_11.py``
    computes it: the TPR at the ROC point whose FPR is closest to the target, the
    first (highest-threshold) such point on ties. A vertical ROC segment holds many
    points with one FPR, so this is the *bottom* of the segment (perfectly separated
    scores report TAR 0 at FAR 1e-6: the (0, 0) start point wins the tie).
    ``method="closest_upper"``: same FPR, the top of the segment (the best TPR
    reachable at that FAR).
    ``method="interpolated"``: linear interpolation of TPR over FPR along the ROC
    (on a vertical segment ``np.interp`` takes its top).

    Returns an array shaped like ``far_targets``. A target below ``1 / n_impostors``
    cannot be measured: it returns the TAR at FPR 0 for "closest" and is interpolated
    towards (0, 0) by "interpolated" -- report the impostor count beside it.
    """
    fpr, tpr, thr = roc_curve(scores, same, kind=kind)
    targets = np.asarray(far_targets, np.float64)
    if np.any((targets < 0) | (targets > 1)):
        raise ValueError(f"far_targets must lie in [0, 1], got {far_targets}")
    return read_roc(fpr, tpr, thr, targets, method=method)["tar"]


def read_roc(fpr, tpr, thresholds, far_targets, *, method: str = "closest") -> dict:
    """The one TAR@FAR reading of a ROC (points ordered by decreasing threshold, from
    (0, 0)), for `tar_at_far` (exact pair scores) and
    `jaxface.evaluation.all_pairs.histogram_tar_at_far` (histogram bin edges).

    ``method``: ``"closest"`` the first point whose FPR is closest to the target,
    ``"closest_upper"`` the best TPR among those points, ``"interpolated"`` TPR (and
    threshold; an infinite one counts as 1.0) linear in FPR. Returns ``tar``, ``far``
    (reached; the target for "interpolated") and ``threshold``, shaped like
    ``far_targets``."""
    fpr, tpr, thresholds = (np.asarray(a) for a in (fpr, tpr, thresholds))
    targets = np.asarray(far_targets, np.float64)
    flat = targets.ravel()
    if method in ("closest", "closest_upper"):
        idx = []
        for t in flat:
            gap = np.abs(fpr - t)
            if method == "closest":
                idx.append(int(np.argmin(gap)))
            else:
                tied = np.flatnonzero(gap == gap.min())
                idx.append(int(tied[np.argmax(tpr[tied])]))
        idx = np.asarray(idx, np.int64)
        out = {"tar": tpr[idx], "far": fpr[idx], "threshold": thresholds[idx]}
    elif method == "interpolated":
        out = {
            "tar": np.interp(flat, fpr, tpr),
            "far": flat.copy(),
            "threshold": np.interp(flat, fpr, np.where(np.isfinite(thresholds), thresholds, 1.0)),
        }
    else:
        raise ValueError(
            f"method: expected 'closest', 'closest_upper' or 'interpolated', got {method!r}"
        )
    return {k: v.reshape(targets.shape) for k, v in out.items()}


def threshold_at_far(impostor: np.ndarray, far: float, genuine=None) -> dict:
    """The lowest threshold t with FAR(t) = #(impostor >= t) / n <= far (``same`` iff
    ``score >= t``), with the FAR and (given genuine scores) TAR achieved there."""
    imp = np.sort(np.asarray(impostor, np.float64))[::-1]
    n = len(imp)
    if n == 0:
        raise ValueError("threshold_at_far: no impostor scores")
    k = int(np.floor(far * n))  # at most k impostors may reach t
    t = float(np.nextafter(imp[k], np.inf)) if k < n else float(imp[-1])
    achieved = float(np.mean(imp >= t))
    out = {
        "threshold": t,
        "far": achieved,
        "far_resolution": 1.0 / n,
    }
    if genuine is not None and len(genuine):
        out["tar"] = float(np.mean(np.asarray(genuine) >= t))
    return out


# --------------------------------------------------------------------------- folds


def _fold_masks(folds) -> tuple[np.ndarray, np.ndarray]:
    folds = np.asarray(folds)
    ids = np.unique(folds)
    if len(ids) < 2:
        raise ValueError(f"need at least 2 folds, got {len(ids)}")
    return folds, ids


def _accuracy_at(s: np.ndarray, y: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    # s: similarity; predict same when s >= thr. Vectorised over thresholds.
    pred = s[None, :] >= thresholds[:, None]
    return (pred == y[None, :]).mean(axis=1)


def kfold_accuracy(
    scores, same, folds, *, kind: str = "distance", thresholds: np.ndarray | None = None
) -> dict[str, np.ndarray | float]:
    """k-fold verification accuracy with the threshold chosen on the other folds.

    Args:
      scores: ``[P]`` pair scores (squared L2 distances for ``kind="distance"``, the LFW
        convention; predict "same" when distance < threshold, insightface's ``np.less``;
        for ``kind="similarity"`` when similarity >= threshold).
      same: ``[P]`` bool. folds: ``[P]`` fold id per pair.
      thresholds: candidate thresholds in the caller's units; default `LFW_THRESHOLDS`
        for distances, ``-1:0.01:1`` for similarities (cosine).

    Returns:
      dict with ``accuracy`` ``[K]`` per held-out fold, ``threshold`` ``[K]``, ``mean``, ``std``
      (population std, ``np.std``, as facenet / insightface report it).
    """
    s, y = _scores_labels(scores, same, kind)
    folds, ids = _fold_masks(folds)
    if thresholds is None:
        thresholds = (
            LFW_THRESHOLDS if kind == "distance" else np.round(np.arange(-100, 101) * 0.01, 2)
        )
    thresholds = np.asarray(thresholds, np.float64)
    if kind == "distance":
        # distance < t  <=>  -distance > -t; use a strict comparison to match np.less.
        sim_thr = -thresholds

        def acc(mask, t):
            return ((s[mask][None, :] > t[:, None]) == y[mask][None, :]).mean(axis=1)
    else:
        sim_thr = thresholds

        def acc(mask, t):
            return _accuracy_at(s[mask], y[mask], t)

    accs, thrs = [], []
    for k in ids:
        test = folds == k
        train_acc = acc(~test, sim_thr)
        best = int(np.argmax(train_acc))
        thrs.append(thresholds[best])
        accs.append(float(acc(test, sim_thr[best : best + 1])[0]))
    accs = np.array(accs)
    return {
        "accuracy": accs,
        "threshold": np.array(thrs),
        "mean": float(accs.mean()),
        "std": float(accs.std()),
    }


def kfold_tar_at_far(
    scores,
    same,
    folds,
    far_target: float = 1e-3,
    *,
    kind: str = "distance",
    thresholds: np.ndarray | None = None,
) -> dict[str, np.ndarray | float]:
    """LFW-style TAR@FAR (facenet's ``calculate_val``): per held-out fold, the threshold at
    which the training folds reach ``far_target``, found by linear interpolation of the
    threshold over the (monotone) FAR-vs-threshold curve on the threshold grid; TAR and
    FAR are then measured on the held-out fold. If the training FAR never reaches the
    target, the most lenient threshold of the grid is used (its FAR is already within the
    target; facenet falls back to 0.0, which accepts nothing).

    Returns dict with per-fold ``tar``, ``far``, ``threshold`` and ``tar_mean``,
    ``tar_std``, ``far_mean``.
    """
    s, y = _scores_labels(scores, same, kind)
    folds, ids = _fold_masks(folds)
    if thresholds is None:
        thresholds = (
            LFW_THRESHOLDS if kind == "distance" else np.round(np.arange(-100, 101) * 0.01, 2)
        )
    thresholds = np.asarray(thresholds, np.float64)
    # Express everything as "accept when sim > u" with u increasing => FAR decreasing.
    u = -thresholds if kind == "distance" else thresholds
    order = np.argsort(u)
    u = u[order]

    def rates(mask, uu):
        acc = (
            s[mask][None, :] > uu[:, None]
            if kind == "distance"
            else s[mask][None, :] >= uu[:, None]
        )
        yy = y[mask]
        tar = acc[:, yy].sum(1) / max(int(yy.sum()), 1)
        far = acc[:, ~yy].sum(1) / max(int((~yy).sum()), 1)
        return tar, far

    tars, fars, ts = [], [], []
    for k in ids:
        test = folds == k
        _, far_train = rates(~test, u)
        if far_train.max() >= far_target:
            # far_train is non-increasing in u; np.interp needs increasing x.
            uu = float(np.interp(far_target, far_train[::-1], u[::-1]))
        else:
            uu = float(u[0])
        tar, far = rates(test, np.array([uu]))
        tars.append(float(tar[0]))
        fars.append(float(far[0]))
        ts.append(-uu if kind == "distance" else uu)
    tars, fars = np.array(tars), np.array(fars)
    return {
        "tar": tars,
        "far": fars,
        "threshold": np.array(ts),
        "tar_mean": float(tars.mean()),
        "tar_std": float(tars.std()),
        "far_mean": float(fars.mean()),
    }


def evaluate_folds(scores, same, folds, *, kind: str = "distance") -> dict[str, float | np.ndarray]:
    """CFP-style report: per fold accuracy (threshold from the other folds), EER and AUC,
    each with mean and std over folds."""
    s = check_finite("scores", scores)
    same = np.asarray(same)
    folds, ids = _fold_masks(folds)
    acc = kfold_accuracy(s, same, folds, kind=kind)
    eers = np.array([eer(s[folds == k], same[folds == k], kind=kind) for k in ids])
    aucs = np.array([roc_auc(s[folds == k], same[folds == k], kind=kind) for k in ids])
    return {
        "accuracy": acc["accuracy"],
        "accuracy_mean": acc["mean"],
        "accuracy_std": acc["std"],
        "eer": eers,
        "eer_mean": float(eers.mean()),
        "eer_std": float(eers.std()),
        "auc": aucs,
        "auc_mean": float(aucs.mean()),
        "auc_std": float(aucs.std()),
    }


# --------------------------------------------------------------------------- plots


def plot_roc(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | os.PathLike,
    *,
    title: str = "ROC",
    min_far: float | None = None,
) -> pathlib.Path:
    """Write a ROC plot (TAR vs FAR, log FAR axis) as PNG. ``curves``: name -> (fpr, tpr).

    Points at FAR 0 cannot be drawn on a log axis; the axis starts at ``min_far``
    (default: the smallest positive FAR over the curves)."""
    # The Agg canvas directly, not pyplot: no global backend switch, no GUI, thread-safe.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = pathlib.Path(path)
    fig = Figure(figsize=(6, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    lo = 1.0
    for name, (fpr, tpr) in curves.items():
        fpr = check_finite(f"{name} fpr", fpr)
        tpr = check_finite(f"{name} tpr", tpr)
        keep = fpr > 0
        if keep.any():
            lo = min(lo, float(fpr[keep].min()))
        ax.plot(fpr[keep], tpr[keep], label=name)
    ax.set_xscale("log")
    ax.set_xlim(min_far if min_far is not None else lo, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("FAR (false accept rate)")
    ax.set_ylabel("TAR (true accept rate)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
