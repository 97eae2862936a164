"""Face attributes on one shared trunk: LMLE and its baselines (Huang et al., CVPR 2016).

Variants (``get_config(arg)``):
  synthetic   — LMLE (quintuplets + triple-header hinge, re-clustering hook, cluster-wise
                kNN) on the synthetic CelebA-rate attributes; the quickstart's (CPU, minutes);
  bce         — the BCE baseline, same trunk, data and step budget;
  triplet_knn — the triplet-loss baseline with the same cluster-wise kNN classifier;
  lmle_head   — the LMLE head (the recipe: balanced-only losses, equal-size clusters, no
                embedding BatchNorm, a mining pool) trained on a frozen trunk: needs
                --config.init_from=<a bce workdir trained with the same model shapes>;
  triplet_head — the triplet head on the same frozen trunk, same recipe otherwise;
  celeba      — LMLE on the real CelebA (original layout in ``config.data.manual_dir``),
                sized for one GPU;
  tiny        — BCE shrunk for tests (a few steps, a tiny synthetic set); tests switch
                ``config.loss`` to run the other losses on it.

Real data: ``celeba`` reads --config.data.manual_dir, or ``$JAXFACE_DATA/celeba`` when the
environment variable JAXFACE_DATA names the folder that holds celeba/.

Run:
  jaxface train --config configs/lmle.py:synthetic --workdir /tmp/jaxface/lmle_synthetic
  jaxface train --config configs/lmle.py:bce --workdir /tmp/jaxface/lmle_bce
  jaxface train --config configs/lmle.py:celeba --workdir /tmp/jaxface/lmle_celeba \
      --config.data.manual_dir=/path/to/celeba
Compare with a baseline run (table with gains + gain-vs-imbalance PNG in the workdir):
  jaxface train --config configs/lmle.py:synthetic --workdir /tmp/jaxface/lmle_synthetic \
      --config.baseline_report=/tmp/jaxface/lmle_bce --config.baseline_name=BCE
"""

import ml_collections

from jaxface import config as jf_config
from jaxface.data.attribute_names import CELEBA_ATTRIBUTES


def base() -> ml_collections.ConfigDict:
    """The BCE baseline on the synthetic CelebA-rate attributes (the `bce` variant); the
    LMLE numbers are the paper's where it publishes them (docs/methods.md, LMLE)."""
    c = jf_config.base_config()
    c.task = "attributes"
    c.num_attributes = 40
    c.attribute_names = list(CELEBA_ATTRIBUTES)  # CelebA's 40, in list_attr_celeba.txt order
    c.loss = "bce"  # bce | lmle | triplet_knn
    c.class_balanced = False  # bce: inverse-frequency class weights
    c.image_size = 64  # the synthetic faces' size
    c.square_crop = False  # centre-crop non-square images before resizing
    c.random_flip = True
    c.rate_sample = 5000  # training labels read to estimate each attribute's positive rate
    # LMLE / triplet (ignored by bce).
    c.lmle_margins = [0.05, 0.05, 0.2]  # g1, g2, g3 (unpublished; see losses/_attributes.py)
    c.triplet_margin = 0.2  # FaceNet's triplet margin (Schroff et al., CVPR 2015)
    # Clusters of roughly equal size, as the paper's (docs/methods.md, LMLE): each class of
    # each attribute gets clip(round(n_c / cluster_size), 1, clusters_per_class) clusters
    # of the clustered sample, so a majority class gets proportionally more than a minority
    # one; clusters_per_class is then the cap. The size is not published (a choice: 250 of
    # the 4,000 clustered images, i.e. 8 clusters for a balanced class, 16 capped). 0 =
    # clusters_per_class clusters for every class.
    c.cluster_size = 250
    c.clusters_per_class = 16
    # The triple-header loss of attribute a only on the batches balanced for a (the
    # sampler balances one attribute per step, round-robin); elsewhere a rare attribute's
    # batch holds too few positives for its minority anchors to have partners.
    c.metric_loss_balanced_only = True
    # Quintuplet partners mined from the batch plus a pool of the last mining_pool training
    # embeddings (constants of earlier steps, with their labels; the anchors stay the
    # batch's), so that a rare class has partners beyond the batch's few. 0 = the batch
    # only. The paper mines within its batches: off.
    c.mining_pool = 0
    # Attributes (names, or indices) whose balanced batches the sampler draws, round-robin
    # over this list; with metric_loss_balanced_only only their metric losses train.
    # Empty: all 40.
    c.metric_attributes = []
    # Steps between re-clusterings (paper: 5,000 iterations); scaled to the 1,000-step runs.
    c.recluster_every = 250
    c.cluster_sample = 4000  # training images embedded per clustering (0 = all); bounds its cost
    c.kmeans_iters = 30  # Lloyd iterations per clustering (a choice bounding its cost)
    # Nearest centroids of the cluster-wise kNN rule (not published): k = clusters_per_class,
    # so a query can see every cluster of its class.
    c.knn_k = 4
    c.balanced_sampling = True  # class-balanced batches (attributes round-robin), as the paper
    c.baseline_report = ""  # a baseline workdir (or its attributes_*_latest.json)
    c.baseline_name = ""
    c.method_name = ""
    # Channel counts that are multiples of 16 run several times faster on XLA:CPU
    # (benchmarks/README.md); a 4-stage net small enough for a 2-core CPU.
    c.model = ml_collections.ConfigDict(
        dict(
            embedding_dim=64,
            widths=[16, 32, 64, 128],
            convs_per_stage=2,
            per_attribute_embedding=True,
            # Non-affine BatchNorm on the embedding (models/attributes.py says why); False:
            # none, so the loss's cluster ids and the clustering see the same statistics.
            # The paper does not say: kept on.
            embedding_bn=True,
            # True: the trunk is a fixed feature extractor (running BatchNorm statistics,
            # no gradient, parameters out of the optimizer); only the heads train.
            frozen_trunk=False,
        )
    )
    c.data.builder = "synthetic_faces"
    c.data.config = "attributes"
    c.evals = ["balanced_accuracy"]
    # AdamW lr 2e-3, 100 warm-up steps, 1,500 steps at batch 64: tuned on the synthetic set.
    c.batch_size = 64
    c.num_train_steps = 1500
    c.log_every = 100
    c.eval_every = 1500
    c.checkpoint_every = 500
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 2e-3
    c.optimizer.warmup_steps = 100
    return c


def _embedding(loss: str, name: str):
    """LMLE (or the triplet baseline): 16-d per attribute (40 x 16), cluster-wise kNN.
    Sized for the quickstart (<= 4 min on a 2-core CPU, docs/results/lmle_vs_bce.md);
    compare with `bce --config.num_train_steps=1000` for the same step budget."""

    def overlay(c):
        c.loss = loss
        c.method_name = name
        c.model.embedding_dim = 16
        c.evals = ["cluster_knn"]
        c.num_train_steps = 1000
        c.eval_every = 1000

    return overlay


def _celeba(c):
    """LMLE on the real CelebA (original layout), sized for one GPU."""
    c.loss = "lmle"
    c.method_name = "LMLE"
    c.data.builder = "celeb_a_manual"
    c.data.config = ""
    c.data.manual_dir = jf_config.data_dir_for("celeba")  # required: the original layout
    c.square_crop = True  # 218x178 aligned crops -> centre 178x178
    c.image_size = 128  # 178 px crops scaled to 128: a choice for one GPU
    c.model.widths = [64, 128, 256, 512]  # ResNet widths; a choice for one GPU
    c.model.embedding_dim = 32
    # Clusters of ~400 of the 20,000 clustered images (not published): 25 for a balanced
    # class, capped at 32; a 2% class gets 1.
    c.cluster_size = 400
    c.clusters_per_class = 32
    c.knn_k = 10  # not published; > clusters_per_class, as on the synthetic set
    c.cluster_sample = 20000
    c.recluster_every = 2000  # paper: 5,000 iterations; scaled to 16k steps
    c.evals = ["cluster_knn"]
    c.batch_size = 256
    c.eval_batch_size = 512
    # 16384 x 256 = 2^22 records: the balanced sampler stays exact per step.
    c.num_train_steps = 16384
    c.log_every = 200
    c.eval_every = 4096
    c.checkpoint_every = 2000
    c.rate_sample = 20000
    c.data_workers = 12  # JPEG decoding for batch 256 (a choice)
    c.prefetch = 4
    c.optimizer.learning_rate = 1e-3  # a choice for batch 256 (not published)
    c.optimizer.warmup_steps = 500


def _head(loss: str, name: str):
    """A head trained on a frozen trunk (docs/results/lmle_heads.md): the trunk comes from
    --config.init_from (a `bce` run with embedding_dim 16 and no embedding BatchNorm, so
    that every parameter shape matches); the 16-d per-attribute embedding head trains
    with the recipe. The embedding is evaluated by the cluster-wise kNN rule."""

    def overlay(c):
        c.loss = loss
        c.method_name = name
        c.model.embedding_dim = 16
        c.model.embedding_bn = False
        c.model.frozen_trunk = True
        c.metric_loss_balanced_only = True
        c.cluster_size = 250
        c.clusters_per_class = 16
        # Partners from the last 4 batches too: a rare class's batch-mates are few.
        c.mining_pool = 256
        c.evals = ["cluster_knn"]
        # A linear head on fixed features: a larger step than the trunk's (a choice).
        c.optimizer.learning_rate = 5e-3
        c.optimizer.warmup_steps = 50
        # 300 steps: 20 balanced steps for each of 15 metric_attributes (sized for a
        # shared 2-core CPU; docs/results/lmle_heads.md).
        c.num_train_steps = 300
        c.recluster_every = 150
        c.eval_every = 300
        c.checkpoint_every = 300

    return overlay


def _published_recipe(c):
    """The quickstart's LMLE (`synthetic`), its `triplet_knn` baseline and `tiny` keep the
    recipe their published numbers (docs/results/lmle_vs_bce.md) were measured with, so the
    quickstart's numbers stay identical: options added later default to the old behaviour
    here."""
    c.cluster_size = 0  # 4 clusters for every class
    c.clusters_per_class = 4
    c.metric_loss_balanced_only = False  # all 40 triple-header losses on every batch


def _tiny(c):
    """BCE shrunk for tests (6 steps on 256 images of 32 px); tests switch ``config.loss``
    to run the other losses on it."""
    c.image_size = 32
    c.model.widths = [8, 16]
    c.model.embedding_dim = 16
    c.data.overrides = ml_collections.ConfigDict(dict(num_train=256, num_test=64, image_size=32))
    c.batch_size = 16
    c.eval_batch_size = 32
    c.num_train_steps = 6
    c.log_every = 2
    c.eval_every = 6
    c.checkpoint_every = 3
    c.rate_sample = 256
    c.clusters_per_class = 2
    c.knn_k = 3
    c.cluster_sample = 128
    c.recluster_every = 3
    c.kmeans_iters = 10
    c.optimizer.warmup_steps = 0


# Variant name -> the overlays applied, in order, to `base()`.
VARIANTS = {
    "synthetic": (_embedding("lmle", "LMLE"), _published_recipe),
    "bce": (),
    "triplet_knn": (_embedding("triplet_knn", "triplet+kNN"), _published_recipe),
    "lmle_head": (_head("lmle", "LMLE head"),),
    "triplet_head": (_head("triplet_knn", "triplet head"),),
    "celeba": (_celeba,),
    "tiny": (_published_recipe, _tiny),
}
SMALL_VARIANT = "tiny"


def get_config(arg: str = "synthetic") -> ml_collections.ConfigDict:
    return jf_config.variant_config("configs/lmle.py", arg or "synthetic", base, VARIANTS)
