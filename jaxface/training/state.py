"""The train state, the device mesh and how the state is placed on it."""

from __future__ import annotations

from typing import Any

import flax
import jax
import ml_collections
import numpy as np

__all__ = ["TrainState", "create_mesh", "state_sharding"]


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    model_state: Any
    opt_state: Any
    task_state: Any
    nonfinite_consecutive: jax.Array
    nonfinite_total: jax.Array


def create_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
    """A ``("data", "model")`` mesh over every device (of every host)."""
    devices = np.asarray(jax.devices())
    model = int(config.get("model_parallel", 1))
    if devices.size % model:
        raise ValueError(f"config.model_parallel={model} does not divide {devices.size} devices")
    return jax.sharding.Mesh(
        devices.reshape(-1, model), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2
    )


def state_sharding(task, mesh, config, abstract_state):
    """Replicated, except the parameters the task splits over the ``model`` axis
    (`Task.param_partition`) and their optimizer state, which is split the same way."""
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    P = jax.sharding.PartitionSpec
    specs = task.param_partition(abstract_state.params)
    mp = int(config.model_parallel)
    uses_model = any(
        "model" in jax.tree.leaves(tuple(s))
        for s in jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
    )
    if mp > 1 and not uses_model:
        raise ValueError(
            f"config.model_parallel={mp}: task {task.name!r} has no parameter to split "
            "over the 'model' axis (only the recognition classifier is); set model_parallel=1"
        )
    param_sh = jax.tree.map(
        lambda s: jax.sharding.NamedSharding(mesh, s),
        specs,
        is_leaf=lambda x: isinstance(x, P),
    )
    # An optimizer-state leaf whose key path ends with a parameter's path and has its
    # shape (momentum, Adam moments, under any chain / mask) is split like it.
    by_path = {
        tuple(path): (leaf.shape, sh)
        for (path, leaf), sh in zip(
            jax.tree_util.tree_leaves_with_path(abstract_state.params),
            jax.tree.leaves(param_sh),
        )
    }

    def opt_leaf_sharding(path, leaf):
        for start in range(len(path)):
            hit = by_path.get(tuple(path[start:]))
            if hit is not None and hit[0] == getattr(leaf, "shape", None):
                return hit[1]
        return replicated

    opt_sh = jax.tree_util.tree_map_with_path(opt_leaf_sharding, abstract_state.opt_state)
    rep = lambda tree: jax.tree.map(lambda _: replicated, tree)
    return abstract_state.replace(
        step=replicated,
        params=param_sh,
        model_state=rep(abstract_state.model_state),
        opt_state=opt_sh,
        task_state=rep(abstract_state.task_state),
        nonfinite_consecutive=replicated,
        nonfinite_total=replicated,
    )
