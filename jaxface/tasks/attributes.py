"""The ``attributes`` task: 40 binary face attributes on one shared trunk.

Losses (``config.loss``):

* ``bce`` — per-attribute sigmoid cross-entropy on the linear heads, optionally with
  inverse-frequency class weights (``config.class_balanced``); evaluated by the
  ``balanced_accuracy`` evaluator (logits > 0).
* ``lmle`` — LMLE (Huang et al., CVPR 2016): for every attribute, the quintuplet of every anchor
  is mined **on device** inside the step (`jaxface.ops.mine_quintuplets`) from that
  attribute's labels and current cluster ids in that attribute's embedding, and the
  triple-header hinge (`jaxface.losses.triple_header_hinge`) is applied with a per-header
  validity mask. Evaluated by ``cluster_knn``.
* ``triplet_knn`` — the triplet baseline on the same trunk, data and weighting: the
  batch-hard triplet (positive = farthest same-class point, negative = nearest
  other-class point, i.e. LMLE's ``p--`` and ``n``) with `jaxface.losses.triplet_margin`;
  evaluated by the same ``cluster_knn`` rule, so only the loss differs from ``lmle``.

Clusters (``lmle``, and ``triplet_knn`` for its classifier). A trainer `Hook`
(``recluster``, at start and every ``config.recluster_every`` steps) embeds
``config.cluster_sample`` training images (a fresh sample drawn from ``(seed, step)``;
0 = the whole split) with `predict_split` and runs `kmeans_per_class` (k-means++,
``config.clusters_per_class`` clusters per class) per attribute, vmapped over the 40
attributes. The task state holds, per attribute and class, the centroids ``[A, 2, k, D]``,
their validity and sizes, and the step they were computed at. A point's cluster id in
the step is the nearest valid centroid *of its own class* for its (stop-gradient)
current embedding; for the points that were clustered this is exactly their k-means
assignment at re-clustering time (Lloyd's iterations stop at a fixed point), and it
extends the clustering to the images that were not in the sample, which is what makes
a sampled clustering usable. So cluster ids are not stored per image: they are a
function of the stored centroids, which keeps the task state (and every checkpoint) a
few kB instead of ``N x A`` ids, and keeps them consistent with the geometry the loss
is shaping between two re-clusterings.

Class- and cluster-balanced batches. LMLE draws every batch equally from each class
and cluster. The trainer reads training data through `pipeline.IndexSampler` over
``len(source)``; for ``lmle`` / ``triplet_knn`` (``config.balanced_sampling``) the
training source is a :class:`ClassBalancedSource`, a *virtual* source of
``num_train_steps * batch_size`` records: the trainer's sampler permutes that range once,
so virtual record ``v`` sits at one known global position ``p`` of the run, i.e. step
``p // B``, slot ``p % B``; the source returns slot ``p % B`` of the balanced batch of
that step, drawn by `BalancedQuintupletSampler` (attributes round-robin, attribute
``step mod 40``: half the batch from each of its classes). Every batch is therefore a
pure function of ``(seed, step)``, and resumption stays exact. Cluster balance is then
applied *inside the step*, where the current clusters are: every attribute's per-anchor
losses are weighted so that each class present in the batch, and each cluster present
within a class, carries the same total weight (`balanced_anchor_weights`). The clusters
cannot drive the host sampler without breaking determinism: the loader prepares
batches ahead of the step in threads, so a batch read just before a re-clustering could
see either clustering, and a resumed run never re-runs the hook that would hand the
restored clusters to the host. (The trainer change that would allow it: a task-provided
sampler, rebuilt from the state after every hook and after a restore, with the loader's
read-ahead dropped at that point.)

Recipe options (docs/methods.md, LMLE): ``config.metric_loss_balanced_only`` weights
attribute ``a``'s metric loss by the share of the batch drawn balanced for ``a`` (each
record carries ``balanced_for``; a per-step batch trains one attribute's embedding);
``config.cluster_size`` sizes every class's clustering to clusters of about that many
points, ``config.clusters_per_class`` then being the cap (`ops.clusters_for_sizes`);
``config.model.embedding_bn`` (False: no BatchNorm on the embedding); ``config.mining_pool``
mines the partners from the batch plus a pool of the last P training embeddings, kept in
the model-state collection ``mining_pool`` (newest first; constants).

Evaluation (``config.evals``): ``balanced_accuracy`` (linear heads, for ``bce``) and
``cluster_knn`` (re-clusters the current embeddings exactly as the hook does at this
step, then `cluster_knn_predict` per attribute over its ``2k`` class centroids, ``k =
config.knn_k`` neighbours). Both compute per-attribute balanced accuracy, accuracy and
imbalance level (of the training rates), and write to the workdir
``attributes_<evaluator>_step<N>.{json,md}`` (the latter a per-attribute table, with the
gain over ``config.baseline_report`` when set) and ``attributes_<evaluator>_gain_step<N>.png``
(gain against the imbalance level; the baseline is the ``config.baseline_report`` run,
or, without one, the majority-class predictor whose balanced accuracy is 50%).

Data (``config.data``): any builder whose examples hold ``image`` uint8 [H, W, 3]
and ``attributes`` [40] in {0, 1} (or CelebA's {-1, 1} / bool); images are centre-cropped
to a square when ``config.square_crop`` and resized to ``config.image_size``.
"""

from __future__ import annotations

import functools
import glob
import json
import logging
import os
import threading

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxface import losses, ops
from jaxface.data import pipeline, sources
from jaxface.evaluation import attributes as attr_eval
from jaxface.models.attributes import AttributeNet
from jaxface.tasks import common
from jaxface.tasks.base import EvalContext, Hook, Task

LOSSES = ("bce", "lmle", "triplet_knn")
METRIC_LOSSES = ("lmle", "triplet_knn")
# The model-state collection holding the mining pool (config.mining_pool).
POOL = "mining_pool"
# A virtual balanced source longer than this wraps (see ClassBalancedSource).
MAX_VIRTUAL_RECORDS = 1 << 22


# ---------------------------------------------------------------------------------
# Pure pieces (jit-able)
# ---------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------


class ClassBalancedSource:
    """A virtual training source whose record ``v`` is a slot of a class-balanced batch.

    The trainer draws indices with ``pipeline.IndexSampler(len(self), batch_size, seed)``.
    Its first epoch is one permutation ``perm`` of ``range(len(self))``; with ``len(self)
    = num_steps * batch_size`` the run reads exactly that epoch, step ``s`` reading
    ``perm[s*B:(s+1)*B]``. So the inverse permutation tells, for a requested ``v``, its
    step and slot; the record returned is that slot of
    ``BalancedQuintupletSampler(labels, 0, batch_size, seed).batch(step)``. Reading
    ``IndexSampler`` through the public API only (``indices(0)`` of a sampler whose batch
    is the whole epoch) keeps the two in step. Longer runs than ``MAX_VIRTUAL_RECORDS /
    batch_size`` steps wrap into later epochs of other permutations; a batch then mixes
    slots of several balanced batches (still class-balanced in expectation, no longer per
    step), which is logged.

    Args:
      source: the real training source. labels: ``[N, A]`` {0, 1} of its records.
      batch_size: the global batch size. seed: the run's seed. num_steps: the run length.
      tag_attribute: add ``balanced_for`` (the attribute the record's batch is balanced
        for) to every record, for losses that apply only on their own balanced batches.
    """

    def __init__(
        self,
        source,
        labels,
        *,
        batch_size: int,
        seed: int,
        num_steps: int,
        tag_attribute: bool = False,
    ):
        labels = np.asarray(labels)
        if labels.shape[0] != len(source):
            raise ValueError(f"labels for {labels.shape[0]} records, source has {len(source)}")
        self.source, self.batch_size = source, int(batch_size)
        self.tag_attribute = bool(tag_attribute)
        total = int(num_steps) * self.batch_size
        cap = (MAX_VIRTUAL_RECORDS // self.batch_size) * self.batch_size
        self.length = max(self.batch_size, min(total, cap))
        if total > self.length:
            logging.warning(
                "ClassBalancedSource: %d steps x %d exceed %d virtual records; later "
                "batches mix slots of several balanced batches",
                num_steps,
                batch_size,
                self.length,
            )
        perm = pipeline.IndexSampler(self.length, self.length, seed=int(seed)).indices(0)
        self.position = np.empty(self.length, np.int64)
        self.position[perm] = np.arange(self.length)
        self.sampler = ops.BalancedQuintupletSampler(
            labels, np.zeros_like(labels), batch_size=self.batch_size, seed=int(seed)
        )
        self._cache: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def __len__(self):
        return self.length

    def batch_indices(self, step: int) -> np.ndarray:
        """The real record indices of the balanced batch of ``step``."""
        with self._lock:
            if step not in self._cache:
                if len(self._cache) > 64:
                    self._cache.pop(min(self._cache))
                self._cache[step] = self.sampler.batch(step)[1]
            return self._cache[step]

    def record_index(self, v: int) -> int:
        step, slot = divmod(int(self.position[int(v)]), self.batch_size)
        return int(self.batch_indices(step)[slot])

    def balanced_for(self, v: int) -> int:
        """The attribute the batch of virtual record ``v`` is balanced for."""
        step = int(self.position[int(v)]) // self.batch_size
        return step % self.sampler.num_attributes

    def __getitem__(self, v):
        record = self.source[self.record_index(v)]
        if self.tag_attribute:
            record = dict(record)
            record["balanced_for"] = np.int32(self.balanced_for(v))
        return record


# ---------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------


class AttributesTask(Task):
    name = "attributes"
    compute_fields = ("image",)

    def __init__(self, config):
        super().__init__(config)
        m = config.model
        self.num_attributes = int(config.num_attributes)
        self.model = AttributeNet(
            num_attributes=self.num_attributes,
            embedding_dim=int(m.embedding_dim),
            widths=tuple(m.widths),
            convs_per_stage=int(m.convs_per_stage),
            per_attribute_embedding=bool(m.get("per_attribute_embedding", True)),
            embedding_bn=bool(m.get("embedding_bn", True)),
        )
        if config.loss not in LOSSES:
            raise ValueError(
                f"config.loss: unknown attributes loss {config.loss!r} (expected one of "
                f"{', '.join(LOSSES)})"
            )
        self.metric = config.loss in METRIC_LOSSES
        if self.metric:
            self.k = int(config.clusters_per_class)
            if self.k < 1:
                raise ValueError(f"config.clusters_per_class={self.k} must be >= 1")
            if not 1 <= int(config.knn_k) <= 2 * self.k:
                raise ValueError(
                    f"config.knn_k={config.knn_k} must be in [1, 2 * clusters_per_class = "
                    f"{2 * self.k}] (the number of centroids per attribute)"
                )
            if int(config.recluster_every) < 1:
                raise ValueError(f"config.recluster_every={config.recluster_every} must be >= 1")
            self.cluster_size = int(config.get("cluster_size", 0) or 0) or None
            if self.cluster_size is not None and self.cluster_size < 1:
                raise ValueError(f"config.cluster_size={config.cluster_size} must be >= 0")
            self.balanced_only = bool(config.get("metric_loss_balanced_only", False))
            self.pool_size = int(config.get("mining_pool", 0) or 0)
            if self.pool_size < 0:
                raise ValueError(f"config.mining_pool={config.mining_pool} must be >= 0")
            if self.balanced_only and not config.get("balanced_sampling", True):
                raise ValueError(
                    "config.metric_loss_balanced_only needs config.balanced_sampling: only "
                    "the balanced sampler says which attribute a batch is balanced for"
                )
            if len(config.lmle_margins) != 3 or min(config.lmle_margins) < 0:
                raise ValueError(
                    f"config.lmle_margins={list(config.lmle_margins)} must be 3 "
                    "non-negative margins (g1, g2, g3)"
                )
        self._sources = {}
        self._labels = {}
        self._rates = None

    # -- data -------------------------------------------------------------------
    def source(self, split):
        if split not in self._sources:
            if self.config.data.builder == "celeb_a_manual" and not self.config.data.get(
                "manual_dir"
            ):
                raise ValueError(
                    "config.data.manual_dir: the CelebA builder reads the original files "
                    "from a manual directory; set --config.data.manual_dir=/path/to/celeba"
                )
            self._sources[split] = sources.source_from_config(self.config.data, split)
        return self._sources[split]

    def labels(self, split) -> np.ndarray:
        """``[N, A]`` int32 {0, 1} labels of a whole split, read without decoding images."""
        if split not in self._labels:
            d = self.config.data
            src = self.source(split)
            import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

            try:
                builder = sources.get_builder(
                    d.builder,
                    d.get("config") or None,
                    data_dir=d.get("data_dir") or None,
                    manual_dir=d.get("manual_dir") or None,
                    config_overrides=d.get("overrides") or None,
                )
                src = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
            except Exception as err:  # pylint: disable=broad-except
                logging.info("labels(%s): reading with image decoding (%s)", split, err)
            self._labels[split] = np.stack(
                [np.asarray(src[i]["attributes"]).astype(np.int32) > 0 for i in range(len(src))]
            ).astype(np.int32)
        return self._labels[split]

    def transform(self, example, rng, *, train: bool):
        size = int(self.config.image_size)
        image = np.asarray(example["image"])
        h, w = image.shape[:2]
        if self.config.get("square_crop", False) and h != w:
            s = min(h, w)
            top, left = (h - s) // 2, (w - s) // 2
            image = image[top : top + s, left : left + s]
        if image.shape[:2] != (size, size):
            image = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
        if train and self.config.get("random_flip", True) and rng.random() < 0.5:
            image = image[:, ::-1]
        attrs = np.asarray(example["attributes"]).astype(np.int32)
        out = {"image": common.normalize_image(image), "attributes": (attrs > 0).astype(np.int32)}
        if train and "balanced_for" in example:
            out["balanced_for"] = np.int32(example["balanced_for"])
        return out

    def data(self, split, *, train):
        src = self.source(split)
        if train and self.metric and self.config.get("balanced_sampling", True):
            src = ClassBalancedSource(
                src,
                self.labels(split),
                batch_size=int(self.config.batch_size),
                seed=int(self.config.seed),
                num_steps=int(self.config.num_train_steps),
                tag_attribute=self.balanced_only,
            )
        return src, functools.partial(self.transform, train=train)

    def positive_rates(self) -> np.ndarray:
        """[A] positive rate of each attribute on (a sample of) the training split."""
        if self._rates is None:
            split = self.config.train_split
            if split in self._labels:
                self._rates = self._labels[split].mean(axis=0)
            else:
                src = self.source(split)
                n = min(len(src), int(self.config.get("rate_sample", 5000)))
                idx = np.linspace(0, len(src) - 1, n).astype(int)
                self._rates = np.mean(
                    [np.asarray(src[int(i)]["attributes"]) > 0 for i in idx], axis=0
                )
        return self._rates

    # -- model ------------------------------------------------------------------
    def init_variables(self, rng, batch):
        variables = self.model.init(rng, batch["image"], train=False)
        if self.metric and self.pool_size:
            # The mining pool (config.mining_pool): the last P training embeddings and
            # labels, newest first, in the model state so that the step can update it and
            # checkpoints carry it; `valid` is False until a slot has been filled.
            p, a = self.pool_size, self.num_attributes
            d = int(self.config.model.embedding_dim)
            variables = {
                **variables,
                POOL: {
                    "embedding": jnp.zeros((p, a, d), jnp.float32),
                    "labels": jnp.zeros((p, a), jnp.int32),
                    "valid": jnp.zeros((p,), bool),
                },
            }
        return variables

    def init_task_state(self, rng, variables):
        del rng, variables
        state = {}
        if self.config.get("class_balanced", False) and self.config.loss == "bce":
            state["class_weights"] = jnp.asarray(
                losses.balanced_class_weights(self.positive_rates())
            )
        if self.metric:
            a, k, d = self.num_attributes, self.k, int(self.config.model.embedding_dim)
            # Before the first clustering every point is in cluster 0 of its class.
            state.update(
                {
                    "centroids": jnp.zeros((a, 2, k, d), jnp.float32),
                    "centroid_valid": jnp.zeros((a, 2, k), bool).at[:, :, 0].set(True),
                    "counts": jnp.zeros((a, 2, k), jnp.int32),
                    "clustered_at": jnp.full((), -1, jnp.int32),
                }
            )
        return state

    def _embeddings(self, out):
        """``[B, A, D]`` embeddings (a shared ``[B, D]`` one is broadcast over attributes)."""
        e = out["embedding"]
        if e.ndim == 2:
            e = jnp.broadcast_to(e[:, None, :], (e.shape[0], self.num_attributes, e.shape[-1]))
        return e

    def loss(self, params, model_state, batch, rng, task_state):
        del rng
        pool = model_state.get(POOL)
        model_state = {k: v for k, v in model_state.items() if k != POOL}
        out, new_state = self.model.apply(
            {"params": params, **model_state},
            batch["image"],
            train=True,
            mutable=list(model_state.keys()),
        )
        # Precision contract: logits and embeddings enter the losses in fp32.
        out = {k: v.astype(jnp.float32) for k, v in out.items()}
        labels = batch["attributes"]
        if not self.metric:
            per_example = losses.sigmoid_binary_cross_entropy(
                out["logits"], labels, class_weights=task_state.get("class_weights")
            )
            acc = jnp.mean((out["logits"] > 0) == (labels > 0))
            return jnp.mean(per_example), (new_state, {"accuracy": acc})
        emb = self._embeddings(out)  # [B, A, D]
        fn = functools.partial(
            metric_loss_per_attribute,
            loss=self.config.loss,
            margins=tuple(float(g) for g in self.config.lmle_margins),
            triplet_margin=float(self.config.triplet_margin),
        )
        labels01 = (labels > 0).astype(jnp.int32)
        if pool is None:
            per_attr, complete, violated = jax.vmap(fn, in_axes=(1, 1, 0, 0))(
                emb, labels01, task_state["centroids"], task_state["centroid_valid"]
            )
        else:
            per_attr, complete, violated = jax.vmap(fn, in_axes=(1, 1, 0, 0, 1, 1, None))(
                emb,
                labels01,
                task_state["centroids"],
                task_state["centroid_valid"],
                pool["embedding"],
                pool["labels"],
                pool["valid"],
            )
            # Newest first: this batch's embeddings push the oldest out.
            p = self.pool_size
            new_state = dict(new_state)
            new_state[POOL] = {
                "embedding": jnp.concatenate([jax.lax.stop_gradient(emb), pool["embedding"]])[:p],
                "labels": jnp.concatenate([labels01, pool["labels"]])[:p],
                "valid": jnp.concatenate([jnp.ones((emb.shape[0],), bool), pool["valid"]])[:p],
            }
        if not self.balanced_only:
            return jnp.mean(per_attr), (
                new_state,
                {"complete_partners": jnp.mean(complete), "violating_anchors": jnp.mean(violated)},
            )
        # Attribute a's metric loss only on the batches balanced for a: elsewhere its
        # minority anchors mostly lack partners (config.metric_loss_balanced_only).
        w = balanced_attribute_weights(batch["balanced_for"], self.num_attributes)
        return jnp.sum(w * per_attr), (
            new_state,
            {
                "complete_partners": jnp.sum(w * complete),
                "violating_anchors": jnp.sum(w * violated),
            },
        )

    def metric_names(self):
        return ("complete_partners", "violating_anchors") if self.metric else ("accuracy",)

    # -- clustering ----------------------------------------------------------------
    def predict(self, variables, batch):
        variables = {k: v for k, v in variables.items() if k != POOL}
        out = self.model.apply(variables, batch["image"], train=False)
        return {"logits": out["logits"], "embedding": self._embeddings(out)}

    def embed(self, variables, ctx: EvalContext, source, *, limit=None):
        """``predict_split`` of a source with ``variables`` (params and model state): dict
        with ``embedding [N, A, D]``, ``logits``, ``attributes``."""
        transform = functools.partial(self.transform, train=False)
        return common.predict_split(
            ctx,
            self.predict,
            variables,
            source,
            transform,
            int(self.config.eval_batch_size),
            limit=limit,
            keep=("attributes",),
        )

    def cluster(self, variables, ctx: EvalContext) -> dict:
        """New cluster state for the embeddings of ``variables`` (params and model state)
        at ``ctx.step`` (a pure function of the parameters, the seed and the step)."""
        split = self.config.train_split
        src = self.source(split)
        n = len(src)
        sample = int(self.config.get("cluster_sample", 0)) or n
        seed = int(self.config.seed)
        if sample < n:
            idx = np.sort(
                np.random.default_rng([seed, 7, int(ctx.step)]).choice(n, sample, replace=False)
            )
            src = sources.Subset(src, idx)
        out = self.embed(variables, ctx, src)
        key = jax.random.fold_in(jax.random.key(seed + 2), int(ctx.step))
        res = cluster_all_attributes(
            key,
            jnp.asarray(out["embedding"]),
            jnp.asarray(out["attributes"] > 0),
            k=self.k,
            max_iters=int(self.config.kmeans_iters),
            cluster_size=self.cluster_size,
        )
        return {
            "centroids": res["centroids"].astype(jnp.float32),
            "centroid_valid": res["centroid_valid"],
            "counts": res["counts"].astype(jnp.int32),
            "clustered_at": jnp.asarray(int(ctx.step), jnp.int32),
        }

    def _recluster_hook(self, state, ctx: EvalContext):
        new = self.cluster(common.variables_of(state), ctx)
        task_state = dict(state.task_state)
        task_state.update(new)
        task_state = jax.device_put(task_state, ctx.replicated)
        counts = np.asarray(new["counts"])
        logging.info(
            "recluster at step %d: %d / %d clusters non-empty",
            ctx.step,
            int((counts > 0).sum()),
            counts.size,
        )
        return state.replace(task_state=task_state)

    def hooks(self):
        if not self.metric:
            return []
        return [
            Hook(
                name="recluster",
                every_steps=int(self.config.recluster_every),
                fn=self._recluster_hook,
                at_start=True,
            )
        ]

    # -- evaluation ----------------------------------------------------------------
    def evaluators(self):
        return {
            "balanced_accuracy": self._evaluate_balanced,
            "cluster_knn": self._evaluate_cluster_knn,
        }

    def _eval_outputs(self, state, ctx):
        split = self.config.eval_split
        return self.embed(
            common.variables_of(state),
            ctx,
            self.source(split),
            limit=self.config.get("eval_limit") or None,
        )

    def _evaluate_balanced(self, state, ctx: EvalContext):
        out = self._eval_outputs(state, ctx)
        pred = (out["logits"] > 0).astype(np.int32)
        return self.report("balanced_accuracy", pred, out["attributes"], ctx)

    def cluster_knn_predictions(self, cluster_state, embeddings) -> np.ndarray:
        """``[T, A]`` cluster-wise kNN predictions of ``[T, A, D]`` embeddings."""
        return np.asarray(
            knn_predict_all_attributes(
                jnp.asarray(embeddings),
                cluster_state["centroids"],
                cluster_state["centroid_valid"],
                k=int(self.config.knn_k),
            )
        )

    def _evaluate_cluster_knn(self, state, ctx: EvalContext):
        if not self.metric:
            raise ValueError(
                f"config.evals: 'cluster_knn' needs an embedding loss (config.loss in "
                f"{METRIC_LOSSES}), got config.loss={self.config.loss!r}"
            )
        clusters = self.cluster(common.variables_of(state), ctx)
        out = self._eval_outputs(state, ctx)
        pred = self.cluster_knn_predictions(clusters, out["embedding"])
        return self.report("cluster_knn", pred, out["attributes"], ctx)

    # -- reports ---------------------------------------------------------------------
    def _baseline(self):
        path = self.config.get("baseline_report", "")
        if not path:
            return None
        if os.path.isdir(path):
            found = sorted(glob.glob(os.path.join(path, "attributes_*_latest.json")))
            if len(found) != 1:
                raise ValueError(
                    f"config.baseline_report={path!r}: expected one attributes_*_latest.json "
                    f"there, found {[os.path.basename(f) for f in found]}"
                )
            path = found[0]
        if not os.path.exists(path):
            raise FileNotFoundError(f"config.baseline_report={path!r} does not exist")
        with open(path) as f:
            raw = json.load(f)
        return {
            k: (np.asarray(v) if isinstance(v, list) and k != "names" else v)
            for k, v in raw.items()
        }

    def report(self, name, pred, labels, ctx: EvalContext) -> dict[str, float]:
        """Per-attribute metrics; JSON, markdown table and gain PNG written to the workdir."""
        names = list(self.config.get("attribute_names", [])) or None
        rep = attr_eval.attribute_metrics(
            pred, labels, names=names, positive_rate=self.positive_rates()
        )
        baseline = self._baseline()
        results = {
            "mean_balanced_accuracy": rep["mean_balanced_accuracy"],
            "mean_accuracy": rep["mean_accuracy"],
        }
        top10 = np.argsort(-rep["imbalance"], kind="stable")[:10]
        if baseline is not None:
            gain = rep["balanced_accuracy"] - baseline["balanced_accuracy"]
            results["mean_gain"] = float(np.mean(gain))
            results["gain_top10_imbalanced"] = float(np.mean(gain[top10]))
        if ctx.process_index != 0:
            return results
        base_name = self.config.get("baseline_name", "") or "baseline"
        method = self.config.get("method_name", "") or self.config.loss
        os.makedirs(ctx.workdir, exist_ok=True)
        stem = os.path.join(ctx.workdir, f"attributes_{name}")
        payload = {
            k: (np.asarray(v).tolist() if not isinstance(v, (str, float)) else v)
            for k, v in rep.items()
        }
        payload.update({"evaluator": name, "loss": self.config.loss, "step": int(ctx.step)})
        for path in (f"{stem}_step{ctx.step}.json", f"{stem}_latest.json"):
            with open(path, "w") as f:
                json.dump(payload, f, indent=1)
        lines = [
            f"# attributes: {method} ({name}) at step {ctx.step}",
            "",
            attr_eval.format_metrics_table(
                rep, baseline, method_name=method, baseline_name=base_name
            ),
            "",
        ]
        lines.append(
            f"Mean balanced accuracy {100 * rep['mean_balanced_accuracy']:.2f}%, mean accuracy "
            f"{100 * rep['mean_accuracy']:.2f}%; on the 10 most imbalanced attributes "
            f"{100 * np.mean(rep['balanced_accuracy'][top10]):.2f}%."
        )
        if baseline is not None:
            lines.append(
                f"Gain over {base_name}: mean {100 * results['mean_gain']:+.2f} points, on the 10 "
                f"most imbalanced {100 * results['gain_top10_imbalanced']:+.2f} points."
            )
        with open(f"{stem}_step{ctx.step}.md", "w") as f:
            f.write("\n".join(lines) + "\n")
        ref = (
            baseline["balanced_accuracy"]
            if baseline is not None
            else np.full_like(rep["balanced_accuracy"], 0.5)
        )
        attr_eval.plot_gain_vs_imbalance(
            rep["balanced_accuracy"],
            ref,
            rep["imbalance"],
            f"{stem}_gain_step{ctx.step}.png",
            names=rep["names"],
            method_name=method,
            baseline_name=base_name if baseline is not None else "majority class",
        )
        return results
