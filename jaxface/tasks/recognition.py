"""The ``recognition`` task: pose-robust face embeddings (DREAM, DeepID2, margin heads).

Model (`jaxface.models.recognition.RecognitionNet`): `jaxface.models.dream.FaceEmbedder` -- a ResNet stem, global
average pool, Dense to ``config.model.embed_dim`` (``phi``), then optionally the DREAM
block ``f = phi + Y(yaw) R(phi)`` (``config.model.use_dream``; False = the "naive"
baseline) -- plus an identity classifier and, optionally, a learned yaw head and a
learned DeepID2 margin. Parameters: ``params["embedder"]["backbone" | "embed" | "dream"]``,
``params["classifier_kernel"]`` [D, C], ``params["classifier_bias"]`` [C] (softmax),
``params["yaw_head"]``, ``params["verif_margin"]``.

Data (`jaxface.tasks.recognition_data`). Input crops (``config.data.crop``): ``center``
(default) feeds the dataset's images resized to ``config.image_size``; ``aligned`` cuts
each image to the ArcFace 5-point template crop (`jaxface.ops.align`, settings
`jaxface.tasks.recognition_data.align_settings`) from its
landmarks -- CFP's 30 fiducials mapped to 5 points by
`jaxface.data.cfp_landmarks.five_points` -- exactly as `jaxface.analyzer.FaceAnalyzer`
cuts detected faces, so a recogniser trained so is usable on real photos.

Yaw for the gate (``config.yaw_source``):
  ``metadata``      the dataset's ``yaw`` field (degrees);
  ``landmarks``     a 3D mean-face fit of the example's landmarks in JAX
                    (`jaxface.ops.pose`: 5 points -> `yaw_from_landmarks`, CFP's 30
                    fiducials -> `yaw_from_cfp_fiducials`);
  ``profile_flag``  the dataset's ``is_profile`` folder flag (CFP): 0 deg frontal, 90 deg profile;
  ``learned``       a yaw head (Dense 64 -> ReLU -> Dense 1 on ``stop_gradient(phi)``)
                    regressed jointly onto the metadata yaw (``config.yaw_head_weight``;
                    loss ``((pred - yaw) / 90)^2``); the gate uses its prediction, so no
                    yaw is needed at test time.

Heads (``config.head.type``): ``softmax`` (dropout ``config.head.dropout`` before the
classifier, 0.7 in the paper), ``cosface`` / ``arcface`` (`jaxface.losses`, scale
``config.head.scale``, margin ``config.head.margin``). Optional DeepID2 verification term
(``config.deepid2.weight`` = lambda > 0): `jaxface.losses.deepid2_batch_verification`,
i.e. `contrastive_verification` over every pair ``i < j`` of the global batch, on
L2-normalised embeddings (``config.deepid2.normalize``; DeepID2 used raw features --
normalising makes the margin scale-free), same-identity and different-identity pairs
averaged separately and summed with weight 1/2 each (random batches hold few same
pairs); the margin is a parameter when ``config.deepid2.learn_margin`` (its gradient
is lambda dVerif/dm).

Training modes (``config.mode``):
  ``end_to_end``  softmax / margin head (+ DeepID2) on ``f``; everything trains.
  ``stitching``   the stem (and everything but ``params["embedder"]["dream"]``) is
                  frozen through ``trainable_mask``; BatchNorm runs on its running
                  statistics. Per identity of the training split: frontal =
                  ``|yaw| <= config.stitching.frontal_max_yaw`` (20), profile =
                  ``|yaw| >= config.stitching.profile_min_yaw`` (50); identities without
                  both are dropped. Each training example is a profile image (drawn as
                  ``config.stitching.sampling`` says: ``identity``, the paper's, an
                  identity first and then one of its profiles; ``image``, uniformly over
                  the profiles), loss = `jaxface.losses.dream_stitching_mse` of
                  ``phi(x_p) + Y R(phi(x_p))`` against the identity's mean frontal
                  ``phi`` (over each image and its mirror). With
                  ``config.stitching.cached`` (default) R trains on the flip-fused stem
                  features, computed once from the stem of ``config.init_from`` (or
                  read from ``config.stitching.features_file``) and served as whole
                  batches (`jaxface.tasks.recognition_stitching`); otherwise each batch
                  runs the frozen stem on the images, and a start hook computes the
                  frontal means. ``config.init_from`` may be a naive run (no block): R
                  then starts from its initialisation. ``config.model.dream_gate``:
                  ``yaw`` (the paper's gate), ``none`` (ungated MLP, same size) or ``off``
                  (R multiplied by 0: the stem; evaluation only).
  The paper's best is end-to-end, then stitching started from it: the second run's
  weights come from the first run's workdir via the trainer's ``config.init_from``
  (which reads only params and model state, so the optimizer may differ). Commands in
  ``configs/dream.py``.

Inference: the ``embed`` predict function (`RecognitionTask.predict`: flip pair of
embeddings, yaw and gate). Evaluators (``config.evals``,
`jaxface.tasks.recognition_evaluators`):
  ``verification``   held-out identities of ``config.eval_split``: frontal-frontal (FF) and
                     frontal-profile (FP) pair sets built deterministically from the yaw
                     metadata (`jaxface.evaluation.face_pairs.build_verification_pairs`),
                     ``config.verification.folds``
                     identity-disjoint folds; accuracy (threshold from the other folds),
                     EER, AUC mean +- std (`jaxface.evaluation.verification.evaluate_folds`
                     on squared L2 distances of flip-fused embeddings) and a ROC PNG.
  ``cfp``            the real CFP FF / FP protocol on ``config.cfp.eval_splits`` (09-10)
                     of the ``cfp_manual`` builder, same metrics, ROC PNG.
  ``identification`` closed-set rank-1 / rank-5 (CMC): gallery = the most frontal image
                     of each eval identity, probes = every other image (all / frontal /
                     profile probes reported apart).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxface import losses
from jaxface.models.dream import GATES
from jaxface.models.recognition import STAGES, RecognitionNet
from jaxface.tasks import common
from jaxface.tasks import recognition_evaluators as evaluators
from jaxface.tasks.base import EvalContext, Task
from jaxface.tasks.recognition_data import CROPS, RecognitionData
from jaxface.tasks.recognition_stitching import StitchingMixin

MODES = ("end_to_end", "stitching")
YAW_SOURCES = ("metadata", "landmarks", "profile_flag", "learned")
HEADS = ("softmax", "cosface", "arcface")


# ---------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------


class RecognitionTask(RecognitionData, StitchingMixin, Task):
    name = "recognition"
    compute_fields = ("image",)
    backbone_path = ("embedder", "backbone")
    predictors = {"embed": "predict"}

    def __init__(self, config):
        super().__init__(config)
        c = config
        if c.mode not in MODES:
            raise ValueError(f"config.mode: unknown mode {c.mode!r} (expected one of {MODES})")
        if c.yaw_source not in YAW_SOURCES:
            raise ValueError(
                f"config.yaw_source: unknown {c.yaw_source!r} (expected one of {YAW_SOURCES})"
            )
        if c.head.type not in HEADS:
            raise ValueError(
                f"config.head.type: unknown head {c.head.type!r} (expected one of {HEADS})"
            )
        backbone = c.model.backbone
        if not hasattr(backbone, "keys") or set(backbone.keys()) != {"name", "pretrained"}:
            raise ValueError(
                f"config.model.backbone: expected dict(name=..., pretrained=...), got {backbone!r}"
            )
        if backbone.name not in STAGES:
            raise ValueError(
                f"config.model.backbone.name: unknown {backbone.name!r} (expected one of {sorted(STAGES)})"
            )
        # A torchvision file for the stem (`jaxface.models.pretrained`); the model then
        # feeds the ResNet torchvision's ImageNet input normalisation.
        self.pretrained = str(backbone.pretrained or "")
        if c.mode == "stitching" and not c.model.use_dream:
            raise ValueError(
                "config.mode='stitching' trains the DREAM block: set config.model.use_dream=True"
            )
        if c.model.get("dream_gate", "yaw") not in GATES:
            raise ValueError(
                f"config.model.dream_gate: unknown {c.model.dream_gate!r} (expected one of {GATES})"
            )
        self.check_stitching_config()
        self.num_classes = int(c.num_classes)
        self.model_parallel = int(c.model_parallel)
        self.sample_rate = float(c.head.get("sample_rate", 1.0))
        self.class_groups = int(c.head.get("class_groups", 8))
        if not 0.0 < self.sample_rate <= 1.0:
            raise ValueError(
                f"config.head.sample_rate={self.sample_rate}: expected a value in (0, 1]"
            )
        # The class-sharded classifier (`jaxface.losses.sharded_classifier_loss`) runs
        # whenever the classes are split over devices or Partial FC samples them.
        self.sharded = self.model_parallel > 1 or self.sample_rate < 1.0
        if self.sharded and (self.class_groups < 1 or self.class_groups % self.model_parallel):
            raise ValueError(
                f"config.head.class_groups={self.class_groups} must be a positive multiple of "
                f"config.model_parallel={self.model_parallel}"
            )
        self.deepid2_on = float(c.deepid2.weight) > 0
        self.model = RecognitionNet(
            backbone=backbone.name,
            width=float(c.model.width),
            stem=c.model.stem,
            input_norm="imagenet" if self.pretrained else "none",
            embed_dim=int(c.model.embed_dim),
            use_dream=bool(c.model.use_dream),
            dream_gate=str(c.model.get("dream_gate", "yaw")),
            num_classes=self.num_classes,
            padded_classes=self.classifier_columns,
            head_type=c.head.type,
            yaw_head=c.yaw_source == "learned",
            learn_margin=self.deepid2_on and bool(c.deepid2.learn_margin),
            margin_init=float(c.deepid2.margin),
        )
        self.crop = str(c.data.get("crop", "center"))
        if self.crop not in CROPS:
            raise ValueError(f"config.data.crop: unknown {self.crop!r} (expected one of {CROPS})")
        self._sources: dict[str, Any] = {}
        self._meta: dict[str, dict[str, np.ndarray]] = {}

    # -- data -------------------------------------------------------------------
    def gate_yaw(self, batch):
        """[B] yaw (degrees) for the DREAM gate from the batch, or None (learned head)."""
        src = self.config.yaw_source
        if src == "metadata":
            return batch["yaw"]
        if src == "landmarks":
            return self._landmark_yaw(batch["landmarks"])
        if src == "profile_flag":
            return jnp.where(batch["is_profile"], 90.0, 0.0).astype(jnp.float32)
        return None

    # -- model ------------------------------------------------------------------
    def example_batch(self, batch_size: int = 1) -> dict[str, np.ndarray]:
        """The image plus every pose field `gate_yaw` may read (zeros)."""
        batch = super().example_batch(batch_size)
        batch["yaw"] = np.zeros((batch_size,), np.float32)
        batch["is_profile"] = np.zeros((batch_size,), bool)
        batch["landmarks"] = np.tile(
            np.float32([[0, 0], [2, 0], [1, 1], [0, 2], [2, 2]]), (batch_size, 1, 1)
        )
        return batch

    def init_variables(self, rng, batch):
        if "image" not in batch:  # cached stitching features: the model's input shapes
            batch = self.example_batch(len(batch["phi"]))
        return self.model.init(rng, batch["image"], self.gate_yaw(batch), train=False)

    def init_task_state(self, rng, variables):
        del rng, variables
        if self.config.mode != "stitching" or self.stitching_cached:
            return {}
        d = int(self.config.model.embed_dim)
        return {
            "frontal_mean": jnp.zeros((self.num_classes, d), jnp.float32),
            "has_target": jnp.zeros((self.num_classes,), bool),
        }

    def trainable_mask(self, params):
        """All True end to end; in stitching only ``params["embedder"]["dream"]`` trains."""
        stitching = self.config.mode == "stitching"

        def mark(path, _):
            keys = [getattr(p, "key", None) for p in path]
            return (not stitching) or keys[:2] == ["embedder", "dream"]

        return jax.tree_util.tree_map_with_path(mark, params)

    def metric_names(self):
        if self.config.mode == "stitching":
            return ("stitch_mse", "gate_mean")
        names = ["identity_ce", "train_accuracy"]
        if self.deepid2_on:
            names += ["verification", "same_pairs"]
            if self.config.deepid2.learn_margin:
                names.append("margin")
        if self.config.yaw_source == "learned":
            names += ["yaw_mae"]
        return tuple(names)

    @property
    def classifier_columns(self) -> int:
        """Classifier width: the classes, padded to a multiple of
        ``config.head.class_groups`` when the class-sharded classifier runs (the padding
        columns are zero and masked out of the softmax). With a fixed ``class_groups``
        the layout -- and so the checkpoint -- is the same for every ``model_parallel``
        that divides it."""
        if not self.sharded:
            return self.num_classes
        g = self.class_groups
        return -(-self.num_classes // g) * g

    def param_partition(self, params):
        """The classifier is split by class over the mesh's ``model`` axis (kernel
        ``[D, C]`` by column, bias by class); everything else is replicated."""
        P = jax.sharding.PartitionSpec
        sharded = {"classifier_kernel": P(None, "model"), "classifier_bias": P("model")}

        def spec(path, _):
            key = getattr(path[0], "key", None) if len(path) == 1 else None
            return sharded.get(key, P()) if self.sharded else P()

        return jax.tree_util.tree_map_with_path(spec, params)

    def _classify(self, variables, emb, labels, rng, train):
        """Per-example identity cross-entropy and whether the target class scored highest.

        Precision contract: logits, margins and the log-sum-exp are fp32 (the dense path
        promotes the embedding and the classifier to fp32; the sharded one accumulates
        its product in fp32)."""
        kernel, bias = self.model.apply(variables, method=RecognitionNet.classifier_params)
        h = self.config.head
        rng_drop, rng_sample = rng, jax.random.fold_in(rng, 1)
        if h.type == "softmax":
            rate = float(h.dropout) if train else 0.0
            if rate > 0:
                keep = jax.random.bernoulli(rng_drop, 1.0 - rate, emb.shape)
                emb = jnp.where(keep, emb / (1.0 - rate), 0.0).astype(emb.dtype)
        if self.sharded:
            if self.mesh is None:
                raise ValueError(
                    "the class-sharded classifier needs the trainer's mesh (task.mesh)"
                )
            softmax = h.type == "softmax"
            return losses.sharded_classifier_loss(
                emb,
                kernel.T,
                labels,
                mesh=self.mesh,
                kind=h.type,
                scale=None if softmax else float(h.scale),
                margin=None if softmax else float(h.margin),
                num_classes=self.num_classes,
                sample_rate=self.sample_rate if train else 1.0,
                rng=rng_sample,
                groups=self.class_groups,
                bias=bias if softmax else None,
                return_correct=True,
            )
        emb, kernel = emb.astype(jnp.float32), kernel.astype(jnp.float32)
        if h.type == "softmax":
            logits = emb @ kernel + bias.astype(jnp.float32)
        elif h.type == "cosface":
            logits = losses.cosface_logits(
                emb, kernel, labels, scale=float(h.scale), margin=float(h.margin)
            )
        else:
            logits = losses.arcface_logits(
                emb, kernel, labels, scale=float(h.scale), margin=float(h.margin)
            )
        ce = losses.softmax_identity_cross_entropy(logits, labels)
        return ce, jnp.argmax(logits, -1) == labels

    def loss(self, params, model_state, batch, rng, task_state):
        variables = {"params": params, **model_state}
        if self.config.mode == "stitching":
            return self.stitching_loss(variables, model_state, batch, task_state)
        out, new_state = self.model.apply(
            variables,
            batch["image"],
            self.gate_yaw(batch),
            train=True,
            mutable=list(model_state.keys()),
        )
        labels = batch["label"]
        per_example, correct = self._classify(variables, out["embedding"], labels, rng, train=True)
        ce = jnp.mean(per_example)
        loss = ce
        metrics = {"identity_ce": ce, "train_accuracy": jnp.mean(correct.astype(jnp.float32))}
        if self.deepid2_on:
            d = self.config.deepid2
            margin = (
                self.model.apply(variables, method=RecognitionNet.margin)
                if d.learn_margin
                else float(d.margin)
            )
            v, n_same = losses.deepid2_batch_verification(
                out["embedding"], labels, margin=margin, normalize=bool(d.normalize)
            )
            loss = loss + float(d.weight) * v
            metrics.update(verification=v, same_pairs=n_same.astype(jnp.float32))
            if d.learn_margin:
                metrics["margin"] = jnp.asarray(margin, jnp.float32)
        if self.config.yaw_source == "learned":
            err = out["yaw_pred"].astype(jnp.float32) - batch["yaw"]
            loss = loss + float(self.config.yaw_head_weight) * jnp.mean(jnp.square(err / 90.0))
            metrics["yaw_mae"] = jnp.mean(jnp.abs(err))
        return loss, (new_state, metrics)

    # -- prediction ------------------------------------------------------------------
    def predict(self, variables, batch):
        """``embedding`` and ``embedding_flip`` (mirrored image, same gate yaw), ``yaw``."""
        yaw = self.gate_yaw(batch)
        out = self.model.apply(variables, batch["image"], yaw, train=False)
        out_f = self.model.apply(variables, batch["image"][:, :, ::-1], out["yaw"], train=False)
        return {
            "embedding": out["embedding"],
            "embedding_flip": out_f["embedding"],
            "yaw": out["yaw"],
            "gate": out["gate"],
        }

    def predict_phi(self, variables, batch):
        f = functools.partial(self.model.apply, variables, method=RecognitionNet.features)
        return {"phi": f(batch["image"], False), "phi_flip": f(batch["image"][:, :, ::-1], False)}

    def embed_split(self, predict_fn, variables, ctx: EvalContext, split: str, data_config=None):
        """``predict_fn`` (the ``embed`` predict function) over a split, with its labels."""
        src = self.source(split, data_config)
        transform = functools.partial(self.transform, train=False)
        return common.predict_split(
            ctx,
            predict_fn,
            variables,
            src,
            transform,
            int(self.config.eval_batch_size),
            limit=self.config.get("eval_limit") or None,
            keep=("label",),
        )

    # -- evaluators --------------------------------------------------------------------
    def evaluators(self):
        return evaluators.evaluators(self)
