"""What every loss module shares: the ``where`` mask of `optax.losses`."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def apply_where(
    values: jax.Array,
    where: jax.Array | None,
    *,
    same_shape: bool = False,
    bool_only: bool = False,
) -> jax.Array:
    """Zeroes ``values`` where ``where`` is False: the value and, through `jnp.where`,
    the gradient.

    The two flags state the contract of each loss family's ``where`` argument:

    * ``same_shape``: ``where`` must have the shape of ``values`` exactly (ValueError
      otherwise; the recognition losses, one flag per example). When False it is
      broadcast to the shape of ``values`` with NumPy's rules, and a mask that would
      enlarge ``values`` is an error (the attribute and detection losses, whose masks
      may cover a whole example or one element).
    * ``bool_only``: ``where`` must already be boolean (TypeError otherwise; the
      attribute losses). When False any dtype is cast to bool, so a non-zero entry
      keeps its value (the recognition and detection losses).

    Args:
      values: ``[...]`` per-example or per-element losses.
      where: optional mask as above; None returns ``values`` unchanged.

    Returns:
      ``values`` with masked-out entries set to 0, same shape and dtype.
    """
    if where is None:
        return values
    if bool_only:
        where = jnp.asarray(where)
        if where.dtype != jnp.bool_:
            raise TypeError(f"`where` must be a boolean mask, got dtype {where.dtype}")
    else:
        where = jnp.asarray(where, dtype=bool)
    if same_shape:
        if where.shape != values.shape:
            raise ValueError(f"where: expected shape {values.shape}, got {where.shape}")
    else:
        where = jnp.broadcast_to(where, values.shape)
    return jnp.where(where, values, jnp.zeros_like(values))
