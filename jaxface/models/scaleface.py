"""ScaleFace (Yang, Xiong, Loy, Tang; arXiv 1706.02863): one backbone, N scale-variant detectors.

A ResNet backbone (`jaxface.models.resnet`) exposes ``res2..res5``;
each detector ("branch") is specialised to a face-size range and owns

* a **merge** of adjacent stages: every listed stage goes through a 1x1 conv to
  ``merge_channels``, is brought to the branch stride (average pooling when finer,
  nearest upsampling when coarser) and the maps are summed, then a 3x3 conv + ReLU.
  The paper does not publish how it merges two stages; this is an
  "upsample/downsample and add" lateral (docs/methods.md, ScaleFace);
* an **RPN**: 3x3 conv (``rpn_channels``) + ReLU, then per anchor an objectness
  logit and 4 box deltas (anchors from `jaxface.ops.anchors`, sides from the config);
* a **Fast R-CNN head** on RoIAlign-ed (or RoIPool-ed) features of the branch's
  proposals, with a configurable template (``roi_size``; the paper studies 5x5):
  two 3x3 convs (``head_conv_channels``), FC ``head_fc[0]`` -> FC ``head_fc[1]``,
  then a face logit, 4 box deltas and, optionally, 5 landmarks (10 numbers,
  `jaxface.ops.boxes.encode_landmarks` offsets) for alignment.

Inference is single-scale: each branch decodes its proposals, scores them with its
head, the branches' detections are concatenated and one NMS
(`jaxface.ops.nms.batched_nms`) keeps a fixed number with a validity mask.

Everything has fixed shapes: anchors are NumPy constants computed from the feature
map size, proposals are a fixed top-k + NMS with a validity mask, RoIs are a fixed
number per image.

Config of a branch (a dict, see ``configs/scaleface.py``)::

    name, size_range (lo, hi) px (hi <= 0: unbounded), stages ("res2", "res3"),
    stride 8, anchors (12, 16, 24, 40)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxface.models.resnet import ResNet
from jaxface.ops import anchors as anchors_lib
from jaxface.ops.boxes import clip_boxes, decode_boxes, decode_landmarks
from jaxface.ops.nms import batched_nms
from jaxface.ops.roi import roi_align, roi_pool
from jaxface.ops.targets import RCNN_BOX_WEIGHTS, RPN_BOX_WEIGHTS

__all__ = ["BranchSpec", "ScaleFace", "Model", "branch_specs", "stage_strides", "propose"]

# The `ResNet` fields ScaleFace's ``backbone`` dict may set.
BACKBONE_FIELDS = ("stage_sizes", "block", "width", "stem", "input_norm")


@dataclasses.dataclass(frozen=True)
class BranchSpec:
    """One scale-variant detector (hashable, so it can be a flax module field)."""

    name: str
    size_range: tuple
    stages: tuple
    stride: int
    anchors: tuple

    @property
    def num_anchors(self) -> int:
        return len(self.anchors)


def branch_specs(branches: Sequence[Mapping[str, Any]]) -> tuple:
    """Config dicts -> a tuple of `BranchSpec` (validated; errors name the branch)."""
    out = []
    for i, b in enumerate(branches):
        where = f"config.model.branches[{i}]"
        for k in ("name", "size_range", "stages", "stride", "anchors"):
            if k not in b:
                raise ValueError(f"{where}: missing field {k!r}")
        stages = tuple(str(s) for s in b["stages"])
        bad = [s for s in stages if s not in ("res2", "res3", "res4", "res5")]
        if bad or not stages:
            raise ValueError(
                f"{where}.stages: expected names among res2..res5, got {list(b['stages'])}"
            )
        lo, hi = (float(v) for v in b["size_range"])
        if hi > 0 and hi <= lo:
            raise ValueError(
                f"{where}.size_range: expected lo < hi (or hi <= 0 for unbounded), got {(lo, hi)}"
            )
        out.append(
            BranchSpec(
                name=str(b["name"]),
                size_range=(lo, hi),
                stages=stages,
                stride=int(b["stride"]),
                anchors=tuple(float(a) for a in b["anchors"]),
            )
        )
    if not out:
        raise ValueError("config.model.branches: at least one branch is needed")
    return tuple(out)


def stage_strides(stem: str = "imagenet", strides: Sequence[int] | None = None) -> dict:
    """Input pixels per cell of ``res2..res5`` for a `ResNet` stem."""
    if strides is None:
        strides = (1, 2, 2, 2) if stem == "imagenet" else (2, 2, 2, 2)
    s = 4 if stem == "imagenet" else 1
    out = {}
    for name, st in zip(("res2", "res3", "res4", "res5"), strides):
        s *= st
        out[name] = s
    return out


def _resize_to(x, factor_down: float):
    """Average-pool by an integer factor (>1) or nearest-upsample (<1)."""
    if factor_down > 1:
        f = int(round(factor_down))
        return nn.avg_pool(x, (f, f), (f, f), padding="SAME")
    if factor_down < 1:
        f = int(round(1 / factor_down))
        return jnp.repeat(jnp.repeat(x, f, axis=1), f, axis=2)
    return x


class BranchHead(nn.Module):
    """Merge + RPN + Fast R-CNN head of one branch (the head is called on RoI features)."""

    spec: BranchSpec
    merge_channels: int
    rpn_channels: int
    head_conv_channels: int
    head_fc: tuple
    landmarks: bool
    backbone_strides: Mapping[str, int]
    roi_size: int = 5
    num_head_convs: int = 2

    def setup(self):
        self.lateral = [nn.Conv(self.merge_channels, (1, 1)) for _ in self.spec.stages]
        self.merge_conv = nn.Conv(self.merge_channels, (3, 3))
        self.rpn_conv = nn.Conv(self.rpn_channels, (3, 3))
        a = self.spec.num_anchors
        self.rpn_cls = nn.Conv(a, (1, 1), kernel_init=nn.initializers.normal(0.01))
        self.rpn_box = nn.Conv(
            4 * a,
            (1, 1),
            kernel_init=nn.initializers.normal(0.001),
            bias_init=nn.initializers.zeros,
        )
        self.head_convs = [
            nn.Conv(self.head_conv_channels, (3, 3)) for _ in range(self.num_head_convs)
        ]
        self.head_dense = [nn.Dense(f) for f in self.head_fc]
        self.cls = nn.Dense(1, kernel_init=nn.initializers.normal(0.01))
        self.box = nn.Dense(4, kernel_init=nn.initializers.normal(0.001))
        if self.landmarks:
            self.lmk = nn.Dense(10, kernel_init=nn.initializers.normal(0.001))

    def features(self, stages: Mapping[str, jax.Array]) -> jax.Array:
        target = self.spec.stride
        merged = None
        for name, lat in zip(self.spec.stages, self.lateral):
            x = lat(stages[name])
            x = _resize_to(x, target / self.backbone_strides[name])
            merged = x if merged is None else _add_cropped(merged, x)
        return nn.relu(self.merge_conv(merged))

    def rpn(self, feat):
        h = nn.relu(self.rpn_conv(feat))
        b, fh, fw, _ = h.shape
        logits = self.rpn_cls(h).reshape(b, fh * fw * self.spec.num_anchors)
        deltas = self.rpn_box(h).reshape(b, fh * fw * self.spec.num_anchors, 4)
        return logits, deltas

    def head(self, roi_feats):
        x = roi_feats
        for c in self.head_convs:
            x = nn.relu(c(x))
        x = x.reshape(x.shape[:-3] + (-1,))
        for d in self.head_dense:
            x = nn.relu(d(x))
        out = {"logits": self.cls(x)[..., 0], "deltas": self.box(x)}
        if self.landmarks:
            out["landmarks"] = self.lmk(x).reshape(x.shape[:-1] + (5, 2))
        return out

    def __call__(self, stages, rois=None):
        # Used only for initialisation: touches every submodule.
        feat = self.features(stages)
        logits, deltas = self.rpn(feat)
        roi_feats = jnp.zeros(
            (feat.shape[0], 1, self.roi_size, self.roi_size, feat.shape[-1]), feat.dtype
        )
        return feat, logits, deltas, self.head(roi_feats)


def _add_cropped(a, b):
    """a + b after cropping both to their common spatial size ('SAME' rounding may differ by one)."""
    h = min(a.shape[1], b.shape[1])
    w = min(a.shape[2], b.shape[2])
    return a[:, :h, :w] + b[:, :h, :w]


def propose(
    logits,
    deltas,
    anchors,
    image_hw,
    *,
    pre_nms_topk: int,
    post_nms_topk: int,
    nms_iou: float,
    min_size: float = 0.0,
):
    """RPN proposals of a batch, fixed size.

    Args:
      logits: ``[B, N]`` objectness; deltas: ``[B, N, 4]``; anchors: ``[N, 4]``.
      image_hw: ``[B, 2]`` size of the valid (unpadded) image region.
    Returns:
      ``(boxes [B, K, 4], scores [B, K], valid [B, K])``, ``K = post_nms_topk``, no gradient.
    """
    logits = jax.lax.stop_gradient(logits)
    deltas = jax.lax.stop_gradient(deltas)
    k = min(pre_nms_topk, logits.shape[1])
    top, idx = jax.lax.top_k(logits, k)
    a = jnp.asarray(anchors)[idx]  # [B, k, 4]
    d = jnp.take_along_axis(deltas, idx[..., None], axis=1)
    boxes = decode_boxes(d, a, weights=RPN_BOX_WEIGHTS)
    boxes = clip_boxes(boxes, image_hw.astype(boxes.dtype))
    valid = ((boxes[..., 2] - boxes[..., 0]) > min_size) & (
        (boxes[..., 3] - boxes[..., 1]) > min_size
    )
    nms = batched_nms(boxes, top, iou_threshold=nms_iou, max_output=post_nms_topk, valid=valid)
    return nms.boxes, nms.scores, nms.valid


class ScaleFace(nn.Module):
    """The detector. See the module docstring.

    Attributes:
      branches: tuple of `BranchSpec`.
      backbone: dict of `ResNet` fields (stage_sizes, block, width, stem, input_norm).
      merge_channels, rpn_channels, head_conv_channels, head_fc: widths.
      num_head_convs: 3x3 convolutions of the RoI head before its FC layers (0: the
        two-FC head of Faster R-CNN with FPN, Lin et al. 2017).
      roi_size: RoI template side; roi_op: "align" | "pool"; roi_sampling_ratio.
      landmarks: add the 5-landmark output.
    """

    branches: tuple
    backbone: Mapping[str, Any]
    merge_channels: int = 256
    rpn_channels: int = 512
    head_conv_channels: int = 512
    num_head_convs: int = 2
    head_fc: tuple = (1024, 512)
    roi_size: int = 5
    roi_op: str = "align"
    roi_sampling_ratio: int = 2
    landmarks: bool = False

    def setup(self):
        bb = dict(self.backbone)
        unknown = sorted(set(bb) - set(BACKBONE_FIELDS))
        if unknown:
            raise ValueError(
                f"ScaleFace.backbone: unknown field(s) {unknown}; known {BACKBONE_FIELDS}"
            )
        self.resnet = ResNet(
            stage_sizes=tuple(bb.get("stage_sizes", (3, 4, 6, 3))),
            block=bb.get("block", "bottleneck"),
            width=float(bb.get("width", 1.0)),
            stem=bb.get("stem", "imagenet"),
            input_norm=bb.get("input_norm", "none"),
        )
        strides = stage_strides(bb.get("stem", "imagenet"))
        self.heads = [
            BranchHead(
                spec=s,
                merge_channels=self.merge_channels,
                rpn_channels=self.rpn_channels,
                head_conv_channels=self.head_conv_channels,
                num_head_convs=self.num_head_convs,
                head_fc=tuple(self.head_fc),
                landmarks=self.landmarks,
                backbone_strides=strides,
                roi_size=self.roi_size,
            )
            for s in self.branches
        ]

    def __call__(self, images, train: bool = False):
        """Initialisation entry: backbone + every branch's features, RPN and head."""
        stages = self.resnet(images, train=train)
        return [h(stages) for h in self.heads]

    def backbone_features(self, images, train: bool = False):
        return self.resnet(images, train=train)

    def branch_features(self, stages, i: int):
        return self.heads[i].features(stages)

    def branch_rpn(self, feat, i: int):
        return self.heads[i].rpn(feat)

    def branch_head(self, feat, rois, i: int):
        """Head outputs for ``rois`` ``[B, R, 4]`` on branch ``i``'s features ``[B, H, W, C]``."""
        spec = self.branches[i]
        pool = roi_align if self.roi_op == "align" else roi_pool
        kw = (
            {"sampling_ratio": self.roi_sampling_ratio, "aligned": True}
            if self.roi_op == "align"
            else {}
        )

        def one(f, r):  # per image: the gather stays on the image's device
            return pool(
                f[None],
                r,
                jnp.zeros((r.shape[0],), jnp.int32),
                self.roi_size,
                spatial_scale=1.0 / spec.stride,
                **kw,
            )

        roi_feats = jax.vmap(one)(feat, jax.lax.stop_gradient(rois))  # [B, R, S, S, C]
        return self.heads[i].head(roi_feats)


def branch_anchors(spec: BranchSpec, feature_hw) -> np.ndarray:
    return anchors_lib.grid_anchors(tuple(int(v) for v in feature_hw), spec.stride, spec.anchors)


def detect(
    model: ScaleFace,
    variables,
    images,
    image_hw,
    *,
    pre_nms_topk: int,
    post_nms_topk: int,
    rpn_nms_iou: float,
    max_detections: int,
    nms_iou: float,
    score_threshold: float = 0.0,
    range_slack: float = 0.0,
):
    """Single-scale inference: every branch's detections merged, then one NMS.

    Args:
      images: ``[B, H, W, 3]`` normalised; image_hw: ``[B, 2]`` valid region.
      range_slack: > 0 drops a branch's detections whose height is outside
        ``[lo / slack, hi * slack]`` of its size range (0: keep all).
    Returns:
      dict ``boxes [B, K, 4]`` (x1, y1, x2, y2 input pixels), ``scores [B, K]`` (face
      probability), ``valid [B, K]`` and, with landmarks, ``landmarks [B, K, 5, 2]``.
    """

    def fn(mdl, images, image_hw):
        stages = mdl.backbone_features(images, train=False)
        all_boxes, all_scores, all_valid, all_lmk = [], [], [], []
        for i, spec in enumerate(mdl.branches):
            feat = mdl.branch_features(stages, i)
            logits, deltas = mdl.branch_rpn(feat, i)
            anchors = branch_anchors(spec, feat.shape[1:3])
            rois, _, rvalid = propose(
                logits,
                deltas,
                anchors,
                image_hw,
                pre_nms_topk=pre_nms_topk,
                post_nms_topk=post_nms_topk,
                nms_iou=rpn_nms_iou,
            )
            out = mdl.branch_head(feat, rois, i)
            safe = jnp.where(rvalid[..., None], rois, jnp.array([0.0, 0.0, 1.0, 1.0]))
            boxes = clip_boxes(
                decode_boxes(out["deltas"], safe, weights=RCNN_BOX_WEIGHTS),
                image_hw.astype(jnp.float32),
            )
            scores = jax.nn.sigmoid(out["logits"])
            valid = rvalid
            if range_slack > 0:
                h = boxes[..., 3] - boxes[..., 1]
                lo, hi = spec.size_range
                valid = valid & (h >= lo / range_slack)
                if hi > 0:
                    valid = valid & (h <= hi * range_slack)
            all_boxes.append(boxes)
            all_scores.append(scores)
            all_valid.append(valid)
            if mdl.landmarks:
                all_lmk.append(decode_landmarks(out["landmarks"], safe))
        boxes = jnp.concatenate(all_boxes, axis=1)
        scores = jnp.concatenate(all_scores, axis=1)
        valid = jnp.concatenate(all_valid, axis=1)
        nms = batched_nms(
            boxes,
            scores,
            iou_threshold=nms_iou,
            max_output=max_detections,
            valid=valid,
            score_threshold=score_threshold,
        )
        res = {
            "boxes": nms.boxes,
            "scores": jnp.where(nms.valid, nms.scores, 0.0),
            "valid": nms.valid,
        }
        if mdl.landmarks:
            lmk = jnp.concatenate(all_lmk, axis=1)
            idx = jnp.maximum(nms.indices, 0)
            res["landmarks"] = jnp.where(
                nms.valid[..., None, None],
                jnp.take_along_axis(lmk, idx[..., None, None], axis=1),
                0.0,
            )
        return res

    return nn.apply(fn, model)(variables, images, image_hw)


Model = ScaleFace
