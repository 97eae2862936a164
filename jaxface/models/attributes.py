"""Attribute network: a trunk shared by the 40 attributes, with two heads.

* ``logits`` ``[B, A]``: one linear classifier per attribute (the BCE baseline);
* ``embedding`` ``[B, D]``: one L2-normalised embedding (LMLE's feature space).

Why one shared embedding rather than one per attribute: LMLE clusters each
attribute's classes separately, and a shared unit-norm embedding lets one forward
pass serve all 40 attributes (the per-attribute quintuplets are mined in the same
space with that attribute's labels and clusters), so cost does not grow 40-fold;
the per-attribute linear heads keep the baseline comparable on the same trunk.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxface.models.cnn import ConvTrunk


class AttributeNet(nn.Module):
  num_attributes: int = 40
  embedding_dim: int = 128
  widths: Sequence[int] = (32, 64, 128, 256)
  convs_per_stage: int = 2
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images, *, train: bool):
    """images ``[B, H, W, 3]`` float in [-1, 1] -> dict(logits [B, A], embedding [B, D])."""
    feat = ConvTrunk(self.widths, self.convs_per_stage, dtype=self.dtype, name="trunk")(images, train=train)
    emb = nn.Dense(self.embedding_dim, name="embedding")(feat)
    emb = emb / jnp.maximum(jnp.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
    logits = nn.Dense(self.num_attributes, name="classifier")(feat)
    return {"logits": logits, "embedding": emb, "feature": feat}
