"""Losses for imbalanced face attributes: LMLE's triple-header hinge and its baselines.

LMLE (Huang, Li, Loy, Tang; CVPR 2016) learns an embedding on the unit hypersphere in
which, for an anchor ``a`` and its quintuplet (``p+``, ``p-``, ``p--``, ``n``; see
`jaxface.ops.quintuplet`), the squared Euclidean distances are ordered

        D(a, p+) < D(a, p-) < D(a, p--) < D(a, n).

`triple_header_hinge` enforces each of the three orderings with its own margin. The two
baselines a user compares it with are a plain triplet margin loss (`triplet_margin`) and a
multi-label sigmoid cross-entropy with optional per-attribute class weights
(`sigmoid_binary_cross_entropy`, `balanced_class_weights`).

All functions follow `optax.losses`: arrays first, keyword-only settings, per-example
output (the caller reduces), a ``where`` mask that zeroes masked examples (the value *and*
the gradient), shapes in the docstring, no project imports.

Weight decay (the ``λ‖W‖²`` term of the paper) belongs to the optimiser
(``optax.add_decayed_weights``), not to these per-example losses.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from jaxface.losses._common import apply_where

__all__ = [
    "DEFAULT_LMLE_MARGINS",
    "DEFAULT_TRIPLET_MARGIN",
    "balanced_class_weights",
    "sigmoid_binary_cross_entropy",
    "triple_header_hinge",
    "triplet_margin",
]

# The paper does not publish its margins. Embeddings are L2-normalised, so a squared
# Euclidean distance lies in [0, 4] (D = 2 - 2 cos). We take the class header g3 = 0.2,
# the FaceNet triplet margin on the same unit-sphere squared distance, so that LMLE's
# class boundary and the `triplet_margin` baseline ask for the same separation; the two
# intra-class headers only order clusters *within* a class, so they get a quarter of it
# (0.05 each). Nested, the ordering then asks D(a, n) >= D(a, p+) + 0.3, which is
# satisfiable on the sphere with room to spare (0.3 << 4) while the intra-class
# structure that LMLE wants to preserve is not squeezed out by large inner margins.
DEFAULT_LMLE_MARGINS = (0.05, 0.05, 0.2)
DEFAULT_TRIPLET_MARGIN = 0.2


def _sq_dist(x: jax.Array, y: jax.Array) -> jax.Array:
    """Squared Euclidean distance over the last axis: [..., D] x [..., D] -> [...]."""
    d = x - y
    return jnp.sum(d * d, axis=-1)


def triple_header_hinge(
    anchor: jax.Array,
    pos_cluster: jax.Array,
    neg_cluster: jax.Array,
    pos_far: jax.Array,
    neg_class: jax.Array,
    *,
    margins: Sequence[float] = DEFAULT_LMLE_MARGINS,
    where: Optional[jax.Array] = None,
) -> jax.Array:
    r"""LMLE triple-header hinge loss, one value per anchor.

    With ``D`` the squared Euclidean distance and ``(g1, g2, g3) = margins``:

    .. math::
        \ell = [g_1 + D(a,p^+) - D(a,p^-)]_+ + [g_2 + D(a,p^-) - D(a,p^{--})]_+
                  + [g_3 + D(a,p^{--}) - D(a,n)]_+

    The loss is zero exactly when every ordering holds by its margin, and each header grows
    linearly as its ordering breaks. Embeddings are expected on the unit sphere (the caller
    normalises); the loss itself works for any embedding.

    Args:
        anchor: ``[..., D]`` anchor embeddings ``a``.
        pos_cluster: ``[..., D]`` ``p+``: the most distant point of the anchor's own cluster.
        neg_cluster: ``[..., D]`` ``p-``: the nearest same-class point of another cluster.
        pos_far: ``[..., D]`` ``p--``: the most distant same-class point.
        neg_class: ``[..., D]`` ``n``: the nearest point of another class.
        margins: ``(g1, g2, g3)``, non-negative. Default `DEFAULT_LMLE_MARGINS` =
            (0.05, 0.05, 0.2); the paper does not publish its margins, see the module source
            for the reasoning.
        where: optional boolean mask, either ``[...]`` (whole example) or ``[..., 3]`` (one
            flag per header, e.g. `jaxface.ops.quintuplet.header_mask` of the mining
            validity, so an anchor whose class has a single cluster in the batch still
            trains its class header). Masked headers contribute 0 value and 0 gradient.

    Returns:
        ``[...]`` per-anchor loss (sum of the unmasked headers).
    """
    if len(margins) != 3:
        raise ValueError(f"`margins` must hold 3 values (g1, g2, g3), got {margins!r}")
    shape = anchor.shape
    for name, x in (
        ("pos_cluster", pos_cluster),
        ("neg_cluster", neg_cluster),
        ("pos_far", pos_far),
        ("neg_class", neg_class),
    ):
        if x.shape != shape:
            raise ValueError(f"`{name}` has shape {x.shape}, expected the anchor's {shape}")
    d_pc = _sq_dist(anchor, pos_cluster)
    d_nc = _sq_dist(anchor, neg_cluster)
    d_pf = _sq_dist(anchor, pos_far)
    d_n = _sq_dist(anchor, neg_class)
    g = jnp.asarray(margins, dtype=d_pc.dtype)
    headers = jnp.stack([g[0] + d_pc - d_nc, g[1] + d_nc - d_pf, g[2] + d_pf - d_n], axis=-1)
    headers = jax.nn.relu(headers)  # [..., 3]
    if where is not None:
        where = jnp.asarray(where)
        if where.ndim == headers.ndim:
            # one flag per header ([..., 3]) ...
            if where.shape[-1] != 3:
                raise ValueError(
                    f"`where` of rank {where.ndim} must end in 3 (one flag per header), "
                    f"got shape {where.shape}"
                )
        else:
            # ... or one per example ([...]).
            where = where[..., None]
        headers = apply_where(headers, where, bool_only=True)
    return jnp.sum(headers, axis=-1)


def triplet_margin(
    anchor: jax.Array,
    positive: jax.Array,
    negative: jax.Array,
    *,
    margin: float = DEFAULT_TRIPLET_MARGIN,
    where: Optional[jax.Array] = None,
) -> jax.Array:
    r"""Triplet margin loss on squared Euclidean distances (the FaceNet form).

    .. math:: \ell = [\,\text{margin} + D(a,p) - D(a,n)\,]_+

    Args:
        anchor: ``[..., D]``.
        positive: ``[..., D]`` a same-class point.
        negative: ``[..., D]`` an other-class point.
        margin: default 0.2 (FaceNet's, for unit-sphere embeddings).
        where: optional boolean ``[...]``; masked examples give 0 (value and gradient).

    Returns:
        ``[...]`` per-example loss.
    """
    if positive.shape != anchor.shape or negative.shape != anchor.shape:
        raise ValueError(
            f"shapes differ: anchor {anchor.shape}, positive {positive.shape}, "
            f"negative {negative.shape}"
        )
    loss = jax.nn.relu(margin + _sq_dist(anchor, positive) - _sq_dist(anchor, negative))
    return apply_where(loss, where, bool_only=True)


def sigmoid_binary_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    *,
    class_weights: Optional[jax.Array] = None,
    where: Optional[jax.Array] = None,
) -> jax.Array:
    r"""Multi-label sigmoid cross-entropy, averaged over attributes, one value per example.

    Per attribute ``j`` with label ``y_j`` in [0, 1] and logit ``x_j``:

    .. math::
        \ell_j = -\,w^{+}_j\, y_j \log\sigma(x_j) - w^{-}_j\,(1-y_j)\log(1-\sigma(x_j))

    and the example's loss is the **mean** over its unmasked attributes,
    ``sum_j m_j l_j / max(1, sum_j m_j)``, so its scale does not depend on how many
    attributes there are or how many are masked (missing labels). The weights scale the
    terms; they are not renormalised, so weights of 1 give the plain BCE.

    Args:
        logits: ``[..., A]`` one logit per attribute.
        labels: ``[..., A]`` targets in {0, 1} (soft targets in [0, 1] also work). Convert
            CelebA's {-1, 1} with ``labels > 0`` first.
        class_weights: optional ``[2, A]`` (or broadcastable, e.g. ``[2, 1]``): row 0
            weights negative labels (``w-``), row 1 positive labels (``w+``). See
            `balanced_class_weights` for the usual inverse-frequency choice.
        where: optional boolean ``[...]`` (whole example) or ``[..., A]`` (per attribute).

    Returns:
        ``[...]`` per-example loss.
    """
    if logits.shape != labels.shape:
        raise ValueError(f"logits {logits.shape} and labels {labels.shape} differ in shape")
    labels = labels.astype(logits.dtype)
    pos_term = -labels * jax.nn.log_sigmoid(logits)
    neg_term = -(1.0 - labels) * jax.nn.log_sigmoid(-logits)
    if class_weights is not None:
        w = jnp.asarray(class_weights, dtype=logits.dtype)
        if w.ndim < 1 or w.shape[0] != 2:
            raise ValueError(
                f"`class_weights` must have shape [2, A] (row 0: negatives, row 1: positives), "
                f"got {w.shape}"
            )
        neg_term = neg_term * w[0]
        pos_term = pos_term * w[1]
    per_attr = pos_term + neg_term  # [..., A]
    if where is None:
        return jnp.mean(per_attr, axis=-1)
    where = jnp.asarray(where)
    if where.dtype != jnp.bool_:
        raise TypeError(f"`where` must be a boolean mask, got dtype {where.dtype}")
    if where.ndim == per_attr.ndim - 1:
        where = where[..., None]
    where = jnp.broadcast_to(where, per_attr.shape)
    total = jnp.sum(jnp.where(where, per_attr, 0.0), axis=-1)
    count = jnp.sum(where, axis=-1)
    return total / jnp.maximum(count, 1).astype(per_attr.dtype)


def balanced_class_weights(positive_rate: jax.Array, *, eps: float = 1e-6) -> jax.Array:
    r"""Inverse-frequency class weights for `sigmoid_binary_cross_entropy`.

    ``w+ = 1 / (2 p)``, ``w- = 1 / (2 (1 - p))`` with ``p`` the positive rate of each
    attribute (clipped to ``[eps, 1 - eps]``). Under these weights both classes carry the
    same total weight, so the expected loss tracks balanced accuracy, and a balanced
    attribute (p = 0.5) gets weights 1.

    Args:
        positive_rate: ``[A]`` fraction of positive labels per attribute (training set).

    Returns:
        ``[2, A]``: row 0 negatives, row 1 positives.
    """
    p = jnp.clip(jnp.asarray(positive_rate, dtype=jnp.float32), eps, 1.0 - eps)
    return jnp.stack([0.5 / (1.0 - p), 0.5 / p], axis=0)
