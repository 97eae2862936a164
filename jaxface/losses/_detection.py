"""Detection losses: smooth-L1 box / landmark regression and sigmoid objectness.

Element-wise, pure and jit-able: arrays first, keyword-only settings, the same shape
out as in (the caller sums over coordinates and reduces over anchors / RoIs). A
`where` mask zeroes masked-out elements, as `optax.losses` does.

References
- Fast R-CNN (Girshick, ICCV 2015, eq. 3): smooth-L1 with ``beta = 1`` for box deltas.
- Faster R-CNN (Ren et al., NIPS 2015): ``beta = 1/9`` for the RPN's deltas (its released
  code's ``sigma = 3``, ``beta = 1 / sigma^2``); ScaleFace (docs/methods.md) trains an RPN
  and a Fast R-CNN head per branch with these terms.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxface.losses._common import apply_where

__all__ = ["smooth_l1", "sigmoid_bce"]


def smooth_l1(x: jax.Array, *, beta: float = 1.0, where: jax.Array | None = None) -> jax.Array:
    """Smooth-L1 of a regression error, element-wise.

    ``0.5 x^2 / beta`` where ``|x| < beta``, else ``|x| - 0.5 beta``: the Huber loss
    divided by its threshold, ``optax.huber_loss(x, delta=beta) / beta``. That form is
    not used: for ``beta = 1`` its value is the same to the last bit but its gradient
    is rounded differently, and for other ``beta`` the division rounds the linear part
    differently; the closed form keeps jaxface's trained numbers reproducible.

    Args:
      x: ``[...]`` errors (prediction - target), e.g. ``[B, N, 4]`` box deltas.
      beta: the threshold between the quadratic and the linear part (> 0).
      where: optional bool mask broadcastable to ``x``.

    Returns:
      ``[...]`` the loss per element, shaped as ``x``.
    """
    ax = jnp.abs(x)
    loss = jnp.where(ax < beta, 0.5 * ax * ax / beta, ax - 0.5 * beta)
    return apply_where(loss, where)


def sigmoid_bce(
    logits: jax.Array, labels: jax.Array, *, where: jax.Array | None = None
) -> jax.Array:
    """Sigmoid cross-entropy of one logit per element (objectness, face vs background).

    ``-y log sigmoid(x) - (1 - y) log(1 - sigmoid(x))``, computed as the stable
    ``max(x, 0) - x y + log1p(exp(-|x|))``; equal to
    `optax.sigmoid_binary_cross_entropy` for labels in {0, 1} to the last bit of the
    value, but not of the gradient (optax differentiates ``log_sigmoid``), so this form
    runs to keep jaxface's trained numbers reproducible.

    Args:
      logits: ``[...]`` one logit per element.
      labels: ``[...]`` targets in {0, 1} (float).
      where: optional bool mask broadcastable to ``logits``.

    Returns:
      ``[...]`` the loss per element.
    """
    loss = jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    return apply_where(loss, where)
