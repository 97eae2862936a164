"""k-means with k-means++ initialisation in JAX: fixed ``k``, masked, per class, jit-able.

LMLE clusters the embeddings of each class separately and re-clusters every N steps
(Huang et al., CVPR 2016). Everything here has fixed shapes so it compiles once and can be vmapped
over classes: a class is selected by a boolean ``mask`` over the points rather than by
slicing, so every class runs on the same ``[N, D]`` array.

Empty clusters (documented behaviour):

* k-means++ draws each new centre with probability proportional to the squared distance
  to the nearest centre already chosen. When that distance is 0 for every selected point
  (fewer distinct points than ``k``) it draws uniformly among the selected points, which
  duplicates a centre. When the mask selects no point at all, centres are drawn from all
  points, and every cluster ends empty.
* In Lloyd's iterations a cluster that receives no point keeps its previous centroid (no
  relocation), so results are deterministic given the key. Points go to the lowest-index
  centroid among equidistant ones, so a duplicated centre stays empty forever.
* Every result carries ``counts`` and ``valid = counts > 0``; pass ``valid`` to
  `jaxface.ops.knn.cluster_knn_predict` as ``centroid_valid`` so empty clusters are never
  neighbours, and to the quintuplet sampler so they are never drawn from.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from jaxface.ops.knn import pairwise_sq_distances

__all__ = [
    "KMeansResult",
    "PerClassKMeansResult",
    "kmeans",
    "kmeans_per_class",
    "kmeans_plusplus_init",
    "clusters_for_sizes",
    "lloyd",
]


class KMeansResult(NamedTuple):
    """Output of `kmeans` / `lloyd` (leading ``[C]`` axis when vmapped over classes).

    Attributes:
      centroids: ``[k, D]``.
      assignments: ``[N]`` int32 cluster of each point; ``-1`` for masked-out points.
      counts: ``[k]`` int32 number of selected points per cluster.
      valid: ``[k]`` bool, ``counts > 0``.
      inertia: ``[]`` sum over selected points of the squared distance to their centroid.
      num_iters: ``[]`` int32 Lloyd iterations run.
    """

    centroids: jax.Array
    assignments: jax.Array
    counts: jax.Array
    valid: jax.Array
    inertia: jax.Array
    num_iters: jax.Array


class PerClassKMeansResult(NamedTuple):
    """Output of `kmeans_per_class`.

    Attributes:
      centroids: ``[C, k, D]`` per-class centroids.
      valid: ``[C, k]`` bool, non-empty clusters.
      counts: ``[C, k]`` int32.
      assignments: ``[N]`` int32 cluster of each point *within its own class*
        (``0..k-1``), ``-1`` for masked-out points or labels outside ``[0, C)``.
      inertia: ``[C]`` per-class inertia.
      flat_centroids: ``[C*k, D]`` all centroids, class-major (for the kNN classifier).
      flat_labels: ``[C*k]`` int32 class of each flat centroid.
      flat_valid: ``[C*k]`` bool.
    """

    centroids: jax.Array
    valid: jax.Array
    counts: jax.Array
    assignments: jax.Array
    inertia: jax.Array
    flat_centroids: jax.Array
    flat_labels: jax.Array
    flat_valid: jax.Array


def _as_mask(mask: Optional[jax.Array], n: int) -> jax.Array:
    if mask is None:
        return jnp.ones((n,), dtype=bool)
    mask = jnp.asarray(mask)
    if mask.shape != (n,) or mask.dtype != jnp.bool_:
        raise ValueError(f"`mask` must be bool [{n}], got {mask.dtype} {mask.shape}")
    return mask


def kmeans_plusplus_init(
    key: jax.Array, points: jax.Array, *, k: int, mask: Optional[jax.Array] = None
) -> jax.Array:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) restricted to ``mask``.

    The first centre is uniform over the selected points; each next one is drawn with
    probability ∝ squared distance to the nearest chosen centre (one candidate per step,
    no greedy trials). See the module docstring for the degenerate cases.

    Args:
      key: PRNG key.
      points: ``[N, D]``.
      k: number of centres (static).
      mask: optional bool ``[N]`` selecting the points to cluster.

    Returns:
      ``[k, D]`` initial centroids (copies of selected points).
    """
    n, _ = points.shape
    mask = _as_mask(mask, n)
    any_selected = jnp.any(mask)
    # With nothing selected, draw from all points (every cluster will end empty).
    pool = jnp.where(any_selected, mask, jnp.ones_like(mask))
    uniform_logits = jnp.where(pool, 0.0, -jnp.inf)
    keys = jax.random.split(key, k)
    first = jax.random.categorical(keys[0], uniform_logits)
    centres = jnp.zeros((k, points.shape[1]), points.dtype).at[0].set(points[first])
    min_d = jnp.sum((points - points[first]) ** 2, axis=-1)  # [N]

    def body(i, carry):
        centres, min_d = carry
        w = jnp.where(pool, min_d, 0.0)
        total = jnp.sum(w)
        logits = jnp.where(w > 0, jnp.log(jnp.where(w > 0, w, 1.0)), -jnp.inf)
        logits = jnp.where(total > 0, logits, uniform_logits)
        j = jax.random.categorical(keys[i], logits)
        c = points[j]
        centres = centres.at[i].set(c)
        min_d = jnp.minimum(min_d, jnp.sum((points - c) ** 2, axis=-1))
        return centres, min_d

    centres, _ = jax.lax.fori_loop(1, k, body, (centres, min_d))
    return centres


def _assign(points, centroids, mask, num_active=None):
    d = pairwise_sq_distances(points, centroids)  # [N, k]
    if num_active is not None:
        # Only the first `num_active` centroids take points; the others stay empty.
        d = jnp.where(jnp.arange(centroids.shape[0])[None, :] < num_active, d, jnp.inf)
    a = jnp.argmin(d, axis=-1).astype(jnp.int32)
    dmin = jnp.take_along_axis(d, a[:, None], axis=-1)[:, 0]
    return jnp.where(mask, a, -1), jnp.where(mask, dmin, 0.0)


def _update(points, centroids, assignments, mask):
    k = centroids.shape[0]
    onehot = (assignments[:, None] == jnp.arange(k)[None, :]) & mask[:, None]  # [N, k]
    w = onehot.astype(points.dtype)
    counts = jnp.sum(onehot, axis=0).astype(jnp.int32)
    sums = jnp.matmul(w.T, points, precision=jax.lax.Precision.HIGHEST)
    means = sums / jnp.maximum(counts, 1)[:, None].astype(points.dtype)
    return jnp.where((counts > 0)[:, None], means, centroids), counts


def lloyd(
    points: jax.Array,
    init_centroids: jax.Array,
    *,
    mask: Optional[jax.Array] = None,
    max_iters: int = 100,
    num_active: Optional[jax.Array] = None,
) -> KMeansResult:
    """Lloyd's iterations from given centroids until assignments stop changing.

    One iteration = assign every selected point to its nearest centroid (lowest index on
    ties), then move each non-empty centroid to the mean of its points (empty ones stay).
    Stops when an assignment step changes nothing or after ``max_iters`` iterations.
    The returned assignments, counts and inertia are those of the returned centroids.

    Args:
      points: ``[N, D]``.
      init_centroids: ``[k, D]``.
      mask: optional bool ``[N]``.
      max_iters: static bound on the iterations.
      num_active: optional int (may be traced): only centroids ``0..num_active-1`` are
        used; the others end empty (``valid`` False). Gives a data-dependent ``k`` under
        a static cap.

    Returns:
      `KMeansResult`.
    """
    n = points.shape[0]
    mask = _as_mask(mask, n)
    assign0, _ = _assign(points, init_centroids, mask, num_active)

    def cond(state):
        i, _, _, changed = state
        return (i < max_iters) & changed

    def body(state):
        i, centroids, assign, _ = state
        centroids, _ = _update(points, centroids, assign, mask)
        new_assign, _ = _assign(points, centroids, mask, num_active)
        return i + 1, centroids, new_assign, jnp.any(new_assign != assign)

    num_iters, centroids, assign, _ = jax.lax.while_loop(
        cond, body, (jnp.int32(0), init_centroids, assign0, jnp.bool_(True))
    )
    assign, dmin = _assign(points, centroids, mask, num_active)
    k = centroids.shape[0]
    counts = jnp.sum((assign[:, None] == jnp.arange(k)[None, :]) & mask[:, None], axis=0).astype(
        jnp.int32
    )
    return KMeansResult(
        centroids=centroids,
        assignments=assign,
        counts=counts,
        valid=counts > 0,
        inertia=jnp.sum(dmin),
        num_iters=num_iters,
    )


def kmeans(
    key: jax.Array,
    points: jax.Array,
    *,
    k: int,
    mask: Optional[jax.Array] = None,
    max_iters: int = 100,
    num_active: Optional[jax.Array] = None,
) -> KMeansResult:
    """k-means++ seeding followed by Lloyd's iterations, on the points selected by ``mask``.

    Args:
      key: PRNG key.
      points: ``[N, D]``.
      k: number of clusters (static).
      mask: optional bool ``[N]``; masked-out points neither seed nor move centroids and
        get assignment ``-1``.
      max_iters: static bound on Lloyd iterations.
      num_active: optional int (may be traced) ``<= k``: cluster into that many clusters
        only (seeded by the first ``num_active`` k-means++ centres); clusters
        ``num_active..k-1`` end empty.

    Returns:
      `KMeansResult`.
    """
    init = kmeans_plusplus_init(key, points, k=k, mask=mask)
    return lloyd(points, init, mask=mask, max_iters=max_iters, num_active=num_active)


def clusters_for_sizes(class_sizes, cluster_size, k_max: int):
    """``clip(round(class_sizes / cluster_size), 1, k_max)`` as int32 (half rounds up):
    the number of clusters of each class for clusters of roughly ``cluster_size`` points."""
    if cluster_size is not None and not isinstance(cluster_size, jax.Array):
        if cluster_size <= 0:
            raise ValueError(f"cluster_size={cluster_size} must be > 0")
    k = jnp.floor(jnp.asarray(class_sizes, jnp.float32) / cluster_size + 0.5)
    return jnp.clip(k, 1, k_max).astype(jnp.int32)


def kmeans_per_class(
    key: jax.Array,
    points: jax.Array,
    labels: jax.Array,
    *,
    num_classes: int,
    k: int,
    mask: Optional[jax.Array] = None,
    max_iters: int = 100,
    cluster_size: Optional[int] = None,
) -> PerClassKMeansResult:
    """k-means run separately on the points of every class, vmapped over classes.

    Class ``c`` clusters the points with ``labels == c`` (and ``mask``), with its own key
    ``jax.random.fold_in(key, c)``. LMLE uses one such clustering per attribute, with
    ``num_classes = 2``; vmap this function over attributes for all 40 at once.
    Every class scans all ``N`` points under its mask, so an iteration costs
    O(C N k D): cheap for binary attributes, wasteful for many classes.

    Args:
      key: PRNG key.
      points: ``[N, D]``.
      labels: ``[N]`` int class of each point.
      num_classes: ``C`` (static).
      k: clusters per class (static); with ``cluster_size``, the cap.
      mask: optional bool ``[N]`` (e.g. padding).
      max_iters: static bound on Lloyd iterations.
      cluster_size: optional target number of points per cluster. Class ``c`` with
        ``n_c`` points then gets ``k_c = clip(round(n_c / cluster_size), 1, k)``
        clusters (LMLE's clusters of roughly equal size: a majority class gets
        proportionally more clusters than a minority one); its clusters ``k_c..k-1`` are
        empty (``valid`` False). None: ``k`` clusters for every class.

    Returns:
      `PerClassKMeansResult`.
    """
    n, d = points.shape
    mask = _as_mask(mask, n)
    if labels.shape != (n,):
        raise ValueError(f"labels has shape {labels.shape}, expected ({n},)")
    classes = jnp.arange(num_classes)
    class_masks = (labels[None, :] == classes[:, None]) & mask[None, :]  # [C, N]
    keys = jax.vmap(lambda c: jax.random.fold_in(key, c))(classes)
    if cluster_size is None:
        res = jax.vmap(lambda kk, m: kmeans(kk, points, k=k, mask=m, max_iters=max_iters))(
            keys, class_masks
        )
    else:
        res = jax.vmap(
            lambda kk, m, a: kmeans(kk, points, k=k, mask=m, max_iters=max_iters, num_active=a)
        )(keys, class_masks, clusters_for_sizes(jnp.sum(class_masks, axis=1), cluster_size, k))
    in_range = (labels >= 0) & (labels < num_classes) & mask
    safe = jnp.clip(labels, 0, num_classes - 1)
    own = jnp.take_along_axis(res.assignments, safe[None, :], axis=0)[0]  # [N]
    assignments = jnp.where(in_range, own, -1)
    return PerClassKMeansResult(
        centroids=res.centroids,
        valid=res.valid,
        counts=res.counts,
        assignments=assignments,
        inertia=res.inertia,
        flat_centroids=res.centroids.reshape(num_classes * k, d),
        flat_labels=jnp.repeat(classes.astype(jnp.int32), k),
        flat_valid=res.valid.reshape(num_classes * k),
    )
