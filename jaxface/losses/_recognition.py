"""Face-recognition losses: identity softmax, DeepID2 verification, margin heads, DREAM.

All functions are pure and jit-able, take arrays first and keyword-only
settings, and return per-example values (the caller reduces). A `where` mask
(`[B]` bool) zeroes the loss of masked-out examples, as `optax.losses` does.

References
- DeepID2: Sun, Chen, Wang, Tang, "Deep Learning Face Representation by Joint
  Identification-Verification", NIPS 2014 (eq. 1-3).
- CosFace: Wang et al., CVPR 2018 (large margin cosine loss).
- ArcFace: Deng et al., CVPR 2019; the easy-margin / threshold handling follows
  insightface's ``recognition/arcface_torch/losses.py`` (class ``ArcFace``).
- DREAM: Cao et al., CVPR 2018 (stitching objective).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxface.losses._common import apply_where

__all__ = [
    "softmax_identity_cross_entropy",
    "contrastive_verification",
    "deepid2_joint_loss",
    "deepid2_batch_verification",
    "cosface_logits",
    "arcface_logits",
    "dream_stitching_mse",
]


def _safe_norm(x: jax.Array, axis: int = -1) -> jax.Array:
    """Euclidean norm whose gradient at 0 is 0 (not NaN).

    `sqrt` has an infinite derivative at 0 and `x / ||x||` is 0/0 there; the
    double-`where` trick keeps both the value (0) and the gradient (the zero
    subgradient) finite.
    """
    sq = jnp.sum(jnp.square(x), axis=axis)
    positive = sq > 0
    safe_sq = jnp.where(positive, sq, jnp.ones_like(sq))
    return jnp.where(positive, jnp.sqrt(safe_sq), jnp.zeros_like(sq))


# Not `jaxface.ops.norm.l2_normalize` (x / max(|x|, eps)): the rsqrt form rounds
# differently (about a quarter of float32 entries differ by one ulp, under jit too), and
# the trained recognition numbers depend on this form.
def _l2_normalize(x: jax.Array, axis: int, eps: float = 1e-12) -> jax.Array:
    sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


def softmax_identity_cross_entropy(
    logits: jax.Array, labels: jax.Array, *, where: jax.Array | None = None
) -> jax.Array:
    """Softmax cross-entropy over identities (DeepID2's ``Ident``, DREAM's end-to-end loss).

    ``loss_b = logsumexp(logits_b) - logits_b[labels_b]``.

    Args:
      logits: ``[B, C]`` unnormalised class scores (e.g. from `cosface_logits`).
      labels: ``[B]`` integer identity indices in ``[0, C)``. They are not checked
        inside jit: a label >= C gives NaN and a negative one indexes from the end
        (NumPy semantics); validate labels in the data pipeline, or mask such
        examples with ``where``.
      where: optional ``[B]`` bool; masked-out examples get loss 0.

    Returns:
      ``[B]`` per-example loss.
    """
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"expected logits [B, C] and labels [B]; got {logits.shape} and {labels.shape}"
        )
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target = jnp.take_along_axis(logits, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    return apply_where(log_z - target, where, same_shape=True)


def contrastive_verification(
    f1: jax.Array,
    f2: jax.Array,
    same: jax.Array,
    *,
    margin: float | jax.Array,
    where: jax.Array | None = None,
) -> jax.Array:
    """DeepID2 verification (contrastive) loss, per pair.

    ``d = ||f1 - f2||_2``;
    same identity: ``1/2 d^2``; different identities: ``1/2 max(0, m - d)^2``.

    The gradient of ``d`` is undefined at ``f1 == f2``; we use the zero
    subgradient there (see `_safe_norm`), so identical features of a different
    pair give a finite gradient (0 w.r.t. the features, ``m`` w.r.t. the margin)
    instead of NaN. The same-pair term uses ``d^2`` directly and is smooth.

    Args:
      f1, f2: ``[B, D]`` features of the two images of each pair.
      same: ``[B]`` bool (or 0/1), True when the pair shares an identity.
      margin: scalar ``m`` (a Python float, or a traced array so that a learned
        margin receives its gradient ``max(0, m - d)`` from each different pair).
      where: optional ``[B]`` bool mask.

    Returns:
      ``[B]`` per-pair loss.
    """
    f1 = jnp.asarray(f1)
    f2 = jnp.asarray(f2)
    if f1.shape != f2.shape or f1.ndim != 2:
        raise ValueError(f"expected f1, f2 of equal shape [B, D]; got {f1.shape} and {f2.shape}")
    same = jnp.asarray(same).astype(bool)
    if same.shape != f1.shape[:1]:
        raise ValueError(f"same: expected shape {f1.shape[:1]}, got {same.shape}")
    diff = f1 - f2
    d2 = jnp.sum(jnp.square(diff), axis=-1)
    d = _safe_norm(diff)
    hinge = jnp.maximum(jnp.asarray(margin, d.dtype) - d, 0.0)
    loss = jnp.where(same, 0.5 * d2, 0.5 * jnp.square(hinge))
    return apply_where(loss, where, same_shape=True)


def deepid2_joint_loss(
    logits1: jax.Array,
    logits2: jax.Array,
    labels1: jax.Array,
    labels2: jax.Array,
    f1: jax.Array,
    f2: jax.Array,
    *,
    margin: float | jax.Array,
    verification_weight: float = 0.05,
    where: jax.Array | None = None,
) -> jax.Array:
    """DeepID2 joint identification-verification objective, per pair of images.

    ``Ident(x1) + Ident(x2) + lambda * Verif(f1, f2, y1 == y2; m)``, with lambda = 0.05
    in the paper. Pass ``margin`` as a trainable parameter (a traced scalar) to
    learn it: its gradient is ``lambda * dVerif/dm``, as the paper prescribes.
    (Left alone, that gradient only ever shrinks m; the paper does not publish
    a clamp -- clamp it in the optimiser if needed.)

    Args:
      logits1, logits2: ``[B, C]`` identity logits of the two images of each pair.
      labels1, labels2: ``[B]`` integer identities; ``same = labels1 == labels2``.
      f1, f2: ``[B, D]`` the DeepID2 features used by the verification term.
      margin: scalar ``m``.
      verification_weight: lambda.
      where: optional ``[B]`` bool mask over pairs.

    Returns:
      ``[B]`` per-pair loss.
    """
    ident = softmax_identity_cross_entropy(logits1, labels1) + softmax_identity_cross_entropy(
        logits2, labels2
    )
    same = jnp.asarray(labels1) == jnp.asarray(labels2)
    verif = contrastive_verification(f1, f2, same, margin=margin)
    return apply_where(ident + verification_weight * verif, where, same_shape=True)


def deepid2_batch_verification(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    margin: float | jax.Array,
    normalize: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """DeepID2's verification term over every pair of a batch, same and different
    pairs weighted equally.

    All ``B (B - 1) / 2`` pairs ``i < j`` of the batch go through
    `contrastive_verification`; the loss is the mean of the mean over same-identity
    pairs and the mean over different-identity pairs (an empty group counts 0), so the
    rare same pairs of a large batch are not drowned out.

    Args:
      embeddings: ``[B, D]`` features (cast to float32).
      labels: ``[B]`` integer identities.
      margin: scalar ``m`` (a float, or a traced array for a learned margin).
      normalize: L2-normalise the features first (DeepID2 used raw features; on the
        unit sphere the margin lives in [0, 2]).

    Returns:
      ``(loss, n_same)``: the scalar loss and the number of same-identity pairs.
    """
    emb = jnp.asarray(embeddings).astype(jnp.float32)
    if normalize:
        emb = emb * jax.lax.rsqrt(jnp.maximum(jnp.sum(emb * emb, -1, keepdims=True), 1e-12))
    labels = jnp.asarray(labels)
    b = emb.shape[0]
    ii, jj = np.triu_indices(b, 1)
    same = labels[ii] == labels[jj]
    per = contrastive_verification(emb[ii], emb[jj], same, margin=margin)
    n_same = jnp.sum(same)
    n_diff = same.size - n_same
    v = 0.5 * (
        jnp.sum(jnp.where(same, per, 0.0)) / jnp.maximum(n_same, 1)
        + jnp.sum(jnp.where(same, 0.0, per)) / jnp.maximum(n_diff, 1)
    )
    return v, n_same


def _cosine(embeddings: jax.Array, weights: jax.Array, normalize: bool) -> jax.Array:
    embeddings = jnp.asarray(embeddings)
    weights = jnp.asarray(weights)
    if embeddings.ndim != 2 or weights.ndim != 2 or embeddings.shape[1] != weights.shape[0]:
        raise ValueError(
            f"expected embeddings [B, D] and weights [D, C]; got {embeddings.shape} and {weights.shape}"
        )
    if normalize:
        embeddings = _l2_normalize(embeddings, axis=1)
        weights = _l2_normalize(weights, axis=0)
    return jnp.clip(embeddings @ weights, -1.0, 1.0)


def _target_mask(labels: jax.Array, num_classes: int) -> jax.Array:
    labels = jnp.asarray(labels).astype(jnp.int32)
    # Labels < 0 (insightface's convention for samples whose class is not on this
    # shard / is ignored) get no margin: one_hot of -1 is all zeros.
    return jax.nn.one_hot(labels, num_classes, dtype=bool)


def cosface_logits(
    embeddings: jax.Array,
    weights: jax.Array,
    labels: jax.Array,
    *,
    scale: float = 64.0,
    margin: float = 0.35,
    normalize: bool = True,
) -> jax.Array:
    """CosFace (large margin cosine) logits: ``s * (cos(theta_j) - m * [j == y])``.

    Args:
      embeddings: ``[B, D]`` features; L2-normalised here when ``normalize``.
      weights: ``[D, C]`` class centres (flax ``Dense`` kernel layout); normalised
        per class (column) when ``normalize``.
      labels: ``[B]`` integer identities; a negative label gets no margin.
      scale: ``s`` (64 in insightface).
      margin: ``m`` (0.35 in the paper, 0.4 in insightface's configs).
      normalize: set False when the inputs are already unit-norm.

    Returns:
      ``[B, C]`` logits; feed them to `softmax_identity_cross_entropy`.
    """
    cos = _cosine(embeddings, weights, normalize)
    target = _target_mask(labels, cos.shape[1])
    return scale * jnp.where(target, cos - margin, cos)


def arcface_logits(
    embeddings: jax.Array,
    weights: jax.Array,
    labels: jax.Array,
    *,
    scale: float = 64.0,
    margin: float = 0.5,
    easy_margin: bool = False,
    normalize: bool = True,
) -> jax.Array:
    """ArcFace (additive angular margin) logits: ``s * cos(theta_y + m)`` for the target.

    ``cos(theta + m) = cos(theta) cos(m) - sin(theta) sin(m)`` with
    ``sin(theta) = sqrt(1 - cos^2)``. ``theta + m`` exceeding pi would make the
    target logit non-monotonic in theta, so, as insightface does:

    - ``easy_margin=False`` (insightface's default): where ``cos(theta) > cos(pi - m)``
      use ``cos(theta + m)``, otherwise the linear fallback
      ``cos(theta) - sin(pi - m) * m`` (CosFace-like, continuous at the switch).
    - ``easy_margin=True``: apply the margin only where ``cos(theta) > 0``,
      otherwise keep ``cos(theta)``.

    The ``sqrt`` uses a safe form so that ``cos = +-1`` yields a finite gradient.

    Args:
      embeddings: ``[B, D]``; weights: ``[D, C]``; labels: ``[B]`` (negative = no margin).
      scale: ``s`` (64). margin: ``m`` in radians (0.5).
      easy_margin: see above. normalize: L2-normalise the inputs first.

    Returns:
      ``[B, C]`` logits.
    """
    cos = _cosine(embeddings, weights, normalize)
    target = _target_mask(labels, cos.shape[1])
    return scale * jnp.where(target, arcface_target(cos, margin, easy_margin), cos)


def arcface_target(cos: jax.Array, margin: float, easy_margin: bool = False) -> jax.Array:
    """``cos(theta + m)`` of target cosines with insightface's fallbacks (see
    `arcface_logits`); shared by the dense and the sharded classifier."""
    sin_sq = 1.0 - jnp.square(cos)
    positive = sin_sq > 0
    sin = jnp.where(positive, jnp.sqrt(jnp.where(positive, sin_sq, 1.0)), 0.0)
    cos_m = cos * math.cos(margin) - sin * math.sin(margin)
    if easy_margin:
        return jnp.where(cos > 0, cos_m, cos)
    threshold = math.cos(math.pi - margin)
    return jnp.where(cos > threshold, cos_m, cos - math.sin(math.pi - margin) * margin)


def dream_stitching_mse(
    pred: jax.Array, target: jax.Array, *, where: jax.Array | None = None
) -> jax.Array:
    """DREAM stitching loss: mean squared error between a profile feature passed
    through the block and its identity's mean frontal feature.

    ``loss_b = mean_d (pred_bd - target_bd)^2`` (the mean over the feature
    dimension; the paper says "MSE" without the normalisation constant -- this
    choice only rescales the learning rate).

    Args:
      pred: ``[B, D]`` ``phi(x_profile) + Y(theta) R(phi(x_profile))``.
      target: ``[B, D]`` mean frontal feature of the same identity (treat it as a
        constant: wrap in ``jax.lax.stop_gradient`` if computed in the graph).
      where: optional ``[B]`` bool mask.

    Returns:
      ``[B]`` per-example loss.
    """
    pred = jnp.asarray(pred)
    target = jnp.asarray(target)
    if pred.shape != target.shape or pred.ndim != 2:
        raise ValueError(
            f"expected pred, target of equal shape [B, D]; got {pred.shape} and {target.shape}"
        )
    return apply_where(jnp.mean(jnp.square(pred - target), axis=-1), where, same_shape=True)
