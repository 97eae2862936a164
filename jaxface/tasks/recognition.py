"""The ``recognition`` task: pose-robust face embeddings (DREAM, DeepID2, margin heads).

Model (`RecognitionNet`): `jaxface.models.dream.FaceEmbedder` -- a ResNet stem, global
average pool, Dense to ``config.model.embed_dim`` (``phi``), then optionally the DREAM
block ``f = phi + Y(yaw) R(phi)`` (``config.model.use_dream``; False = the "naive"
baseline) -- plus an identity classifier and, optionally, a learned yaw head and a
learned DeepID2 margin. Parameters: ``params["embedder"]["backbone" | "embed" | "dream"]``,
``params["classifier_kernel"]`` [D, C], ``params["classifier_bias"]`` [C] (softmax),
``params["yaw_head"]``, ``params["verif_margin"]``.

Input crops (``config.data.crop``): ``center`` (default) feeds the dataset's images
resized to ``config.image_size``; ``aligned`` cuts each image to the ArcFace 5-point
template crop (`jaxface.ops.align`, settings `align_settings`) from its
landmarks -- CFP's 30 fiducials mapped to 5 points by
`jaxface.data.cfp_landmarks.five_points` -- exactly as `jaxface.analyzer.FaceAnalyzer`
cuts detected faces, so a recogniser trained so is usable on real photos.

Yaw for the gate (``config.yaw_source``):
  ``metadata``      the dataset's ``yaw`` field (degrees);
  ``landmarks``     a 3D mean-face fit of the example's landmarks in JAX
                    (`jaxface.models.pose`: 5 points -> `yaw_from_landmarks`, CFP's 30
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
                  both are dropped. A start hook computes each identity's mean frontal
                  ``phi`` (over the image and its mirror) once; training batches are
                  profile images only, loss = `jaxface.losses.dream_stitching_mse`
                  of ``phi(x_p) + Y R(phi(x_p))`` against that mean.
  The paper's best is end-to-end, then stitching started from it: the second run's
  weights come from the first run's workdir via the trainer's ``config.init_from``
  (which reads only params and model state, so the optimizer may differ). Commands in
  ``configs/dream.py``.

Evaluators (``config.evals``):
  ``verification``   held-out identities of ``config.eval_split``: frontal-frontal (FF) and
                     frontal-profile (FP) pair sets built deterministically from the yaw
                     metadata (`build_verification_pairs`), ``config.verification.folds``
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
import json
import logging
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxface import losses
from jaxface.data import align_np, sources
from jaxface.evaluation import identification as ident_eval
from jaxface.evaluation import verification as verif
from jaxface.models import pose
from jaxface.models.dream import FaceEmbedder
from jaxface.models.resnet import ResNet
from jaxface.tasks import common, recognition_protocols
from jaxface.tasks.base import EvalContext, Hook, Task

MODES = ("end_to_end", "stitching")
YAW_SOURCES = ("metadata", "landmarks", "profile_flag", "learned")
HEADS = ("softmax", "cosface", "arcface")
CROPS = ("center", "aligned")
# How aligned crops are cut (``config.data.align`` overrides them; `jaxface.analyzer` reads
# the same settings from the recogniser's config, so training and inference cut faces
# alike): supersampling (a box prefilter when the crop shrinks the face), template zoom
# (CFP's images are tight face crops: at zoom 1 a quarter of an ArcFace crop lies outside
# them), border ("edge": replicate, so the missing context is not a black frame).
ALIGN_DEFAULTS = {"supersample": 2, "zoom": 1.0, "border": "constant"}


def align_settings(config) -> dict:
    """``config.data.align`` merged over `ALIGN_DEFAULTS`."""
    out = dict(ALIGN_DEFAULTS)
    a = config.data.get("align", None)
    if a:
        unknown = sorted(set(a) - set(out))
        if unknown:
            raise ValueError(f"config.data.align: unknown field(s) {unknown}; known {sorted(out)}")
        out.update({k: a[k] for k in a})
    return {
        "supersample": int(out["supersample"]),
        "zoom": float(out["zoom"]),
        "border": str(out["border"]),
    }


_STAGES = {
    "resnet18": ((2, 2, 2, 2), "basic"),
    "resnet34": ((3, 4, 6, 3), "basic"),
    "resnet50": ((3, 4, 6, 3), "bottleneck"),
    "resnet10": ((1, 1, 1, 1), "basic"),
}
# 5-point order of `pose.MEAN_FACE_5`: swapping left/right under a horizontal flip.
_FLIP_5 = np.array([1, 0, 2, 4, 3])


# ---------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------


class YawHead(nn.Module):
    """Yaw in degrees from a feature: Dense(hidden) -> ReLU -> Dense(1), times 90."""

    hidden: int = 64

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(self.hidden, name="fc1")(x))
        return 90.0 * nn.Dense(1, name="fc2")(h)[..., 0]


class RecognitionNet(nn.Module):
    """FaceEmbedder + identity classifier (+ yaw head, + learned DeepID2 margin).

    Methods: ``features(images, train) -> phi [B, D]``; ``__call__(images, yaw, train)``
    -> dict ``phi``, ``embedding``, ``gate``, ``yaw`` (the gate's yaw), ``yaw_pred``
    (learned head, else absent); ``head(phi, yaw)`` the part after phi;
    ``classifier_params()`` -> (kernel [D, C], bias [C] or None); ``margin()``.
    """

    backbone: str = "resnet18"
    width: float = 1.0
    stem: str = "small"
    input_norm: str = "none"
    embed_dim: int = 256
    use_dream: bool = True
    num_classes: int = 10
    #: Classifier columns (``>= num_classes``); the extra ones are zero padding so the
    #: classes split evenly over devices (`RecognitionTask.classifier_columns`).
    padded_classes: int | None = None
    head_type: str = "softmax"
    yaw_head: bool = False
    learn_margin: bool = False
    margin_init: float = 1.0

    def setup(self):
        stages, block = _STAGES[self.backbone]
        self.embedder = FaceEmbedder(
            backbone=ResNet(
                stage_sizes=stages,
                block=block,
                width=self.width,
                stem=self.stem,
                input_norm=self.input_norm,
            ),
            embed_dim=self.embed_dim,
            use_dream=self.use_dream,
        )
        if self.yaw_head:
            self.yaw_net = YawHead()
        init = (
            nn.initializers.normal(0.01)
            if self.head_type != "softmax"
            else nn.initializers.lecun_normal()
        )
        cols = self.padded_classes or self.num_classes
        if cols < self.num_classes:
            raise ValueError(f"padded_classes={cols} < num_classes={self.num_classes}")

        def kernel_init(key, shape, dtype=jnp.float32):
            # The real classes' columns do not depend on the padding.
            w = init(key, (shape[0], self.num_classes), dtype)
            return jnp.pad(w, ((0, 0), (0, shape[1] - self.num_classes)))

        self.classifier_kernel = self.param(
            "classifier_kernel", kernel_init, (self.embed_dim, cols)
        )
        if self.head_type == "softmax":
            self.classifier_bias = self.param("classifier_bias", nn.initializers.zeros, (cols,))
        if self.learn_margin:
            self.verif_margin = self.param(
                "verif_margin", nn.initializers.constant(self.margin_init), ()
            )

    def features(self, images, train: bool = False):
        return self.embedder.embed(self.embedder.stem(images, train=train)["pooled"])

    def head(self, phi, yaw):
        return self.embedder.head(phi, yaw)

    def __call__(self, images, yaw=None, train: bool = False):
        phi = self.features(images, train)
        out = {}
        if self.yaw_head:
            out["yaw_pred"] = self.yaw_net(jax.lax.stop_gradient(phi))
            if yaw is None:
                yaw = jax.lax.stop_gradient(out["yaw_pred"])
        if yaw is None:
            yaw = jnp.zeros(phi.shape[:1], phi.dtype)
        out.update(self.head(phi, yaw))
        out["yaw"] = yaw
        return out

    def classifier_params(self):
        return self.classifier_kernel, (
            self.classifier_bias if self.head_type == "softmax" else None
        )

    def margin(self):
        return self.verif_margin


# ---------------------------------------------------------------------------------
# Pairs for the synthetic-style verification protocol
# ---------------------------------------------------------------------------------


def build_verification_pairs(
    labels,
    abs_yaw,
    *,
    frontal_max_yaw: float = 20.0,
    profile_min_yaw: float = 50.0,
    pairs_per_identity: int = 3,
    num_folds: int = 10,
    seed: int = 0,
) -> dict[str, tuple]:
    """Deterministic FF and FP pair sets over the images of held-out identities.

    Identities are shuffled by ``seed`` and dealt into ``num_folds`` identity-disjoint
    folds (as CFP's splits are). Per identity and protocol, up to ``pairs_per_identity``
    genuine pairs (FF: two distinct frontal images; FP: a frontal and a profile image)
    and as many impostor pairs (a frontal image of the identity with a frontal (FF) or
    profile (FP) image of another identity of the same fold). Frontal: ``|yaw| <=
    frontal_max_yaw``; profile: ``|yaw| >= profile_min_yaw``.

    Args:
      labels: ``[N]`` identity of each image. abs_yaw: ``[N]`` absolute yaw (degrees).

    Returns:
      ``{"FF": (i, j, same, fold), "FP": (i, j, same, fold)}``: int64 row indices into the
      inputs, bool, int64 fold ids.
    """
    labels = np.asarray(labels)
    abs_yaw = np.abs(np.asarray(abs_yaw, np.float64))
    rng = np.random.default_rng(seed)
    ids = np.unique(labels)
    ids = ids[rng.permutation(len(ids))]
    fold_of = {int(k): n % num_folds for n, k in enumerate(ids)}
    frontal = {int(k): np.flatnonzero((labels == k) & (abs_yaw <= frontal_max_yaw)) for k in ids}
    profile = {int(k): np.flatnonzero((labels == k) & (abs_yaw >= profile_min_yaw)) for k in ids}
    by_fold = [[int(k) for k in ids if fold_of[int(k)] == f] for f in range(num_folds)]
    out = {}
    for name, second in (("FF", frontal), ("FP", profile)):
        rows = []
        for k in ids:
            k = int(k)
            fk = frontal[k]
            if name == "FF":
                cand = [(a, b) for x, a in enumerate(fk) for b in fk[x + 1 :]]
            else:
                cand = [(a, b) for a in fk for b in profile[k]]
            if not cand:
                continue
            pick = rng.permutation(len(cand))[:pairs_per_identity]
            others = [o for o in by_fold[fold_of[k]] if o != k and len(second[o])]
            for p in pick:
                a, b = cand[p]
                rows.append((a, b, True, fold_of[k]))
                if others:
                    o = others[int(rng.integers(len(others)))]
                    rows.append(
                        (
                            int(fk[rng.integers(len(fk))]),
                            int(second[o][rng.integers(len(second[o]))]),
                            False,
                            fold_of[k],
                        )
                    )
        if not rows:
            raise ValueError(
                f"build_verification_pairs: no {name} pair could be built (no identity has "
                f"{'two frontal' if name == 'FF' else 'frontal and profile'} images with "
                f"frontal |yaw| <= {frontal_max_yaw}, profile |yaw| >= {profile_min_yaw})"
            )
        r = list(zip(*rows))
        out[name] = (
            np.array(r[0], np.int64),
            np.array(r[1], np.int64),
            np.array(r[2], bool),
            np.array(r[3], np.int64),
        )
    return out


def verification_report(
    emb, emb_flip, pairs: dict[str, tuple], *, far: float | None = None
) -> dict[str, Any]:
    """Per protocol: `verification.evaluate_folds` on squared L2 distances of the
    flip-fused, L2-normalised embeddings, plus the pooled ROC (fpr, tpr) and, with ``far``,
    the k-fold TAR at that FAR (`verification.kfold_tar_at_far`: ``tar_at_far`` per fold,
    ``tar_at_far_mean`` / ``_std``)."""
    fused = verif.fuse_flip(emb, emb_flip)
    out = {}
    for name, (i, j, same, fold) in pairs.items():
        dist = verif.pair_distances(fused[i], fused[j])
        rep = verif.evaluate_folds(dist, same, fold, kind="distance")
        fpr, tpr, _ = verif.roc_curve(dist, same, kind="distance")
        out[name] = {**rep, "roc": (fpr, tpr), "num_pairs": len(same)}
        if far is not None:
            val = verif.kfold_tar_at_far(dist, same, fold, far, kind="distance")
            out[name].update(
                far_target=far,
                tar_at_far=val["tar"],
                tar_at_far_mean=val["tar_mean"],
                tar_at_far_std=val["tar_std"],
            )
    return out


def _flatten_report(report: dict[str, Any]) -> dict[str, float]:
    flat = {}
    for name, rep in report.items():
        p = name.lower()
        for m in ("accuracy", "eer", "auc"):
            flat[f"{p}_{m}_mean"] = rep[f"{m}_mean"]
            flat[f"{p}_{m}_std"] = rep[f"{m}_std"]
    return flat


# ---------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------


class Subset:
    """Rows ``rows`` of a random-access source."""

    def __init__(self, source, rows):
        self.source, self.rows = source, np.asarray(rows, np.int64)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.source[int(self.rows[int(i)])]


def _load_yaw(yaw_file: str, n: int, root) -> np.ndarray | None:
    """The per-image yaw array (``.npy``, degrees, the source's order) or None."""
    if not yaw_file:
        return None
    yaw = np.load(yaw_file, mmap_mode="r", allow_pickle=False)
    if yaw.shape != (n,):
        raise ValueError(
            f"config.data.yaw_file={yaw_file!r}: shape {yaw.shape}, expected ({n},) "
            f"(one yaw per image of {root})"
        )
    return yaw


class InsightFaceSource:
    """Random access over insightface's RecordIO (``train.rec/.idx/property`` in a folder):
    examples ``{"image": uint8 [H, W, 3], "label"}`` (JPEG decoded with PIL), plus ``yaw``
    from ``yaw_file`` (a ``.npy`` of one yaw in degrees per image, RecordIO order) if given."""

    def __init__(self, root, yaw_file: str = ""):
        from jaxface.data.recognition_formats import InsightFaceRecordDataset  # pylint: disable=import-outside-toplevel

        self.ds = InsightFaceRecordDataset(root)
        self.yaw = _load_yaw(yaw_file, len(self.ds), root)

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        from jaxface.data.images import read_image  # pylint: disable=import-outside-toplevel

        data, label = self.ds[int(i)]
        image = read_image(data, name=f"{self.ds.reader.path} image {int(i)}")
        ex = {"image": image, "label": np.int64(label)}
        if self.yaw is not None:
            ex["yaw"] = np.float32(self.yaw[int(i)])
        return ex


class IdentityFolderSource:
    """Random access over ``root/<identity>/<image>`` (`jaxface.data.recognition_formats.
    list_identity_folder`: identities sorted by folder name are labels 0, 1, ...), with
    ``yaw`` from ``yaw_file`` (one per image, in the listing's order) if given."""

    def __init__(self, root, yaw_file: str = "", min_images: int = 1):
        from jaxface.data.recognition_formats import list_identity_folder  # pylint: disable=import-outside-toplevel

        self.folder = list_identity_folder(root, min_images=min_images)
        self.yaw = _load_yaw(yaw_file, len(self.folder), root)

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, i):
        from jaxface.data.images import read_image  # pylint: disable=import-outside-toplevel

        i = int(i)
        ex = {"image": read_image(self.folder.paths[i]), "label": self.folder.labels[i]}
        if self.yaw is not None:
            ex["yaw"] = np.float32(self.yaw[i])
        return ex

    def light_metadata(self) -> dict[str, np.ndarray]:
        """Labels (and yaw) without decoding an image."""
        meta = {"label": self.folder.labels.copy()}
        if self.yaw is not None:
            meta["yaw"] = np.asarray(self.yaw, np.float32)
        return meta


# ---------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------


class RecognitionTask(Task):
    name = "recognition"
    compute_fields = ("image",)
    backbone_path = ("embedder", "backbone")

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
        if backbone.name not in _STAGES:
            raise ValueError(
                f"config.model.backbone.name: unknown {backbone.name!r} (expected one of {sorted(_STAGES)})"
            )
        # A torchvision file for the stem (`jaxface.models.pretrained`); the model then
        # feeds the ResNet torchvision's ImageNet input normalisation.
        self.pretrained = str(backbone.pretrained or "")
        if c.mode == "stitching" and not c.model.use_dream:
            raise ValueError(
                "config.mode='stitching' trains the DREAM block: set config.model.use_dream=True"
            )
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
    def source(self, split, data_config=None):
        d = data_config or self.config.data
        key = (d.builder, split)
        if key not in self._sources:
            if d.builder == "insightface_rec":
                if not d.manual_dir:
                    raise ValueError(
                        "config.data.manual_dir: the folder holding train.rec / train.idx / property"
                    )
                if split != self.config.train_split:
                    raise ValueError(
                        f"split {split!r}: the insightface RecordIO source has only the training split; "
                        "evaluate with the 'cfp' evaluator (config.cfp.manual_dir)"
                    )
                src = InsightFaceSource(d.manual_dir, d.get("yaw_file", ""))
                if src.ds.num_classes != self.num_classes:
                    raise ValueError(
                        f"config.num_classes={self.num_classes} but {d.manual_dir}/property says "
                        f"{src.ds.num_classes} identities: set --config.num_classes="
                        f"{src.ds.num_classes}"
                    )
                self._sources[key] = src
            elif d.builder == "identity_folder":
                if not d.manual_dir:
                    raise ValueError(
                        "config.data.manual_dir: the root of <identity>/<image> folders"
                    )
                is_train = split == self.config.train_split
                if d.get("split_subdirs"):
                    root = os.path.join(d.manual_dir, split)
                elif is_train:
                    root = d.manual_dir
                else:
                    raise ValueError(
                        f"split {split!r}: an identity folder is one training split; set "
                        "config.data.split_subdirs=True for <manual_dir>/<split>/<identity>/<image>"
                    )
                yaw_file = d.get("yaw_file", "") if is_train else d.get(f"yaw_file_{split}", "")
                self._sources[key] = IdentityFolderSource(root, yaw_file)
            else:
                self._sources[key] = sources.source_from_config(d, split)
        return self._sources[key]

    def metadata(self, split, data_config=None) -> dict[str, np.ndarray]:
        """Host-side labels and pose of every example of a split (images not decoded when
        the source allows it): ``label``, ``abs_yaw`` (the pose used to select frontal /
        profile images: the folder flag (0 / 90) when the data has one, else the yaw
        metadata, else the landmark fit) and the raw fields present."""
        d = data_config or self.config.data
        key = (d.builder, split)
        if key in self._meta:
            return self._meta[key]
        src = self.source(split, d)
        if hasattr(src, "light_metadata"):
            meta = src.light_metadata()
            if "yaw" in meta:
                meta["abs_yaw"] = np.abs(meta["yaw"].astype(np.float64))
            self._meta[key] = meta
            return meta
        reader = src
        try:  # tfds: skip image decoding
            import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

            if d.builder in sources.BUILDER_MODULES:
                b = sources.get_builder(
                    d.builder,
                    d.get("config") or None,
                    data_dir=d.get("data_dir") or None,
                    manual_dir=d.get("manual_dir") or None,
                    config_overrides=d.get("overrides") or None,
                )
                reader = b.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
        except Exception as err:  # pylint: disable=broad-except
            logging.info("metadata: decoding full examples (%s)", err)
            reader = src
        fields = ("label", "yaw", "is_profile", "landmarks", "identity", "index", "protocol_split")
        rows = {k: [] for k in fields}
        n = len(reader)
        chunk = 512
        for a in range(0, n, chunk):
            keys = list(range(a, min(n, a + chunk)))
            exs = (
                reader.__getitems__(keys)
                if hasattr(reader, "__getitems__")
                else [reader[k] for k in keys]
            )
            for ex in exs:
                for k in fields:
                    if k in ex:
                        rows[k].append(np.asarray(ex[k]))
        meta = {k: np.stack(v) for k, v in rows.items() if v}
        if "label" not in meta:
            raise ValueError(f"split {split!r} of {d.builder}: examples have no 'label'")
        if "is_profile" in meta:
            meta["abs_yaw"] = np.where(meta["is_profile"], 90.0, 0.0)
        elif "yaw" in meta:
            meta["abs_yaw"] = np.abs(meta["yaw"].astype(np.float64))
        elif "landmarks" in meta:
            meta["abs_yaw"] = np.abs(
                np.asarray(self._landmark_yaw(jnp.asarray(meta["landmarks"], jnp.float32)))
            )
        self._meta[key] = meta
        return meta

    def stitching_rows(self, split) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(profile rows, frontal rows, identities kept) of a split for stitching."""
        meta = self.metadata(split)
        if "abs_yaw" not in meta:
            raise ValueError(
                f"config.mode='stitching' needs pose metadata (yaw, is_profile or landmarks) in split {split!r}"
            )
        s = self.config.stitching
        fr = meta["abs_yaw"] <= float(s.frontal_max_yaw)
        pr = meta["abs_yaw"] >= float(s.profile_min_yaw)
        lab = meta["label"]
        keep = np.intersect1d(np.unique(lab[fr]), np.unique(lab[pr]))
        if not len(keep):
            raise ValueError(
                f"config.stitching: no identity of split {split!r} has both a frontal (|yaw| <= "
                f"{s.frontal_max_yaw}) and a profile (|yaw| >= {s.profile_min_yaw}) image"
            )
        inkeep = np.isin(lab, keep)
        return np.flatnonzero(pr & inkeep), np.flatnonzero(fr & inkeep), keep

    def _aligned(self, example) -> tuple[np.ndarray, np.ndarray]:
        """``config.data.crop == "aligned"``: the example cut to the ArcFace-template crop
        (`jaxface.data.align_np`: `jaxface.ops.align` in NumPy, with the settings
        `jaxface.analyzer` applies to detected faces) from its 5 points -- CFP's 30 fiducials mapped by
        `jaxface.data.cfp_landmarks.five_points`, or 5 given landmarks. Returns
        ``(float32 [S, S, 3] in 0..255, M [2, 3] example pixels -> crop pixels)``."""
        if "landmarks" not in example:
            raise ValueError(
                f"config.data.crop='aligned' needs a 'landmarks' field (5 points or CFP's 30 "
                f"fiducials); {self.config.data.builder} has {sorted(example)}"
            )
        pts = np.asarray(example["landmarks"], np.float32)
        if pts.shape == (30, 2):
            from jaxface.data.cfp_landmarks import five_points  # pylint: disable=import-outside-toplevel

            if "is_profile" not in example:
                raise ValueError("config.data.crop='aligned' on CFP fiducials needs 'is_profile'")
            pts = five_points(pts, bool(example["is_profile"]))
        elif pts.shape != (5, 2):
            raise ValueError(
                f"config.data.crop='aligned': landmarks of shape {pts.shape}, expected [5, 2] "
                "or CFP's [30, 2] fiducials"
            )
        # NumPy in the loader worker: no device dispatch per example (jaxface.data.align_np).
        return align_np.align_face(
            np.asarray(example["image"])[..., :3],
            pts,
            int(self.config.image_size),
            **align_settings(self.config),
        )

    def transform(self, example, rng, *, train: bool, with_label: bool = True):
        c = self.config
        size = int(c.image_size)
        image = np.asarray(example["image"])
        h, w = image.shape[:2]
        align_m = None
        if self.crop == "aligned":
            image, align_m = self._aligned(example)
            h, w = image.shape[:2]
        if (h, w) != (size, size):
            image = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
        flip = bool(train and c.random_flip and rng.random() < 0.5)
        if flip:
            image = image[:, ::-1]
        out = {"image": common.normalize_image(image)}
        if with_label:
            label = int(example["label"])
            if train and not 0 <= label < self.num_classes:
                raise ValueError(
                    f"label {label} outside 0..config.num_classes-1={self.num_classes - 1}; "
                    "set config.num_classes to the number of training identities"
                )
            out["label"] = np.int32(label)
        src = c.yaw_source
        if src in ("metadata", "learned") or (c.mode == "stitching" and "yaw" in example):
            if "yaw" in example:
                out["yaw"] = np.float32(-example["yaw"] if flip else example["yaw"])
            elif src in ("metadata", "learned"):
                raise ValueError(
                    f"config.yaw_source={src!r} needs a 'yaw' field; {c.data.builder} has "
                    f"{sorted(example)}"
                )
        if src == "landmarks":
            if "landmarks" not in example:
                raise ValueError(
                    f"config.yaw_source='landmarks' needs a 'landmarks' field; {c.data.builder} has "
                    f"{sorted(example)}"
                )
            pts = np.asarray(example["landmarks"], np.float32)
            if align_m is not None:  # into the aligned crop
                pts = pts @ align_m[:, :2].T + align_m[:, 2]
            else:
                pts = pts * np.float32(size / w)
            if flip:
                pts = pts.copy()
                pts[:, 0] = size - 1 - pts[:, 0]
                if len(pts) == 5:
                    pts = pts[_FLIP_5]
            out["landmarks"] = pts
        if src == "profile_flag":
            if "is_profile" not in example:
                raise ValueError(
                    f"config.yaw_source='profile_flag' needs an 'is_profile' field; "
                    f"{c.data.builder} has {sorted(example)}"
                )
            out["is_profile"] = np.bool_(example["is_profile"])
        return out

    def data(self, split, *, train):
        src = self.source(split)
        if train and self.config.mode == "stitching":
            rows, _, _ = self.stitching_rows(split)
            src = Subset(src, rows)
        return src, functools.partial(self.transform, train=train)

    # -- yaw ----------------------------------------------------------------------
    @staticmethod
    def _landmark_yaw(pts):
        if pts.shape[-2] == 5:
            return pose.yaw_from_landmarks(pts)
        if pts.shape[-2] == 30:
            return pose.yaw_from_cfp_fiducials(pts)
        raise ValueError(
            f"landmarks: expected 5 points or CFP's 30 fiducials, got shape {pts.shape}"
        )

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
    def init_variables(self, rng, batch):
        return self.model.init(rng, batch["image"], self.gate_yaw(batch), train=False)

    def init_task_state(self, rng, variables):
        del rng, variables
        if self.config.mode != "stitching":
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
            return self._stitching_loss(variables, model_state, batch, task_state)
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

    def _stitching_loss(self, variables, model_state, batch, task_state):
        phi = jax.lax.stop_gradient(
            self.model.apply(variables, batch["image"], False, method=RecognitionNet.features)
        )
        yaw = self.gate_yaw(batch)
        if yaw is None:  # learned head (frozen in stitching)
            yaw = self.model.apply(variables, phi, method=lambda m, x: m.yaw_net(x))
        out = self.model.apply(variables, phi, yaw, method=RecognitionNet.head)
        labels = batch["label"]
        target = jax.lax.stop_gradient(task_state["frontal_mean"][labels])
        valid = task_state["has_target"][labels]
        per = losses.dream_stitching_mse(out["embedding"].astype(jnp.float32), target, where=valid)
        loss = jnp.sum(per) / jnp.maximum(jnp.sum(valid), 1)
        return loss, (model_state, {"stitch_mse": loss, "gate_mean": jnp.mean(out["gate"])})

    # -- stitching start: weights from the end-to-end run, frontal means -------------
    def hooks(self):
        if self.config.mode != "stitching":
            return []
        return [
            Hook(
                "stitching_targets",
                every_steps=int(self.config.num_train_steps) + 1,
                fn=self._stitching_start,
                at_start=True,
            )
        ]

    def _stitching_start(self, state, ctx: EvalContext):
        split = self.config.train_split
        _, frontal_rows, keep = self.stitching_rows(split)
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
        feats = 0.5 * (out["phi"].astype(np.float64) + out["phi_flip"])
        d = feats.shape[1]
        sums = np.zeros((self.num_classes, d))
        counts = np.zeros(self.num_classes)
        np.add.at(sums, out["label"], feats)
        np.add.at(counts, out["label"], 1)
        has = counts > 0
        means = np.where(has[:, None], sums / np.maximum(counts, 1)[:, None], 0.0).astype(
            np.float32
        )
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

    def embed_split(self, state, ctx: EvalContext, split: str, data_config=None):
        src = self.source(split, data_config)
        transform = functools.partial(self.transform, train=False)
        return common.predict_split(
            ctx,
            self.predict,
            common.variables_of(state),
            src,
            transform,
            int(self.config.eval_batch_size),
            limit=self.config.get("eval_limit") or None,
            keep=("label",),
        )

    # -- evaluators --------------------------------------------------------------------
    def evaluators(self):
        return {
            "verification": self._evaluate_verification,
            "cfp": self._evaluate_cfp,
            "identification": self._evaluate_identification,
            "lfw": functools.partial(recognition_protocols.evaluate_lfw, self),
            "bins": functools.partial(recognition_protocols.evaluate_bins, self),
        }

    def verification_pairs(self, split: str, n: int | None = None):
        meta = self.metadata(split)
        if "abs_yaw" not in meta:
            raise ValueError(f"the 'verification' evaluator needs pose metadata in split {split!r}")
        v = self.config.verification
        lab, yaw = meta["label"], meta["abs_yaw"]
        if n is not None:
            lab, yaw = lab[:n], yaw[:n]
        return build_verification_pairs(
            lab,
            yaw,
            frontal_max_yaw=float(v.frontal_max_yaw),
            profile_min_yaw=float(v.profile_min_yaw),
            pairs_per_identity=int(v.pairs_per_identity),
            num_folds=int(v.folds),
            seed=int(v.seed),
        )

    def _write(self, ctx, name, report, title):
        if ctx.process_index != 0:
            return
        curves = {k: rep["roc"] for k, rep in report.items()}
        verif.plot_roc(
            curves, os.path.join(ctx.workdir, f"{name}_roc_step{ctx.step}.png"), title=title
        )
        with open(os.path.join(ctx.workdir, f"{name}_eval_step{ctx.step}.json"), "w") as f:
            json.dump(
                {
                    k: {m: (np.asarray(x).tolist() if m != "roc" else None) for m, x in rep.items()}
                    for k, rep in report.items()
                },
                f,
                indent=1,
            )

    def _evaluate_verification(self, state, ctx: EvalContext):
        split = self.config.eval_split
        out = self.embed_split(state, ctx, split)
        pairs = self.verification_pairs(split, n=len(out["label"]))
        report = verification_report(out["embedding"], out["embedding_flip"], pairs)
        self._write(
            ctx,
            "verification",
            report,
            f"{split}: FF / FP ({self.config.model.use_dream and 'DREAM' or 'naive'})",
        )
        return _flatten_report(report)

    def _evaluate_cfp(self, state, ctx: EvalContext):
        c = self.config
        d = c.data
        if d.builder == "cfp_manual":
            data_cfg, split, root = d, c.eval_split, d.manual_dir
        else:  # trained on other data (e.g. MS-Celeb): CFP's eval splits from their own builder
            import ml_collections  # pylint: disable=import-outside-toplevel

            root = c.cfp.manual_dir
            rest = [k for k in range(1, 11) if k not in [int(x) for x in c.cfp.eval_splits]]
            data_cfg = ml_collections.ConfigDict(
                dict(
                    builder="cfp_manual",
                    config="",
                    data_dir=d.data_dir,
                    manual_dir=root,
                    overrides=dict(image_size=int(c.image_size), train_splits=rest),
                )
            )
            split = "test"
        if not root:
            raise ValueError(
                "config.data.manual_dir (CFP data) or config.cfp.manual_dir (other training data): "
                "the CFP root holding Data/ and Protocol/ is needed by the 'cfp' evaluator"
            )
        out = self.embed_split(state, ctx, split, data_cfg)
        meta = self.metadata(split, data_cfg)
        n = len(out["label"])
        proto = verif.parse_cfp_protocol(root, check_exists=False)
        row_of = {
            (bool(p), int(i)): r
            for r, (p, i) in enumerate(zip(meta["is_profile"][:n], meta["index"][:n]))
        }
        pairs = {}
        for name in ("FF", "FP"):
            ii, jj, ss, ff = [], [], [], []
            for k in c.cfp.eval_splits:
                a, b, same = proto.splits[name][int(k) - 1]
                try:
                    ii.append([row_of[(False, int(x))] for x in a])
                    jj.append([row_of[(name == "FP", int(x))] for x in b])
                except KeyError as err:
                    raise ValueError(
                        f"config.cfp.eval_splits: split {int(k):02d} refers to image {err} that is not in "
                        f"split {split!r} (its identities are in config.data.overrides.train_splits?)"
                    ) from None
                ss.append(same)
                ff.append(np.full(len(same), int(k)))
            pairs[name] = tuple(np.concatenate(x) for x in (ii, jj, ss, ff))
        report = verification_report(out["embedding"], out["embedding_flip"], pairs)
        self._write(
            ctx,
            "cfp",
            report,
            f"CFP splits {list(c.cfp.eval_splits)} ({'DREAM' if c.model.use_dream else 'naive'})",
        )
        return _flatten_report(report)

    def _evaluate_identification(self, state, ctx: EvalContext):
        split = self.config.eval_split
        out = self.embed_split(state, ctx, split)
        meta = self.metadata(split)
        n = len(out["label"])
        lab = out["label"]
        yaw = meta["abs_yaw"][:n] if "abs_yaw" in meta else np.zeros(n)
        fused = verif.fuse_flip(out["embedding"], out["embedding_flip"]).astype(np.float32)
        gallery = []
        for k in np.unique(lab):
            rows = np.flatnonzero(lab == k)
            gallery.append(rows[np.argmin(yaw[rows])])
        gallery = np.array(gallery)
        probes = np.setdiff1d(np.arange(n), gallery)
        k = min(5, len(gallery))
        _, idx = ident_eval.search_top_k(fused[probes], fused[gallery], k=k)
        res, curves = {}, {}
        frontal_max = float(self.config.verification.frontal_max_yaw)
        profile_min = float(self.config.verification.profile_min_yaw)
        for name, m in (
            ("all", np.ones(len(probes), bool)),
            ("frontal", yaw[probes] <= frontal_max),
            ("profile", yaw[probes] >= profile_min),
        ):
            if m.any():
                curve = ident_eval.cmc(idx[m], lab[probes][m], lab[gallery])
                curves[f"{name} probes"] = curve
                res[f"{name}_rank1"] = float(curve[0])
                res[f"{name}_rank{k}"] = float(curve[-1])
        if ctx.process_index == 0:
            ident_eval.plot_cmc(
                curves,
                os.path.join(ctx.workdir, f"identification_cmc_step{ctx.step}.png"),
                title=f"{split}: closed-set identification, {len(gallery)}-identity gallery",
            )
        return res

    def summary_metrics(self, results):
        return {k: v for k, v in results.items() if k.endswith("_mean") or "rank1" in k}
