"""jaxface.evaluation.stats against a loop reference, and coverage on a known distribution."""

import numpy as np
import pytest

from jaxface.evaluation import stats


def _loop_bootstrap(metric, n, n_boot, seed):
    """Reference: one resample at a time, ``rng.integers(0, n, n)``, the metric of it."""
    rng = np.random.default_rng(seed)
    return np.array([metric(rng.integers(0, n, size=n)) for _ in range(n_boot)])


def _loop_percentiles(reps, confidence):
    s = np.sort(reps)
    out = []
    for q in ((1 - confidence) / 2, 1 - (1 - confidence) / 2):
        # Linear interpolation between order statistics (NumPy's default "linear").
        pos = q * (len(s) - 1)
        lo = int(np.floor(pos))
        hi = min(lo + 1, len(s) - 1)
        out.append(s[lo] + (pos - lo) * (s[hi] - s[lo]))
    return out


def test_indices_chunks_reproduce_row_by_row_draws():
    rows = np.concatenate(list(stats.bootstrap_indices(17, 50, seed=3, chunk=7)))
    rng = np.random.default_rng(3)
    ref = np.stack([rng.integers(0, 17, size=17) for _ in range(50)])
    np.testing.assert_array_equal(rows, ref)


@pytest.mark.parametrize("chunk", [1, 64, 1000])
def test_mean_ci_matches_loop_reference(chunk):
    x = np.random.default_rng(0).exponential(size=83)
    res = stats.bootstrap_ci(x, n_boot=300, seed=11, confidence=0.9, chunk=chunk)
    ref = _loop_bootstrap(lambda i: x[i].mean(), 83, 300, 11)
    np.testing.assert_allclose(res.replicates, ref, rtol=1e-12)
    lo, hi = _loop_percentiles(ref, 0.9)
    assert res.low == pytest.approx(lo) and res.high == pytest.approx(hi)
    assert res.estimate == pytest.approx(x.mean())


def test_metric_fn_and_vectorized_metric_fn_agree_with_reference():
    # Balanced accuracy of thresholded scores, a metric that is not a mean of units.
    rng = np.random.default_rng(1)
    y = rng.random(120) < 0.2
    s = y + rng.normal(scale=1.0, size=120)

    def bal_acc(i):
        yy, pp = y[i], s[i] > 0.5
        return 0.5 * (np.mean(pp[yy]) + np.mean(~pp[~yy]))

    def bal_acc_rows(idx):
        yy, pp = y[idx], s[idx] > 0.5
        tpr = (pp & yy).sum(1) / yy.sum(1)
        tnr = (~pp & ~yy).sum(1) / (~yy).sum(1)
        return 0.5 * (tpr + tnr)

    ref = _loop_bootstrap(bal_acc, 120, 200, 5)
    a = stats.bootstrap_ci(metric_fn=bal_acc, n_units=120, n_boot=200, seed=5)
    b = stats.bootstrap_ci(
        metric_fn=bal_acc_rows, n_units=120, n_boot=200, seed=5, vectorized=True, chunk=33
    )
    np.testing.assert_allclose(a.replicates, ref)
    np.testing.assert_allclose(b.replicates, ref)
    assert a.estimate == pytest.approx(bal_acc(np.arange(120)))
    assert (a.low, a.high) == pytest.approx((b.low, b.high))


def test_paired_difference_matches_loop_reference_and_is_narrower():
    rng = np.random.default_rng(2)
    hard = rng.normal(size=200)  # a per-unit difficulty shared by both systems
    a = hard + 0.1 + 0.2 * rng.normal(size=200)
    b = hard + 0.2 * rng.normal(size=200)
    res = stats.paired_bootstrap(a, b, n_boot=400, seed=9)
    ref = _loop_bootstrap(lambda i: a[i].mean() - b[i].mean(), 200, 400, 9)
    np.testing.assert_allclose(res.replicates, ref, rtol=1e-10, atol=1e-12)
    assert res.estimate == pytest.approx(a.mean() - b.mean())
    assert (res.estimate_a, res.estimate_b) == pytest.approx((a.mean(), b.mean()))
    lo, hi = _loop_percentiles(ref, 0.95)
    assert (res.low, res.high) == pytest.approx((lo, hi))
    # Pairing removes the shared difficulty: far narrower than either system's own interval.
    ca = stats.bootstrap_ci(a, n_boot=400, seed=9)
    assert (res.high - res.low) < 0.5 * (ca.high - ca.low)
    assert res.low > 0 and res.p_value < 0.01
    # Same system twice: a zero difference in every replicate, p = 1.
    same = stats.paired_bootstrap(a, a, n_boot=50, seed=0)
    assert same.low == same.high == 0.0 and same.p_value == 1.0


def test_paired_metric_fns_resample_the_same_units():
    rng = np.random.default_rng(4)
    x = rng.normal(size=60)
    seen = []

    def fa(i):
        seen.append(("a", i.copy()))
        return x[i].max()

    def fb(i):
        seen.append(("b", i.copy()))
        return x[i].min()

    res = stats.paired_bootstrap(metric_fn_a=fa, metric_fn_b=fb, n_units=60, n_boot=20, seed=1)
    a_rows = [i for t, i in seen if t == "a"][1:]  # the first call is the full set
    b_rows = [i for t, i in seen if t == "b"][1:]
    for ia, ib in zip(a_rows, b_rows):
        np.testing.assert_array_equal(ia, ib)
    ref = _loop_bootstrap(lambda i: x[i].max() - x[i].min(), 60, 20, 1)
    np.testing.assert_allclose(res.replicates, ref)


def test_items_of_units_expands_resampled_identities():
    unit_of_item = np.array([2, 0, 2, 1, 0, 2])
    got = stats.items_of_units(unit_of_item, np.array([2, 2, 1, 3]))
    # Loop reference: each drawn unit's items, in item order, a unit drawn twice twice.
    ref = [j for u in [2, 2, 1, 3] for j in range(len(unit_of_item)) if unit_of_item[j] == u]
    np.testing.assert_array_equal(got, ref)
    assert stats.items_of_units(unit_of_item, np.array([5])).size == 0


def test_identity_resampling_with_a_pair_metric():
    # Pairs grouped by identity; resampling identities, the metric over their pairs.
    rng = np.random.default_rng(6)
    ident = rng.integers(0, 30, size=300)
    score = rng.normal(size=300)

    def metric(units):
        return score[stats.items_of_units(ident, units)].mean()

    res = stats.bootstrap_ci(metric_fn=metric, n_units=30, n_boot=100, seed=2)
    ref = _loop_bootstrap(
        lambda u: np.mean(np.concatenate([score[ident == k] for k in u])), 30, 100, 2
    )
    np.testing.assert_allclose(res.replicates, ref)


def test_percentile_ci_covers_normal_mean_about_95_percent():
    # 400 experiments of 50 N(1, 2^2) samples: the 95% interval of the mean should cover 1
    # in ~95% of them (the percentile bootstrap undercovers slightly at n = 50).
    rng = np.random.default_rng(123)
    covered = 0
    trials = 400
    for t in range(trials):
        x = rng.normal(1.0, 2.0, size=50)
        r = stats.bootstrap_ci(x, n_boot=500, seed=t)
        covered += r.low <= 1.0 <= r.high
    assert 0.90 <= covered / trials <= 0.98


def test_nan_replicates_are_dropped_and_errors():
    assert stats.percentile_interval([np.nan, 1.0, 2.0, 3.0], 0.5) == pytest.approx((1.5, 2.5))
    with pytest.raises(ValueError):
        stats.bootstrap_ci(np.ones(3), metric_fn=lambda i: 0.0)
    with pytest.raises(ValueError):
        stats.bootstrap_ci(metric_fn=lambda i: 0.0)
    with pytest.raises(ValueError):
        stats.paired_bootstrap(np.ones(3), np.ones(4))
    with pytest.raises(ValueError):
        stats.percentile_interval([1.0], 1.5)
