"""LMLE's pure, jit-able pieces for `jaxface.tasks.attributes`: the class- and
cluster-balanced anchor weights, the per-attribute metric loss (LMLE's triple-header
hinge or the batch-hard triplet), k-means of every attribute and the cluster-wise kNN
rule over the resulting centroids."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxface import losses, ops

LOSSES = ("bce", "lmle", "triplet_knn")
#: The losses that shape an embedding (clustered and evaluated by the kNN rule).
METRIC_LOSSES = ("lmle", "triplet_knn")

__all__ = [
    "balanced_anchor_weights",
    "balanced_attribute_weights",
    "nearest_own_centroid",
    "metric_loss_per_attribute",
    "cluster_all_attributes",
    "knn_predict_all_attributes",
]


def balanced_anchor_weights(labels: jax.Array, clusters: jax.Array, *, k: int) -> jax.Array:
    """Per-anchor weights, summing to 1, under which every class present in the batch
    carries the same total weight, and within a class every cluster present does.

    ``w_i = 1 / (#classes present * #clusters of class y_i present * #points in (y_i, z_i))``.

    Args:
      labels: ``[B]`` int in {0, 1}.
      clusters: ``[B]`` int in ``[0, k)``, the cluster within the point's class.
      k: clusters per class (static).

    Returns:
      ``[B]`` float32.
    """
    g = labels * k + clusters
    cnt = jnp.sum(g[:, None] == g[None, :], axis=1)  # [B] >= 1
    present = jnp.sum(jax.nn.one_hot(g, 2 * k, dtype=jnp.int32), axis=0) > 0  # [2k]
    per_class = jnp.sum(present.reshape(2, k), axis=1)  # [2]
    num_classes = jnp.sum(per_class > 0)
    return 1.0 / (num_classes * per_class[labels] * cnt).astype(jnp.float32)


def balanced_attribute_weights(balanced_for: jax.Array, num_attributes: int) -> jax.Array:
    """``[A]`` weight of each attribute's metric loss when it applies only on batches
    balanced for that attribute: ``w_a = mean_i [balanced_for_i == a]``.

    Every record of a batch comes from the balanced batch of one attribute
    (`ClassBalancedSource`), so a per-step batch gives ``w = one_hot(a)`` and the step
    trains attribute ``a``'s embedding only; the weights sum to 1 (a batch that mixes
    slots of several balanced batches splits the weight by slot count).

    Args:
      balanced_for: ``[B]`` int, the attribute each record's batch was balanced for.
    """
    onehot = jax.nn.one_hot(balanced_for, num_attributes, dtype=jnp.float32)
    return jnp.mean(onehot, axis=0)


def nearest_own_centroid(
    emb: jax.Array, labels: jax.Array, centroids: jax.Array, valid: jax.Array
) -> jax.Array:
    """Cluster id of each point: its nearest valid centroid among its own class's.

    Args:
      emb: ``[B, D]``; labels: ``[B]`` in {0, 1}; centroids: ``[2, k, D]``; valid: ``[2, k]``.

    Returns:
      ``[B]`` int32 in ``[0, k)``.
    """
    own = centroids[labels]  # [B, k, D]
    d = jnp.sum((emb[:, None, :] - own) ** 2, axis=-1)  # [B, k]
    d = jnp.where(valid[labels], d, jnp.inf)
    return jnp.argmin(d, axis=-1).astype(jnp.int32)


def metric_loss_per_attribute(
    emb,
    labels,
    centroids,
    valid,
    pool_emb=None,
    pool_labels=None,
    pool_valid=None,
    *,
    loss: str,
    margins,
    triplet_margin: float,
):
    """LMLE (or triplet) loss of one attribute on one batch.

    Args:
      emb: ``[B, D]`` unit-norm embeddings of the attribute.
      labels: ``[B]`` {0, 1}.
      centroids, valid: ``[2, k, D]``, ``[2, k]`` the attribute's current clusters.
      pool_emb, pool_labels, pool_valid: optional ``[P, D]``, ``[P]``, ``[P]`` bool: a
        mining pool (embeddings of earlier batches, constants). The anchors are the
        batch's; their partners are mined from the batch and the pool together, with
        the pool's cluster ids from the same centroids.
      loss: ``"lmle"`` or ``"triplet_knn"``.

    Returns:
      ``(loss [], complete [] fraction of anchors with all partners, violated [] fraction
      of anchors with a positive loss)``.
    """
    k = centroids.shape[1]
    sg = jax.lax.stop_gradient(emb)
    if loss == "lmle":
        clusters = nearest_own_centroid(sg, labels, centroids, valid)
    else:
        clusters = jnp.zeros_like(labels)
    anchors = emb  # partners index `emb`, the batch's then (with a pool) the pool's rows
    if pool_emb is None:
        q = ops.mine_quintuplets(sg, labels, clusters)
    else:
        # Mine over batch + pool (the pool's rows as candidates only: the first B rows of
        # the quintuplets are the batch anchors'); partners index the concatenation.
        b = emb.shape[0]
        pool_emb = jax.lax.stop_gradient(pool_emb)
        pool_clusters = (
            nearest_own_centroid(pool_emb, pool_labels, centroids, valid)
            if loss == "lmle"
            else jnp.zeros_like(pool_labels)
        )
        q = ops.mine_quintuplets(
            jnp.concatenate([sg, pool_emb]),
            jnp.concatenate([labels, pool_labels]),
            jnp.concatenate([clusters, pool_clusters]),
            valid=jnp.concatenate([jnp.ones((b,), bool), pool_valid]),
        )
        q = jax.tree.map(lambda x: x[:b], q)
        emb = jnp.concatenate([emb, pool_emb])
    if loss == "lmle":
        per = losses.triple_header_hinge(
            anchors,
            emb[q.pos_cluster],
            emb[q.neg_cluster],
            emb[q.pos_far],
            emb[q.neg_class],
            margins=tuple(margins),
            where=ops.header_mask(q.valid),
        )
        complete = jnp.all(q.valid, axis=-1)
        w = balanced_anchor_weights(labels, clusters, k=k)
    else:
        ok = q.valid[:, 2] & q.valid[:, 3]
        per = losses.triplet_margin(
            anchors, emb[q.pos_far], emb[q.neg_class], margin=triplet_margin, where=ok
        )
        complete = ok
        w = balanced_anchor_weights(labels, clusters, k=1)
    return (
        jnp.sum(w * per),
        jnp.mean(complete.astype(jnp.float32)),
        jnp.mean((per > 0).astype(jnp.float32)),
    )


@functools.partial(jax.jit, static_argnames=("k", "max_iters", "cluster_size"))
def cluster_all_attributes(key, emb, labels, *, k: int, max_iters: int, cluster_size=None):
    """`kmeans_per_class` (2 classes) for every attribute.

    Args:
      key: PRNG key. emb: ``[N, A, D]``. labels: ``[N, A]`` {0, 1}.
      k: clusters per class, or their cap with ``cluster_size``.
      cluster_size: None, or the points per cluster (each class of each attribute gets
        ``clip(round(n_c / cluster_size), 1, k)`` clusters).

    Returns:
      dict: centroids ``[A, 2, k, D]``, centroid_valid ``[A, 2, k]``, counts ``[A, 2, k]``,
      inertia ``[A, 2]``.
    """
    keys = jax.random.split(key, emb.shape[1])

    def one(kk, e, y):
        r = ops.kmeans_per_class(
            kk, e, y, num_classes=2, k=k, max_iters=max_iters, cluster_size=cluster_size
        )
        return r.centroids, r.valid, r.counts, r.inertia

    c, v, n, i = jax.vmap(one, in_axes=(0, 1, 1))(keys, emb, labels.astype(jnp.int32))
    return {"centroids": c, "centroid_valid": v, "counts": n, "inertia": i}


@functools.partial(jax.jit, static_argnames=("k",))
def knn_predict_all_attributes(emb, centroids, valid, *, k: int):
    """`cluster_knn_predict` per attribute over its ``2 * kc`` class centroids.

    Args:
      emb: ``[T, A, D]``; centroids: ``[A, 2, kc, D]``; valid: ``[A, 2, kc]``.

    Returns:
      ``[T, A]`` int32 predictions in {0, 1} (-1 where no centroid is valid).
    """
    a, _, kc, d = centroids.shape
    flat_labels = jnp.repeat(jnp.arange(2, dtype=jnp.int32), kc)
    pred = jax.vmap(
        lambda q, c, v: ops.cluster_knn_predict(q, c, flat_labels, k=k, centroid_valid=v),
        in_axes=(1, 0, 0),
    )(emb, centroids.reshape(a, 2 * kc, d), valid.reshape(a, 2 * kc))
    return pred.T
