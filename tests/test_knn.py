"""Cluster-wise kNN rule against a NumPy reference, on cases that hit both branches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.ops import cluster_knn_predict, pairwise_sq_distances

knn_jit = jax.jit(cluster_knn_predict, static_argnames="k")


def np_cluster_knn(queries, centroids, labels, k, valid=None):
    """Literal transcription of the rule; returns (predictions, branch) per query."""
    q = np.asarray(queries, np.float64)
    c = np.asarray(centroids, np.float64)
    labels = np.asarray(labels)
    valid = np.ones(len(c), bool) if valid is None else np.asarray(valid)
    preds, branches = [], []
    for x in q:
        d = ((c - x) ** 2).sum(-1)
        order = [i for i in np.argsort(d, kind="stable") if valid[i]][:k]
        if not order:
            preds.append(-1)
            branches.append("none")
            continue
        phi = [(d[i], labels[i]) for i in order]
        classes = sorted({y for _, y in phi})
        if len(classes) == 1:
            preds.append(classes[0])
            branches.append("unanimous")
            continue
        best, best_c = -np.inf, None
        for cls in classes:
            other = min(dd for dd, y in phi if y != cls)
            own = max(dd for dd, y in phi if y == cls)
            if other - own > best:
                best, best_c = other - own, cls
        preds.append(best_c)
        branches.append("margin")
    return np.array(preds), np.array(branches)


def test_pairwise_sq_distances():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(4, 3))
    ref = ((x[:, None] - y[None]) ** 2).sum(-1)
    np.testing.assert_allclose(
        pairwise_sq_distances(jnp.asarray(x), jnp.asarray(y)), ref, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("seed,num_classes,k", [(0, 2, 5), (1, 2, 3), (2, 4, 6)])
def test_matches_numpy_reference_both_branches(seed, num_classes, k):
    rng = np.random.default_rng(seed)
    m, d = 24, 4
    centroids = rng.normal(size=(m, d)).astype(np.float32)
    labels = rng.integers(0, num_classes, m)
    # Queries near single centroids and spread ones: mostly mixed neighbourhoods.
    near = centroids[rng.integers(0, m, 40)] + 0.05 * rng.normal(size=(40, d))
    far = rng.normal(size=(60, d))
    queries = np.concatenate([near, far]).astype(np.float32)
    # Make the unanimous branch certain for a few queries: a tight same-class cluster of
    # k centroids far from everything else.
    group = (10.0 + 0.01 * rng.normal(size=(k, d))).astype(np.float32)
    centroids = np.concatenate([centroids, group])
    labels = np.concatenate([labels, np.full(k, 1)])
    queries = np.concatenate([queries, group[:2] + 0.001]).astype(np.float32)
    got = knn_jit(jnp.asarray(queries), jnp.asarray(centroids), jnp.asarray(labels), k=k)
    ref, branch = np_cluster_knn(queries, centroids, labels, k)
    assert (branch == "unanimous").sum() >= 2 and (branch == "margin").sum() >= 10
    np.testing.assert_array_equal(np.asarray(got), ref)


def test_margin_branch_hand_case():
    # 1-D: query at 0. Class 0 centroids at D = 1, 9 (|x| = 1, 3); class 1 at D = 4 (x=2).
    # k = 3 -> mixed. Score(0) = min other (4) - max own (9) = -5;
    #                 score(1) = min other (1) - max own (4) = -3 -> predict 1,
    # although the nearest centroid and the majority are class 0.
    c = jnp.array([[1.0], [3.0], [2.0], [50.0]])
    y = jnp.array([0, 0, 1, 1])
    q = jnp.zeros((1, 1))
    assert knn_jit(q, c, y, k=3).tolist() == [1]
    assert np_cluster_knn(q, c, y, 3)[0].tolist() == [1]
    # k = 1: unanimous branch, nearest class.
    assert knn_jit(q, c, y, k=1).tolist() == [0]


def test_invalid_centroids_are_never_neighbours():
    rng = np.random.default_rng(3)
    centroids = rng.normal(size=(12, 3)).astype(np.float32)
    labels = rng.integers(0, 2, 12)
    valid = rng.random(12) > 0.4
    queries = rng.normal(size=(30, 3)).astype(np.float32)
    got = knn_jit(
        jnp.asarray(queries),
        jnp.asarray(centroids),
        jnp.asarray(labels),
        k=4,
        centroid_valid=jnp.asarray(valid),
    )
    ref, _ = np_cluster_knn(queries, centroids, labels, 4, valid)
    np.testing.assert_array_equal(np.asarray(got), ref)
    # Fewer valid centroids than k, and none at all.
    few = np.zeros(12, bool)
    few[[2, 5]] = True
    got = knn_jit(
        jnp.asarray(queries),
        jnp.asarray(centroids),
        jnp.asarray(labels),
        k=4,
        centroid_valid=jnp.asarray(few),
    )
    np.testing.assert_array_equal(
        np.asarray(got), np_cluster_knn(queries, centroids, labels, 4, few)[0]
    )
    got = knn_jit(
        jnp.asarray(queries),
        jnp.asarray(centroids),
        jnp.asarray(labels),
        k=4,
        centroid_valid=jnp.zeros(12, bool),
    )
    assert (np.asarray(got) == -1).all()


def test_vmaps_over_attributes():
    rng = np.random.default_rng(4)
    q = jnp.asarray(rng.normal(size=(3, 10, 2)), jnp.float32)  # [A, Q, D]
    c = jnp.asarray(rng.normal(size=(3, 8, 2)), jnp.float32)  # [A, M, D]
    y = jnp.asarray(rng.integers(0, 2, (3, 8)))
    got = jax.vmap(lambda q, c, y: cluster_knn_predict(q, c, y, k=4))(q, c, y)
    for a in range(3):
        np.testing.assert_array_equal(got[a], np_cluster_knn(q[a], c[a], y[a], 4)[0])


def test_rejects_bad_k():
    with pytest.raises(ValueError, match="k=5"):
        knn_jit(jnp.zeros((1, 2)), jnp.zeros((4, 2)), jnp.zeros(4, int), k=5)
