"""CelebA attribute metrics (the CelebA protocol): balanced accuracy, accuracy, imbalance.

Per attribute, with ``Np``/``Nn`` the positive/negative ground-truth counts:

* balanced accuracy ``½ (TP/Np + TN/Nn)``;
* accuracy ``(TP + TN) / (Np + Nn)``;
* imbalance level ``|positive rate − 50|`` in percent (0 = balanced, 50 = one class only).

Means are plain averages over the attributes. Counts can be accumulated on device, batch
by batch, with the jit-able `confusion_counts` (sum the results) and turned into metrics
on the host with `metrics_from_counts`; `attribute_metrics` does both for arrays in memory.
`mean_balanced_accuracy_fn` gives the mean balanced accuracy of resampled images, for
the bootstrap intervals of `jaxface.evaluation.stats` (images are the units).
`plot_gain_vs_imbalance` draws the talk's figure (gain in balanced accuracy over a
baseline, attributes sorted by imbalance level) to a PNG with matplotlib's Agg backend.

Labels and predictions may be bool, {0, 1} or CelebA's {−1, 1}: ``> 0`` is positive.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "attribute_metrics",
    "confusion_counts",
    "format_metrics_table",
    "imbalance_level",
    "mean_balanced_accuracy_fn",
    "metrics_from_counts",
    "plot_gain_vs_imbalance",
]

# Column order of `confusion_counts`.
_TP, _FN, _TN, _FP = range(4)


def confusion_counts(
    predictions: jax.Array, labels: jax.Array, *, where: Optional[jax.Array] = None
) -> jax.Array:
    """Per-attribute confusion counts of one batch; jit-able, sum them over batches.

    Args:
      predictions: ``[N, A]`` predicted labels (``> 0`` is positive).
      labels: ``[N, A]`` ground truth (``> 0`` is positive).
      where: optional bool ``[N]`` or ``[N, A]``; False entries are not counted.

    Returns:
      ``[A, 4]`` int32 columns ``TP, FN, TN, FP``.
    """
    if predictions.shape != labels.shape or predictions.ndim != 2:
        raise ValueError(
            f"predictions {predictions.shape} and labels {labels.shape} must both be [N, A]"
        )
    p = jnp.asarray(predictions) > 0
    y = jnp.asarray(labels) > 0
    m = jnp.ones(y.shape, bool)
    if where is not None:
        where = jnp.asarray(where, bool)
        m = jnp.broadcast_to(where[:, None] if where.ndim == 1 else where, y.shape)

    def count(x):
        return jnp.sum(x & m, axis=0, dtype=jnp.int32)

    return jnp.stack([count(p & y), count(~p & y), count(~p & ~y), count(p & ~y)], axis=-1)


def imbalance_level(positive_rate) -> np.ndarray:
    """``|positive rate − 0.5| × 100``: imbalance level in percent, per attribute."""
    return np.abs(np.asarray(positive_rate, dtype=np.float64) - 0.5) * 100.0


def metrics_from_counts(
    counts,
    *,
    names: Optional[Sequence[str]] = None,
    positive_rate=None,
) -> dict:
    """Metrics from summed `confusion_counts`.

    When an attribute has no positive (or no negative) ground truth, its balanced
    accuracy is the recall of the class that is present, which is what
    ``sklearn.metrics.balanced_accuracy_score`` returns (it averages the recalls of the
    classes present); with neither, it is NaN.

    Args:
      counts: ``[A, 4]`` (TP, FN, TN, FP).
      names: optional ``A`` attribute names.
      positive_rate: optional ``[A]`` positive rate to compute the imbalance level from
        (e.g. the training set's, as in LMLE's figure); by default the rate of the
        evaluated labels.

    Returns:
      dict with per-attribute ``[A]`` NumPy arrays ``balanced_accuracy``, ``accuracy``,
      ``imbalance``, ``positive_rate``, ``num_positive``, ``num_negative``, scalar means
      ``mean_balanced_accuracy``, ``mean_accuracy``, ``mean_imbalance``, and ``names``.
    """
    c = np.asarray(counts, dtype=np.int64)
    if c.ndim != 2 or c.shape[1] != 4:
        raise ValueError(f"counts must be [A, 4] (TP, FN, TN, FP), got {c.shape}")
    tp, fn, tn, fp = (c[:, i].astype(np.float64) for i in (_TP, _FN, _TN, _FP))
    n_pos, n_neg = tp + fn, tn + fp
    total = n_pos + n_neg
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.where(n_pos > 0, tp / n_pos, np.nan)
        tnr = np.where(n_neg > 0, tn / n_neg, np.nan)
        recalls = np.stack([tpr, tnr], axis=-1)
        present = ~np.isnan(recalls)
        bal = np.where(
            present.any(-1), np.nansum(recalls, -1) / np.maximum(present.sum(-1), 1), np.nan
        )
        acc = np.where(total > 0, (tp + tn) / total, np.nan)
        eval_rate = np.where(total > 0, n_pos / total, np.nan)
    rate = eval_rate if positive_rate is None else np.asarray(positive_rate, np.float64)
    if rate.shape != bal.shape:
        raise ValueError(f"positive_rate has shape {rate.shape}, expected {bal.shape}")
    imb = imbalance_level(rate)
    if names is None:
        names = [str(i) for i in range(c.shape[0])]
    names = list(names)
    if len(names) != c.shape[0]:
        raise ValueError(f"{len(names)} names for {c.shape[0]} attributes")
    return {
        "names": names,
        "balanced_accuracy": bal,
        "accuracy": acc,
        "imbalance": imb,
        "positive_rate": rate,
        "num_positive": n_pos.astype(np.int64),
        "num_negative": n_neg.astype(np.int64),
        "mean_balanced_accuracy": float(np.mean(bal)),
        "mean_accuracy": float(np.mean(acc)),
        "mean_imbalance": float(np.mean(imb)),
    }


def attribute_metrics(
    predictions,
    labels,
    *,
    names: Optional[Sequence[str]] = None,
    positive_rate=None,
    where=None,
) -> dict:
    """`metrics_from_counts` of `confusion_counts` for arrays held in memory.

    Args:
      predictions: ``[N, A]``.
      labels: ``[N, A]``.
      names, positive_rate: see `metrics_from_counts`.
      where: see `confusion_counts`.
    """
    counts = confusion_counts(jnp.asarray(predictions), jnp.asarray(labels), where=where)
    return metrics_from_counts(np.asarray(counts), names=names, positive_rate=positive_rate)


def mean_balanced_accuracy_fn(predictions, labels):
    """The mean balanced accuracy over attributes as a function of resampled images, for
    `jaxface.evaluation.stats.bootstrap_ci` / ``paired_bootstrap`` with ``vectorized=True``
    (images are the units).

    Args:
      predictions: ``[N, A]``, or ``[S, N, A]`` for ``S`` runs (seeds) of one method: the
        metric is then the mean over runs of each run's mean balanced accuracy (the runs'
        correctness is averaged per image, which gives the same value since the class
        counts do not depend on the run).
      labels: ``[N, A]`` (``> 0`` is positive).

    Returns:
      ``fn(indices [rows, N]) -> [rows]``: the metric on each row's images (with repeats);
      an attribute whose resample lacks a class gets the recall of the class present, as
      in `metrics_from_counts`.
    """
    p = np.asarray(predictions) > 0
    if p.ndim == 2:
        p = p[None]
    y = np.asarray(labels) > 0
    if p.shape[1:] != y.shape or y.ndim != 2:
        raise ValueError(f"predictions {p.shape} do not match labels [N, A] {y.shape}")
    n, a = y.shape
    correct = (p == y[None]).mean(axis=0)  # [N, A]
    columns = np.concatenate([correct * y, correct * ~y, y, ~y], axis=1).astype(np.float64)

    def fn(indices):
        idx = np.asarray(indices)
        rows = idx.shape[0]
        flat = (idx + n * np.arange(rows)[:, None]).ravel()
        weights = np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float64)
        s = weights @ columns  # [rows, 4A]: correct positives, correct negatives, Np, Nn
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls = np.stack([s[:, :a] / s[:, 2 * a : 3 * a], s[:, a : 2 * a] / s[:, 3 * a :]])
        return np.nanmean(recalls, axis=0).mean(axis=1)

    return fn


def format_metrics_table(
    metrics: dict,
    baseline: Optional[dict] = None,
    *,
    method_name: str = "method",
    baseline_name: str = "baseline",
) -> str:
    """Markdown table: one row per attribute (sorted by imbalance level, most imbalanced
    first), balanced accuracy and accuracy in percent, the baseline's and the gain when
    given, and a final row of means."""
    order = np.argsort(-metrics["imbalance"], kind="stable")
    head = ["attribute", "imbalance %", f"{method_name} bal.acc", f"{method_name} acc"]
    if baseline is not None:
        head += [f"{baseline_name} bal.acc", f"{baseline_name} acc", "gain bal.acc"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(name, imb, b, a, bb=None, ba=None):
        cells = [name, f"{imb:.1f}", f"{100 * b:.2f}", f"{100 * a:.2f}"]
        if bb is not None:
            cells += [f"{100 * bb:.2f}", f"{100 * ba:.2f}", f"{100 * (b - bb):+.2f}"]
        return "| " + " | ".join(cells) + " |"

    for i in order:
        extra = (
            (baseline["balanced_accuracy"][i], baseline["accuracy"][i])
            if baseline is not None
            else ()
        )
        rows.append(
            row(
                metrics["names"][i],
                metrics["imbalance"][i],
                metrics["balanced_accuracy"][i],
                metrics["accuracy"][i],
                *extra,
            )
        )
    extra = (
        (baseline["mean_balanced_accuracy"], baseline["mean_accuracy"])
        if baseline is not None
        else ()
    )
    rows.append(
        row(
            "**mean**",
            metrics["mean_imbalance"],
            metrics["mean_balanced_accuracy"],
            metrics["mean_accuracy"],
            *extra,
        )
    )
    return "\n".join(rows)


def plot_gain_vs_imbalance(
    balanced_accuracy,
    baseline_balanced_accuracy,
    imbalance,
    path: os.PathLike | str,
    *,
    names: Optional[Sequence[str]] = None,
    method_name: str = "LMLE",
    baseline_name: str = "baseline",
) -> str:
    """Bar chart of balanced-accuracy gain (percentage points) over a baseline per
    attribute, attributes sorted by increasing imbalance level, with the imbalance level
    drawn on a second axis (the LMLE talk's figure). Written as PNG with the Agg backend.

    Args:
      balanced_accuracy: ``[A]`` in [0, 1] for the method.
      baseline_balanced_accuracy: ``[A]`` in [0, 1] for the baseline.
      imbalance: ``[A]`` imbalance level in percent.
      path: output ``.png`` path (parent directories are created).
      names: optional attribute names for the x ticks.

    Returns:
      the path written.
    """
    # Figure + the Agg canvas directly: no pyplot, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    bal = np.asarray(balanced_accuracy, np.float64)
    base = np.asarray(baseline_balanced_accuracy, np.float64)
    imb = np.asarray(imbalance, np.float64)
    if not bal.shape == base.shape == imb.shape or bal.ndim != 1:
        raise ValueError(
            f"balanced_accuracy {bal.shape}, baseline {base.shape} and imbalance {imb.shape} "
            "must be equal 1-D shapes"
        )
    names = [str(i) for i in range(bal.size)] if names is None else list(names)
    if len(names) != bal.size:
        raise ValueError(f"{len(names)} names for {bal.size} attributes")
    path = os.fspath(path)
    if not path.lower().endswith(".png"):
        raise ValueError(f"the chart is written as PNG; got path {path!r}")
    order = np.argsort(imb, kind="stable")
    gain = 100.0 * (bal - base)[order]
    x = np.arange(bal.size)

    fig = Figure(figsize=(max(6.0, 0.28 * bal.size + 2), 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(
        x,
        gain,
        color=np.where(gain >= 0, "tab:blue", "tab:red"),
        label=f"{method_name} − {baseline_name}",
    )
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_ylabel("balanced accuracy gain (points)")
    ax.set_xticks(x)
    ax.set_xticklabels([names[i] for i in order], rotation=90, fontsize=7)
    ax2 = ax.twinx()
    ax2.plot(x, imb[order], color="tab:orange", marker=".", label="imbalance level")
    ax2.set_ylabel("imbalance level |pos. rate − 50| (%)")
    ax2.set_ylim(0, 50)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=8)
    ax.set_title(
        f"{method_name} vs {baseline_name}: gain by imbalance level "
        f"(mean gain {np.mean(gain):+.2f})"
    )
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png")
    return path
