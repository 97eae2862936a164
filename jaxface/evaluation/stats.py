"""Bootstrap confidence intervals and paired differences between two systems.

A metric computed on a test set (EER, AUC, TAR@FAR, AP, balanced accuracy, a mean) is a
function of the *units* that were sampled into the set: test identities, images, pairs.
The bootstrap (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993) redraws
``n`` units with replacement from the ``n`` units, recomputes the metric, and repeats
``n_boot`` times; the percentile interval is the ``(alpha/2, 1 - alpha/2)`` quantiles of
the replicates.

Two systems evaluated on the same units are compared with the *paired* bootstrap: every
replicate draws one set of units and computes both metrics on it, so the interval of the
difference keeps the correlation between the two systems (the units that are hard for one
are hard for the other) and is much narrower than the one of two independent intervals.

Two ways to give the metric:

* per-unit arrays ``values [n, ...]`` and a vectorised ``statistic`` that reduces axis 1 of
  the resampled ``[n_boot, n, ...]`` array (default: the mean), e.g. per-image AP for mAP,
  per-attribute-image correctness for accuracy, or ``(tp, positives)`` columns of which the
  statistic takes a ratio;
* ``metric_fn(indices)`` for metrics that are not means of per-unit values (EER, AUC,
  TAR@FAR, balanced accuracy): it receives one ``[n]`` array of unit indices (with
  repeats) and returns a float. `items_of_units` turns resampled units (identities)
  into the indices of their items (pairs, images), repeats included. With
  ``vectorized=True`` it receives a ``[chunk, n]`` array and returns ``[chunk]``.

Replicates are a pure function of ``seed``: row ``b`` of the indices is the ``b``-th draw
``np.random.default_rng(seed).integers(0, n, size=n)`` (generated in chunks of rows to
bound memory; the chunks reproduce the row-by-row draws exactly).
"""

from __future__ import annotations

from typing import Callable, Iterator, NamedTuple, Optional

import numpy as np

__all__ = [
    "BootstrapResult",
    "PairedBootstrapResult",
    "bootstrap_ci",
    "bootstrap_indices",
    "items_of_units",
    "paired_bootstrap",
    "percentile_interval",
]


class BootstrapResult(NamedTuple):
    """``estimate``: the metric on the original units; ``low`` / ``high``: the percentile
    interval; ``replicates``: ``[n_boot]`` metric of every resample; ``confidence``."""

    estimate: float
    low: float
    high: float
    replicates: np.ndarray
    confidence: float


class PairedBootstrapResult(NamedTuple):
    """Difference ``metric(a) - metric(b)`` on the same units.

    ``estimate`` / ``low`` / ``high`` / ``replicates`` are those of the difference;
    ``estimate_a`` / ``estimate_b`` the two metrics on the original units;
    ``p_value``: the two-sided bootstrap p-value of "no difference",
    ``min(1, 2 * min(P*(d <= 0), P*(d >= 0)))`` over the replicates ``d``.
    """

    estimate: float
    low: float
    high: float
    replicates: np.ndarray
    confidence: float
    estimate_a: float
    estimate_b: float
    p_value: float


def bootstrap_indices(
    n: int, n_boot: int, *, seed: int = 0, chunk: int = 256
) -> Iterator[np.ndarray]:
    """Yield the bootstrap resamples of ``n`` units as ``[<= chunk, n]`` int64 blocks.

    Row ``b`` over all blocks equals the ``b``-th call of ``rng.integers(0, n, size=n)``
    for ``rng = np.random.default_rng(seed)``.
    """
    if n < 1:
        raise ValueError(f"n={n}: need at least one unit to resample")
    if n_boot < 1:
        raise ValueError(f"n_boot={n_boot} must be >= 1")
    rng = np.random.default_rng(seed)
    chunk = max(1, int(chunk))
    for start in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - start)
        yield rng.integers(0, n, size=(rows, n), dtype=np.int64)


def percentile_interval(replicates, confidence: float = 0.95) -> tuple[float, float]:
    """The ``(alpha/2, 1 - alpha/2)`` percentiles of ``replicates`` (linear interpolation),
    ``alpha = 1 - confidence``; NaN replicates (a metric undefined on a resample) are
    dropped."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence} must be in (0, 1)")
    r = np.asarray(replicates, np.float64)
    r = r[~np.isnan(r)]
    if r.size == 0:
        return float("nan"), float("nan")
    alpha = 1.0 - confidence
    lo, hi = np.percentile(r, [100.0 * alpha / 2.0, 100.0 * (1.0 - alpha / 2.0)])
    return float(lo), float(hi)


def items_of_units(unit_of_item, units) -> np.ndarray:
    """Indices of the items of the resampled ``units``, a unit drawn twice giving its items
    twice (e.g. the verification pairs of resampled identities).

    Args:
      unit_of_item: ``[m]`` int, the unit of each item.
      units: ``[n]`` int, resampled unit ids (values of ``unit_of_item``).
    Returns:
      ``[sum of the units' item counts]`` int64 item indices, grouped by unit in the order
      of ``units``.
    """
    unit_of_item = np.asarray(unit_of_item)
    units = np.asarray(units)
    order = np.argsort(unit_of_item, kind="stable")
    sorted_units = unit_of_item[order]
    starts = np.searchsorted(sorted_units, units, side="left")
    ends = np.searchsorted(sorted_units, units, side="right")
    counts = ends - starts
    total = int(counts.sum())
    if total == 0:
        return np.zeros((0,), np.int64)
    # Position k of the output belongs to unit j = owner[k], at offset k - first[j].
    owner = np.repeat(np.arange(len(units)), counts)
    first = np.cumsum(counts) - counts
    offsets = np.arange(total) - first[owner]
    return order[starts[owner] + offsets].astype(np.int64)


def _mean_statistic(resampled: np.ndarray) -> np.ndarray:
    return resampled.mean(axis=1)


def _replicates(
    n: int,
    n_boot: int,
    seed: int,
    chunk: int,
    fns: tuple[Callable[[np.ndarray], np.ndarray], ...],
) -> list[np.ndarray]:
    """``[n_boot]`` replicates of each of ``fns`` (each maps ``[rows, n]`` indices to
    ``[rows]``), all on the same resamples."""
    out = [[] for _ in fns]
    for idx in bootstrap_indices(n, n_boot, seed=seed, chunk=chunk):
        for acc, fn in zip(out, fns):
            acc.append(np.asarray(fn(idx), np.float64).reshape(idx.shape[0]))
    return [np.concatenate(acc) for acc in out]


def _as_batched(
    values: Optional[np.ndarray],
    statistic: Optional[Callable],
    metric_fn: Optional[Callable],
    vectorized: bool,
    name: str,
):
    """(``[rows, n]`` indices -> ``[rows]``, the metric on the original units, n)."""
    if (values is None) == (metric_fn is None):
        raise ValueError(f"{name}: give exactly one of per-unit values or metric_fn")
    if values is not None:
        values = np.asarray(values)
        stat = statistic or _mean_statistic
        n = values.shape[0]

        def batched(idx):
            return stat(values[idx])

        estimate = float(np.asarray(stat(values[None])).reshape(()))
        return batched, estimate, n
    if vectorized:
        batched = metric_fn
    else:

        def batched(idx):
            return np.array([float(metric_fn(row)) for row in idx])

    return batched, None, None


def bootstrap_ci(
    values=None,
    *,
    metric_fn: Optional[Callable[[np.ndarray], float]] = None,
    n_units: Optional[int] = None,
    statistic: Optional[Callable[[np.ndarray], np.ndarray]] = None,
    vectorized: bool = False,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    chunk: int = 256,
) -> BootstrapResult:
    """Percentile bootstrap interval of a metric over resampled units.

    Args:
      values: ``[n, ...]`` per-unit values; the metric is ``statistic`` of them.
      metric_fn: instead of ``values``: the metric of a ``[n]`` array of unit indices
        (``[rows, n] -> [rows]`` with ``vectorized=True``); needs ``n_units``.
      n_units: the number of units (with ``metric_fn``).
      statistic: reduces axis 1 of ``[rows, n, ...]`` resampled values to ``[rows]``
        (default: the mean). It is also applied to ``values[None]`` for the estimate.
      n_boot: replicates. confidence: interval level. seed: the resamples' seed.
      chunk: replicates computed at once (memory ``chunk * n`` indices).
    Returns:
      `BootstrapResult`.
    """
    batched, estimate, n = _as_batched(values, statistic, metric_fn, vectorized, "bootstrap_ci")
    if n is None:
        if n_units is None:
            raise ValueError("bootstrap_ci: metric_fn needs n_units")
        n = int(n_units)
        estimate = float(np.asarray(batched(np.arange(n)[None])).reshape(()))
    (reps,) = _replicates(n, n_boot, seed, chunk, (batched,))
    lo, hi = percentile_interval(reps, confidence)
    return BootstrapResult(estimate, lo, hi, reps, float(confidence))


def paired_bootstrap(
    values_a=None,
    values_b=None,
    *,
    metric_fn_a: Optional[Callable[[np.ndarray], float]] = None,
    metric_fn_b: Optional[Callable[[np.ndarray], float]] = None,
    n_units: Optional[int] = None,
    statistic: Optional[Callable[[np.ndarray], np.ndarray]] = None,
    vectorized: bool = False,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    chunk: int = 256,
) -> PairedBootstrapResult:
    """Paired bootstrap of ``metric(a) - metric(b)``: both systems' metrics are computed on
    the same resampled units in every replicate.

    Give per-unit ``values_a`` / ``values_b`` (``[n, ...]``, unit ``i`` the same in both)
    with an optional vectorised ``statistic``, or ``metric_fn_a`` / ``metric_fn_b`` of unit
    indices with ``n_units`` (see `bootstrap_ci`).

    Returns:
      `PairedBootstrapResult`.
    """
    fa, ea, na = _as_batched(values_a, statistic, metric_fn_a, vectorized, "paired_bootstrap (a)")
    fb, eb, nb = _as_batched(values_b, statistic, metric_fn_b, vectorized, "paired_bootstrap (b)")
    if na is None or nb is None:
        if n_units is None:
            raise ValueError("paired_bootstrap: metric_fn_a / metric_fn_b need n_units")
        n = int(n_units)
        if na is not None and na != n or nb is not None and nb != n:
            raise ValueError(f"paired_bootstrap: values over {na or nb} units, n_units={n}")
        full = np.arange(n)[None]
        ea = float(np.asarray(fa(full)).reshape(())) if ea is None else ea
        eb = float(np.asarray(fb(full)).reshape(())) if eb is None else eb
    else:
        if na != nb:
            raise ValueError(f"paired_bootstrap: {na} units for a, {nb} for b (must be paired)")
        n = na
    ra, rb = _replicates(n, n_boot, seed, chunk, (fa, fb))
    diff = ra - rb
    lo, hi = percentile_interval(diff, confidence)
    d = diff[~np.isnan(diff)]
    if d.size:
        p = min(1.0, 2.0 * min(float(np.mean(d <= 0)), float(np.mean(d >= 0))))
    else:
        p = float("nan")
    return PairedBootstrapResult(ea - eb, lo, hi, diff, float(confidence), ea, eb, p)
