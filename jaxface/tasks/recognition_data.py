"""The recognition task's data (`RecognitionData`, a part of
`jaxface.tasks.recognition.RecognitionTask`): sources of every supported layout, the
host-side metadata of a split (labels and pose, images left undecoded where the source
allows it), the stitching rows, the example transform with its ``center`` / ``aligned``
crops, the landmark yaw fit and the verification pair sets of a split.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxface.data import align_np, sources
from jaxface.data.recognition_sources import IdentityFolderSource, InsightFaceSource
from jaxface.data.sources import Subset
from jaxface.evaluation.face_pairs import build_verification_pairs
from jaxface.ops import pose
from jaxface.tasks import common

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


# 5-point order of `pose.MEAN_FACE_5`: swapping left/right under a horizontal flip.
_FLIP_5 = np.array([1, 0, 2, 4, 3])


class RecognitionData:
    """The data half of `RecognitionTask` (its base class). The task sets what it reads:
    ``config``, ``num_classes``, ``crop`` (one of `CROPS`) and the caches of sources and
    metadata per ``(builder, split)``, ``_sources`` and ``_meta`` (empty dicts)."""

    config: Any
    num_classes: int
    crop: str
    _sources: dict
    _meta: dict

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
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

        try:  # tfds: skip image decoding
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

    def training_rows(self, split) -> np.ndarray | None:
        """The rows of the training split that training reads, or None (all of them).

        ``config.data.max_profile_fraction`` = f < 1 keeps every non-profile image and
        ``floor(f * n_nonprofile / (1 - f))`` profile images (``|yaw| >=
        config.stitching.profile_min_yaw``), drawn by a fixed permutation (seed 0), so
        that profiles are at most a fraction f of the images read: a stem trained on
        mostly frontal faces. Other splits are never capped."""
        f = float(self.config.data.get("max_profile_fraction", 1.0))
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"config.data.max_profile_fraction={f}: expected a value in [0, 1]")
        if f >= 1.0 or split != self.config.train_split:
            return None
        meta = self.metadata(split)
        if "abs_yaw" not in meta:
            raise ValueError(
                f"config.data.max_profile_fraction needs pose metadata (yaw, is_profile or "
                f"landmarks) in split {split!r}"
            )
        profile = meta["abs_yaw"] >= float(self.config.stitching.profile_min_yaw)
        rest, prof = np.flatnonzero(~profile), np.flatnonzero(profile)
        k = min(len(prof), int(np.floor(f * len(rest) / (1.0 - f) + 1e-9)))
        kept = np.random.default_rng(0).permutation(prof)[:k]
        return np.sort(np.concatenate([rest, kept]))

    def stitching_rows(self, split) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(profile rows, frontal rows, identities kept) of a split for stitching (within
        `training_rows`)."""
        meta = self.metadata(split)
        if "abs_yaw" not in meta:
            raise ValueError(
                f"config.mode='stitching' needs pose metadata (yaw, is_profile or landmarks) in split {split!r}"
            )
        s = self.config.stitching
        fr = meta["abs_yaw"] <= float(s.frontal_max_yaw)
        pr = meta["abs_yaw"] >= float(s.profile_min_yaw)
        allowed = self.training_rows(split)
        if allowed is not None:
            inside = np.zeros(len(fr), bool)
            inside[allowed] = True
            fr, pr = fr & inside, pr & inside
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
        if train and self.config.mode == "stitching":
            return self.stitching_data(split)
        src = self.source(split)
        rows = self.training_rows(split) if train else None
        if rows is not None:
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
