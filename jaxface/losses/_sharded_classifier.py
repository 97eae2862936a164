"""An identity classifier whose class-centre matrix is sharded across devices.

A face-recognition training set can hold 10^7-10^8 identities; the ``[C, D]``
class-centre matrix (and its ``[B, C]`` logits) then fits on no single device.
Here the matrix is split by rows (classes) over one or more mesh axes -- the
``model`` axis by default, or every device -- and the softmax / CosFace / ArcFace
cross-entropy is computed inside `jax.shard_map` with collectives, never
materialising the full logits:

1. each device computes the logits of its local batch slice against its
   ``C / n`` class centres (``[b, C/n]``);
2. the margin is applied to the target logit on the shard that owns the label;
3. ``m = pmax(max_j logits)`` (a constant shift, no gradient),
   ``Z = psum(sum_j exp(logits - m))``, ``t = psum(target logit, owner only)``;
4. ``loss = log Z + m - t`` -- the same value as the unsharded
   ``logsumexp(logits) - logits[y]``.

Gradients come from JAX's autodiff through `shard_map`: ``psum`` transposes to a
broadcast, and the embedding gradient, replicated over the class axes, is summed
over them at the `shard_map` boundary. The weight gradient of each shard stays on
its shard.

**Partial FC** (An et al., "Partial FC: Training 10 Million Identities on a
Single Machine", ICCVW 2021; insightface ``arcface_torch/partial_fc_v2.py``):
with ``sample_rate < 1`` the classes are cut into ``groups`` equal runs of
consecutive ids (one per shard by default; a multiple of the shard count), and each
group keeps a fixed number ``S`` of its ``C/G`` centres -- every positive class of the
global batch that lives in the group, then random negatives -- and the softmax runs
over the sampled centres only.
``S = min(C/G, max(ceil(sample_rate * C/G), B_global))``: since a group can hold
at most ``min(B_global, C/G)`` distinct positives, every positive is always
kept (insightface's fixed ``S`` can drop positives when the batch is large; this
cannot). Shapes are static, the sample is a pure function of ``rng`` (group ``g``
uses ``fold_in(rng, g)``, so with a fixed ``groups`` the sample is the same on 1, 2,
4 or 8 shards), and unsampled centres receive a zero gradient (with a momentum or
Adam optimiser they still drift by their optimiser state, as in insightface; use a
per-step mask on the update if that matters).

Layout: ``weights`` is ``[C, D]`` (one row per class, the Partial-FC layout;
note `cosface_logits` takes the transposed flax-``Dense`` ``[D, C]`` kernel).
``C`` must divide by the number of class shards; build it with
`padded_num_classes` and pass the true count as ``num_classes`` so that padding
rows are excluded from the softmax. `init_class_centres` creates the matrix
directly in its sharded layout (never whole on one device).

Use in a train step (the mesh is the trainer's ``("data", "model")`` mesh; give the
centres the `class_centres_sharding` in the state sharding, everything else as usual)::

    centres = init_class_centres(key, num_ids, 512, mesh=mesh)          # [C_pad, 512]
    def loss_fn(params, images, labels, rng):
      emb = backbone.apply(params["backbone"], images)                  # [B, 512]
      per_example = sharded_classifier_loss(
          emb, params["centres"], labels, mesh=mesh, kind="arcface",
          num_classes=num_ids, sample_rate=0.1, rng=rng)                # [B]
      return per_example.mean()
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxface.losses._recognition import _l2_normalize, arcface_target

__all__ = [
    "sharded_classifier_loss",
    "partial_fc_sample",
    "init_class_centres",
    "class_centres_sharding",
    "padded_num_classes",
    "partial_fc_num_sampled",
]

_KINDS = ("softmax", "cosface", "arcface")
_DEFAULT_MARGIN = {"softmax": 0.0, "cosface": 0.35, "arcface": 0.5}

AxisNames = str | Sequence[str] | None


def _axes(axes: AxisNames) -> tuple[str, ...]:
    if axes is None:
        return ()
    if isinstance(axes, str):
        return (axes,)
    return tuple(axes)


def _num_shards(mesh: Mesh, class_axes: AxisNames) -> int:
    axes = _axes(class_axes)
    for a in axes:
        if a not in mesh.shape:
            raise ValueError(f"class_axes: mesh has axes {tuple(mesh.shape)}, got {a!r}")
    return math.prod(mesh.shape[a] for a in axes)


def _spec_axes(axes: tuple[str, ...]):
    if not axes:
        return None
    return axes[0] if len(axes) == 1 else axes


def padded_num_classes(num_classes: int, mesh: Mesh, class_axes: AxisNames = "model") -> int:
    """``num_classes`` rounded up to a multiple of the number of class shards."""
    n = _num_shards(mesh, class_axes)
    return -(-num_classes // n) * n


def class_centres_sharding(mesh: Mesh, class_axes: AxisNames = "model") -> NamedSharding:
    """The `NamedSharding` of a ``[C, D]`` centre matrix: rows over ``class_axes``."""
    _num_shards(mesh, class_axes)
    return NamedSharding(mesh, P(_spec_axes(_axes(class_axes)), None))


def init_class_centres(
    rng: jax.Array,
    num_classes: int,
    dim: int,
    *,
    mesh: Mesh,
    class_axes: AxisNames = "model",
    stddev: float = 0.01,
    dtype=jnp.float32,
) -> jax.Array:
    """Normal(0, stddev) ``[padded_num_classes(num_classes), dim]`` centres, created sharded.

    The initialiser runs under `jax.jit` with ``out_shardings``, so each device only
    ever holds its own rows. Put the result in the train state's params and give the
    trainer the matching sharding (`class_centres_sharding`).
    """
    c = padded_num_classes(num_classes, mesh, class_axes)
    sharding = class_centres_sharding(mesh, class_axes)
    init = jax.jit(lambda k: stddev * jax.random.normal(k, (c, dim), dtype), out_shardings=sharding)
    return init(rng)


def partial_fc_num_sampled(local_classes: int, global_batch: int, sample_rate: float) -> int:
    """``S``, the number of centres each shard keeps (static)."""
    if not 0.0 < sample_rate <= 1.0:
        raise ValueError(f"sample_rate: expected a value in (0, 1], got {sample_rate}")
    if sample_rate == 1.0:
        return local_classes
    return min(local_classes, max(math.ceil(sample_rate * local_classes), global_batch))


def _sample_shard(labels_all, key, offset, local_classes, num_sampled, num_classes):
    """Sorted local row indices ``[S]`` of one shard: its positives, then random negatives."""
    local = labels_all - offset
    inside = (local >= 0) & (local < local_classes)
    positive = (
        jnp.zeros((local_classes,), bool)
        .at[jnp.where(inside, local, local_classes)]
        .set(True, mode="drop")
    )
    score = jax.random.uniform(key, (local_classes,)) + 2.0 * positive
    # Padding rows (class id >= num_classes) are only taken when nothing else is left.
    score = jnp.where(offset + jnp.arange(local_classes) < num_classes, score, -1.0)
    _, idx = jax.lax.top_k(score, num_sampled)
    return jnp.sort(idx).astype(jnp.int32)


def _check(embeddings, weights, labels):
    if embeddings.ndim != 2 or weights.ndim != 2 or embeddings.shape[1] != weights.shape[1]:
        raise ValueError(
            f"expected embeddings [B, D] and weights [C, D]; got {embeddings.shape} and {weights.shape}"
        )
    if labels.shape != embeddings.shape[:1]:
        raise ValueError(f"labels: expected shape {embeddings.shape[:1]}, got {labels.shape}")


def _shard_geometry(mesh, weights, class_axes, batch_axes, num_classes):
    cax = _axes(class_axes)
    n = _num_shards(mesh, cax)
    c = weights.shape[0]
    if c % n:
        raise ValueError(
            f"weights: {c} classes do not divide over {n} shards of mesh axes {cax}; "
            f"pad with padded_num_classes() and pass num_classes="
        )
    num_classes = c if num_classes is None else int(num_classes)
    if not 0 < num_classes <= c:
        raise ValueError(f"num_classes: expected 1..{c} (rows of weights), got {num_classes}")
    bax = tuple(a for a in _axes(batch_axes) if a not in cax)
    for a in bax:
        if a not in mesh.shape:
            raise ValueError(f"batch_axes: mesh has axes {tuple(mesh.shape)}, got {a!r}")
    return cax, bax, n, c // n, num_classes


def _groups_per_shard(total_classes: int, n: int, groups: int | None) -> tuple[int, int]:
    """(groups per shard, classes per group); ``groups=None`` is one group per shard."""
    g = n if groups is None else int(groups)
    if g < 1 or g % n:
        raise ValueError(f"groups: expected a positive multiple of the {n} class shards, got {g}")
    if total_classes % g:
        raise ValueError(f"total_classes: {total_classes} does not divide into {g} groups")
    return g // n, total_classes // g


def _sample_local(y_all, key, shard, lc, gps, gl, s_g, num_classes):
    """Sorted local row indices ``[gps * s_g]`` of one shard: each of its ``gps`` groups
    (global group id ``shard * gps + g``) keeps its positives, then random negatives,
    drawn with ``fold_in(key, group id)`` -- so the sample does not depend on how many
    shards hold the groups."""
    offset = shard * lc

    def one(g):
        gid = shard * gps + g
        idx = _sample_shard(
            y_all, jax.random.fold_in(key, gid), offset + g * gl, gl, s_g, num_classes
        )
        return g * gl + idx

    return jax.vmap(one)(jnp.arange(gps)).reshape(-1)


def partial_fc_sample(
    labels: jax.Array,
    rng: jax.Array,
    *,
    mesh: Mesh,
    total_classes: int,
    sample_rate: float,
    class_axes: AxisNames = "model",
    num_classes: int | None = None,
    where: jax.Array | None = None,
    groups: int | None = None,
) -> jax.Array:
    """The global class ids Partial FC keeps for this batch and ``rng``.

    Exactly the sample `sharded_classifier_loss` uses with the same arguments.

    Args:
      labels: ``[B]`` global-batch integer labels (all of them are positives).
      rng: a PRNG key.
      total_classes: rows of the centre matrix (``C``, padded).
      sample_rate: fraction of each group's centres to keep (positives always kept).
      num_classes: the true class count (``<= C``); rows beyond it are padding.
      where: optional ``[B]`` mask; masked-out labels are not positives.
      groups: the classes are cut into this many equal groups of consecutive ids, each
        sampled with its own key (``fold_in(rng, group)``); a multiple of the number of
        shards. None = one group per shard. A fixed ``groups`` makes the sample the same
        for every number of shards that divides it.

    Returns:
      ``[G * S]`` int32 class ids, ascending, sharded over ``class_axes``
      (``G`` groups, ``S = partial_fc_num_sampled(C/G, B, sample_rate)`` each).
    """
    labels = jnp.asarray(labels).astype(jnp.int32)
    cax = _axes(class_axes)
    n = _num_shards(mesh, cax)
    if total_classes % n:
        raise ValueError(f"total_classes: {total_classes} does not divide over {n} shards")
    lc = total_classes // n
    gps, gl = _groups_per_shard(total_classes, n, groups)
    num_classes = total_classes if num_classes is None else int(num_classes)
    s_g = partial_fc_num_sampled(gl, labels.shape[0], sample_rate)
    if where is not None:
        labels = jnp.where(jnp.asarray(where, bool), labels, -1)

    def per_device(y_all, key):
        shard = jax.lax.axis_index(cax)
        return shard * lc + _sample_local(y_all, key, shard, lc, gps, gl, s_g, num_classes)

    f = jax.shard_map(
        per_device, mesh=mesh, in_specs=(P(), P()), out_specs=P(_spec_axes(cax)), check_vma=False
    )
    return f(labels, rng).astype(jnp.int32)


def sharded_classifier_loss(
    embeddings: jax.Array,
    weights: jax.Array,
    labels: jax.Array,
    *,
    mesh: Mesh,
    kind: str = "cosface",
    scale: float | None = None,
    margin: float | None = None,
    easy_margin: bool = False,
    normalize: bool | None = None,
    class_axes: AxisNames = "model",
    batch_axes: AxisNames = "data",
    num_classes: int | None = None,
    sample_rate: float = 1.0,
    rng: jax.Array | None = None,
    where: jax.Array | None = None,
    groups: int | None = None,
    bias: jax.Array | None = None,
    return_correct: bool = False,
):
    """Per-example softmax / CosFace / ArcFace cross-entropy against sharded class centres.

    ``kind="softmax"``: logits ``x W^T + b`` (unnormalised unless ``normalize=True``;
    ``scale`` defaults to 1, ``bias`` optional). ``"cosface"``: ``s (cos theta_j - m [j = y])``.
    ``"arcface"``: ``s cos(theta_y + m)`` for the target with insightface's fallback
    (``easy_margin`` as in `arcface_logits`), ``s cos theta_j`` otherwise. Equal in
    value and gradient to ``softmax_identity_cross_entropy(cosface_logits(x, W.T, y))``
    (resp. arcface / plain logits) computed on one device.

    Precision: normalisation, logits, margins, the log-sum-exp and the loss are fp32
    whatever the input dtype; the ``x W^T`` product runs in the inputs' dtype (bf16
    under bf16 compute) with fp32 accumulation.

    Args:
      embeddings: ``[B, D]`` features, batch sharded over ``batch_axes`` (the axes
        that are also class axes are gathered: with ``class_axes=("data", "model")``
        every device sees the whole batch, as in Partial FC).
      weights: ``[C, D]`` class centres, rows sharded over ``class_axes``;
        ``C`` divisible by the number of class shards.
      labels: ``[B]`` integers in ``[0, num_classes)`` (out-of-range labels have
        no owner shard and give a meaningless loss: mask them with ``where``).
      mesh: the device mesh; ``class_axes`` and ``batch_axes`` name its axes.
      kind: ``"softmax"``, ``"cosface"`` or ``"arcface"``.
      scale: ``s`` (64 for the margin kinds, 1 for softmax).
      margin: ``m`` (0.35 CosFace, 0.5 rad ArcFace; ignored by softmax).
      normalize: L2-normalise embeddings and centres (default: True for the margin
        kinds, False for softmax); margin kinds always clip cosines to [-1, 1].
      num_classes: the true class count when ``C`` is padded; rows ``>= num_classes``
        get ``-inf`` logits.
      sample_rate: Partial-FC fraction of centres per group, in ``(0, 1]``;
        1 is the exact full softmax.
      rng: PRNG key for the Partial-FC sample (required when ``sample_rate < 1``).
      where: optional ``[B]`` bool; masked-out examples get loss 0 and are not
        Partial-FC positives.
      groups: Partial-FC sampling groups (see `partial_fc_sample`); None = one per shard.
      bias: optional ``[C]`` per-class bias (softmax only), sharded like the rows.
      return_correct: also return ``[B]`` bool, whether the target logit is the
        largest (over the sampled classes under Partial FC): the training accuracy.

    Returns:
      ``[B]`` per-example loss (float32), sharded like ``embeddings`` over the batch
      axes; with ``return_correct``, ``(loss, correct)``.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind: expected one of {_KINDS}, got {kind!r}")
    embeddings = jnp.asarray(embeddings)
    weights = jnp.asarray(weights)
    labels = jnp.asarray(labels).astype(jnp.int32)
    _check(embeddings, weights, labels)
    cax, bax, n, lc, num_classes = _shard_geometry(
        mesh, weights, class_axes, batch_axes, num_classes
    )
    if bias is not None:
        if kind != "softmax":
            raise ValueError(f"bias: only the softmax kind has a class bias, got kind={kind!r}")
        bias = jnp.asarray(bias)
        if bias.shape != weights.shape[:1]:
            raise ValueError(f"bias: expected shape {weights.shape[:1]}, got {bias.shape}")
    if normalize is None:
        normalize = kind != "softmax"
    scale = (1.0 if kind == "softmax" else 64.0) if scale is None else float(scale)
    margin = _DEFAULT_MARGIN[kind] if margin is None else float(margin)
    sampled = sample_rate < 1.0
    gps, gl = _groups_per_shard(n * lc, n, groups)
    s_g = partial_fc_num_sampled(gl, labels.shape[0], sample_rate)
    s = gps * s_g
    if sampled and rng is None:
        raise ValueError("rng: required when sample_rate < 1 (Partial FC samples centres)")
    mask = None if where is None else jnp.asarray(where, bool)
    if mask is not None and mask.shape != labels.shape:
        raise ValueError(f"where: expected shape {labels.shape}, got {mask.shape}")
    positives = labels if mask is None else jnp.where(mask, labels, -1)
    if rng is None:
        rng = jax.random.key(0)  # unused: no sampling
    mm_dtype = jnp.result_type(embeddings.dtype, weights.dtype)
    f32 = jnp.float32

    def per_device(x, w, b, y, y_all, key):
        shard = jax.lax.axis_index(cax)
        offset = shard * lc
        local = y - offset
        if sampled:
            idx = _sample_local(y_all, key, shard, lc, gps, gl, s_g, num_classes)
            w = jnp.take(w, idx, axis=0)
            b = jnp.take(b, idx, axis=0)
            class_ids = offset + idx
            pos = jnp.clip(jnp.searchsorted(idx, local), 0, s - 1).astype(jnp.int32)
            owned = (local >= 0) & (local < lc) & (jnp.take(idx, pos) == local)
        else:
            class_ids = offset + jnp.arange(lc)
            owned = (local >= 0) & (local < lc)
            pos = jnp.clip(local, 0, lc - 1)
        if normalize:
            x = _l2_normalize(x.astype(f32), axis=1)
            w = _l2_normalize(w.astype(f32), axis=1)
        logits = jnp.dot(x.astype(mm_dtype), w.astype(mm_dtype).T, preferred_element_type=f32)
        if kind != "softmax":
            logits = jnp.clip(logits, -1.0, 1.0)
        t_raw = jnp.take_along_axis(logits, pos[:, None], axis=1)[:, 0]  # [b]
        if kind == "cosface":
            t_new = t_raw - margin
        elif kind == "arcface":
            t_new = arcface_target(t_raw, margin, easy_margin)
        else:
            t_new = t_raw
        is_target = owned[:, None] & (jnp.arange(logits.shape[1])[None, :] == pos[:, None])
        logits = scale * logits + b.astype(f32)[None, :]
        t_logit = scale * t_new + jnp.take(b, pos).astype(f32)
        if kind != "softmax":
            # Margin on the target entry only: s*cos + s*(f(cos_y) - cos_y) there.
            logits = logits + jnp.where(is_target, (scale * (t_new - t_raw))[:, None], 0.0)
        if num_classes < n * lc:
            logits = jnp.where((class_ids < num_classes)[None, :], logits, -jnp.inf)
        row_max = jax.lax.pmax(jax.lax.stop_gradient(jnp.max(logits, axis=1)), cax)
        m = jax.lax.stop_gradient(row_max)
        z = jax.lax.psum(jnp.sum(jnp.exp(logits - m[:, None]), axis=1), cax)
        target = jax.lax.psum(jnp.where(owned, t_logit, 0.0), cax)
        return jnp.log(z) + m - target, jax.lax.stop_gradient(target) >= m

    bspec = _spec_axes(bax)
    cspec = _spec_axes(cax)
    f = jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(P(bspec, None), P(cspec, None), P(cspec), P(bspec), P(), P()),
        out_specs=(P(bspec), P(bspec)),
    )
    b = jnp.zeros(weights.shape[:1], f32) if bias is None else bias
    loss, correct = f(embeddings, weights, b, labels, positives, rng)
    if mask is not None:
        loss = jnp.where(mask, loss, jnp.zeros_like(loss))
        correct = correct & mask
    return (loss, correct) if return_correct else loss
