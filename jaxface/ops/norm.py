"""Row normalisation and the fusion of an image's representation with its mirror image's.

* `l2_normalize`: rows scaled to unit L2 norm (the norm floored at ``eps``).
* `flip_mean`: the test-time flip fusion, ``(f(x) + f(flip x)) / 2``.
* `fuse_flip`: the flip-fused embedding ``L2-normalise(f(x) + f(flip x))`` (LFW's
  protocol), defined as ``l2_normalize(flip_mean(...))``: halving is exact in floating
  point and cancels in the normalisation, so this is bit for bit ``s / |s|`` of the sum
  ``s`` whenever ``|s| >= 2 eps``.

Every function takes NumPy arrays (computed in NumPy, in their dtype: the evaluation
protocols' float64) or jax arrays (jit-able: the analyzer's exported ``embed``);
``xp`` names the array module, else it follows the inputs (`jaxface.ops.boxes.array_module`).
"""

from __future__ import annotations

from jaxface.ops.boxes import array_module

__all__ = ["l2_normalize", "flip_mean", "fuse_flip"]


def l2_normalize(x, axis: int = -1, eps: float = 1e-12, *, xp=None):
    xp = array_module(x, xp=xp)
    return x / xp.maximum(xp.linalg.norm(x, axis=axis, keepdims=True), eps)


def flip_mean(x, x_flip):
    """``(x + x_flip) / 2``: a representation of an image fused with its mirror image's."""
    return 0.5 * (x + x_flip)


def fuse_flip(emb, emb_flip, *, eps: float = 1e-12, xp=None):
    """``L2-normalise(f(x) + f(flip x))`` over the last axis: ``[N, D]`` (rows of norm
    below ``eps`` are divided by ``eps``, so a zero row stays zero)."""
    return l2_normalize(flip_mean(emb, emb_flip), eps=eps, xp=xp)
