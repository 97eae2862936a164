"""Quintuplet mining against a brute-force NumPy search; the balanced sampler."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.losses import triple_header_hinge
from jaxface.ops import (
    BalancedQuintupletSampler,
    balanced_batch_indices,
    header_mask,
    mine_quintuplets,
)


def brute_force(x, labels, clusters, valid):
    """Loop over anchors and candidates; returns per partner (best distance or None)."""
    x = np.asarray(x, np.float64)
    b = len(x)
    out = {k: [] for k in ("pc", "nc", "pf", "n")}
    for a in range(b):
        cand = collections.defaultdict(list)
        if valid[a]:
            for j in range(b):
                if j == a or not valid[j]:
                    continue
                d = float(((x[a] - x[j]) ** 2).sum())
                if labels[j] == labels[a]:
                    cand["pf"].append((d, j))
                    if clusters[j] == clusters[a]:
                        cand["pc"].append((d, j))
                    else:
                        cand["nc"].append((d, j))
                else:
                    cand["n"].append((d, j))
        out["pc"].append(max(cand["pc"], key=lambda t: (t[0], -t[1])) if cand["pc"] else None)
        out["pf"].append(max(cand["pf"], key=lambda t: (t[0], -t[1])) if cand["pf"] else None)
        out["nc"].append(min(cand["nc"]) if cand["nc"] else None)
        out["n"].append(min(cand["n"]) if cand["n"] else None)
    return out


def _dist(x, i, j):
    x = np.asarray(x, np.float64)
    return float(((x[i] - x[j]) ** 2).sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mining_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    b, d = 24, 6
    x = rng.normal(size=(b, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = rng.integers(0, 3, b)
    clusters = rng.integers(0, 3, b)  # per-class ids: (label, cluster) is the group
    # Force edge cases: a singleton group (no p+), a class with one cluster (no p-), a
    # class with one point (no p+, p-, p--), padding.
    labels[0], clusters[0] = 5, 0  # only member of class 5
    labels[1:3], clusters[1:3] = 6, 0  # class 6: one cluster of two
    valid = rng.random(b) > 0.15
    valid[:3] = True
    q = jax.jit(mine_quintuplets)(
        jnp.asarray(x), jnp.asarray(labels), jnp.asarray(clusters), valid=jnp.asarray(valid)
    )
    ref = brute_force(x, labels, clusters, valid)
    got = {"pc": q.pos_cluster, "nc": q.neg_cluster, "pf": q.pos_far, "n": q.neg_class}
    assert q.valid.shape == (b, 4)
    for col, key in enumerate(("pc", "nc", "pf", "n")):
        idx = np.asarray(got[key])
        ok = np.asarray(q.valid[:, col])
        for a in range(b):
            r = ref[key][a]
            assert ok[a] == (r is not None), (key, a)
            if r is None:
                assert idx[a] == a  # safe gather target
                continue
            j = int(idx[a])
            assert j != a and valid[j]
            # Chosen partner is in the right set and at the optimal distance.
            assert (labels[j] == labels[a]) == (key != "n")
            if key == "pc":
                assert clusters[j] == clusters[a]
            if key == "nc":
                assert clusters[j] != clusters[a]
            assert _dist(x, a, j) == pytest.approx(r[0], abs=1e-5)
            # Unique optimum (random data): the index itself must match.
            assert j == r[1]
    # The designed edge cases.
    assert np.asarray(q.valid[0]).tolist() == [False, False, False, True]
    assert np.asarray(q.valid[1]).tolist() == [True, False, True, True]
    assert not np.asarray(q.valid)[~valid].any()


def test_anchor_excluded_but_duplicates_count():
    # Two identical points in one cluster: each is the other's p+ (at distance 0).
    x = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    labels = jnp.array([0, 0, 0, 1])
    clusters = jnp.array([0, 0, 1, 0])
    q = mine_quintuplets(x, labels, clusters)
    assert q.pos_cluster.tolist()[:2] == [1, 0]
    assert q.valid[:2, 0].all()
    assert q.neg_cluster.tolist()[:3] == [2, 2, 0]  # point 2 alone in its cluster: p- = 0
    assert q.pos_far.tolist()[:3] == [2, 2, 0]
    assert q.neg_class.tolist() == [3, 3, 3, 2]  # the nearest: 2 is at D=2, 0 and 1 at D=4
    assert not bool(q.valid[2, 0]) and not bool(q.valid[3, 0])


def test_mined_quintuplets_feed_the_loss():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(16, 4)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 2, 16))
    clusters = jnp.asarray(rng.integers(0, 2, 16))

    @jax.jit
    def loss(x):
        q = mine_quintuplets(jax.lax.stop_gradient(x), labels, clusters)
        per = triple_header_hinge(
            x,
            x[q.pos_cluster],
            x[q.neg_cluster],
            x[q.pos_far],
            x[q.neg_class],
            where=header_mask(q.valid),
        )
        return per.mean()

    val, grad = jax.value_and_grad(loss)(x)
    assert np.isfinite(val) and val > 0 and np.isfinite(grad).all()


def test_mining_vmaps_over_attributes():
    rng = np.random.default_rng(4)
    emb = jnp.asarray(rng.normal(size=(3, 10, 4)), jnp.float32)  # [A, B, E]
    labels = jnp.asarray(rng.integers(0, 2, (3, 10)))
    clusters = jnp.asarray(rng.integers(0, 2, (3, 10)))
    batched = jax.vmap(mine_quintuplets)(emb, labels, clusters)
    for a in range(3):
        single = mine_quintuplets(emb[a], labels[a], clusters[a])
        for got, want in zip(batched, single):
            np.testing.assert_array_equal(got[a], want)


def test_header_mask():
    v = jnp.array([[1, 1, 1, 1], [1, 0, 1, 1], [0, 1, 1, 0]], bool)
    assert header_mask(v).tolist() == [
        [True, True, True],
        [False, False, True],
        [False, True, False],
    ]


def test_balanced_batch_indices_equal_per_class_and_cluster():
    rng = np.random.default_rng(0)
    n = 1000
    labels = (rng.random(n) < 0.05).astype(int)  # 5% positives: imbalanced attribute
    clusters = np.where(labels == 1, rng.integers(0, 2, n), rng.integers(0, 4, n))
    idx = balanced_batch_indices(labels, clusters, batch_size=64, rng=np.random.default_rng(1))
    assert idx.shape == (64,)
    per_class = np.bincount(labels[idx], minlength=2)
    assert per_class.tolist() == [32, 32]
    neg = collections.Counter(clusters[idx][labels[idx] == 0])
    pos = collections.Counter(clusters[idx][labels[idx] == 1])
    assert sorted(neg.values()) == [8, 8, 8, 8]
    assert sorted(pos.values()) == [16, 16]
    # Without replacement when a group is large enough.
    assert len(set(idx[labels[idx] == 0].tolist())) == 32
    # Uneven split: shares differ by at most one.
    idx = balanced_batch_indices(labels, clusters, batch_size=30, rng=np.random.default_rng(2))
    counts = collections.Counter(zip(labels[idx], clusters[idx]))
    assert sum(counts.values()) == 30
    assert np.bincount(labels[idx]).tolist() == [15, 15]
    assert sorted(counts[(1, z)] for z in (0, 1)) == [7, 8]
    assert sorted(counts[(0, z)] for z in range(4)) == [3, 4, 4, 4]


def test_balanced_batch_small_group_with_replacement_and_valid():
    labels = np.array([0] * 20 + [1] * 2)
    clusters = np.zeros(22, int)
    valid = np.ones(22, bool)
    valid[5] = False
    idx = balanced_batch_indices(
        labels, clusters, batch_size=16, rng=np.random.default_rng(0), valid=valid
    )
    assert (labels[idx] == 1).sum() == 8 and set(idx[labels[idx] == 1]) <= {20, 21}
    assert 5 not in idx
    with pytest.raises(ValueError, match="masked"):
        balanced_batch_indices(
            labels, clusters, batch_size=4, rng=np.random.default_rng(0), valid=np.zeros(22, bool)
        )


def test_sampler_deterministic_and_round_robin():
    rng = np.random.default_rng(0)
    labels = np.where(rng.random((200, 3)) < 0.2, 1, -1)  # CelebA's {-1, 1}
    clusters = rng.integers(0, 3, (200, 3))
    s1 = BalancedQuintupletSampler(labels, clusters, batch_size=12, seed=7)
    s2 = BalancedQuintupletSampler(labels, clusters, batch_size=12, seed=7)
    it = iter(s1)
    first = [next(it) for _ in range(4)]
    assert [a for a, _ in first] == [0, 1, 2, 0]
    for step, (a, idx) in enumerate(first):
        a2, idx2 = s2.batch(step)
        assert a == a2 and np.array_equal(idx, idx2)
        assert np.bincount(labels[idx, a] > 0, minlength=2).tolist() == [6, 6]
    other = BalancedQuintupletSampler(labels, clusters, batch_size=12, seed=8)
    assert not all(np.array_equal(other.batch(s)[1], first[s][1]) for s in range(4))
    with pytest.raises(ValueError, match="clusters"):
        s1.set_clusters(clusters[:, :2])
