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
           ``cfp_aligned_naive`` is its twin without the block.

Run (the paper's best: end-to-end, then re-train the block by stitching):
  jaxface train --config configs/dream.py:cfp --workdir /tmp/jaxface/dream_cfp
  jaxface train --config configs/dream.py:cfp_stitch --workdir /tmp/jaxface/dream_cfp_stitch \\
      --config.init_from=/tmp/jaxface/dream_cfp
  jaxface train --config configs/dream.py:cfp_naive --workdir /tmp/jaxface/dream_cfp_naive
  jaxface train --config configs/dream.py:cfp_aligned --workdir /tmp/jaxface/dream_cfp_aligned
  jaxface train --config configs/dream.py:msceleb --workdir gs://.../dream_r50 \\
      --config.data.manual_dir=/data/faces_emore --config.data.yaw_file=/data/faces_emore_yaw.npy \\
      --config.cfp.manual_dir=/data/cfp
"""

import os

import ml_collections

from jaxface import config as jf_config

BASES = ("msceleb", "cfp", "synthetic", "tiny")
VARIANTS = tuple(b + s for b in BASES for s in ("", "_naive", "_stitch")) + (
    "cfp_aligned",
    "cfp_aligned_naive",
    "msceleb_1m",
)
SMALL_VARIANT = "tiny"

# ../shared/data/cfp beside the repository (the real data never lives inside it).
CFP_DIR = os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "cfp")
)


def get_config(arg: str = "synthetic") -> ml_collections.ConfigDict:
    variant = arg or "synthetic"
    if variant not in VARIANTS:
        raise ValueError(
            f"configs/dream.py: unknown variant {variant!r} (expected one of {', '.join(VARIANTS)})"
        )
    base, naive, stitch = (
        variant.split("_")[0],
        variant.endswith("_naive"),
        variant.endswith("_stitch"),
    )
    c = jf_config.base_config()
    c.task = "recognition"
    c.mode = "end_to_end"  # end_to_end | stitching
    c.yaw_source = "metadata"  # metadata | landmarks | profile_flag | learned
    c.yaw_head_weight = 0.1  # learned yaw head: weight of ((pred - yaw) / 90)^2
    c.num_classes = 500  # training identities
    c.image_size = 64
    c.random_flip = True
    c.model = ml_collections.ConfigDict(
        dict(
            # pretrained: a torchvision ResNet file (`jaxface.models.pretrained`); its 7x7
            # conv1 needs stem="imagenet".
            backbone=dict(name="resnet10", pretrained=""),
            width=0.25,
            stem="small",
            embed_dim=256,
            use_dream=not naive,
        )
    )
    # sample_rate < 1: Partial FC; class_groups: the classifier's columns are padded to a
    # multiple of it and Partial FC samples per group (a multiple of model_parallel).
    c.head = ml_collections.ConfigDict(
        dict(type="softmax", dropout=0.7, scale=64.0, margin=0.35, sample_rate=1.0, class_groups=8)
    )
    c.deepid2 = ml_collections.ConfigDict(
        dict(weight=0.0, margin=1.0, learn_margin=False, normalize=True)
    )
    c.stitching = ml_collections.ConfigDict(dict(frontal_max_yaw=20.0, profile_min_yaw=50.0))
    c.verification = ml_collections.ConfigDict(
        dict(frontal_max_yaw=20.0, profile_min_yaw=50.0, pairs_per_identity=3, folds=10, seed=0)
    )
    c.cfp = ml_collections.ConfigDict(dict(manual_dir="", eval_splits=[9, 10]))
    # Evaluators "lfw" (LFW View 2 from its original layout) and "bins" (insightface .bin
    # sets): see jaxface/tasks/recognition_evaluators.py. Add them with e.g.
    #   --config.evals='("cfp","lfw")' --config.lfw.manual_dir=/data/lfw
    c.lfw = ml_collections.ConfigDict(
        dict(manual_dir="", image_dir="", crop_fraction=0.6, yaw=0.0, far=1e-3)
    )
    c.bins = ml_collections.ConfigDict(dict(files=(), yaw=0.0, far=1e-3))
    c.data.yaw_file = ""  # insightface RecordIO: per-image yaw (.npy, degrees)
    c.data.crop = "center"  # center | aligned (5-point ArcFace-template crops, as the analyzer)
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 1e-4
    c.optimizer.schedule = "steps"  # x0.1 at 80 / 90 / 95 % (the paper)
    c.keep_checkpoints = 1

    if base == "msceleb":
        c.data.builder = "insightface_rec"
        c.num_classes = 85742  # MS1MV2 (faces_emore); set to your property file's count
        c.image_size = 112
        c.model.backbone.name = "resnet50"
        c.model.update(width=1.0, stem="small")
        c.batch_size = 256
        c.eval_batch_size = 256
        c.num_train_steps = 150_000
        c.log_every, c.eval_every, c.checkpoint_every = 100, 10_000, 5_000
        c.evals = ["cfp"]
        c.data_workers = 16
        if variant == "msceleb_1m":
            c.num_classes = 1_000_000
            c.model.embed_dim = 512
            c.head.update(type="arcface", dropout=0.0, scale=64.0, margin=0.5)
            c.head.update(sample_rate=0.1, class_groups=64)
            c.model_parallel = 8
    elif base == "cfp":
        c.data.builder = "cfp_manual"
        c.data.manual_dir = CFP_DIR
        c.data.overrides = ml_collections.ConfigDict(
            dict(image_size=64, train_splits=[1, 2, 3, 4, 5, 6, 7, 8])
        )
        c.num_classes = 400
        c.yaw_source = "profile_flag"
        # Sized for a shared 2-core CPU (~0.5 core each when busy): 48 px input, ResNet-10 at 1/4 width.
        c.image_size = 48
        c.model.backbone.name = "resnet10"
        c.model.update(width=0.25)
        c.head.dropout = 0.5
        c.batch_size = 64
        c.num_train_steps = 1200
        c.optimizer.warmup_steps = 50
        c.log_every, c.eval_every, c.checkpoint_every = 50, 1200, 1200
        c.evals = ["cfp", "identification"]
        if variant.startswith("cfp_aligned"):
            # The same run on crops aligned to the ArcFace template from the fiducials'
            # 5 points: what `jaxface verify` / `FaceAnalyzer` feed it on real photos.
            c.data.crop = "aligned"
            # CFP's images are tight face crops: a tighter template (zoom 1.25) and a
            # replicated edge instead of a black frame where the crop leaves the image.
            c.data.align = ml_collections.ConfigDict(dict(supersample=2, zoom=1.25, border="edge"))
    elif base == "synthetic":
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
        c.num_classes = 500
        c.image_size = 48
        c.head.dropout = 0.5
        c.batch_size = 64
        c.num_train_steps = 400
        c.optimizer.warmup_steps = 40
        c.log_every, c.eval_every, c.checkpoint_every = 50, 400, 400
        c.evals = ["verification", "identification"]
    else:  # tiny
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
        c.model.backbone.name = "resnet10"
        c.model.update(width=0.125, embed_dim=32)
        c.head.dropout = 0.0
        c.batch_size = 16
        c.eval_batch_size = 16
        c.num_train_steps = 4
        c.optimizer.learning_rate = 0.05
        c.optimizer.schedule = "constant"
        c.log_every, c.eval_every, c.checkpoint_every = 1, 4, 4
        c.evals = ["verification", "identification"]
        c.verification.folds = 4
        c.async_checkpointing = False

    if stitch:
        # Stitching (the paper): stem frozen, SGD lr 1e-3, momentum 0.9, wd 1e-4, batch 256,
        # 10,000 iterations. The CPU variants run 30x fewer steps, so they take lr 1e-2 instead.
        # Pass --config.init_from=<end-to-end workdir>.
        c.mode = "stitching"
        c.optimizer.learning_rate = 1e-3 if base == "msceleb" else 1e-2
        c.optimizer.schedule = "constant"
        c.optimizer.warmup_steps = 0
        c.num_train_steps = {"msceleb": 10_000, "cfp": 300, "synthetic": 200, "tiny": 4}[base]
        c.eval_every = c.num_train_steps
        c.checkpoint_every = c.num_train_steps
    return c
