"""DREAM stitching data for `jaxface.tasks.recognition.RecognitionTask` (``config.mode =
"stitching"``): which profile image each training example is, and the cached stem
features R is trained on.

The stem is frozen in stitching, so its flip-fused feature of an image,
``phi~(x) = (phi(x) + phi(flip x)) / 2`` (`jaxface.ops.norm.flip_mean`), is fixed. With
``config.stitching.cached`` the task computes it once for the stitching rows of the
training split (from the stem of ``config.init_from``, or reads it from
``config.stitching.features_file``) and every training example becomes a row gathered
from memory: ``phi`` = the profile image's ``phi~``, ``target`` = its identity's mean
frontal ``phi~``, ``gate_yaw`` = the yaw the gate reads. The batches come whole from
`jaxface.data.step_batches.StepBatches` through the trainer's `Task.train_batches`: the
trainer, its step, optimizer, checkpoints and resumption are the same as for any run;
only the per-example image pipeline is skipped, which is what makes the paper's
10,000 x 256 schedule take seconds on a CPU.

Sampling (``config.stitching.sampling``):
  ``identity``  the paper's: an identity first (the kept identities in a per-epoch
                permutation, `jaxface.data.pipeline.IndexSampler`), then one of its
                profile images uniformly at random (a generator keyed by ``(seed,
                step)``); every identity weighs the same whatever its profile count.
  ``image``     every profile image of the kept identities in a per-epoch permutation:
                identities weigh by their number of profile images.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxface import losses
from jaxface.data import pipeline, step_batches
from jaxface.data.sources import Subset
from jaxface.models.recognition import RecognitionNet
from jaxface.ops.norm import flip_mean
from jaxface.tasks import common
from jaxface.tasks.base import EvalContext, Hook

SAMPLINGS = ("identity", "image")


@dataclasses.dataclass(frozen=True)
class ProfileGroups:
    """The stitching rows grouped by kept identity: ``rows[starts[i] : starts[i] +
    counts[i]]`` are the profile rows (source indices) of identity ``labels[i]``."""

    rows: np.ndarray
    labels: np.ndarray
    starts: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, profile_rows: np.ndarray, row_labels: np.ndarray) -> "ProfileGroups":
        """``profile_rows`` and the label of each (any order)."""
        order = np.lexsort((profile_rows, row_labels))
        rows, lab = np.asarray(profile_rows)[order], np.asarray(row_labels)[order]
        labels, starts, counts = np.unique(lab, return_index=True, return_counts=True)
        return cls(rows.astype(np.int64), labels, starts.astype(np.int64), counts)

    def pick(self, identities: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Positions into ``rows``: for each identity index, the profile at fraction ``u``
        in [0, 1) of its group (u uniform -> a profile uniformly at random)."""
        k = np.minimum((u * self.counts[identities]).astype(np.int64), self.counts[identities] - 1)
        return self.starts[identities] + k


def sampler(groups: ProfileGroups, sampling: str, global_batch: int, seed: int):
    """The `pipeline.IndexSampler` over identities (``identity``) or profile rows (``image``)."""
    if sampling not in SAMPLINGS:
        raise ValueError(
            f"config.stitching.sampling: unknown {sampling!r} (expected one of {SAMPLINGS})"
        )
    n = len(groups.labels) if sampling == "identity" else len(groups.rows)
    return pipeline.IndexSampler(n, global_batch, seed=seed)


def positions(groups: ProfileGroups, sampling: str, index_sampler, step: int) -> np.ndarray:
    """Positions into ``groups.rows`` of the examples of ``step``."""
    idx = index_sampler.indices(step)
    if sampling == "image":
        return idx
    u = np.random.default_rng([index_sampler.seed, step, 1]).random(len(idx))
    return groups.pick(idx, u)


def frontal_means(feats: np.ndarray, labels: np.ndarray, num_classes: int):
    """``(means [C, D] float32, has [C] bool)``: each identity's mean feature (zeros where
    it has none)."""
    d = feats.shape[1]
    sums = np.zeros((num_classes, d))
    counts = np.zeros(num_classes)
    np.add.at(sums, labels, feats.astype(np.float64))
    np.add.at(counts, labels, 1)
    has = counts > 0
    means = np.where(has[:, None], sums / np.maximum(counts, 1)[:, None], 0.0)
    return means.astype(np.float32), has


@dataclasses.dataclass(frozen=True)
class FeatureCache:
    """What cached stitching trains on: ``phi`` [P, D] (the flip-fused stem feature of
    ``groups.rows``), ``gate_yaw`` [P] (None: the learned yaw head decides), ``label``
    [P] and ``target`` [C, D] (each identity's mean frontal feature)."""

    groups: ProfileGroups
    phi: np.ndarray
    label: np.ndarray
    gate_yaw: np.ndarray | None
    target: np.ndarray

    def step_batches(
        self, sampling: str, global_batch: int, seed: int, process_index: int, process_count: int
    ) -> step_batches.StepBatches:
        s = sampler(self.groups, sampling, global_batch, seed)

        def make(step):
            pos = positions(self.groups, sampling, s, step)
            lab = self.label[pos]
            out = {"phi": self.phi[pos], "target": self.target[lab], "label": lab}
            if self.gate_yaw is not None:
                out["gate_yaw"] = self.gate_yaw[pos]
            return out

        return step_batches.StepBatches(
            make, s, process_index=process_index, process_count=process_count
        )


def read_features_file(path: str, num_rows: int, init_from: str) -> np.ndarray:
    """``phi`` [num_rows, D] of ``config.stitching.features_file`` (an ``.npz`` with
    ``phi``, the flip-fused stem features of every row of the training split in source
    order, and ``init_from``, the stem's run directory, which must be the config's)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"config.stitching.features_file={path!r}: no such file")
    with np.load(path) as z:
        if "phi" not in z or "init_from" not in z:
            raise ValueError(
                f"config.stitching.features_file={path!r}: expected arrays 'phi' and 'init_from'"
            )
        phi, stem = np.asarray(z["phi"], np.float32), str(z["init_from"])
    if os.path.realpath(stem) != os.path.realpath(init_from):
        raise ValueError(
            f"config.stitching.features_file={path!r} holds the features of the stem "
            f"{stem!r}, not of config.init_from={init_from!r}"
        )
    if phi.ndim != 2 or len(phi) != num_rows:
        raise ValueError(
            f"config.stitching.features_file={path!r}: phi of shape {phi.shape}, expected "
            f"[{num_rows}, D] (every row of the training split)"
        )
    return phi


class StitchingMixin:
    """The stitching half of `RecognitionTask` (a base class of it): its training data,
    loss and start hook. Reads the task's ``config``, ``model``, ``num_classes``, ``mesh``,
    `source`, `metadata`, `stitching_rows`, `transform`, `gate_yaw`, `predict_phi` and
    `example_batch`."""

    @property
    def stitching_cached(self) -> bool:
        return self.config.mode == "stitching" and bool(self.config.stitching.cached)

    def check_stitching_config(self):
        s = self.config.stitching
        if s.sampling not in SAMPLINGS:
            raise ValueError(
                f"config.stitching.sampling: unknown {s.sampling!r} (expected one of {SAMPLINGS})"
            )
        if self.config.mode != "stitching":
            return
        if self.config.model.dream_gate == "off":
            raise ValueError(
                "config.model.dream_gate='off' multiplies R by 0: stitching would train nothing"
            )
        if s.cached and not self.config.init_from:
            raise ValueError(
                "config.stitching.cached=True computes the stem features from the stem of "
                "config.init_from: set it (or config.stitching.cached=False)"
            )

    def profile_groups(self, split) -> ProfileGroups:
        rows, _, _ = self.stitching_rows(split)
        return ProfileGroups.of(rows, self.metadata(split)["label"][rows])

    def stitching_data(self, split):
        """``(source, transform)`` of the image path (``config.stitching.cached=False``)."""
        src = self.source(split)
        transform = functools.partial(self.transform, train=True)
        groups = self.profile_groups(split)
        if self.config.stitching.sampling == "image":
            return Subset(src, groups.rows), transform
        ids = pipeline.ArraySource({"identity": np.arange(len(groups.labels))})
        return ids, functools.partial(_identity_first, src, groups, transform)

    def init_from_optional(self, params):
        """Stitching may start from a naive stem (no block): R then starts from its init."""
        if self.config.mode == "stitching" and "dream" in params.get("embedder", {}):
            return (("embedder", "dream"),)
        return ()

    # -- cached features ------------------------------------------------------------
    def stem_variables(self, init_from: str):
        """Flax variables of this config's model with the weights of ``init_from`` (R, when
        the checkpoint has none, at its initialisation), replicated over the mesh."""
        from jaxface.checkpoint_weights import restore_weights  # pylint: disable=import-outside-toplevel

        rep = jax.sharding.NamedSharding(self._mesh(), jax.sharding.PartitionSpec())
        fresh = jax.jit(
            lambda: dict(self.init_variables(jax.random.key(0), self.example_batch(1))),
            out_shardings=rep,
        )()
        fresh_params = fresh.pop("params")
        shard = lambda tree: jax.tree.map(lambda _: rep, tree)  # noqa: E731
        params, model_state, _ = restore_weights(
            init_from,
            fresh_params,
            fresh,
            shard(fresh_params),
            shard(fresh),
            optional=self.init_from_optional(fresh_params),
        )
        return {"params": params, **model_state}

    def _mesh(self):
        if self.mesh is not None:
            return self.mesh
        return jax.sharding.Mesh(np.array(jax.devices()).reshape(-1, 1), ("data", "model"))

    def stem_features(self, variables, split, rows=None, data_config=None) -> np.ndarray:
        """float32 [N, D]: the flip-fused stem feature ``(phi(x) + phi(flip x)) / 2`` of
        ``rows`` of a split (all rows when None), in that order."""
        src = self.source(split, data_config)
        if rows is not None:
            src = Subset(src, rows)
        ctx = EvalContext(
            mesh=self._mesh(),
            workdir="",
            step=0,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        out = common.predict_split(
            ctx,
            self.predict_phi,
            variables,
            src,
            functools.partial(self.transform, train=False, with_label=False),
            int(self.config.eval_batch_size),
        )
        return flip_mean(out["phi"].astype(np.float32), out["phi_flip"].astype(np.float32))

    def feature_cache(self, split) -> FeatureCache:
        s, init_from = self.config.stitching, str(self.config.init_from)
        profile_rows, frontal_rows, _ = self.stitching_rows(split)
        groups = ProfileGroups.of(profile_rows, self.metadata(split)["label"][profile_rows])
        meta = self.metadata(split)
        if s.features_file:
            phi_all = read_features_file(str(s.features_file), len(meta["label"]), init_from)
            phi, frontal = phi_all[groups.rows], phi_all[frontal_rows]
        else:
            variables = self.stem_variables(init_from)
            both = self.stem_features(variables, split, np.concatenate([groups.rows, frontal_rows]))
            phi, frontal = both[: len(groups.rows)], both[len(groups.rows) :]
        target, _ = frontal_means(frontal, meta["label"][frontal_rows], self.num_classes)
        gate = None
        if self.config.yaw_source != "learned":
            fields = {
                k: meta[k][groups.rows] for k in ("yaw", "is_profile", "landmarks") if k in meta
            }
            gate = np.asarray(self.gate_yaw(fields), np.float32)
        logging.info(
            "stitching on cached features: %d identities, %d profile and %d frontal images",
            len(groups.labels),
            len(groups.rows),
            len(frontal_rows),
        )
        return FeatureCache(groups, phi, meta["label"][groups.rows].astype(np.int32), gate, target)

    def train_batches(self, split, global_batch, seed, process_index, process_count):
        if not self.stitching_cached:
            return None
        return self.feature_cache(split).step_batches(
            str(self.config.stitching.sampling), global_batch, seed, process_index, process_count
        )

    # -- loss -------------------------------------------------------------------------
    def stitching_loss(self, variables, model_state, batch, task_state):
        if "phi" in batch:  # cached features: target and gate yaw come with the batch
            phi = batch["phi"]
            yaw = batch.get("gate_yaw")
            target, valid = batch["target"], jnp.ones(phi.shape[:1], bool)
        else:
            phi = jax.lax.stop_gradient(
                self.model.apply(variables, batch["image"], False, method=RecognitionNet.features)
            )
            yaw = self.gate_yaw(batch)
            target = task_state["frontal_mean"][batch["label"]]
            valid = task_state["has_target"][batch["label"]]
        if yaw is None:  # learned head (frozen in stitching)
            yaw = self.model.apply(variables, phi, method=lambda m, x: m.yaw_net(x))
        out = self.model.apply(variables, phi, yaw, method=RecognitionNet.head)
        target = jax.lax.stop_gradient(target)
        per = losses.dream_stitching_mse(out["embedding"].astype(jnp.float32), target, where=valid)
        loss = jnp.sum(per) / jnp.maximum(jnp.sum(valid), 1)
        return loss, (model_state, {"stitch_mse": loss, "gate_mean": jnp.mean(out["gate"])})

    # -- image path: each identity's mean frontal phi, once before training -----------
    def hooks(self):
        if self.config.mode != "stitching" or self.stitching_cached:
            return []
        return [Hook("stitching_targets", every_steps=0, fn=self._stitching_start, at_start=True)]

    def _stitching_start(self, state, ctx: EvalContext):
        split = self.config.train_split
        _, frontal_rows, _ = self.stitching_rows(split)
        src = Subset(self.source(split), frontal_rows)
        transform = functools.partial(self.transform, train=False)
        out = common.predict_split(
            ctx,
            self.predict_phi,
            common.variables_of(state),
            src,
            transform,
            int(self.config.eval_batch_size),
            keep=("label",),
        )
        feats = flip_mean(out["phi"].astype(np.float64), out["phi_flip"])
        means, has = frontal_means(feats, out["label"], self.num_classes)
        logging.info(
            "stitching: %d identities with frontal and profile images, %d frontal images",
            int(has.sum()),
            len(frontal_rows),
        )
        task_state = {
            "frontal_mean": jax.device_put(means, ctx.replicated),
            "has_target": jax.device_put(has, ctx.replicated),
        }
        return state.replace(task_state=task_state)


def _identity_first(src, groups: ProfileGroups, transform, example, rng):
    """The image path's ``identity`` sampling: the example names an identity; one of its
    profile images is drawn with the example's generator and transformed."""
    i = np.asarray([int(example["identity"])])
    row = groups.rows[groups.pick(i, np.asarray([rng.random()]))[0]]
    return transform(src[int(row)], rng)
