"""Attribute network: a trunk shared by the 40 attributes, with two heads.

* ``logits`` ``[B, A]``: one linear classifier per attribute (the BCE baseline);
* ``embedding``: LMLE's feature space, L2-normalised. With
  ``per_attribute_embedding=True`` (the default) it is ``[B, A, D]``: one unit-norm
  ``D``-dim embedding per attribute, all projected from the shared trunk feature by one
  ``Dense(A * D)``; with ``False`` it is one shared ``[B, D]`` embedding.

Why one embedding per attribute (the default). LMLE's geometry is per attribute: for
attribute ``j`` the quintuplet ordering ``D(a,p+) < D(a,p-) < D(a,p--) < D(a,n)`` and the
cluster-wise kNN rule use *that attribute's* classes and clusters. In one shared space
the 40 orderings compete: "the nearest point of the other class" for ``Smiling`` is pulled
away while the same pair may be a same-class pair for ``Male`` that the ``Male`` headers
pull together, and a cluster-wise kNN over ``Male`` centroids is then distorted by the
variance that the other 39 attributes put in the space. A separate small embedding per
attribute removes that conflict; the shared trunk still carries the joint
representation, and the extra cost is one ``Dense(F -> A*D)`` on the pooled feature and
an ``A``-fold larger (but tiny: ``A*B*B``) mining distance tensor, not 40 forward
passes. The shared variant (``per_attribute_embedding=False``) is kept for comparison;
the task then uses the same embedding for every attribute.

``frozen_trunk=True`` makes the trunk a fixed feature extractor for heads trained on top
of it: running BatchNorm statistics in training too, and no gradient past its pooled
feature (returned as ``feature``).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax

from jaxface.models.cnn import ConvTrunk
from jaxface.ops.norm import l2_normalize


class AttributeNet(nn.Module):
    num_attributes: int = 40
    embedding_dim: int = 128
    widths: Sequence[int] = (32, 64, 128, 256)
    convs_per_stage: int = 2
    per_attribute_embedding: bool = True
    # False: no BatchNorm on the embedding (then the loss's cluster ids and the clustering
    # see the same function of the image; with it, batch statistics in the step and
    # running statistics at clustering time).
    embedding_bn: bool = True
    # True: the trunk is a fixed feature extractor (heads trained on a frozen trunk): its
    # BatchNorm runs on its running statistics in training too, and no gradient flows
    # into it (the task also masks its parameters out of the optimizer).
    frozen_trunk: bool = False
    dtype: Any = None

    @nn.compact
    def __call__(self, images, *, train: bool):
        """images ``[B, H, W, 3]`` float in [-1, 1] -> dict(logits ``[B, A]``, embedding
        ``[B, A, D]`` (or ``[B, D]`` when shared), feature ``[B, F]``)."""
        feat = ConvTrunk(self.widths, self.convs_per_stage, dtype=self.dtype, name="trunk")(
            images, train=train and not self.frozen_trunk
        )
        if self.frozen_trunk:
            feat = jax.lax.stop_gradient(feat)
        width = (
            self.num_attributes * self.embedding_dim
            if self.per_attribute_embedding
            else self.embedding_dim
        )
        emb = nn.Dense(width, use_bias=False, name="embedding")(feat)
        # Non-affine BatchNorm before the L2 normalisation: every embedding coordinate is
        # centred over the batch, so the embedding cannot collapse to one point of the
        # sphere (with a bias, or BN's own beta, it can, and from scratch the hardest-pair
        # hinge of LMLE drives it there: shrinking every distance lowers
        # D(a,p+) - D(a,n) whenever the hardest positive is farther than the hardest
        # negative, which is the rule early in training).
        if self.embedding_bn:
            emb = nn.BatchNorm(
                use_running_average=not train,
                use_scale=False,
                use_bias=False,
                momentum=0.9,
                name="embedding_bn",
            )(emb)
        if self.per_attribute_embedding:
            emb = emb.reshape(feat.shape[0], self.num_attributes, self.embedding_dim)
        logits = nn.Dense(self.num_attributes, name="classifier")(feat)
        return {"logits": logits, "embedding": l2_normalize(emb), "feature": feat}
