"""The ``detection`` task: ScaleFace (`jaxface.models.scaleface`) with OHEM.

Data (``config.data``): any builder whose examples hold ``image`` uint8 [H, W, 3] and
``faces`` with ``bbox`` (tfds ``BBoxFeature``: normalised ymin, xmin, ymax, xmax) and,
optionally, ``landmarks`` [5, 2] pixels, ``blur``, ``occlusion``, ``pose``, ``invalid``
— the synthetic ``synthetic_faces/detection`` scenes and the ``wider_face_original``
builder (`jaxface.data.widerface_builder`) both do. Every image is placed on a fixed
``config.image_size`` square canvas (random scale / crop / flip / photometric jitter
in training, `jaxface.data.detection_aug`; fit-and-pad in evaluation) and its faces
are padded to ``config.max_faces`` slots with a validity mask, so one compiled step
serves every batch. Invalid faces, and faces cut by the crop, are ignore regions.

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

Evaluation (``config.evals = ["wider"]``): the exact WIDER FACE protocol
(`jaxface.evaluation.widerface.evaluate`) on ``config.eval_split``; easy / medium /
hard from the face labels (`jaxface.data.synthetic.render.difficulty_subsets`),
plus one AP per face-size bucket (``config.eval_size_buckets``, original pixels).

Predictions for any image folder, in WIDER's ``<event>/<image>.txt`` format
(`write_folder_predictions`)::

  jaxface predict-wider --detector /tmp/jaxface/scaleface --images DIR --out PRED_DIR
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
from typing import Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxface import losses
from jaxface.data import detection_aug, sources
from jaxface.data.images import list_images, read_image
from jaxface.data.recognition_formats import IMAGE_EXTENSIONS
from jaxface.data.synthetic.render import difficulty_subsets
from jaxface.data.widerface import WiderFaceAnnotations
from jaxface.evaluation import widerface as wider_eval
from jaxface.evaluation.draw import draw_detections
from jaxface.models import scaleface
from jaxface.ops.boxes import xyxy_to_xywh
from jaxface.ops.targets import (
    in_size_range,
    ohem_select,
    roi_targets,
    rpn_targets,
    sample_balanced,
)
from jaxface.tasks import common
from jaxface.tasks.base import EvalContext, Task


def _smooth_l1(x, beta: float):
    return losses.smooth_l1(x, beta=beta)


def _bce(logits, labels):
    """Per-element sigmoid cross-entropy with {0, 1} labels."""
    return losses.sigmoid_bce(logits, labels)


def faces_of(example: Mapping) -> dict:
    """A builder example's faces in pixels: ``boxes`` [n, 4] x1 y1 x2 y2 float32 and the
    labels (missing ones default to 0; ``has_landmarks`` False without landmarks)."""
    h, w = np.asarray(example["image"]).shape[:2]
    f = example["faces"]
    bbox = np.asarray(f["bbox"], np.float32).reshape(-1, 4)
    n = bbox.shape[0]
    boxes = np.stack([bbox[:, 1] * w, bbox[:, 0] * h, bbox[:, 3] * w, bbox[:, 2] * h], axis=-1)
    out = {"boxes": boxes.astype(np.float32)}
    for k in ("blur", "occlusion", "pose", "invalid"):
        v = f.get(k)
        out[k] = np.zeros((n,), np.int32) if v is None else np.asarray(v, np.int32).reshape(n)
    lm = f.get("landmarks")
    if lm is None or np.asarray(lm).size != n * 10:
        out["landmarks"] = np.zeros((n, 5, 2), np.float32)
        out["has_landmarks"] = np.zeros((n,), bool)
    else:
        out["landmarks"] = np.asarray(lm, np.float32).reshape(n, 5, 2)
        out["has_landmarks"] = np.ones((n,), bool)
    return out


class DetectionTask(Task):
    name = "detection"
    compute_fields = ("image",)
    backbone_path = ("resnet",)

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
        """One image (+ faces) -> the fixed-shape model input (see the module docstring)."""
        c = self.config
        size, max_faces = int(c.image_size), int(c.max_faces)
        image = np.asarray(image, np.uint8)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        image = image[..., :3]
        h, w = image.shape[:2]
        if faces is None:
            faces = {
                "boxes": np.zeros((0, 4), np.float32),
                "invalid": np.zeros((0,), np.int32),
                "landmarks": np.zeros((0, 5, 2), np.float32),
                "has_landmarks": np.zeros((0,), bool),
            }
        boxes, landmarks = faces["boxes"], faces["landmarks"]
        aug = c.augment
        if train:
            if aug.flip and rng.random() < 0.5:
                image, boxes, landmarks = detection_aug.flip_horizontal(image, boxes, landmarks)
            if aug.photometric:
                image = detection_aug.photometric_jitter(rng, image)
            placement = detection_aug.random_placement(
                rng, h, w, size, scale_range=tuple(aug.scale_range)
            )
        else:
            placement = detection_aug.fit_placement(h, w, size)
        placed = detection_aug.place(
            image, boxes, placement, landmarks=landmarks, min_visible=float(aug.min_visible)
        )
        keep = placed["keep"]
        idx = np.flatnonzero(keep)[:max_faces]
        n = len(idx)
        gt_boxes = np.zeros((max_faces, 4), np.float32)
        gt_boxes[:n] = placed["boxes"][idx]
        gt_valid = np.zeros((max_faces,), bool)
        gt_valid[:n] = True
        gt_ignore = np.zeros((max_faces,), bool)
        gt_ignore[:n] = placed["ignore"][idx] | (np.asarray(faces["invalid"])[idx] > 0)
        gt_lm = np.zeros((max_faces, 5, 2), np.float32)
        gt_lm[:n] = placed["landmarks"][idx]
        gt_lm_valid = np.zeros((max_faces,), bool)
        gt_lm_valid[:n] = np.asarray(faces["has_landmarks"])[idx] & ~gt_ignore[:n]
        return {
            "image": common.normalize_image(placed["image"]),
            "gt_boxes": gt_boxes,
            "gt_valid": gt_valid,
            "gt_ignore": gt_ignore,
            "gt_landmarks": gt_lm,
            "gt_landmarks_valid": gt_lm_valid,
            "image_hw": placed["image_hw"],
            "scale": np.float32(placement.scale),
        }

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
        return {"wider": self._evaluate_wider, "wider_official": self._evaluate_wider_official}

    def _evaluate_wider_official(self, state, ctx: EvalContext):
        """Real WIDER FACE validation: predictions over ``config.eval_split`` of the
        ``wider_face_original`` builder, aligned by file name with the official
        ground truth in ``config.wider_gt_dir`` (the four eval_tools ``.mat`` files),
        written as the standard prediction folder in the workdir and evaluated with
        ``config.wider_semantics`` (``"official"`` or ``"python-port"``)."""
        c = self.config
        gt_dir = c.get("wider_gt_dir", "")
        if not gt_dir:
            raise ValueError(
                "evaluator 'wider_official' needs config.wider_gt_dir: the folder holding "
                "wider_face_val.mat and wider_{easy,medium,hard}_val.mat"
            )
        gt = wider_eval.load_ground_truth(gt_dir)
        src, out = self._predict_eval_split(state, ctx)
        index = {
            f"{gt.face.events[int(gt.face.image_event[k])]}/{gt.face.image_names[k]}": k
            for k in range(gt.face.num_images)
        }
        per = [None] * gt.face.num_images
        rels, boxes, scores = [], [], []
        for i in range(out["boxes"].shape[0]):
            name = src[i]["image/filename"]
            name = name.decode() if isinstance(name, bytes) else str(name)
            v = np.asarray(out["valid"][i], bool)
            b = xyxy_to_xywh(np.asarray(out["boxes"][i], np.float64)[v])
            sc = np.asarray(out["scores"][i], np.float64)[v]
            rels.append(name)
            boxes.append(b)
            scores.append(sc)
            k = index.get(name.rsplit(".", 1)[0])
            if k is not None:
                per[k] = (b, sc)
        if ctx.process_index == 0:
            wider_eval.write_predictions(
                os.path.join(ctx.workdir, f"wider_pred_step{ctx.step}"), rels, boxes, scores
            )
        # File order kept: "python-port" evaluates the detections as written above.
        results = wider_eval.evaluate(
            gt,
            wider_eval.Predictions.from_lists(per, sort=False),
            semantics=c.wider_semantics,
        )
        self._log_sample_detections(ctx, src, out)
        if ctx.process_index == 0:
            wider_eval.save_results(
                results, os.path.join(ctx.workdir, f"wider_pred_step{ctx.step}_eval")
            )
            wider_eval.plot_pr(
                results,
                os.path.join(ctx.workdir, f"wider_pr_step{ctx.step}.png"),
                title=f"WIDER FACE {c.eval_split}, step {ctx.step}",
            )
        return {f"ap_{k}": float(v.ap) for k, v in results.items()}

    def _predict_eval_split(self, state, ctx: EvalContext):
        """(source, predictions) over ``config.eval_split`` (``config.eval_limit`` images)."""
        c = self.config
        src, transform = self.data(c.eval_split, train=False)
        out = common.predict_split(
            ctx,
            self.predict,
            common.variables_of(state),
            src,
            transform,
            int(c.eval_batch_size),
            limit=int(c.eval_limit) or None,
        )
        return src, out

    def _evaluate_wider(self, state, ctx: EvalContext):
        c = self.config
        src, out = self._predict_eval_split(state, ctx)
        n = out["boxes"].shape[0]
        faces = [faces_of(src[i]) for i in range(n)]
        gt = synthetic_ground_truth(faces, size_buckets=[tuple(b) for b in c.eval_size_buckets])
        preds = predictions_from_arrays(out["boxes"], out["scores"], out["valid"])
        results = wider_eval.evaluate(gt, preds)
        summary = {f"ap_{k}": float(v.ap) for k, v in results.items()}
        self._log_sample_detections(ctx, src, out, faces)
        if ctx.process_index == 0:
            wider_eval.plot_pr(
                results,
                os.path.join(ctx.workdir, f"wider_pr_step{ctx.step}.png"),
                title=f"{c.data.builder} {c.eval_split}: WIDER protocol, step {ctx.step}",
            )
            with open(os.path.join(ctx.workdir, f"wider_eval_step{ctx.step}.json"), "w") as f:
                json.dump(
                    {
                        **summary,
                        "num_faces": {k: int(v.num_faces) for k, v in results.items()},
                        "num_images": n,
                    },
                    f,
                    indent=1,
                )
        return summary

    def _log_sample_detections(self, ctx: EvalContext, src, out, faces=None):
        """The first ``config.eval_sample_images`` eval images with their detections drawn
        (`draw_detections`; ground truth in green when the example has faces): to TensorBoard as
        ``eval/sample_detections`` (``ctx.writer.write_images``) and as
        ``<workdir>/sample_detections_step<N>.png`` (one row)."""
        k = min(int(self.config.get("eval_sample_images", 0)), int(out["boxes"].shape[0]))
        if k <= 0 or ctx.process_index != 0:
            return
        thr = float(self.config.get("eval_sample_threshold", 0.5))
        drawn = []
        for i in range(k):
            v = np.asarray(out["valid"][i], bool)
            lm = out.get("landmarks")
            ex = src[i]
            gt = faces[i] if faces is not None else (faces_of(ex) if "faces" in ex else None)
            drawn.append(
                draw_detections(
                    np.asarray(ex["image"]),
                    np.asarray(out["boxes"][i])[v],
                    np.asarray(out["scores"][i])[v],
                    landmarks=None if lm is None else np.asarray(lm[i])[v],
                    gt_boxes=None if gt is None else gt["boxes"],
                    threshold=thr,
                )
            )
        hh = max(d.shape[0] for d in drawn)
        ww = max(d.shape[1] for d in drawn)
        grid = np.zeros((k, hh, ww, 3), np.uint8)
        for i, d in enumerate(drawn):
            grid[i, : d.shape[0], : d.shape[1]] = d
        if ctx.writer is not None:
            ctx.writer.write_images(ctx.step, {"eval/sample_detections": grid})
        row = np.concatenate(list(grid), axis=1)
        Image.fromarray(row).save(
            os.path.join(ctx.workdir, f"sample_detections_step{ctx.step}.png")
        )


# ---------------------------------------------------------------------------------
# Ground truth and predictions for the WIDER evaluation module
# ---------------------------------------------------------------------------------


def _bucket_name(lo, hi) -> str:
    return f"size_{int(lo)}_{int(hi)}" if hi > 0 else f"size_{int(lo)}_up"


def synthetic_ground_truth(
    faces: Sequence[Mapping], *, size_buckets=()
) -> wider_eval.WiderGroundTruth:
    """WIDER ground truth (one ``WiderFaceAnnotations`` per setting) for a list of images'
    faces (`faces_of`). Boxes are rounded to integer ``x y w h`` (int32, like the
    official .mat files, so the exact MATLAB arithmetic applies). Settings: easy /
    medium / hard (`difficulty_subsets` on box height, blur, occlusion, pose, invalid)
    and one per ``(lo, hi)`` size bucket (valid faces with ``lo <= height < hi``;
    every other face is an ignore face, as in WIDER's settings)."""
    boxes, sizes, labels = [], [], {k: [] for k in ("blur", "occlusion", "pose", "invalid")}
    counts = []
    for f in faces:
        b = np.asarray(f["boxes"], np.float64).reshape(-1, 4)
        xywh = np.round(xyxy_to_xywh(b)).astype(np.int32)
        boxes.append(xywh)
        sizes.append(b[:, 3] - b[:, 1])
        for k in labels:
            labels[k].append(np.asarray(f[k], np.int32))
        counts.append(len(b))
    n_img = len(faces)
    boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.int32)
    sizes = np.concatenate(sizes) if sizes else np.zeros((0,))
    labels = {k: (np.concatenate(v) if v else np.zeros((0,), np.int32)) for k, v in labels.items()}
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    subsets = difficulty_subsets(
        sizes, labels["blur"], labels["occlusion"], labels["pose"], labels["invalid"]
    )
    valid = labels["invalid"] == 0
    for lo, hi in size_buckets:
        subsets[_bucket_name(lo, hi)] = valid & (sizes >= lo) & ((sizes < hi) if hi > 0 else True)
    img_of_face = np.repeat(np.arange(n_img), counts)
    names = tuple(f"{i:06d}" for i in range(n_img))
    base = dict(
        events=("0--synthetic",),
        image_event=np.zeros((n_img,), np.int32),
        image_names=names,
        image_paths=tuple(f"0--synthetic/{nm}.jpg" for nm in names),
        face_offsets=offsets,
        boxes=boxes,
        labels=labels,
        source="synthetic",
    )
    face = WiderFaceAnnotations(**base)
    settings = {
        k: WiderFaceAnnotations(
            **base,
            keep=m,
            keep_list_lengths=np.bincount(img_of_face[m], minlength=n_img).astype(np.int64),
        )
        for k, m in subsets.items()
    }
    return wider_eval.WiderGroundTruth(face=face, settings=settings)


def predictions_from_arrays(boxes, scores, valid) -> wider_eval.Predictions:
    """Fixed-shape ``[I, K, 4]`` corner boxes, ``[I, K]`` scores and validity -> `Predictions`."""
    per = []
    for b, s, v in zip(
        np.asarray(boxes, np.float64), np.asarray(scores, np.float64), np.asarray(valid, bool)
    ):
        per.append((xyxy_to_xywh(b[v]), s[v]) if v.any() else None)
    return wider_eval.Predictions.from_lists(per)


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
