"""Pure, jit-able loss functions in the style of `optax.losses`.

Each loss takes arrays first and keyword-only settings, returns per-example
values (the caller reduces), accepts a `where` mask, and documents its shapes.
Implementations live in private `_*.py` modules; the public names are re-exported
here. Losses import nothing of the project but `jaxface.ops`.
"""

from jaxface.losses._attributes import (
    DEFAULT_LMLE_MARGINS,
    DEFAULT_TRIPLET_MARGIN,
    balanced_class_weights,
    sigmoid_binary_cross_entropy,
    triple_header_hinge,
    triplet_margin,
)  # noqa: F401
from jaxface.losses._detection import sigmoid_bce, smooth_l1  # noqa: F401
from jaxface.losses._recognition import (
    arcface_logits,
    contrastive_verification,
    cosface_logits,
    deepid2_batch_verification,
    deepid2_joint_loss,
    dream_stitching_mse,
    softmax_identity_cross_entropy,
)  # noqa: F401
from jaxface.losses._sharded_classifier import (
    class_centres_sharding,
    init_class_centres,
    padded_num_classes,
    partial_fc_num_sampled,
    partial_fc_sample,
    sharded_classifier_loss,
)  # noqa: F401
