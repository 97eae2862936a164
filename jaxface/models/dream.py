"""DREAM: Deep Residual EquivAriant Mapping (Cao et al., CVPR 2018).

    f(x) = phi(x) + Y(theta) * R(phi(x))

- `yaw_gate` is ``Y(theta) = sigmoid(10 * (|theta| / 45 - 1))`` (theta in degrees).
- `DreamBlock` is ``R``: Dense(D->D) -> ReLU -> Dense(D->D) -> ReLU (no normalisation),
  plus the gated residual sum; at D = 256 it has 2 * (256^2 + 256) = 131,584 parameters.
  Its ``gate`` (`GATES`) is ``"yaw"`` (the paper's ``Y(theta)``), ``"none"`` (ungated:
  ``f = phi + R(phi)`` for every pose, the same-size MLP control) or ``"off"``
  (``f = phi``: R's output multiplied by 0, i.e. the stem itself).
- `FaceEmbedder` is ``phi`` (a ResNet stem + global average pool + Dense to the
  embedding size, no activation) with the block optionally on top, so the "naive"
  baseline and DREAM differ by one flag.

Stitching training freezes ``phi`` and trains only the ``dream`` sub-tree: its
parameters live under ``params["dream"]``, so an optax mask/partition on that key
is all a trainer needs.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxface.models.resnet import ResNet

__all__ = ["yaw_gate", "gate_values", "DreamBlock", "FaceEmbedder", "GATES"]

GATES = ("yaw", "none", "off")


def yaw_gate(yaw_degrees: jax.Array) -> jax.Array:
    """DREAM's soft yaw gate ``sigmoid(10 * (|yaw| / 45 - 1))``.

    0 deg -> 4.54e-5, 45 deg -> 0.5, 60 deg -> 0.965, 90 deg -> 0.99995.

    Args:
      yaw_degrees: any shape, yaw in degrees (sign ignored).

    Returns:
      Same shape, values in (0, 1).
    """
    yaw = jnp.asarray(yaw_degrees)
    if not jnp.issubdtype(yaw.dtype, jnp.floating):
        yaw = yaw.astype(jnp.float32)
    return jax.nn.sigmoid(10.0 * (jnp.abs(yaw) / 45.0 - 1.0))


def gate_values(yaw_degrees: jax.Array, gate: str = "yaw") -> jax.Array:
    """The factor on ``R(phi)`` for each image: `yaw_gate` (``"yaw"``), 1 (``"none"``)
    or 0 (``"off"``); same shape as ``yaw_degrees``."""
    if gate not in GATES:
        raise ValueError(f"DREAM gate: unknown {gate!r} (expected one of {GATES})")
    y = yaw_gate(yaw_degrees)
    if gate == "none":
        return jnp.ones_like(y)
    if gate == "off":
        return jnp.zeros_like(y)
    return y


class DreamBlock(nn.Module):
    """``f = phi + Y(yaw) * R(phi)`` with ``R`` = Dense -> ReLU -> Dense -> ReLU.

    Attributes:
      features: width of R's layers; None = the input feature size (the paper's
        setting: R maps the 256-d feature to 256-d). Must equal the input size,
        since R(phi) is added to phi.
      gate: one of `GATES` (see `gate_values`).
      dtype: computation dtype.

    Call: ``(phi [B, D], yaw_degrees [B]) -> f [B, D]``; the gate is one scalar
    per image broadcast over the feature.
    """

    features: int | None = None
    gate: str = "yaw"
    dtype: Any = None

    @nn.compact
    def __call__(self, phi: jax.Array, yaw_degrees: jax.Array) -> jax.Array:
        d = phi.shape[-1]
        features = d if self.features is None else self.features
        if features != d:
            raise ValueError(
                f"DreamBlock.features={features} must equal the feature size {d} (residual sum)"
            )
        yaw_degrees = jnp.asarray(yaw_degrees)
        if yaw_degrees.shape != phi.shape[:-1]:
            raise ValueError(
                f"DreamBlock: yaw shape {yaw_degrees.shape} must be phi's leading shape {phi.shape[:-1]}"
            )
        r = nn.relu(nn.Dense(features, dtype=self.dtype, name="fc1")(phi))
        r = nn.relu(nn.Dense(features, dtype=self.dtype, name="fc2")(r))
        return phi + gate_values(yaw_degrees, self.gate)[..., None].astype(r.dtype) * r


class FaceEmbedder(nn.Module):
    """``phi``: ResNet backbone -> global average pool -> Dense(embed_dim), then optionally DREAM.

    Attributes:
      backbone: a `ResNet` module (e.g. ``ResNet18(stem="small")``); default ResNet-18.
      embed_dim: embedding size (256 in the paper).
      use_dream: add the `DreamBlock` (False = the "naive" baseline).
      dream_gate: the block's gate, one of `GATES`.

    Call: ``(images [B, H, W, 3], yaw_degrees [B] or None, train=False)`` returns a dict
    with ``phi`` ``[B, embed_dim]`` (the stem's feature), ``embedding`` ``[B, embed_dim]``
    (``f``; equals ``phi`` without the block) and ``gate`` ``[B]`` (zeros without the block).
    """

    backbone: nn.Module | None = None
    embed_dim: int = 256
    use_dream: bool = True
    dream_gate: str = "yaw"
    dtype: Any = None

    def setup(self):
        self.stem = self.backbone if self.backbone is not None else ResNet(dtype=self.dtype)
        self.embed = nn.Dense(self.embed_dim, dtype=self.dtype)
        if self.use_dream:
            self.dream = DreamBlock(gate=self.dream_gate, dtype=self.dtype)

    def __call__(
        self, images: jax.Array, yaw_degrees: jax.Array | None = None, train: bool = False
    ):
        phi = self.embed(self.stem(images, train=train)["pooled"])
        return self.head(phi, yaw_degrees)

    def head(self, phi: jax.Array, yaw_degrees: jax.Array | None):
        """The part after ``phi``: use with ``method=FaceEmbedder.head`` for stitching on cached features."""
        if not self.use_dream:
            return {"phi": phi, "embedding": phi, "gate": jnp.zeros(phi.shape[:-1], phi.dtype)}
        if yaw_degrees is None:
            raise ValueError("FaceEmbedder(use_dream=True) needs yaw_degrees [B]")
        return {
            "phi": phi,
            "embedding": self.dream(phi, yaw_degrees),
            "gate": gate_values(yaw_degrees, self.dream_gate),
        }
