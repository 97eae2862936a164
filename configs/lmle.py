"""Face attributes on one shared trunk (LMLE and its baselines).

Variants (``get_config(arg)``):
  bce   — the BCE baseline on the synthetic CelebA-rate attributes (CPU, minutes);
  tiny  — the same, shrunk for tests (a few steps, a tiny synthetic set).

Run:
  jaxface train --config configs/lmle.py:bce --workdir /tmp/jaxface/lmle_bce
"""
import ml_collections

from jaxface import config as jf_config

# CelebA's 40 attributes, in the order of list_attr_celeba.txt.
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
    "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard "
    "Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair "
    "Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()


VARIANTS = ("bce", "tiny")
SMALL_VARIANT = "tiny"


def get_config(arg: str = "bce") -> ml_collections.ConfigDict:
  variant = arg or "bce"
  if variant not in VARIANTS:
    raise ValueError(f"configs/lmle.py: unknown variant {variant!r} (expected bce | tiny)")
  c = jf_config.base_config()
  c.task = "attributes"
  c.num_attributes = 40
  c.attribute_names = list(CELEBA_ATTRIBUTES)
  c.loss = "bce"
  c.class_balanced = False
  c.image_size = 64
  c.random_flip = True
  c.rate_sample = 5000
  # Channel counts that are multiples of 16 run several times faster on XLA:CPU here.
  c.model = ml_collections.ConfigDict(dict(embedding_dim=64, widths=[16, 32, 64, 128],
                                           convs_per_stage=2))
  c.data.builder = "synthetic_faces"
  c.data.config = "attributes"
  c.evals = ["balanced_accuracy"]
  c.batch_size = 64
  c.num_train_steps = 1500
  c.log_every = 100
  c.eval_every = 1500
  c.checkpoint_every = 500
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 2e-3
  c.optimizer.weight_decay = 1e-4
  c.optimizer.warmup_steps = 100
  if variant == "tiny":
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
    c.optimizer.warmup_steps = 0
  return c
