"""The precision contract's casts (see `jaxface.train`): parameters and the task's
compute fields to the compute dtype inside the step; everything else keeps its dtype."""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

__all__ = ["cast_params", "cast_batch"]


def _cast_floating(x, dtype):
    return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x


def cast_params(params, dtype):
    """The precision contract's parameter cast: every floating leaf to ``dtype`` (the
    train state keeps the fp32 master copy)."""
    if jnp.dtype(dtype) == jnp.float32:
        return params
    return jax.tree.map(lambda x: _cast_floating(x, dtype), params)


def cast_batch(batch: Mapping[str, Any], fields: tuple[str, ...], dtype) -> dict[str, Any]:
    """The precision contract's batch cast: only ``fields`` (a task's
    ``compute_fields``, its image inputs) go to ``dtype``; geometry, labels, masks and
    targets keep their dtype."""
    if jnp.dtype(dtype) == jnp.float32:
        return dict(batch)
    return {k: (_cast_floating(v, dtype) if k in fields else v) for k, v in batch.items()}
