"""DREAM (Cao et al., CVPR 2018): pose-robust face recognition, and its naive twin.

Variants (``get_config(arg)``); every ``X`` has ``X_naive`` (no DREAM block, same
everything else) and the DREAM ones ``X_stitch`` (stitching, started from ``X``):
  msceleb  the paper's setting, for GPUs: ResNet-50 (insightface 3x3 stem, 112 px),
           256-d, softmax with dropout 0.7, SGD lr 0.1 / momentum 0.9 / wd 1e-4, batch
           256, lr x0.1 at 80 / 90 / 95 %; insightface RecordIO (``train.rec``,
           ``train.idx``, ``property``) in ``config.data.manual_dir`` and a per-image yaw
           array (``.npy``, degrees, RecordIO order) in ``config.data.yaw_file`` -- the
           RecordIO crops carry no pose, and a landmark fit on them is impossible (they
           are aligned to one template). Evaluates the CFP FF / FP protocol on splits
           09-10 from ``config.cfp.manual_dir``.
  cfp      CPU: trains on the real CFP identities of protocol splits 01-08 (400
           identities, 5,600 images, 64 px centre crops fed at 48 px) and evaluates FF / FP on the
           unseen identities of splits 09-10; the gate's yaw is CFP's frontal/profile
           folder flag (the fiducial fit under-estimates profile yaw, see
           `jaxface.ops.pose.yaw_from_cfp_fiducials`).
  synthetic the quickstart's: synthetic_faces ``identity`` shrunk to 500 train / 100
           test identities x 10 images at 48 px, a ResNet-10 at width 1/4; FF / FP
           verification and rank-1 identification on the held-out identities.
  tiny     for tests (a few steps, 32 px, a handful of identities).
  msceleb_1m  ``msceleb`` scaled to a 1,000,000-identity training set (e.g. a
           Glint360K / WebFace-sized RecordIO): 512-d embeddings, ArcFace, the classifier
           split by class over 8 devices of the mesh's ``model`` axis
           (``model_parallel=8``, 64 class groups, so 8, 16, 32 or 64 devices work with
           one checkpoint layout) and Partial FC keeping 10 % of the centres per step
           (``head.sample_rate=0.1``). Set ``num_classes`` to your property file's count.
  cfp_aligned  ``cfp`` on 48 px crops aligned to the ArcFace 5-point template
           (``config.data.crop = "aligned"``: CFP's fiducials -> 5 points ->
           `jaxface.ops.align`), the crops `jaxface.analyzer` cuts from detected faces;
           the recogniser for ``jaxface verify`` / ``identify`` on real photos;
           ``cfp_aligned_naive`` is its twin without the block;
           ``cfp_aligned_naive_frontal`` that twin trained on a frontal-heavy split
           (``data.max_profile_fraction=0.01``: 40 of the 1,600 profiles kept);
           ``cfp_aligned_stitch`` a DREAM block stitched (the paper's recipe) onto any
           of these stems (``--config.init_from``, a naive stem included).
  X_stitch (and ``cfp_aligned_stitch``) follow the paper's stitching recipe: identity
           first, then one of its profiles; SGD lr 1e-3, momentum 0.9, wd 1e-4, batch
           256, 10,000 steps; R on cached flip-fused stem features (seconds on a CPU).
           ``synthetic_stitch`` / ``tiny_stitch`` run 200 / 4 steps at lr 1e-2.

Real data: --config.data.manual_dir, or the environment variable JAXFACE_DATA naming the
folder that holds cfp/ (the ``cfp*`` variants read ``$JAXFACE_DATA/cfp``).

Run (the paper's best: end-to-end, then re-train the block by stitching):
  jaxface train --config configs/dream.py:cfp --workdir /tmp/jaxface/dream_cfp
  jaxface train --config configs/dream.py:cfp_stitch --workdir /tmp/jaxface/dream_cfp_stitch \\
      --config.init_from=/tmp/jaxface/dream_cfp
  jaxface train --config configs/dream.py:cfp_naive --workdir /tmp/jaxface/dream_cfp_naive
  jaxface train --config configs/dream.py:cfp_aligned --workdir /tmp/jaxface/dream_cfp_aligned
  jaxface train --config configs/dream.py:cfp_aligned_naive_frontal --workdir /tmp/jaxface/stem_b
  jaxface train --config configs/dream.py:cfp_aligned_stitch --workdir /tmp/jaxface/stem_b_dream \
      --config.init_from=/tmp/jaxface/stem_b
  jaxface train --config configs/dream.py:msceleb --workdir gs://.../dream_r50 \\
      --config.data.manual_dir=/data/faces_emore --config.data.yaw_file=/data/faces_emore_yaw.npy \\
      --config.cfp.manual_dir=/data/cfp
"""

import ml_collections

from jaxface import config as jf_config


def base() -> ml_collections.ConfigDict:
    """The fields every variant shares; numbers without a comment are the paper's
    (docs/methods.md, DREAM and DeepID2)."""
    c = jf_config.base_config()
    c.task = "recognition"
    c.mode = "end_to_end"  # end_to_end | stitching
    c.yaw_source = "metadata"  # metadata | landmarks | profile_flag | learned
    # Learned yaw head: weight of ((pred - yaw) / 90)^2, small beside the identity loss (a choice).
    c.yaw_head_weight = 0.1
    c.num_classes = 500  # training identities: the synthetic set's; other variants set theirs
    c.image_size = 64  # each variant sets its own
    c.random_flip = True
    c.model = ml_collections.ConfigDict(
        dict(
            # pretrained: a torchvision ResNet file (`jaxface.models.pretrained`); its 7x7
            # conv1 needs stem="imagenet".
            backbone=dict(name="resnet10", pretrained=""),
            width=0.25,
            stem="small",
            embed_dim=256,
            use_dream=True,
            # The block's gate: "yaw" (the paper's Y(theta)), "none" (f = phi + R(phi) for
            # every pose: the ungated MLP of the same size) or "off" (f = phi, evaluation only).
            dream_gate="yaw",
        )
    )
    # sample_rate < 1: Partial FC; class_groups: the classifier's columns are padded to a
    # multiple of it and Partial FC samples per group (a multiple of model_parallel).
    # scale 64 / margin 0.35: CosFace's (Wang et al., CVPR 2018), used when type="cosface".
    c.head = ml_collections.ConfigDict(
        dict(type="softmax", dropout=0.7, scale=64.0, margin=0.35, sample_rate=1.0, class_groups=8)
    )
    # DeepID2's verification term, off by default (weight 0; the paper's lambda is 0.05);
    # margin 1 on unit-normalised features (the paper's raw-feature m is not published).
    c.deepid2 = ml_collections.ConfigDict(
        dict(weight=0.0, margin=1.0, learn_margin=False, normalize=True)
    )
    # Stitching: frontal |yaw| <= 20, profile |yaw| >= 50 (the paper's). sampling: "identity"
    # (the paper's: an identity, then one of its profiles) or "image" (uniform over the
    # profiles). cached: R trains on the flip-fused stem features, computed once from the
    # stem of config.init_from (whole batches, no image pipeline) or read from
    # features_file (.npz: "phi" of every training row in source order, "init_from");
    # False: the frozen stem runs on every batch's images.
    c.stitching = ml_collections.ConfigDict(
        dict(
            frontal_max_yaw=20.0,
            profile_min_yaw=50.0,
            sampling="identity",
            cached=True,
            features_file="",
        )
    )
    # The stitching thresholds again for the synthetic FF / FP pairs; 3 pairs per identity
    # and 10 folds as CFP's 10 splits.
    c.verification = ml_collections.ConfigDict(
        dict(frontal_max_yaw=20.0, profile_min_yaw=50.0, pairs_per_identity=3, folds=10, seed=0)
    )
    c.cfp = ml_collections.ConfigDict(dict(manual_dir="", eval_splits=[9, 10]))
    # Evaluators "lfw" (LFW View 2 from its original layout) and "bins" (insightface .bin
    # sets): see jaxface/tasks/recognition_evaluators.py. Add them with e.g.
    #   --config.evals='("cfp","lfw")' --config.lfw.manual_dir=/data/lfw
    # crop_fraction 0.6: the centre of LFW's 250 px images that holds the face (a choice).
    c.lfw = ml_collections.ConfigDict(
        dict(manual_dir="", image_dir="", crop_fraction=0.6, yaw=0.0, far=1e-3)
    )
    c.bins = ml_collections.ConfigDict(dict(files=(), yaw=0.0, far=1e-3))
    c.data.yaw_file = ""  # insightface RecordIO: per-image yaw (.npy, degrees)
    c.data.crop = "center"  # center | aligned (5-point ArcFace-template crops, as the analyzer)
    # < 1: the training split keeps every non-profile image and profiles (|yaw| >=
    # stitching.profile_min_yaw) up to this fraction of the images read (a fixed draw):
    # a frontal-heavy stem, as the paper's (e.g. 0.01 in cfp_aligned_naive_frontal).
    c.data.max_profile_fraction = 1.0
    # SGD lr 0.1, momentum 0.9, wd 1e-4, x0.1 at 80 / 90 / 95 %: the paper's, which are the
    # trainer's defaults (jaxface/config.py) but for the schedule.
    c.optimizer.schedule = "steps"
    c.keep_checkpoints = 1
    return c


def _msceleb(c):
    """The paper's setting: ResNet-50 on MS1MV2 (insightface RecordIO), batch 256."""
    c.data.builder = "insightface_rec"
    c.num_classes = 85742  # MS1MV2 (faces_emore); set to your property file's count
    c.image_size = 112  # insightface's aligned 112 px crops
    c.model.backbone.name = "resnet50"
    c.model.width = 1.0
    c.batch_size = 256
    c.eval_batch_size = 256
    # Not published: 150k steps at batch 256 are ~6.6 passes over MS1MV2's 5.8M images.
    c.num_train_steps = 150_000
    c.log_every, c.eval_every, c.checkpoint_every = 100, 10_000, 5_000
    c.evals = ["cfp"]
    c.data_workers = 16  # parallel JPEG decoding for batch 256 (a choice)


def _million(c):
    """1,000,000 identities: 512-d ArcFace (Deng et al., CVPR 2019: s 64, m 0.5), the
    classifier split over 8 devices, Partial FC keeping 10 % of the centres (An et al.,
    ICCVW 2021)."""
    c.num_classes = 1_000_000
    c.model.embed_dim = 512
    c.head.update(type="arcface", dropout=0.0, scale=64.0, margin=0.5)
    c.head.update(sample_rate=0.1, class_groups=64)  # 64 groups: 8-64 devices, one layout
    c.model_parallel = 8


def _cfp(c):
    """CFP's real identities of protocol splits 01-08 (400 identities, 5,600 images) for
    training, FF / FP on the unseen splits 09-10; sized for a 2-core CPU."""
    c.data.builder = "cfp_manual"
    c.data.manual_dir = jf_config.data_dir_for("cfp")
    c.data.overrides = ml_collections.ConfigDict(
        dict(image_size=64, train_splits=[1, 2, 3, 4, 5, 6, 7, 8])
    )
    c.num_classes = 400
    c.yaw_source = "profile_flag"
    # Sized for a 2-core CPU: 48 px input, the base's ResNet-10 at 1/4 width
    # (docs/results/dream_cfp.md).
    c.image_size = 48
    c.head.dropout = 0.5  # lighter than the paper's 0.7 for the small net (a choice)
    c.num_train_steps = 1200  # ~14 passes over the 5,600 images
    c.optimizer.warmup_steps = 50
    c.log_every, c.eval_every, c.checkpoint_every = 50, 1200, 1200
    c.evals = ["cfp", "identification"]


def _aligned(c):
    """Crops aligned to the ArcFace template from the fiducials' 5 points: what
    `jaxface verify` / `FaceAnalyzer` feed the net on real photos."""
    c.data.crop = "aligned"
    # CFP's images are tight face crops: a tighter template (zoom 1.25) and a replicated
    # edge instead of a black frame where the crop leaves the image.
    c.data.align = ml_collections.ConfigDict(dict(supersample=2, zoom=1.25, border="edge"))


def _synthetic(c):
    """The quickstart's: 500 train / 100 test synthetic identities x 10 images at 48 px."""
    c.data.builder = "synthetic_faces"
    c.data.config = "identity"
    c.data.overrides = ml_collections.ConfigDict(
        dict(
            num_train_identities=500,
            num_test_identities=100,
            images_per_identity=10,
            identity_image_size=48,
        )
    )
    c.image_size = 48
    c.head.dropout = 0.5  # as `cfp`
    c.num_train_steps = 400  # the quickstart's budget: minutes on a 2-core CPU
    c.optimizer.warmup_steps = 40
    c.log_every, c.eval_every, c.checkpoint_every = 50, 400, 400
    c.evals = ["verification", "identification"]


def _tiny(c):
    """For tests: 4 steps, 32 px, 16 identities."""
    c.data.builder = "synthetic_faces"
    c.data.config = "identity"
    c.data.overrides = ml_collections.ConfigDict(
        dict(
            num_train_identities=16,
            num_test_identities=8,
            images_per_identity=6,
            identity_image_size=32,
        )
    )
    c.num_classes = 16
    c.image_size = 32
    c.model.update(width=0.125, embed_dim=32)
    c.head.dropout = 0.0
    c.batch_size = 16
    c.eval_batch_size = 16
    c.num_train_steps = 4
    c.optimizer.learning_rate = 0.05
    c.optimizer.schedule = "constant"
    c.log_every, c.eval_every, c.checkpoint_every = 1, 4, 4
    c.evals = ["verification", "identification"]
    c.verification.folds = 4  # 8 test identities: 4 folds of 2
    c.async_checkpointing = False


def _naive(c):
    """The twin without the DREAM block (same everything else)."""
    c.model.use_dream = False


def _stitch(steps: int, lr: float, batch: int | None = None):
    """Stitching, the paper's recipe: stem frozen, SGD lr 1e-3, momentum 0.9, wd 1e-4
    (the base's), batch 256, 10,000 iterations, constant lr; on cached stem features
    (``stitching.cached``) that is seconds on a CPU. The quickstart's ``synthetic`` and
    the tests' ``tiny`` run fewer steps at lr 1e-2 on their own batch size.
    Pass --config.init_from=<end-to-end or naive workdir>."""

    def overlay(c):
        c.mode = "stitching"
        c.model.use_dream = True
        c.optimizer.learning_rate = lr
        c.optimizer.schedule = "constant"
        c.optimizer.warmup_steps = 0
        if batch:
            c.batch_size = batch
        c.num_train_steps = c.eval_every = c.checkpoint_every = steps
        c.log_every = min(int(c.log_every), steps)

    return overlay


def _frontal_heavy(c):
    """A stem trained on mostly frontal faces, as the paper's: profiles capped at 1 % of
    the training images (CFP splits 01-08: all 4,000 frontal + 40 of the 1,600 profiles)."""
    c.data.max_profile_fraction = 0.01


PAPER_STITCH = _stitch(10_000, 1e-3, 256)
_BASES = {
    "msceleb": ((_msceleb,), PAPER_STITCH),
    "cfp": ((_cfp,), PAPER_STITCH),
    "synthetic": ((_synthetic,), _stitch(200, 1e-2)),
    "tiny": ((_tiny,), _stitch(4, 1e-2)),
}
# Variant name -> the overlays applied, in order, to `base()`: every X, X_naive, X_stitch.
VARIANTS = {
    name + suffix: overlays + extra
    for name, (overlays, stitch) in _BASES.items()
    for suffix, extra in (("", ()), ("_naive", (_naive,)), ("_stitch", (stitch,)))
}
VARIANTS.update(
    cfp_aligned=(_cfp, _aligned),
    cfp_aligned_naive=(_cfp, _aligned, _naive),
    cfp_aligned_naive_frontal=(_cfp, _aligned, _naive, _frontal_heavy),
    cfp_aligned_stitch=(_cfp, _aligned, PAPER_STITCH),
    msceleb_1m=(_msceleb, _million),
)
SMALL_VARIANT = "tiny"


def get_config(arg: str = "synthetic") -> ml_collections.ConfigDict:
    return jf_config.variant_config("configs/dream.py", arg or "synthetic", base, VARIANTS)
