"""k-means (k-means++ init) in JAX against a NumPy Lloyd's reference and sklearn."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.ops import kmeans, kmeans_per_class, kmeans_plusplus_init, lloyd

# One compiled function per shape, reused across calls (eager loops compile every call).
kmeans_jit = jax.jit(kmeans, static_argnames=("k", "max_iters"))


def np_lloyd(points, init, mask, max_iters=100):
    """Plain NumPy Lloyd's: lowest index on ties, empty clusters keep their centroid."""
    x = np.asarray(points, np.float64)[mask]
    c = np.asarray(init, np.float64).copy()

    def assign(c):
        return ((x[:, None] - c[None]) ** 2).sum(-1).argmin(-1)

    a = assign(c)
    for _ in range(max_iters):
        for j in range(len(c)):
            if (a == j).any():
                c[j] = x[a == j].mean(0)
        new = assign(c)
        if (new == a).all():
            break
        a = new
    a = assign(c)
    inertia = ((x - c[a]) ** 2).sum()
    return c, a, inertia


def blobs(seed, n=300, d=3, centers=4, spread=0.4):
    rng = np.random.default_rng(seed)
    mu = rng.normal(scale=4.0, size=(centers, d))
    lab = rng.integers(0, centers, n)
    return (mu[lab] + spread * rng.normal(size=(n, d))).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1])
def test_lloyd_matches_numpy_from_same_init(seed):
    x = blobs(seed, spread=1.5)  # overlapping blobs: several iterations needed
    rng = np.random.default_rng(seed + 10)
    mask = rng.random(len(x)) > 0.2
    k = 5
    init = jax.jit(kmeans_plusplus_init, static_argnames="k")(
        jax.random.PRNGKey(seed), jnp.asarray(x), k=k, mask=jnp.asarray(mask)
    )
    res = jax.jit(lloyd)(jnp.asarray(x), init, mask=jnp.asarray(mask))
    c_ref, a_ref, inertia_ref = np_lloyd(x, init, mask)
    np.testing.assert_allclose(res.centroids, c_ref, rtol=1e-4, atol=1e-4)
    assert np.array_equal(np.asarray(res.assignments)[mask], a_ref)
    assert (np.asarray(res.assignments)[~mask] == -1).all()
    np.testing.assert_allclose(float(res.inertia), inertia_ref, rtol=1e-4)
    assert np.asarray(res.counts).sum() == mask.sum()
    assert int(res.num_iters) >= 1


def test_empty_cluster_keeps_its_centroid():
    x = blobs(6, n=120)
    init = np.concatenate([x[:3], np.full((1, 3), 100.0, np.float32)])  # 4th gets no point
    res = jax.jit(lloyd)(jnp.asarray(x), jnp.asarray(init))
    c_ref, a_ref, _ = np_lloyd(x, init, np.ones(len(x), bool))
    np.testing.assert_allclose(res.centroids, c_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(res.centroids[3], init[3])
    assert res.valid.tolist() == [True, True, True, False] and res.counts[3] == 0
    assert np.array_equal(np.asarray(res.assignments), a_ref)


def test_kmeans_plusplus_picks_selected_distinct_points():
    x = blobs(3)
    mask = np.zeros(len(x), bool)
    mask[::3] = True
    init = np.asarray(
        jax.jit(kmeans_plusplus_init, static_argnames="k")(
            jax.random.PRNGKey(0), jnp.asarray(x), k=4, mask=jnp.asarray(mask)
        )
    )
    selected = x[mask]
    for c in init:
        assert np.isclose(selected, c).all(-1).any()  # every centre is a selected point
    assert len({tuple(c) for c in init}) == 4


def test_inertia_close_to_sklearn():
    from sklearn.cluster import KMeans

    x = blobs(4, n=400, centers=4, spread=0.5)
    res = kmeans_jit(jax.random.PRNGKey(0), jnp.asarray(x), k=4)
    sk = KMeans(n_clusters=4, n_init=5, random_state=0).fit(x.astype(np.float64))
    assert float(res.inertia) <= sk.inertia_ * 1.001 + 1e-6
    # Same partition up to label permutation.
    ours = np.asarray(res.assignments)
    pairs = set(zip(ours.tolist(), sk.labels_.tolist()))
    assert len(pairs) == 4


def test_empty_clusters_and_degenerate_masks():
    # Two distinct points, k = 4: duplicates seeded, two clusters stay empty and invalid.
    x = jnp.array([[2.0, 2.0], [2.0, 2.0], [3.0, 3.0], [3.0, 3.0], [5.0, 5.0]])
    mask = jnp.array([True, True, True, True, False])
    res = kmeans_jit(jax.random.PRNGKey(0), x, k=4, mask=mask)
    assert int(res.valid.sum()) == 2 and int(res.counts.sum()) == 4
    # Every centroid, empty ones included, is still one of the selected points.
    for c in np.asarray(res.centroids):
        assert np.isclose(c, [2.0, 2.0]).all() or np.isclose(c, [3.0, 3.0]).all(), c
    assert float(res.inertia) == 0.0
    # Nothing selected: every cluster empty, nothing assigned.
    res = kmeans_jit(jax.random.PRNGKey(0), x, k=4, mask=jnp.zeros(5, bool))
    assert not res.valid.any() and (res.assignments == -1).all()
    assert np.isfinite(np.asarray(res.centroids)).all()
    with pytest.raises(ValueError, match="mask"):
        kmeans(jax.random.PRNGKey(0), x, k=2, mask=jnp.ones(4, bool))


def test_per_class_matches_single_class_runs():
    rng = np.random.default_rng(5)
    x = jnp.asarray(blobs(5, n=200, spread=1.0))
    labels = jnp.asarray(rng.integers(0, 2, 200))
    labels = labels.at[:3].set(7)  # out-of-range labels are ignored
    key = jax.random.PRNGKey(2)
    res = jax.jit(kmeans_per_class, static_argnames=("num_classes", "k"))(
        key, x, labels, num_classes=2, k=3
    )
    assert res.centroids.shape == (2, 3, 3) and res.flat_centroids.shape == (6, 3)
    assert res.flat_labels.tolist() == [0, 0, 0, 1, 1, 1]
    for c in range(2):
        single = kmeans_jit(jax.random.fold_in(key, c), x, k=3, mask=labels == c)
        np.testing.assert_allclose(res.centroids[c], single.centroids, rtol=1e-5, atol=1e-5)
        sel = np.asarray(labels == c)
        assert np.array_equal(np.asarray(res.assignments)[sel], np.asarray(single.assignments)[sel])
    assert (np.asarray(res.assignments)[:3] == -1).all()
    np.testing.assert_array_equal(res.flat_valid, res.valid.reshape(-1))


def test_cluster_size_gives_cluster_counts_proportional_to_class_sizes():
    rng = np.random.default_rng(0)
    pts = jnp.asarray(rng.normal(size=(1000, 4)).astype(np.float32))
    labels = jnp.asarray(np.r_[np.zeros(900, np.int32), np.ones(100, np.int32)])
    fn = jax.jit(
        kmeans_per_class, static_argnames=("num_classes", "k", "max_iters", "cluster_size")
    )
    res = fn(jax.random.key(1), pts, labels, num_classes=2, k=32, max_iters=20, cluster_size=50)
    # 900 / 50 = 18 clusters for the majority, 100 / 50 = 2 for the minority.
    np.testing.assert_array_equal(np.asarray(res.valid).sum(1), [18, 2])
    assert not np.asarray(res.valid)[0, 18:].any() and not np.asarray(res.valid)[1, 2:].any()
    counts = np.asarray(res.counts)
    assert counts[0].sum() == 900 and counts[1].sum() == 100
    # Roughly the asked size: mean 50 for both classes.
    assert counts[0][counts[0] > 0].mean() == 50 and counts[1][counts[1] > 0].mean() == 50
    a = np.asarray(res.assignments)
    assert a[:900].max() < 18 and a[900:].max() < 2
    # The cap: 900 / 10 = 90 clusters capped at 32; 100 / 10 = 10.
    capped = fn(jax.random.key(1), pts, labels, num_classes=2, k=32, max_iters=5, cluster_size=10)
    np.testing.assert_array_equal(np.asarray(capped.valid).sum(1), [32, 10])


def test_clusters_for_sizes_rounding_and_clip():
    from jaxface.ops import clusters_for_sizes

    got = clusters_for_sizes(jnp.array([0, 10, 74, 75, 1000]), 50, 8)
    np.testing.assert_array_equal(np.asarray(got), [1, 1, 1, 2, 8])
    with pytest.raises(ValueError):
        clusters_for_sizes(jnp.array([3]), 0, 4)
