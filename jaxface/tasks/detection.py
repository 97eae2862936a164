"""The ``detection`` task: ScaleFace (`jaxface.models.scaleface`) with OHEM.

Data (``config.data``): any builder whose examples hold ``image`` uint8 [H, W, 3] and
``faces`` with ``bbox`` (tfds ``BBoxFeature``: normalised ymin, xmin, ymax, xmax) and,
optionally, ``landmarks`` [5, 2] pixels, ``blur``, ``occlusion``, ``pose``, ``invalid``
— the synthetic ``synthetic_faces/detection`` scenes and the ``wider_face_original``
builder (`jaxface.data.widerface_builder`) both do. Each is placed on a fixed
``config.image_size`` canvas with its faces in ``config.max_faces`` slots
(`jaxface.tasks.detection_data`).

Backbone: ``config.model.backbone`` holds the `jaxface.models.resnet.ResNet` fields and
``pretrained``, the path of a torchvision ResNet file (`jaxface.models.pretrained`;
"" = scratch) loaded when a run starts fresh; with it, the model maps its [-1, 1]
input to torchvision's ImageNet normalisation before the ResNet.

Loss, per branch (each sees only the faces of its size range; the others are
ignored, `jaxface.ops.targets`): RPN — sigmoid cross-entropy on a balanced random
sample of anchors + smooth-L1 box regression on its positives; Fast R-CNN — on the
branch's proposals plus its in-range ground-truth boxes, the per-RoI loss
(cross-entropy + smooth-L1 + optional landmark smooth-L1) of every labelled RoI is
computed and OHEM keeps the ``config.ohem_rois`` highest of each image (the
forward over all RoIs is the read-only pass of OHEM; the gradient flows only
through the kept ones).

Inference: the ``detect`` predict function (`DetectionTask.predict`), detections in
original image pixels. Evaluation (``config.evals = ["wider"]``): the exact WIDER FACE
protocol on ``config.eval_split`` (`jaxface.tasks.detection_evaluators`).

Predictions for any image folder, in WIDER's ``<event>/<image>.txt`` format
(`write_folder_predictions`)::

  jaxface predict-wider --detector /tmp/jaxface/scaleface --images DIR --out PRED_DIR
"""

from __future__ import annotations

import functools
import pathlib
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxface import losses
from jaxface.data import sources
from jaxface.data.images import list_images, read_image
from jaxface.data.recognition_formats import IMAGE_EXTENSIONS
from jaxface.evaluation import widerface as wider_eval
from jaxface.models import scaleface
from jaxface.ops.boxes import xyxy_to_xywh
from jaxface.ops.targets import (
    in_size_range,
    ohem_select,
    roi_targets,
    rpn_targets,
    sample_balanced,
)
from jaxface.tasks import detection_data, detection_evaluators
from jaxface.tasks.base import Task
from jaxface.tasks.detection_data import faces_of

__all__ = ["DetectionTask", "faces_of", "write_folder_predictions"]


def _smooth_l1(x, beta: float):
    return losses.smooth_l1(x, beta=beta)


def _bce(logits, labels):
    """Per-element sigmoid cross-entropy with {0, 1} labels."""
    return losses.sigmoid_bce(logits, labels)


class DetectionTask(Task):
    name = "detection"
    compute_fields = ("image",)
    backbone_path = ("resnet",)
    predictors = {"detect": "predict"}

    def __init__(self, config):
        super().__init__(config)
        m = config.model
        self.specs = scaleface.branch_specs([dict(b) for b in m.branches])
        backbone = dict(m.backbone)
        # A torchvision file for the ResNet (`jaxface.models.pretrained`); the model then
        # feeds the ResNet torchvision's ImageNet input normalisation.
        self.pretrained = str(backbone.pop("pretrained", "") or "")
        backbone["input_norm"] = "imagenet" if self.pretrained else "none"
        self.model = scaleface.ScaleFace(
            branches=self.specs,
            backbone=backbone,
            merge_channels=int(m.merge_channels),
            rpn_channels=int(m.rpn_channels),
            head_conv_channels=int(m.head_conv_channels),
            # Run directories written before the option existed had two.
            num_head_convs=int(m.get("num_head_convs", 2)),
            head_fc=tuple(int(v) for v in m.head_fc),
            roi_size=int(m.roi_size),
            roi_op=str(m.roi_op),
            roi_sampling_ratio=int(m.roi_sampling_ratio),
            landmarks=bool(m.landmarks),
        )
        if m.roi_op not in ("align", "pool"):
            raise ValueError(f"config.model.roi_op: expected 'align' or 'pool', got {m.roi_op!r}")
        self._sources = {}

    # -- data -------------------------------------------------------------------
    def source(self, split):
        if split not in self._sources:
            self._sources[split] = sources.source_from_config(self.config.data, split)
        return self._sources[split]

    def prepare(
        self,
        image: np.ndarray,
        faces: Optional[dict],
        rng: Optional[np.random.Generator],
        *,
        train: bool,
    ) -> dict:
        """One image (+ faces) -> the fixed-shape model input (`detection_data.prepare`)."""
        return detection_data.prepare(self.config, image, faces, rng, train=train)

    def transform(self, example, rng, *, train: bool):
        return self.prepare(example["image"], faces_of(example), rng, train=train)

    def data(self, split, *, train):
        return self.source(split), functools.partial(self.transform, train=train)

    # -- model ------------------------------------------------------------------
    def example_batch(self, batch_size: int = 1) -> dict[str, np.ndarray]:
        batch = super().example_batch(batch_size)
        batch["image_hw"] = np.full((batch_size, 2), int(self.config.image_size), np.float32)
        batch["scale"] = np.ones((batch_size,), np.float32)
        return batch

    def init_variables(self, rng, batch):
        return self.model.init(rng, batch["image"], train=False)

    def rpn_branch_targets(self, batch, i, feature_hw):
        """Branch ``i``'s anchors ``[A, 4]``, in-range mask ``[B, G]`` and RPN targets
        (labels ``[B, A]``, deltas ``[B, A, 4]``) for a ``feature_hw`` feature map, from
        the batch's fp32 ground truth (the train step computes them exactly so)."""
        spec = self.specs[i]
        anchors = jnp.asarray(scaleface.branch_anchors(spec, tuple(feature_hw)))
        gt_boxes = batch["gt_boxes"]
        in_range = in_size_range(gt_boxes, spec.size_range)
        t = self.config.targets
        labels, tdeltas = jax.vmap(
            lambda g, v, r, ig: rpn_targets(
                anchors,
                g,
                v,
                gt_in_range=r,
                gt_ignore=ig,
                pos_iou=float(t.rpn_pos_iou),
                neg_iou=float(t.rpn_neg_iou),
                ignore_ioa=float(t.ignore_ioa),
            )
        )(gt_boxes, batch["gt_valid"], in_range, batch["gt_ignore"])
        return anchors, in_range, labels, tdeltas

    def _branch_losses(self, mdl, stages, batch, i, rng):
        c = self.config
        feat = mdl.branch_features(stages, i)
        logits, deltas = mdl.branch_rpn(feat, i)
        # Losses and targets in fp32 whatever the compute dtype (config.compute_dtype).
        logits, deltas = logits.astype(jnp.float32), deltas.astype(jnp.float32)
        anchors, in_range, labels, tdeltas = self.rpn_branch_targets(batch, i, feat.shape[1:3])
        gt_boxes, gt_valid, gt_ignore = batch["gt_boxes"], batch["gt_valid"], batch["gt_ignore"]
        t = c.targets
        b = labels.shape[0]
        rng_rpn, _ = jax.random.split(rng)
        pos, neg = jax.vmap(
            functools.partial(
                sample_balanced,
                num_samples=int(t.rpn_batch),
                positive_fraction=float(t.rpn_pos_fraction),
            )
        )(labels, jax.random.split(rng_rpn, b))
        sampled = (pos | neg).astype(jnp.float32)
        norm = float(t.rpn_batch) * b
        rpn_cls = jnp.sum(_bce(logits, (labels == 1).astype(jnp.float32)) * sampled) / norm
        rpn_box = jnp.sum(_smooth_l1(deltas - tdeltas, 1.0 / 9).sum(-1) * pos) / norm

        # Proposals (no gradient) + this branch's in-range ground truth as extra RoIs.
        rois, _, rvalid = scaleface.propose(
            logits,
            deltas,
            anchors,
            batch["image_hw"],
            pre_nms_topk=int(c.train_pre_nms_topk),
            post_nms_topk=int(c.train_post_nms_topk),
            nms_iou=float(c.rpn_nms_iou),
        )
        gt_target = gt_valid & in_range & ~gt_ignore
        rois = jnp.concatenate([rois, gt_boxes], axis=1)
        rvalid = jnp.concatenate([rvalid, gt_target], axis=1)
        rt = jax.vmap(
            lambda r, rv, g, v, inr, ig, lm, lmv: roi_targets(
                r,
                rv,
                g,
                v,
                gt_in_range=inr,
                gt_ignore=ig,
                gt_landmarks=lm,
                gt_landmarks_valid=lmv,
                fg_iou=float(t.fg_iou),
                bg_iou=float(t.bg_iou),
                out_of_range_iou=float(t.roi_out_of_range_iou),
                ignore_ioa=float(t.ignore_ioa),
            )
        )(
            rois,
            rvalid,
            gt_boxes,
            gt_valid,
            in_range,
            gt_ignore,
            batch["gt_landmarks"],
            batch["gt_landmarks_valid"],
        )
        head = {k: v.astype(jnp.float32) for k, v in mdl.branch_head(feat, rois, i).items()}
        fg = (rt["labels"] == 1).astype(jnp.float32)
        cls_l = _bce(head["logits"], fg)
        box_l = _smooth_l1(head["deltas"] - rt["deltas"], 1.0).sum(-1) * fg
        per_roi = cls_l + box_l
        lmk_l = jnp.zeros_like(per_roi)
        if self.model.landmarks:
            lmk_l = (
                _smooth_l1(head["landmarks"] - rt["landmarks"], 1.0 / 9).sum((-1, -2))
                * rt["landmarks_valid"]
            )
            per_roi = per_roi + float(c.landmark_weight) * lmk_l
        candidates = rt["labels"] >= 0
        if c.ohem:
            # OHEM's NMS over the RoIs ranked by loss before the hardest are kept
            # (config.ohem_nms_iou; None or 0 = off).
            kept = ohem_select(
                per_roi,
                candidates,
                int(c.ohem_rois),
                boxes=rois,
                nms_iou=c.get("ohem_nms_iou") or None,
            )
        else:
            p, n = jax.vmap(
                functools.partial(
                    sample_balanced, num_samples=int(c.ohem_rois), positive_fraction=0.25
                )
            )(rt["labels"], jax.random.split(rng, b))
            kept = p | n
        kept = kept.astype(jnp.float32)
        denom = jnp.maximum(jnp.sum(kept, axis=1), 1.0)
        rcnn_cls = jnp.mean(jnp.sum(cls_l * kept, axis=1) / denom)
        rcnn_box = jnp.mean(jnp.sum(box_l * kept, axis=1) / denom)
        rcnn_lmk = jnp.mean(jnp.sum(lmk_l * kept, axis=1) / denom)
        stats = {
            "rpn_pos": jnp.sum(pos) / b,
            "rcnn_fg": jnp.sum(fg * kept) / b,
            "rcnn_acc": jnp.sum(((head["logits"] > 0) == (fg > 0)) * kept)
            / jnp.maximum(jnp.sum(kept), 1.0),
        }
        return {
            "rpn_cls": rpn_cls,
            "rpn_box": rpn_box,
            "rcnn_cls": rcnn_cls,
            "rcnn_box": rcnn_box,
            "rcnn_landmarks": rcnn_lmk,
        }, stats

    def loss(self, params, model_state, batch, rng, task_state):
        del task_state
        c = self.config

        def fn(mdl, batch):
            stages = mdl.backbone_features(batch["image"], train=True)
            parts, stats = {}, {}
            for i, spec in enumerate(self.specs):
                p, s = self._branch_losses(mdl, stages, batch, i, jax.random.fold_in(rng, i))
                for k, v in p.items():
                    parts[k] = parts.get(k, 0.0) + v
                for k, v in s.items():
                    stats[f"{k}_{spec.name}"] = v
            return parts, stats

        (parts, stats), new_state = nn.apply(fn, self.model, mutable=list(model_state.keys()))(
            {"params": params, **model_state}, batch
        )
        total = (
            parts["rpn_cls"]
            + parts["rpn_box"]
            + parts["rcnn_cls"]
            + parts["rcnn_box"]
            + float(c.landmark_weight) * parts["rcnn_landmarks"]
        )
        metrics = {**parts, **stats}
        return total, (new_state, metrics)

    def metric_names(self):
        names = ["rpn_cls", "rpn_box", "rcnn_cls", "rcnn_box", "rcnn_landmarks"]
        for s in self.specs:
            names += [f"rpn_pos_{s.name}", f"rcnn_fg_{s.name}", f"rcnn_acc_{s.name}"]
        return tuple(names)

    # -- inference -----------------------------------------------------------------
    def predict(self, variables, batch):
        """Detections in ORIGINAL image pixels (canvas boxes divided by the scale)."""
        c = self.config
        out = scaleface.detect(
            self.model,
            variables,
            batch["image"],
            batch["image_hw"],
            pre_nms_topk=int(c.test_pre_nms_topk),
            post_nms_topk=int(c.test_post_nms_topk),
            rpn_nms_iou=float(c.rpn_nms_iou),
            max_detections=int(c.max_detections),
            nms_iou=float(c.nms_iou),
            score_threshold=float(c.score_threshold),
            range_slack=float(c.range_slack),
        )
        scale = batch["scale"].reshape(-1, 1, 1)
        res = {"boxes": out["boxes"] / scale, "scores": out["scores"], "valid": out["valid"]}
        if "landmarks" in out:
            res["landmarks"] = out["landmarks"] / scale[..., None]
        return res

    def evaluators(self):
        return detection_evaluators.evaluators(self)


# ---------------------------------------------------------------------------------
# Predictions for any image folder
# ---------------------------------------------------------------------------------


def write_folder_predictions(
    task: DetectionTask, variables, image_dir, out_dir, *, batch_size: int = 8
) -> int:
    """Runs the detector on every image under ``image_dir`` and writes WIDER prediction
    files ``out_dir/<relative path without extension>.txt`` (``<event>/<image>.txt`` for
    the WIDER layout): image name, count, then ``x y w h score`` in original pixels,
    in descending score order. Returns the number of images written."""
    rels = list_images(image_dir)
    if not rels:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {image_dir}")
    predict = jax.jit(task.predict)
    all_boxes, all_scores = [], []
    for start in range(0, len(rels), batch_size):
        chunk = rels[start : start + batch_size]
        exs = []
        for rel in chunk:
            image = read_image(pathlib.Path(image_dir) / rel)
            exs.append(task.prepare(image, None, None, train=False))
        while len(exs) < batch_size:  # fixed batch: one compilation
            exs.append(exs[0])
        batch = {k: np.stack([e[k] for e in exs]) for k in ("image", "image_hw", "scale")}
        out = jax.device_get(predict(variables, batch))
        for j in range(len(chunk)):
            v = np.asarray(out["valid"][j], bool)
            b = np.asarray(out["boxes"][j], np.float64)[v]
            all_boxes.append(xyxy_to_xywh(b))
            all_scores.append(np.asarray(out["scores"][j], np.float64)[v])
    wider_eval.write_predictions(out_dir, rels, all_boxes, all_scores)
    return len(rels)
