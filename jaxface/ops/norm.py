"""``l2_normalize``: rows scaled to unit L2 norm (the norm floored at ``eps``)."""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["l2_normalize"]


def l2_normalize(x, axis: int = -1, eps: float = 1e-12):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), eps)
