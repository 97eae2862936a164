"""LMLE quintuplets: on-device mining with fixed shapes, and a class/cluster-balanced sampler.

For an anchor ``a`` with class ``y_a`` and cluster ``z_a`` (clusters are per class, so
"same cluster" means same ``(class, cluster)`` pair — per-class k-means ids ``0..k-1`` can
be passed unchanged), with ``D`` the squared Euclidean distance (Huang et al., CVPR 2016):

* ``p+``  (pos_cluster): argmax D(a, j) over j ≠ a with y_j = y_a and z_j = z_a;
* ``p-``  (neg_cluster): argmin D(a, j) over j with y_j = y_a and z_j ≠ z_a;
* ``p--`` (pos_far):     argmax D(a, j) over j ≠ a with y_j = y_a (any cluster, its own
  included, so it may coincide with ``p+`` or ``p-``);
* ``n``   (neg_class):   argmin D(a, j) over j with y_j ≠ y_a.

**The anchor itself is never a candidate** for any of the four (it is excluded by index,
not by distance, so duplicates of the anchor at distance 0 are still candidates). Points
with ``valid = False`` (padding) are neither anchors nor candidates. Each index comes with
a flag saying its candidate set was non-empty; when it is empty the index is the anchor's
own index (a safe gather target) and the flag is False. Ties go to the lowest index.

The sampler (`balanced_batch_indices`, `BalancedQuintupletSampler`) runs on the host in
NumPy: a batch draws the same number of points from each class and, within a class, the
same number from each of its clusters, so every anchor tends to have all four partners.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxface.ops.knn import pairwise_sq_distances

__all__ = [
    "BalancedQuintupletSampler",
    "Quintuplets",
    "balanced_batch_indices",
    "header_mask",
    "mine_quintuplets",
]


class Quintuplets(NamedTuple):
    """Mined partner indices into the batch, each ``[B]`` int32, and validity ``[B, 4]``.

    ``valid[:, 0..3]`` flags ``pos_cluster``, ``neg_cluster``, ``pos_far``, ``neg_class``;
    an invalid anchor (``valid`` input False) has all four False.
    """

    pos_cluster: jax.Array
    neg_cluster: jax.Array
    pos_far: jax.Array
    neg_class: jax.Array
    valid: jax.Array


def header_mask(valid: jax.Array) -> jax.Array:
    """Per-header validity ``[B, 3]`` for `jaxface.losses.triple_header_hinge`'s ``where``.

    Header 1 compares ``p+`` with ``p-``, header 2 ``p-`` with ``p--``, header 3 ``p--``
    with ``n``; a header is valid when both of its partners exist.

    Args:
      valid: ``[B, 4]`` from `Quintuplets.valid`.

    Returns:
      ``[B, 3]`` bool.
    """
    return jnp.stack(
        [valid[:, 0] & valid[:, 1], valid[:, 1] & valid[:, 2], valid[:, 2] & valid[:, 3]], axis=-1
    )


def mine_quintuplets(
    embeddings: jax.Array,
    labels: jax.Array,
    clusters: jax.Array,
    *,
    valid: Optional[jax.Array] = None,
) -> Quintuplets:
    """Mine the LMLE quintuplet of every anchor in the batch (see the module docstring).

    Fixed shapes, O(B²) memory for the distance matrix, jit-able. Mining is a selection:
    wrap the inputs in ``jax.lax.stop_gradient`` (or gather embeddings afresh with the
    returned indices) when the loss should see gradients only through the gather.

    Args:
      embeddings: ``[B, D]``.
      labels: ``[B]`` int class of each point.
      clusters: ``[B]`` int cluster of each point (within its class).
      valid: optional bool ``[B]``; False marks padding.

    Returns:
      `Quintuplets` with ``[B]`` int32 indices and ``[B, 4]`` bool validity.
    """
    b = embeddings.shape[0]
    if labels.shape != (b,) or clusters.shape != (b,):
        raise ValueError(f"labels {labels.shape} and clusters {clusters.shape} must both be ({b},)")
    if valid is None:
        valid = jnp.ones((b,), dtype=bool)
    d = pairwise_sq_distances(embeddings, embeddings)  # [B, B]
    not_self = ~jnp.eye(b, dtype=bool)
    pair_ok = valid[:, None] & valid[None, :] & not_self
    same_class = labels[:, None] == labels[None, :]
    same_cluster = same_class & (clusters[:, None] == clusters[None, :])

    def pick(cand, largest):
        if largest:
            scores = jnp.where(cand, d, -jnp.inf)
            idx = jnp.argmax(scores, axis=-1)
        else:
            scores = jnp.where(cand, d, jnp.inf)
            idx = jnp.argmin(scores, axis=-1)
        ok = jnp.any(cand, axis=-1)
        return jnp.where(ok, idx, jnp.arange(b)).astype(jnp.int32), ok

    pc, pc_ok = pick(pair_ok & same_cluster, True)
    nc, nc_ok = pick(pair_ok & same_class & ~same_cluster, False)
    pf, pf_ok = pick(pair_ok & same_class, True)
    n, n_ok = pick(pair_ok & ~same_class, False)
    return Quintuplets(pc, nc, pf, n, jnp.stack([pc_ok, nc_ok, pf_ok, n_ok], axis=-1))


# ----------------------------------------------------------------------------- sampler


def _split_evenly(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
    """``parts`` non-negative ints summing to ``total``, differing by at most one; the
    parts that receive the remainder are chosen at random."""
    base = np.full(parts, total // parts, dtype=np.int64)
    extra = rng.choice(parts, size=total % parts, replace=False)
    base[extra] += 1
    return base


def balanced_batch_indices(
    labels: np.ndarray,
    clusters: np.ndarray,
    *,
    batch_size: int,
    rng: np.random.Generator,
    valid: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Indices of one batch drawn equally from every class and, within a class, equally
    from every non-empty cluster.

    ``batch_size`` is split evenly over the classes present in ``labels`` (the remainder
    goes to randomly chosen classes), and each class's share evenly over its clusters.
    Within a ``(class, cluster)`` group points are drawn without replacement when the
    group is large enough, else with replacement (a rare minority cluster is repeated
    rather than under-represented). The batch is shuffled.

    Args:
      labels: ``[N]`` int class of each point (for one attribute: 0/1).
      clusters: ``[N]`` int cluster of each point within its class.
      batch_size: number of indices to return.
      rng: NumPy generator (the only source of randomness).
      valid: optional bool ``[N]``; False points are never drawn.

    Returns:
      ``[batch_size]`` int64 indices into the ``N`` points.
    """
    labels = np.asarray(labels)
    clusters = np.asarray(clusters)
    if labels.ndim != 1 or clusters.shape != labels.shape:
        raise ValueError(
            f"labels {labels.shape} and clusters {clusters.shape} must be equal 1-D shapes"
        )
    pool = np.arange(labels.shape[0])
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != labels.shape:
            raise ValueError(f"valid has shape {valid.shape}, expected {labels.shape}")
        pool = pool[valid]
    if pool.size == 0:
        raise ValueError("no point to sample from (every point is masked out)")
    classes = np.unique(labels[pool])
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    out = []
    for c, n_c in zip(classes, _split_evenly(batch_size, len(classes), rng)):
        in_c = pool[labels[pool] == c]
        cl = np.unique(clusters[in_c])
        for z, n_z in zip(cl, _split_evenly(int(n_c), len(cl), rng)):
            group = in_c[clusters[in_c] == z]
            out.append(rng.choice(group, size=int(n_z), replace=bool(n_z > group.size)))
    batch = np.concatenate(out)
    rng.shuffle(batch)
    return batch


class BalancedQuintupletSampler:
    """Deterministic stream of class/cluster-balanced batches for per-attribute binary
    classes.

    Attributes are visited round-robin (attribute ``t mod A`` at step ``t``), since every
    attribute has its own classes and clusters; each batch comes from
    `balanced_batch_indices` on that attribute's labels and clusters. The stream is a
    pure function of ``seed`` and the step: ``batch(step)`` can be recomputed after a
    restart without replaying earlier steps.

    Args:
      labels: ``[N, A]`` binary labels (bool, {0, 1} or CelebA's {-1, 1}; ``> 0`` is
        positive), or ``[N]`` for a single attribute.
      clusters: ``[N, A]`` (or ``[N]``) cluster of each point within its class for
        each attribute, e.g. from `jaxface.ops.kmeans.kmeans_per_class`; update with
        `set_clusters` after re-clustering.
      batch_size: indices per batch.
      seed: integer seed.
    """

    def __init__(self, labels, clusters, *, batch_size: int, seed: int):
        labels = np.asarray(labels)
        if labels.ndim == 1:
            labels = labels[:, None]
        if labels.ndim != 2:
            raise ValueError(f"labels must be [N, A] or [N], got shape {labels.shape}")
        self.labels = (labels > 0).astype(np.int32)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.set_clusters(clusters)

    @property
    def num_attributes(self) -> int:
        return self.labels.shape[1]

    def set_clusters(self, clusters) -> None:
        clusters = np.asarray(clusters)
        if clusters.ndim == 1:
            clusters = clusters[:, None]
        if clusters.shape != self.labels.shape:
            raise ValueError(f"clusters has shape {clusters.shape}, expected {self.labels.shape}")
        self.clusters = clusters.astype(np.int64)

    def batch(self, step: int, attribute: Optional[int] = None) -> tuple[int, np.ndarray]:
        """``(attribute, indices [batch_size])`` of the given step."""
        if attribute is None:
            attribute = step % self.num_attributes
        rng = np.random.default_rng([self.seed, int(step), int(attribute)])
        idx = balanced_batch_indices(
            self.labels[:, attribute],
            self.clusters[:, attribute],
            batch_size=self.batch_size,
            rng=rng,
        )
        return attribute, idx

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        step = 0
        while True:
            yield self.batch(step)
            step += 1
