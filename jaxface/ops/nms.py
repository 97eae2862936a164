"""Fixed-shape, jit-able batched non-maximum suppression."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from jaxface.ops.boxes import iou_matrix

__all__ = ["NMSOutput", "batched_nms"]


class NMSOutput(NamedTuple):
    """Result of `batched_nms`; every field has a fixed shape.

    Attributes:
      indices: ``[B, K]`` int32 positions of the kept boxes in the input ``N`` axis,
        in descending score order; ``-1`` where ``valid`` is False.
      boxes: ``[B, K, 4]`` kept boxes (zeros where invalid).
      scores: ``[B, K]`` kept scores (``-inf`` where invalid).
      valid: ``[B, K]`` bool, True for real detections; the valid entries of a
        row come first.
    """

    indices: jax.Array
    boxes: jax.Array
    scores: jax.Array
    valid: jax.Array


def _nms_single(boxes, scores, valid, categories, *, iou_threshold, max_output, plus_one):
    n = boxes.shape[0]
    valid = valid & ~jnp.isnan(scores)
    # Stable descending order; invalid boxes go last.
    key = jnp.where(valid, -scores, jnp.inf)
    order = jnp.argsort(key, stable=True)
    sboxes = boxes[order]
    svalid = valid[order]
    overlaps = iou_matrix(sboxes, sboxes, plus_one=plus_one)  # [N, N]
    suppress = overlaps > iou_threshold
    if categories is not None:
        scat = categories[order]
        suppress = suppress & (scat[:, None] == scat[None, :])
    later = jnp.arange(n)[None, :] > jnp.arange(n)[:, None]
    suppress = suppress & later  # a box only suppresses lower-ranked boxes

    def body(i, keep):
        # Box i survives iff still kept when its turn comes (greedy, in score order).
        return keep & ~(suppress[i] & keep[i])

    keep = jax.lax.fori_loop(0, n, body, svalid)
    # Take the first `max_output` kept boxes, in score order.
    rank_key = jnp.where(keep, jnp.arange(n), n + jnp.arange(n))
    pos = jnp.argsort(rank_key)  # kept boxes first, in score order
    if max_output <= n:
        pos = pos[:max_output]
        out_valid = keep[pos]
    else:
        out_valid = jnp.concatenate([keep[pos], jnp.zeros((max_output - n,), bool)])
        pos = jnp.concatenate([pos, jnp.zeros((max_output - n,), pos.dtype)])
    idx = jnp.where(out_valid, order[pos], -1).astype(jnp.int32)
    out_boxes = jnp.where(out_valid[:, None], sboxes[pos], 0)
    out_scores = jnp.where(out_valid, scores[order][pos], -jnp.inf)
    return idx, out_boxes, out_scores, out_valid


def batched_nms(
    boxes,
    scores,
    *,
    iou_threshold: float,
    max_output: int,
    valid: Optional[jax.Array] = None,
    score_threshold: Optional[float] = None,
    categories: Optional[jax.Array] = None,
    plus_one: bool = False,
) -> NMSOutput:
    """Greedy NMS per image, fixed output size, no Python loop over boxes.

    Semantics are those of torchvision ``nms``: boxes are visited in descending
    score order (ties: lower input index first) and a box is discarded when its
    IoU with an already kept box is *strictly greater* than ``iou_threshold``.
    Implementation: one ``[N, N]`` IoU matrix per image and a ``lax.fori_loop``
    over the sorted candidates, each step a vector op over ``N`` (so memory is
    ``O(N^2)``: reduce to a pre-NMS top-k of a few thousand first).

    Args:
      boxes: ``[B, N, 4]`` corner boxes ``(x1, y1, x2, y2)``.
      scores: ``[B, N]``; NaN scores are treated as invalid.
      iou_threshold: suppression threshold.
      max_output: ``K``, static number of output slots per image.
      valid: optional ``[B, N]`` bool mask of real (non-padding) boxes.
      score_threshold: boxes with ``score < score_threshold`` are dropped first.
      categories: optional ``[B, N]`` ints; boxes only suppress boxes of the same
        category (torchvision ``batched_nms``).
      plus_one: IoU with the "+1 pixel" convention.
    Returns:
      `NMSOutput` with ``[B, K]`` / ``[B, K, 4]`` fields.
    """
    if boxes.ndim != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be [B, N, 4], got shape {boxes.shape}")
    if scores.shape != boxes.shape[:2]:
        raise ValueError(f"scores must be [B, N] = {boxes.shape[:2]}, got {scores.shape}")
    if valid is None:
        valid = jnp.ones(scores.shape, bool)
    valid = jnp.asarray(valid, bool)
    if score_threshold is not None:
        valid = valid & (scores >= score_threshold)
    fn = lambda b, s, v, c: _nms_single(  # noqa: E731
        b, s, v, c, iou_threshold=iou_threshold, max_output=max_output, plus_one=plus_one
    )
    if categories is None:
        out = jax.vmap(lambda b, s, v: fn(b, s, v, None))(boxes, scores, valid)
    else:
        out = jax.vmap(fn)(boxes, scores, valid, categories)
    return NMSOutput(*out)
