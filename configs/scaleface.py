"""ScaleFace face detection (Yang et al., arXiv 1706.02863): scale-variant detectors on one backbone, OHEM.

Variants (``get_config(arg)``):
  wider          — the paper's setting on WIDER FACE (ImageNet ResNet-50, three branches
                   10-40 / 40-140 / 140-1300 px on res2+res3 / res3+res4 / res4+res5
                   at strides 8 / 16 / 32, anchors of docs/methods.md), for GPUs.
                   Needs the original WIDER FACE layout in --config.data.manual_dir
                   (`jaxface.data.widerface_builder`) and the eval_tools ground truth in
                   --config.wider_gt_dir; the evaluator writes the standard prediction
                   folder and reports the official easy / medium / hard AP.
                   The backbone starts from torchvision's ImageNet ResNet-50: put
                   resnet50-0676ba61.pth (downloaded beforehand) into $JAXFACE_WEIGHTS
                   (default ~/.cache/jaxface/weights) or point
                   --config.model.backbone.pretrained at it; an empty
                   --config.model.backbone.pretrained= trains from scratch.
                   Its RoI head is two FC layers (1.8x the trunk's FLOPs in all at 640 px).
  wider_paper_head — `wider` with the paper's RoI head (two 512-channel 3x3 convolutions
                   before FC 1024 -> 512; 3.8x the trunk's FLOPs in all at 640 px).
  synthetic      — the quickstart's: three branches on a narrow ResNet at 320 px on the
                   synthetic scenes (256-320 px), exact WIDER protocol on the validation
                   split; a few minutes on a 2-core CPU.
  single_branch  — the ablation: one detector over all sizes (res3+res4, stride 16,
                   every anchor), same backbone, input, steps and total RoI budget.
  single_branch_s8 — the control for stride: single_branch on res2+res3 at stride 8
                   (the small branch's resolution), every anchor, same budgets; it
                   separates "one detector" from "coarser stride for small faces".
  cfp_scenes     — a detector for real photographs: the synthetic variant's net (with
                   5-point landmarks) trained on real CFP faces, tilted, pasted onto real
                   face-free photographs of 384-1024 px with hands, arms and badges as
                   hard negatives (`jaxface.data.cfp_scenes`, config `photo`), evaluated
                   with the WIDER protocol on held-out scenes at their own scale, whose
                   faces are CFP identities of protocol splits 09-10 (unseen in
                   training). Needs CFP in --config.data.manual_dir or $JAXFACE_DATA/cfp.
  tiny           — tests: a few steps on a tiny synthetic set.

Real data: --config.data.manual_dir, or the environment variable JAXFACE_DATA naming the
folder that holds cfp/ (CFP's original layout).

Run:
  jaxface train --config configs/scaleface.py:synthetic --workdir /tmp/jaxface/scaleface
  jaxface train --config configs/scaleface.py:single_branch --workdir /tmp/jaxface/scaleface_single
  jaxface train --config configs/scaleface.py:single_branch_s8 --workdir /tmp/jaxface/scaleface_s8
  jaxface train --config configs/scaleface.py:cfp_scenes --workdir /tmp/jaxface/cfp_scenes
  jaxface train --config configs/scaleface.py:wider --workdir /tmp/jaxface/scaleface_wider \
      --config.data.manual_dir=/data/widerface \
      --config.wider_gt_dir=/data/widerface/eval_tools/ground_truth
Predictions on any image folder (WIDER `<event>/<image>.txt`):
  jaxface predict-wider --detector /tmp/jaxface/scaleface --images WIDER_val/images \
      --out /tmp/pred
"""

import ml_collections

from jaxface import config as jf_config
from jaxface.models import pretrained

# torchvision's ResNet50_Weights.IMAGENET1K_V1 file (the `wider` variant's backbone).
IMAGENET_RESNET50 = "resnet50-0676ba61.pth"


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


def base() -> ml_collections.ConfigDict:
    """The paper's detector on WIDER FACE (the `wider` variant); numbers without a comment
    are the paper's (docs/methods.md, ScaleFace)."""
    c = jf_config.base_config()
    c.task = "detection"
    c.image_size = 1024  # WIDER images are 1024 px wide: the whole image, unscaled
    c.max_faces = 512  # ground-truth slots per image (padding; not a paper number)
    # Face heights (px) the detector is trained for; inference scales a photo so its
    # plausible faces fall into them (jaxface.ops.detect_scale). Here the ends of the
    # paper's three ranges 10-40 / 40-140 / 140-1300 px.
    c.face_sizes = (10, 1300)
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
            merge_channels=256,  # the stage merge is not published: FPN's 256 (Lin et al. 2017)
            rpn_channels=512,
            # RoI head: two FC layers of 1,024 on the RoIAlign template (the head of
            # Faster R-CNN with FPN, Lin et al. 2017), 14 GFLOP for the three branches'
            # 300 RoIs each at 640 px. The paper's head puts two 512-channel 3x3
            # convolutions before FC 1024 -> 512: 144 GFLOP, 2.2x the ResNet-50 trunk,
            # for no better AP where both were trained (the CPU variants,
            # docs/results/scaleface_head.md). The paper's head: `wider_paper_head`.
            head_conv_channels=512,  # used only when num_head_convs > 0
            num_head_convs=0,
            head_fc=[1024, 1024],
            roi_size=5,
            roi_op="align",  # RoIAlign (He et al. 2017) with 2x2 samples per bin: Mask R-CNN's
            roi_sampling_ratio=2,
            landmarks=False,
        )
    )
    # Faster R-CNN's anchor / RoI labelling (Ren et al., NIPS 2015; Girshick, ICCV 2015);
    # ScaleFace does not publish its own. The ignore rule (IoA 0.5 with an ignored face) and
    # the out-of-range IoU are this implementation's choices.
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
    # Not published: flips, colour jitter, a random rescale in [0.5, 1.5]; a cropped face
    # keeping less than half its area is ignored.
    # scale_reference "fit": the random scale is relative to the image fitted to the
    # canvas; "native": to the image's own pixels (training crops windows of it, and
    # evaluation shows it unscaled unless it exceeds the canvas).
    c.augment = ml_collections.ConfigDict(
        dict(
            flip=True,
            photometric=True,
            scale_range=[0.5, 1.5],
            min_visible=0.5,
            scale_reference="fit",
        )
    )
    c.eval_image_size = 0  # evaluation canvas; 0: image_size
    c.ohem = True
    # RoIs kept per image and branch: the mini-batch B = 128 of Fast R-CNN / OHEM
    # (Shrivastava et al., CVPR 2016); ScaleFace does not publish its own.
    c.ohem_rois = 128
    # OHEM's NMS over the RoIs, ranked by loss, before the hardest are kept: IoU 0.7 as in
    # Shrivastava et al. (docs/methods.md, ScaleFace); 0 = off.
    c.ohem_nms_iou = 0.7
    c.landmark_weight = 1.0  # landmark term beside the box term, equal weight (a choice)
    # Proposals before / after the RPN's NMS (IoU 0.7 as in Faster R-CNN); 300 at test as
    # Faster R-CNN; 2000 / 1000 before NMS bound the sort (a choice).
    c.train_pre_nms_topk = 2000
    c.train_post_nms_topk = 300
    c.test_pre_nms_topk = 1000
    c.test_post_nms_topk = 300
    c.rpn_nms_iou = 0.7
    # Final NMS IoU 0.4 and at most 750 detections per image: the settings of the WIDER
    # evaluation scripts most detectors report with (e.g. RetinaFace's keep_top_k=750).
    c.nms_iou = 0.4
    c.max_detections = 750
    c.score_threshold = 0.0  # keep every score: the WIDER protocol sweeps thresholds itself
    c.range_slack = 0.0  # > 0: drop a branch's detections outside its range x/÷ slack
    # AP per face-size bucket (original pixels), besides easy / medium / hard.
    c.eval_size_buckets = [[10, 40], [40, 140], [140, 0]]
    c.data.builder = "wider_face_original"
    c.eval_split = "validation"
    c.wider_gt_dir = ""  # eval_tools/ground_truth (the four .mat files) for "wider_official"
    # "official": the MATLAB eval_tools execution; "python-port": the Python port's
    # (docs/widerface_semantics.md).
    c.wider_semantics = "official"
    c.evals = ["wider_official"]  # also writes the prediction folder for `jaxface widerface-eval`
    # The WIDER evaluators draw their first N eval images with their detections (score >=
    # the threshold) to TensorBoard (eval/sample_detections) and to the workdir as PNG.
    c.eval_sample_images = 0
    c.eval_sample_threshold = 0.5
    # Schedule not published: Detectron's Faster R-CNN recipe scaled to batch 8 (lr 0.02 at
    # batch 16 -> 0.01 at 8; momentum 0.9 and wd 1e-4, the trainer's defaults; 500 warm-up
    # steps); 80k steps are ~50 passes over WIDER train's 12,880 images; lr x0.1 at 3/4;
    # clipping at 10 guards the first steps from scratch.
    c.batch_size = 8
    c.eval_batch_size = 8
    c.num_train_steps = 80_000
    c.log_every = 100
    c.eval_every = 10_000
    c.checkpoint_every = 2_000
    c.optimizer.learning_rate = 0.01
    c.optimizer.schedule = "steps"
    c.optimizer.decay_at = [0.75]
    c.optimizer.warmup_steps = 500
    c.optimizer.grad_clip_norm = 10.0
    return c


def _synthetic_scenes(c):
    """The synthetic scenes (256-320 px, up to 40 faces) on a 320 px canvas."""
    c.image_size = 320
    c.max_faces = 48  # > the 40 faces a scene holds
    c.data.builder = "synthetic_faces"
    c.data.config = "detection"
    # 1,200 / 200 scenes: enough for the quickstart's 400 steps at batch 8 (~2.7 passes).
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
    c.augment.scale_range = [0.7, 1.4]  # narrower than WIDER's: the scenes are small already
    # The scenes' face heights: detection_min_face + 1 to detection_max_face - 1
    # (jaxface.data.synthetic.scenes.detection; 8 is the builder's default minimum).
    c.face_sizes = (9, 239)
    c.evals = ["wider"]
    c.eval_sample_images = 4


def _cpu_net(c):
    """A narrow ResNet-18-like net (1 block per stage, 1/4 width) and three branches at
    the scenes' sizes (8-28 / 28-80 / 80+ px), sized to train in minutes on a 2-core CPU."""
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
    c.model.landmarks = True
    # Budgets scaled to <= 40 faces per scene (a quarter of the paper's, or less).
    c.targets.rpn_batch = 128
    c.ohem_rois = 32
    c.train_pre_nms_topk = 256
    c.train_post_nms_topk = 48
    c.test_pre_nms_topk = 300
    c.test_post_nms_topk = 100
    c.max_detections = 100
    c.eval_size_buckets = [[10, 28], [28, 80], [80, 0]]


def _published_cpu_recipe(c):
    """The CPU variants (the quickstart's `synthetic`, its ablations, `cfp_scenes`, `tiny`)
    keep the recipe their published numbers (docs/results/) were measured with, so the
    quickstart's numbers stay identical: options added later default to the old
    behaviour here."""
    c.ohem_nms_iou = 0.0  # OHEM without its NMS over the RoIs
    c.model.num_head_convs = 2  # two 3x3 convolutions in the RoI head


def _cpu_schedule(c):
    """AdamW with a cosine decay: converges in 400 steps where SGD needs thousands."""
    c.num_train_steps = 400  # the quickstart's budget: a few minutes on a 2-core CPU
    c.log_every = 50
    c.eval_every = 400
    c.checkpoint_every = 400
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 2e-3  # tuned on the synthetic scenes
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 30


def _single_branch(c):
    """The ablation: one detector over all sizes; the same total proposal and OHEM budget
    as the three branches (3x each)."""
    c.model.branches = [
        _branch("all", (8, 0), ("res3", "res4"), 16, (12, 20, 32, 48, 64, 96, 144, 208))
    ]
    c.train_post_nms_topk = 3 * 48
    c.test_post_nms_topk = 3 * 100
    c.ohem_rois = 3 * 32
    c.targets.rpn_batch = 3 * 128


def _single_branch_s8(c):
    """The stride control (after `_single_branch`): the one detector on res2+res3 at
    stride 8, every anchor, the same budgets."""
    (branch,) = c.model.branches
    c.model.branches = [_branch("all", branch.size_range, ("res2", "res3"), 8, branch.anchors)]


def _cfp_scenes(c):
    """Real CFP faces (train: identities of protocol splits 01-08; test: 09-10) pasted on
    scikit-image's face-free photographs (jaxface.data.cfp_scenes, config `photo`): scenes
    of 384-1024 px a side as photographs have, 1-6 faces of 10-300 px tilted by up to
    30 degrees (landmarks follow), hands, arms, skin and badges as hard negatives, grey
    photographs tinted. Training crops 384 px windows at the scenes' own scale
    (x0.7-1.4); evaluation sees each test scene whole at its own scale on a 1,024 px
    canvas. Same CPU-sized net as `synthetic`."""
    c.data.builder = "cfp_scenes"
    c.data.config = "photo"
    c.data.manual_dir = jf_config.data_dir_for("cfp")
    c.data.overrides = ml_collections.ConfigDict(dict(num_train=1600, num_test=300))
    c.max_faces = 8  # > the 6 faces a scene holds
    c.image_size = 384
    c.eval_image_size = 1024
    c.augment.scale_reference = "native"
    c.augment.scale_range = [0.7, 1.4]
    c.face_sizes = (10, 300)
    c.eval_split = "test"
    c.num_train_steps = 2000
    c.log_every = 25
    c.eval_every = 2000
    c.checkpoint_every = 250
    c.optimizer.warmup_steps = 50


def _paper_head(c):
    """The paper's RoI head: two 3x3 convolutions of 512 channels, FC 1024 -> 512."""
    c.model.num_head_convs = 2
    c.model.head_conv_channels = 512
    c.model.head_fc = [1024, 512]


def _tiny(c):
    """For tests: 4 steps on 32 scenes of 96-128 px, a 1/8-width net."""
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
    # The scenes' face heights: detection_min_face + 1 to detection_max_face - 1.
    c.face_sizes = (9, 95)
    c.model.backbone.width = 0.125
    c.model.update(merge_channels=16, rpn_channels=16, head_conv_channels=16, head_fc=[32, 32])
    c.model.roi_size = 3
    c.train_pre_nms_topk, c.train_post_nms_topk = 64, 16
    c.test_pre_nms_topk, c.test_post_nms_topk = 64, 16
    c.max_detections = 20
    c.ohem_rois = 8
    c.targets.rpn_batch = 32
    c.num_train_steps, c.log_every, c.eval_every, c.checkpoint_every = 4, 1, 4, 4
    c.optimizer.warmup_steps = 0
    c.optimizer.learning_rate = 1e-3


_CPU = (_synthetic_scenes, _cpu_net, _cpu_schedule, _published_cpu_recipe)
# Variant name -> the overlays applied, in order, to `base()`.
VARIANTS = {
    "wider": (),
    "wider_paper_head": (_paper_head,),
    "synthetic": _CPU,
    "single_branch": _CPU + (_single_branch,),
    "single_branch_s8": _CPU + (_single_branch, _single_branch_s8),
    "cfp_scenes": _CPU + (_cfp_scenes,),
    "tiny": _CPU + (_tiny,),
}
SMALL_VARIANT = "tiny"


def get_config(arg: str = "synthetic") -> ml_collections.ConfigDict:
    return jf_config.variant_config("configs/scaleface.py", arg or "synthetic", base, VARIANTS)
