"""ScaleFace face detection (Yang et al., arXiv 1706.02863): scale-variant detectors on one backbone, OHEM.

Variants (``get_config(arg)``):
  wider          — the paper's setting on WIDER FACE (ImageNet ResNet-50, three branches
                   10-40 / 40-140 / 140-1300 px on res2+res3 / res3+res4 / res4+res5
                   at strides 8 / 16 / 32, anchors from the method card), for GPUs.
                   Needs the original WIDER FACE layout in --config.data.manual_dir
                   (`jaxface.data.widerface_builder`) and the eval_tools ground truth in
                   --config.wider_gt_dir; the evaluator writes the standard prediction
                   folder and reports the official easy / medium / hard AP.
                   The backbone starts from torchvision's ImageNet ResNet-50: put
                   resnet50-0676ba61.pth (downloaded beforehand) into $JAXFACE_WEIGHTS
                   (default ~/.cache/jaxface/weights) or point
                   --config.model.backbone.pretrained at it; an empty
                   --config.model.backbone.pretrained= trains from scratch.
  synthetic      — the quickstart's: three branches on a narrow ResNet at 320 px on the
                   synthetic scenes (256-320 px), exact WIDER protocol on the validation
                   split; a few minutes on a 2-core CPU.
  single_branch  — the ablation: one detector over all sizes (res3+res4, stride 16,
                   every anchor), same backbone, input, steps and total RoI budget.
  cfp_scenes     — a detector that has met real faces: the synthetic variant's net
                   (with 5-point landmarks) trained on real CFP faces pasted onto real
                   face-free photographs (`jaxface.data.cfp_scenes`), evaluated with the
                   WIDER protocol on held-out scenes whose faces are CFP identities of
                   protocol splits 09-10 (unseen in training). Needs CFP in
                   --config.data.manual_dir (default ../shared/data/cfp).
  tiny           — tests: a few steps on a tiny synthetic set.

Run:
  jaxface train --config configs/scaleface.py:synthetic --workdir /tmp/jaxface/scaleface
  jaxface train --config configs/scaleface.py:single_branch --workdir /tmp/jaxface/scaleface_single
  jaxface train --config configs/scaleface.py:cfp_scenes --workdir /tmp/jaxface/cfp_scenes
  jaxface train --config configs/scaleface.py:wider --workdir /tmp/jaxface/scaleface_wider \
      --config.data.manual_dir=/data/widerface \
      --config.wider_gt_dir=/data/widerface/eval_tools/ground_truth
Predictions on any image folder (WIDER `<event>/<image>.txt`):
  jaxface predict-wider --detector /tmp/jaxface/scaleface --images WIDER_val/images \
      --out /tmp/pred
"""

import os

import ml_collections

from jaxface import config as jf_config
from jaxface.models import pretrained

# torchvision's ResNet50_Weights.IMAGENET1K_V1 file (the `wider` variant's backbone).
IMAGENET_RESNET50 = "resnet50-0676ba61.pth"

# ../shared/data/cfp beside the repository (the real data never lives inside it).
CFP_DIR = os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "cfp")
)

VARIANTS = ("wider", "synthetic", "single_branch", "cfp_scenes", "tiny")
SMALL_VARIANT = "tiny"


def _branch(name, size_range, stages, stride, anchors):
    return ml_collections.ConfigDict(
        dict(
            name=name,
            size_range=list(size_range),
            stages=list(stages),
            stride=stride,
            anchors=list(anchors),
        )
    )


def get_config(arg: str = "synthetic") -> ml_collections.ConfigDict:
    variant = arg or "synthetic"
    if variant not in VARIANTS:
        raise ValueError(
            f"configs/scaleface.py: unknown variant {variant!r} (expected {' | '.join(VARIANTS)})"
        )
    c = jf_config.base_config()
    c.task = "detection"
    c.image_size = 1024
    c.max_faces = 512
    c.model = ml_collections.ConfigDict(
        dict(
            # torchvision's ImageNet ResNet-50 (ResNet50_Weights.IMAGENET1K_V1), downloaded
            # beforehand into $JAXFACE_WEIGHTS (default ~/.cache/jaxface/weights); "" = scratch.
            backbone=dict(
                stage_sizes=[3, 4, 6, 3],
                block="bottleneck",
                width=1.0,
                stem="imagenet",
                pretrained=pretrained.weights_file(IMAGENET_RESNET50),
            ),
            # The paper's three-way split (Yang et al., arXiv 1706.02863).
            branches=[
                _branch("small", (10, 40), ("res2", "res3"), 8, (12, 16, 24, 40)),
                _branch("medium", (40, 140), ("res3", "res4"), 16, (32, 64, 96, 128)),
                _branch("large", (140, 0), ("res4", "res5"), 32, (128, 256, 384, 512)),
            ],
            merge_channels=256,
            rpn_channels=512,
            head_conv_channels=512,
            head_fc=[1024, 512],
            roi_size=5,
            roi_op="align",
            roi_sampling_ratio=2,
            landmarks=False,
        )
    )
    c.targets = ml_collections.ConfigDict(
        dict(
            rpn_pos_iou=0.7,
            rpn_neg_iou=0.3,
            rpn_batch=256,
            rpn_pos_fraction=0.5,
            fg_iou=0.5,
            bg_iou=0.5,
            roi_out_of_range_iou=0.5,
            ignore_ioa=0.5,
        )
    )
    c.augment = ml_collections.ConfigDict(
        dict(flip=True, photometric=True, scale_range=[0.5, 1.5], min_visible=0.5)
    )
    c.ohem = True
    c.ohem_rois = 128  # RoIs kept per image and branch
    c.landmark_weight = 1.0
    c.train_pre_nms_topk = 2000
    c.train_post_nms_topk = 300
    c.test_pre_nms_topk = 1000
    c.test_post_nms_topk = 300
    c.rpn_nms_iou = 0.7
    c.nms_iou = 0.4
    c.max_detections = 750
    c.score_threshold = 0.0
    c.range_slack = 0.0  # > 0: drop a branch's detections outside its range x/÷ slack
    # AP per face-size bucket (original pixels), besides easy / medium / hard.
    c.eval_size_buckets = [[10, 40], [40, 140], [140, 0]]
    c.data.builder = "wider_face_original"
    c.data.config = ""
    c.train_split = "train"
    c.eval_split = "validation"
    c.wider_gt_dir = ""  # eval_tools/ground_truth (the four .mat files) for "wider_official"
    c.evals = ["wider_official"]  # also writes the prediction folder for `jaxface widerface-eval`
    # The WIDER evaluators draw their first N eval images with their detections (score >=
    # the threshold) to TensorBoard (eval/sample_detections) and to the workdir as PNG.
    c.eval_sample_images = 0
    c.eval_sample_threshold = 0.5
    c.batch_size = 8
    c.eval_batch_size = 8
    c.num_train_steps = 80_000
    c.log_every = 100
    c.eval_every = 10_000
    c.checkpoint_every = 2_000
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.01
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 1e-4
    c.optimizer.schedule = "steps"
    c.optimizer.decay_at = [0.75]
    c.optimizer.warmup_steps = 500
    c.optimizer.grad_clip_norm = 10.0
    if variant == "wider":
        return c

    # --- synthetic scenes (256-320 px) on a 320 px canvas, a narrow ResNet-18-like net.
    c.image_size = 320
    c.max_faces = 48
    c.data.builder = "synthetic_faces"
    c.data.config = "detection"
    c.data.overrides = ml_collections.ConfigDict(
        dict(
            num_train=1200,
            num_validation=200,
            detection_min_side=256,
            detection_max_side=320,
            detection_max_faces=40,
            detection_max_face=240,
        )
    )
    c.model.backbone = dict(
        stage_sizes=[1, 1, 1, 1], block="basic", width=0.25, stem="imagenet", pretrained=""
    )
    c.model.branches = [
        _branch("small", (8, 28), ("res2", "res3"), 8, (12, 20)),
        _branch("medium", (28, 80), ("res3", "res4"), 16, (32, 48, 64)),
        _branch("large", (80, 0), ("res4", "res5"), 32, (96, 144, 208)),
    ]
    c.model.merge_channels = 32
    c.model.rpn_channels = 32
    c.model.head_conv_channels = 32
    c.model.head_fc = [128, 64]
    c.model.roi_size = 5
    c.model.landmarks = True
    c.augment.scale_range = [0.7, 1.4]
    c.targets.rpn_batch = 128
    c.ohem_rois = 32
    c.train_pre_nms_topk = 256
    c.train_post_nms_topk = 48
    c.test_pre_nms_topk = 300
    c.test_post_nms_topk = 100
    c.max_detections = 100
    c.eval_size_buckets = [[10, 28], [28, 80], [80, 0]]
    c.eval_split = "validation"
    c.evals = ["wider"]
    c.eval_sample_images = 4
    c.batch_size = 8
    c.eval_batch_size = 8
    c.num_train_steps = 400
    c.log_every = 50
    c.eval_every = 400
    c.checkpoint_every = 400
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 2e-3
    c.optimizer.weight_decay = 1e-4
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 30
    if variant == "single_branch":
        # One detector over all sizes; same total proposal and OHEM budget as the three.
        c.model.branches = [
            _branch("all", (8, 0), ("res3", "res4"), 16, (12, 20, 32, 48, 64, 96, 144, 208))
        ]
        c.train_post_nms_topk = 3 * 48
        c.test_post_nms_topk = 3 * 100
        c.ohem_rois = 3 * 32
        c.targets.rpn_batch = 3 * 128
    if variant == "cfp_scenes":
        # Real CFP faces (train: identities of protocol splits 01-08; test: 09-10) pasted
        # on scikit-image's face-free photographs (jaxface.data.cfp_scenes): 256-320 px
        # scenes, 1-6 faces of 10-288 px. Same CPU-sized net as `synthetic`.
        c.data.builder = "cfp_scenes"
        c.data.config = "default"
        c.data.manual_dir = CFP_DIR
        c.data.overrides = ml_collections.ConfigDict(dict(num_train=3000, num_test=300))
        c.max_faces = 8
        c.eval_split = "test"
        c.num_train_steps = 1600  # measured: 26 min on the shared 2-core CPU (1.25 steps/s)
        c.log_every = 25
        c.eval_every = 1600
        c.checkpoint_every = 200
        c.optimizer.warmup_steps = 50
    if variant == "tiny":
        c.image_size = 128
        c.max_faces = 16
        c.data.overrides = ml_collections.ConfigDict(
            dict(
                num_train=32,
                num_validation=8,
                detection_min_side=96,
                detection_max_side=128,
                detection_max_faces=6,
                detection_min_face=8,
                detection_max_face=96,
            )
        )
        c.model.backbone = dict(
            stage_sizes=[1, 1, 1, 1], block="basic", width=0.125, stem="imagenet", pretrained=""
        )
        c.model.merge_channels = 16
        c.model.rpn_channels = 16
        c.model.head_conv_channels = 16
        c.model.head_fc = [32, 32]
        c.model.roi_size = 3
        c.train_pre_nms_topk = 64
        c.train_post_nms_topk = 16
        c.test_pre_nms_topk = 64
        c.test_post_nms_topk = 16
        c.max_detections = 20
        c.ohem_rois = 8
        c.targets.rpn_batch = 32
        c.batch_size = 8
        c.eval_batch_size = 8
        c.num_train_steps = 4
        c.log_every = 1
        c.eval_every = 4
        c.checkpoint_every = 4
        c.optimizer.warmup_steps = 0
        c.optimizer.learning_rate = 1e-3
    return c
