"""One analysis API over trained checkpoints: detect, align, embed, attributes, analyze.

    fa = FaceAnalyzer.from_checkpoints(detector="/tmp/jf/cfp_scenes",
                                       recognizer="/tmp/jf/dream_cfp_aligned",
                                       attributes="/tmp/jf/lmle_synth")
    faces = fa.analyze(image)  # uint8 [H, W, 3]: one dict per detected face

Each workdir is a training run of `jaxface.train` (``config.json`` + orbax
``checkpoints/``); the task of its config rebuilds the model and only the weights (and,
for LMLE attribute models, the cluster centroids of the task state) are read, so no
dataset is needed to load a model.

Pipeline and preprocessing (each as its task did in training):

* ``detect``: the image at its own resolution, shrunk only so that its plausible faces
  fall into the sizes the detector was trained for (``config.face_sizes``) and its
  longer side is at most ``max_side``, zero padded to a shape bucket; or on a fixed
  canvas, or as a small pyramid (`jaxface.detect_input.DetectOptions`); the model's own
  ``predict`` (every branch's RPN + Fast R-CNN heads, one NMS at ``config.nms_iou``)
  runs jitted on fixed-size batches; detections with ``score >= score_threshold`` are
  kept, in original image pixels.
* ``align``: every face is cut to the recogniser's ``config.image_size`` crop by the
  similarity transform of its 5 landmarks onto the ArcFace template
  (`jaxface.ops.align`), with the recogniser's alignment settings
  (`jaxface.tasks.recognition_data.align_settings`: the same ones its training data used
  when ``config.data.crop == "aligned"``), jitted.
* ``embed``: ``normalize_image`` of the crops, the model's embedding of the crop and
  of its mirror image with the DREAM gate's yaw, fused as the evaluators fuse them
  (``L2-normalise(f(x) + f(flip x))``, `jaxface.evaluation.verification.fuse_flip`);
  the yaw is the 3D mean-face fit of the 5 landmarks
  (`jaxface.ops.pose.yaw_from_landmarks`) unless given (or the recogniser's learned
  yaw head when it has one).
* ``attributes``: the aligned crop resized (antialiased) to the attribute model's
  ``config.image_size``; per attribute the probability ``sigmoid(logit)`` (``bce``
  models) and the decision: ``p > 0.5`` (``bce``) or LMLE's cluster-wise kNN rule over
  the centroids stored in the checkpoint's task state (``lmle`` / ``triplet_knn``).

Every array function is jitted; face counts are padded to powers of two, the
detector's input sides to shape buckets and the alignment's image sides to multiples of
32, so a few compilations serve every input.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxface import detect_input
from jaxface.trained_model import (  # noqa: F401  (re-exported: the analyzer's public names)
    CENTROIDS_FILE,
    LoadedModel,
    load_model,
    read_config,
    recluster_attributes,
)
from jaxface.ops.norm import fuse_flip

__all__ = ["FaceAnalyzer", "LoadedModel", "load_model", "read_config"]


# ---------------------------------------------------------------------------------
# Pure functions (jitted by the analyzer, exported by `jaxface.export`)
# ---------------------------------------------------------------------------------


def _pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _pad_rows(x: np.ndarray, n: int) -> np.ndarray:
    if len(x) == n:
        return x
    pad = np.zeros((n - len(x),) + x.shape[1:], x.dtype)
    return np.concatenate([x, pad])


def detect_core(detector: LoadedModel):
    """``fn(variables, image [B, S, S, 3] normalised, image_hw [B, 2], scale [B]) ->
    dict(boxes [B, K, 4], scores [B, K], valid [B, K], landmarks [B, K, 5, 2])`` in
    original image pixels (the detection task's ``predict``)."""
    task = detector.task

    def fn(variables, image, image_hw, scale):
        out = task.predict(variables, {"image": image, "image_hw": image_hw, "scale": scale})
        if "landmarks" not in out:
            out["landmarks"] = jnp.zeros(out["boxes"].shape[:-1] + (5, 2), jnp.float32)
        return out

    return fn


def embed_core(recognizer: LoadedModel):
    """``fn(variables, crops [N, S, S, 3] float 0..255, yaw [N]) -> (embedding [N, D]
    L2-normalised flip-fused, yaw used [N], gate [N])``."""
    model = recognizer.task.model
    learned = recognizer.config.yaw_source == "learned"

    def fn(variables, crops, yaw):
        x = crops.astype(jnp.float32) * (2.0 / 255.0) - 1.0
        out = model.apply(variables, x, None if learned else yaw, train=False)
        out_f = model.apply(variables, x[:, :, ::-1], out["yaw"], train=False)
        e = fuse_flip(out["embedding"].astype(jnp.float32), out_f["embedding"].astype(jnp.float32))
        return e, out["yaw"].astype(jnp.float32), out["gate"].astype(jnp.float32)

    return fn


def attributes_core(attributes: LoadedModel):
    """``fn(variables, task_state, crops [N, S', S', 3] float 0..255) -> (probabilities
    [N, A] (sigmoid of the linear heads), decisions [N, A] int32)``."""
    from jaxface.tasks.attributes_lmle import knn_predict_all_attributes  # pylint: disable=import-outside-toplevel

    task, cfg = attributes.task, attributes.config
    size = int(cfg.image_size)
    metric = bool(getattr(task, "metric", False))

    def fn(variables, task_state, crops):
        crops = crops.astype(jnp.float32)
        if crops.shape[1:3] != (size, size):
            crops = jax.image.resize(
                crops, (crops.shape[0], size, size, crops.shape[-1]), "linear", antialias=True
            )
        x = crops * (2.0 / 255.0) - 1.0
        out = task.predict(variables, {"image": x})
        prob = jax.nn.sigmoid(out["logits"].astype(jnp.float32))
        if metric:
            dec = knn_predict_all_attributes(
                out["embedding"].astype(jnp.float32),
                task_state["centroids"],
                task_state["centroid_valid"],
                k=int(cfg.knn_k),
            )
        else:
            dec = (prob > 0.5).astype(jnp.int32)
        return prob, dec

    return fn


# ---------------------------------------------------------------------------------
# The analyzer
# ---------------------------------------------------------------------------------


class FaceAnalyzer:
    """Detection, alignment, embeddings (DREAM yaw), attributes; see the module docstring."""

    def __init__(
        self,
        detector: LoadedModel,
        recognizer: Optional[LoadedModel] = None,
        attributes: Optional[LoadedModel] = None,
        *,
        score_threshold: float = 0.5,
        detect_batch: int = 1,
        detect_options: Optional[detect_input.DetectOptions] = None,
    ):
        from jaxface.tasks import recognition_data  # pylint: disable=import-outside-toplevel

        for name, m, want in (
            ("detector", detector, "detection"),
            ("recognizer", recognizer, "recognition"),
            ("attributes", attributes, "attributes"),
        ):
            if m is not None and m.config.task != want:
                raise ValueError(
                    f"{name}={m.workdir!r} is a {m.config.task!r} run, expected a {want!r} one"
                )
        self.detector, self.recognizer, self.attribute_model = detector, recognizer, attributes
        self.score_threshold = float(score_threshold)
        self.detect_batch = int(detect_batch)
        self.detect_options = detect_options or detect_input.DetectOptions()
        if self.detect_options.canvas is None:  # a missing config.face_sizes fails here
            detect_input.face_sizes_of(detector.config, self.detect_options)
        self.has_landmarks = bool(detector.config.model.landmarks)
        if recognizer is not None:
            self.crop_size = int(recognizer.config.image_size)
            self.align_settings = recognition_data.align_settings(recognizer.config)
        else:  # crops for the attribute model only
            self.crop_size = int(attributes.config.image_size) if attributes is not None else 112
            self.align_settings = dict(recognition_data.ALIGN_DEFAULTS)
        self.attribute_names: tuple = ()
        if attributes is not None:
            names = attributes.config.get("attribute_names", None)
            if not names:
                from jaxface.data.attribute_names import CELEBA_ATTRIBUTES  # pylint: disable=import-outside-toplevel

                names = CELEBA_ATTRIBUTES
            self.attribute_names = tuple(names)
        self._detect = jax.jit(detect_core(detector))
        self._embed = jax.jit(embed_core(recognizer)) if recognizer is not None else None
        self._attr = jax.jit(attributes_core(attributes)) if attributes is not None else None
        self._align_fns: dict = {}
        self._yaw = jax.jit(_yaw_from_landmarks)

    @classmethod
    def from_checkpoints(
        cls,
        detector: str,
        recognizer: Optional[str] = None,
        attributes: Optional[str] = None,
        *,
        score_threshold: float = 0.5,
        detect_batch: int = 1,
        detect_options: Optional[detect_input.DetectOptions] = None,
    ) -> "FaceAnalyzer":
        """Loads the latest checkpoint of each training workdir (see `load_model`)."""
        return cls(
            load_model(detector),
            load_model(recognizer) if recognizer else None,
            load_model(attributes) if attributes else None,
            score_threshold=score_threshold,
            detect_batch=detect_batch,
            detect_options=detect_options,
        )

    # -- detection -------------------------------------------------------------------
    def detect(self, image, *, score_threshold: Optional[float] = None):
        """Faces of one image (uint8 ``[H, W, 3]``) or of a list of images.

        Returns (per image) dict ``boxes [N, 4]`` x1 y1 x2 y2 pixels, ``scores [N]``,
        ``landmarks [N, 5, 2]`` pixels (zeros when the detector has no landmark head),
        sorted by descending score.
        """
        single = isinstance(image, np.ndarray) and image.ndim in (2, 3)
        images = [_rgb(im) for im in ([image] if single else list(image))]
        thr = self.score_threshold if score_threshold is None else float(score_threshold)
        raw = detect_input.detect_images(
            self._detect,
            self.detector.variables,
            images,
            self.detector.config,
            self.detect_options,
            self.detect_batch,
        )
        results = []
        for out in raw:
            keep = np.asarray(out["valid"], bool) & (np.asarray(out["scores"]) >= thr)
            order = np.argsort(-np.asarray(out["scores"])[keep], kind="stable")
            results.append(
                {
                    k: np.asarray(out[k], np.float32)[keep][order]
                    for k in ("boxes", "scores", "landmarks")
                }
            )
        return results[0] if single else results

    # -- alignment -------------------------------------------------------------------
    def align(
        self, image, landmarks, *, size: Optional[int] = None, supersample: Optional[int] = None
    ) -> np.ndarray:
        """float32 ``[N, S, S, 3]`` (0..255) aligned crops of the faces with ``landmarks``
        ``[N, 5, 2]`` (image pixels) in one image; S = ``size`` or the recogniser's input
        size, cut with the recogniser's alignment settings (template zoom, border).

        Each output pixel is the average of ``k x k`` bilinear samples over its footprint
        (a box prefilter). The recogniser's training crops were cut at scale ~1 from
        small dataset crops (``k`` of its settings suffices there); faces in photos are
        often shrunk several times, so by default ``k`` is raised to the largest
        shrink factor of the faces (at most `MAX_SUPERSAMPLE`): without it the crop
        aliases, and its sharpness differs from what the recogniser was trained on.
        """
        landmarks = np.asarray(landmarks, np.float32).reshape(-1, 5, 2)
        n = len(landmarks)
        size = int(size or self.crop_size)
        if supersample is None and n:
            supersample = max(
                int(self.align_settings["supersample"]),
                shrink_factor(landmarks, size, self.align_settings["zoom"]),
            )
        k = int(supersample or self.align_settings["supersample"])
        if n == 0:
            return np.zeros((0, size, size, 3), np.float32)
        if not self.has_landmarks:
            raise ValueError(
                f"detector {self.detector.workdir}: config.model.landmarks is False, so there "
                "are no landmarks to align faces with; train a detector with landmarks"
            )
        if (size, k) not in self._align_fns:
            settings = {**self.align_settings, "supersample": k}
            self._align_fns[(size, k)] = jax.jit(
                functools.partial(_align_padded, size=size, **settings)
            )
        img = _pad_image(_rgb(image), border=self.align_settings["border"])
        padded = _pad_rows(landmarks, _pow2(n))
        padded[n:] = landmarks[0]
        crops = self._align_fns[(size, k)](img, padded)
        return np.asarray(crops)[:n]

    # -- recognition -----------------------------------------------------------------
    def yaw(self, landmarks) -> np.ndarray:
        """[N] yaw (degrees) of 5-point landmarks by the 3D mean-face fit."""
        landmarks = np.asarray(landmarks, np.float32).reshape(-1, 5, 2)
        n = len(landmarks)
        if n == 0:
            return np.zeros((0,), np.float32)
        padded = _pad_rows(landmarks, _pow2(n))
        padded[n:] = landmarks[0]
        return np.asarray(self._yaw(padded))[:n]

    def embed(self, aligned, yaw=None, *, landmarks=None) -> dict:
        """Embeddings of aligned crops: dict ``embedding [N, D]`` (L2-normalised, flip
        fused), ``yaw [N]`` (degrees, what the DREAM gate used) and ``gate [N]``.

        ``yaw``: given per face, or (None) fitted from ``landmarks`` [N, 5, 2] when given,
        else 0 (frontal). A recogniser with a learned yaw head uses its own prediction.
        """
        if self._embed is None:
            raise ValueError("no recogniser: pass recognizer=WORKDIR to from_checkpoints")
        aligned = np.asarray(aligned, np.float32)
        n = len(aligned)
        if yaw is None:
            yaw = self.yaw(landmarks) if landmarks is not None else np.zeros((n,), np.float32)
        yaw = np.asarray(yaw, np.float32).reshape(n)
        if n == 0:
            d = int(self.recognizer.config.model.embed_dim)
            z = np.zeros((0,), np.float32)
            return {"embedding": np.zeros((0, d), np.float32), "yaw": z, "gate": z}
        m = _pow2(n)
        crops, yaws = _pad_rows(aligned, m), _pad_rows(yaw, m)
        e, y, g = jax.device_get(self._embed(self.recognizer.variables, crops, yaws))
        return {"embedding": e[:n], "yaw": y[:n], "gate": g[:n]}

    # -- attributes ------------------------------------------------------------------
    def attributes(self, aligned) -> dict:
        """dict ``names`` (A), ``probabilities [N, A]`` (sigmoid of the linear heads;
        meaningful for ``bce`` models), ``decisions [N, A]`` int (1 = present),
        ``rule`` (how decisions were made)."""
        if self._attr is None:
            raise ValueError("no attribute model: pass attributes=WORKDIR to from_checkpoints")
        aligned = np.asarray(aligned, np.float32)
        n = len(aligned)
        m = _pow2(max(n, 1))
        p, d = jax.device_get(
            self._attr(
                self.attribute_model.variables,
                self.attribute_model.task_state,
                _pad_rows(aligned, m),
            )
        )
        metric = bool(getattr(self.attribute_model.task, "metric", False))
        return {
            "names": self.attribute_names,
            "probabilities": p[:n],
            "decisions": d[:n].astype(np.int32),
            "rule": "cluster_knn" if metric else "sigmoid>0.5",
        }

    # -- everything --------------------------------------------------------------------
    def analyze(self, image, *, score_threshold: Optional[float] = None) -> list[dict]:
        """Every face of one image with box, score, landmarks and -- with a recogniser --
        embedding, yaw, gate and -- with an attribute model -- attributes (cut at the
        attribute model's input size), highest score first."""
        image = _rgb(image)
        det = self.detect(image, score_threshold=score_threshold)
        n = len(det["scores"])
        if n == 0:
            return []
        emb = None
        if self._embed is not None:
            emb = self.embed(self.align(image, det["landmarks"]), landmarks=det["landmarks"])
        attrs = None
        if self._attr is not None:
            size = int(self.attribute_model.config.image_size)
            attrs = self.attributes(self.align(image, det["landmarks"], size=size))
        faces = []
        for i in range(n):
            face = {
                "box": det["boxes"][i],
                "score": float(det["scores"][i]),
                "landmarks": det["landmarks"][i],
            }
            if emb is not None:
                face.update(
                    embedding=emb["embedding"][i],
                    yaw=float(emb["yaw"][i]),
                    gate=float(emb["gate"][i]),
                )
            if attrs is not None:
                face["attributes"] = {
                    name: {
                        "probability": float(attrs["probabilities"][i, a]),
                        "present": bool(attrs["decisions"][i, a] == 1),
                    }
                    for a, name in enumerate(attrs["names"])
                }
            faces.append(face)
        return faces


# ---------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------


def _rgb(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] < 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
    return image[..., :3]


def _pad_image(image: np.ndarray, *, border: str, multiple: int = 32) -> np.ndarray:
    """Pads H and W up to a multiple (bottom / right) so that few shapes are compiled;
    the padding reproduces the warp's border rule, so crops are unchanged."""
    h, w = image.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not ph and not pw:
        return image
    mode = "edge" if border == "edge" else "constant"
    return np.pad(image, ((0, ph), (0, pw), (0, 0)), mode=mode)


def _align_padded(image, landmarks, *, size, supersample, zoom, border):
    from jaxface.ops import align  # pylint: disable=import-outside-toplevel

    crops, _ = align.align_faces(
        image, landmarks, size, supersample=supersample, zoom=zoom, border=border
    )
    return crops


def _yaw_from_landmarks(landmarks):
    from jaxface.ops import pose  # pylint: disable=import-outside-toplevel

    return pose.yaw_from_landmarks(landmarks)


MAX_SUPERSAMPLE = 8


def shrink_factor(landmarks, size: int, zoom: float = 1.0) -> int:
    """``ceil`` of the largest image-to-crop shrink factor of ``[N, 5, 2]`` landmarks
    (the inverse scale of their similarity transform onto the template), in
    ``[1, MAX_SUPERSAMPLE]``."""
    from jaxface.ops import align  # pylint: disable=import-outside-toplevel

    m = np.asarray(align.estimate_similarity(landmarks, align.arcface_template(size, zoom)))
    scale = np.sqrt(np.abs(np.linalg.det(m[..., :2])))  # crop pixels per image pixel
    worst = float(np.min(scale)) if scale.size else 1.0
    return int(np.clip(np.ceil(1.0 / max(worst, 1e-6)), 1, MAX_SUPERSAMPLE))


def largest_face(det: dict) -> Optional[int]:
    """Index of the largest box of a `FaceAnalyzer.detect` result (None without faces)."""
    b = np.asarray(det["boxes"]).reshape(-1, 4)
    if not len(b):
        return None
    return int(np.argmax((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])))
