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
and cluster: the class balance comes from the training source
(`jaxface.tasks.attributes_sampling.ClassBalancedSource`, each batch a pure function of
``(seed, step)``); cluster balance is applied *inside the step*, where the current
clusters are: every attribute's per-anchor losses are weighted so that each class
present in the batch, and each cluster present within a class, carries the same total
weight (`balanced_anchor_weights`). The clusters cannot drive the host sampler without
breaking determinism: the loader prepares batches ahead of the step in threads, so a
batch read just before a re-clustering could see either clustering, and a resumed run
never re-runs the hook that would hand the restored clusters to the host. (The trainer change that would allow it: a task-provided
sampler, rebuilt from the state after every hook and after a restore, with the loader's
read-ahead dropped at that point.)

Recipe options (docs/methods.md, LMLE): ``config.metric_loss_balanced_only`` weights
attribute ``a``'s metric loss by the share of the batch drawn balanced for ``a`` (each
record carries ``balanced_for``; a per-step batch trains one attribute's embedding);
``config.cluster_size`` sizes every class's clustering to clusters of about that many
points, ``config.clusters_per_class`` then being the cap (`ops.clusters_for_sizes`);
``config.model.embedding_bn`` (False: no BatchNorm on the embedding); ``config.mining_pool``
mines the partners from the batch plus a pool of the last P training embeddings, kept in
the model-state collection ``mining_pool`` (newest first; constants; a buffer that
``config.init_from`` leaves empty). ``config.metric_attributes`` restricts the sampler's
round-robin (and so, with ``metric_loss_balanced_only``, the trained metric losses) to
the attributes listed. ``config.model.frozen_trunk`` trains the heads on a fixed trunk
(`trainable_mask`; the model stops its gradient and runs its BatchNorm on running
statistics).

Inference: the ``attributes`` predict function (`AttributesTask.predict`). Evaluation
(``config.evals``): ``balanced_accuracy`` and ``cluster_knn``
(`jaxface.tasks.attributes_evaluators`).

Data (``config.data``): any builder whose examples hold ``image`` uint8 [H, W, 3]
and ``attributes`` [40] in {0, 1} (or CelebA's {-1, 1} / bool); images are centre-cropped
to a square when ``config.square_crop`` and resized to ``config.image_size``.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxface import losses
from jaxface.data import sources
from jaxface.models.attributes import AttributeNet
from jaxface.tasks import attributes_evaluators, common
from jaxface.tasks.attributes_lmle import (
    LOSSES,
    METRIC_LOSSES,
    balanced_attribute_weights,
    cluster_all_attributes,
    metric_loss_per_attribute,
)
from jaxface.tasks.attributes_sampling import ClassBalancedSource
from jaxface.tasks.base import EvalContext, Hook, Task

# The model-state collection holding the mining pool (config.mining_pool).
POOL = "mining_pool"


class AttributesTask(Task):
    name = "attributes"
    compute_fields = ("image",)
    predictors = {"attributes": "predict"}
    fresh_collections = (POOL,)

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
            frozen_trunk=bool(m.get("frozen_trunk", False)),
        )
        if config.loss not in LOSSES:
            raise ValueError(
                f"config.loss: unknown attributes loss {config.loss!r} (expected one of "
                f"{', '.join(LOSSES)})"
            )
        self.metric = config.loss in METRIC_LOSSES
        self.class_balanced = bool(config.get("class_balanced", False)) and config.loss == "bce"
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
            self.metric_attributes = self._attribute_indices(config.get("metric_attributes", []))
            if len(config.lmle_margins) != 3 or min(config.lmle_margins) < 0:
                raise ValueError(
                    f"config.lmle_margins={list(config.lmle_margins)} must be 3 "
                    "non-negative margins (g1, g2, g3)"
                )
        self._sources = {}
        self._labels = {}
        self._rates = None

    def _attribute_indices(self, names) -> tuple[int, ...] | None:
        """Indices of ``config.metric_attributes`` (names or indices; empty: None, all)."""
        names = list(names or [])
        if not names:
            return None
        known = list(self.config.get("attribute_names", []) or [])
        out = []
        for n in names:
            if isinstance(n, str) and not n.isdigit():
                if n not in known:
                    raise ValueError(f"config.metric_attributes: unknown attribute {n!r}")
                out.append(known.index(n))
            else:
                out.append(int(n))
        if len(set(out)) != len(out) or not all(0 <= i < self.num_attributes for i in out):
            raise ValueError(
                f"config.metric_attributes={names}: expected distinct attributes of the "
                f"{self.num_attributes}"
            )
        return tuple(out)

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
                attributes=self.metric_attributes,
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
        if self.class_balanced:
            # ``[2, A]`` (negatives, positives), set from the training split's rates by the
            # ``class_weights`` start hook, so that building the state (e.g. to load a
            # checkpoint) reads no data.
            state["class_weights"] = jnp.ones((2, self.num_attributes), jnp.float32)
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

    def trainable_mask(self, params):
        """All True; with ``config.model.frozen_trunk`` the ``trunk`` is frozen."""
        frozen = bool(self.config.model.get("frozen_trunk", False))

        def mark(path, _):
            return not (frozen and getattr(path[0], "key", None) == "trunk")

        return jax.tree_util.tree_map_with_path(mark, params)

    def metric_names(self):
        return ("complete_partners", "violating_anchors") if self.metric else ("accuracy",)

    # -- inference and clustering -----------------------------------------------------
    def predict(self, variables, batch):
        """``logits [B, A]`` of the linear heads, ``embedding [B, A, D]`` per attribute,
        ``feature [B, F]`` the trunk's pooled feature (what the heads read)."""
        variables = {k: v for k, v in variables.items() if k != POOL}
        out = self.model.apply(variables, batch["image"], train=False)
        return {
            "logits": out["logits"],
            "embedding": self._embeddings(out),
            "feature": out["feature"],
        }

    def embed(self, predict_fn, variables, ctx: EvalContext, source, *, limit=None):
        """``predict_split`` of the ``attributes`` predict function over a source with
        ``variables`` (params and model state): dict with ``embedding [N, A, D]``,
        ``logits``, ``attributes``."""
        transform = functools.partial(self.transform, train=False)
        return common.predict_split(
            ctx,
            predict_fn,
            variables,
            source,
            transform,
            int(self.config.eval_batch_size),
            limit=limit,
            keep=("attributes",),
        )

    def cluster(self, predict_fn, variables, ctx: EvalContext) -> dict:
        """New cluster state for the embeddings (``predict_fn``, the ``attributes`` predict
        function) of ``variables`` (params and model state) at ``ctx.step`` (a pure
        function of the parameters, the seed and the step)."""
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
        out = self.embed(predict_fn, variables, ctx, src)
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
        new = self.cluster(self.predict_fns()["attributes"], common.variables_of(state), ctx)
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

    def _class_weights_hook(self, state, ctx: EvalContext):
        """``config.class_balanced``: inverse-frequency class weights of the training
        split's positive rates (`losses.balanced_class_weights`), before step 1."""
        weights = jnp.asarray(losses.balanced_class_weights(self.positive_rates()), jnp.float32)
        task_state = {**state.task_state, "class_weights": weights}
        return state.replace(task_state=jax.device_put(task_state, ctx.replicated))

    def hooks(self):
        if self.class_balanced:
            return [
                Hook("class_weights", every_steps=0, fn=self._class_weights_hook, at_start=True)
            ]
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
        return attributes_evaluators.evaluators(self)
