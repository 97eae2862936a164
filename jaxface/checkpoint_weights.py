"""Reading weights from an orbax checkpoint of a train state, and its array shapes from
the checkpoint's metadata alone: the parts of checkpoint I/O that know nothing of the
trainer, so a task can read another run's weights (e.g. a stem to cache features from)
without importing the trainer. `jaxface.training.checkpoints` writes the checkpoints and
restores whole train states."""

from __future__ import annotations

import logging
import os

import jax
import orbax.checkpoint as ocp
from etils import epath

from jaxface import checkpoint_checks

__all__ = ["restore_partial", "restore_weights", "abstract_like", "shapes_by_path", "saved_shapes"]


def _checkpoints_dir(workdir: str) -> str:
    """A run directory's ``checkpoints/``, or ``workdir`` itself when it is one."""
    path = os.path.abspath(workdir)
    if os.path.isdir(os.path.join(path, "checkpoints")):
        path = os.path.join(path, "checkpoints")
    return path


def restore_partial(workdir: str, abstract, step: int | None = None, *, what: str = "init_from"):
    """``(restored, step)``: the parts of a checkpoint named by ``abstract`` (a pytree of
    ``jax.ShapeDtypeStruct`` with shardings, e.g. ``{"params": ..., "model_state": ...}``),
    nothing else (orbax partial restore). ``workdir`` is a run directory (its
    ``checkpoints/``) or a checkpoints directory; ``step`` defaults to the latest. A
    structure or shape mismatch is a ValueError naming ``what`` and the step."""
    path = _checkpoints_dir(workdir)
    src = ocp.CheckpointManager(path)
    try:
        step = src.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{what}={workdir!r}: no checkpoint found in {path}")
        try:
            restored = src.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.PyTreeRestore(
                        item=abstract,
                        restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                        partial_restore=True,
                    )
                ),
            )["state"]
        except Exception as err:  # pylint: disable=broad-except
            corrupt = checkpoint_checks.corrupt_checkpoint_error(err, path, step, what=what)
            if corrupt is not None:
                raise corrupt from None
            if not isinstance(err, (ValueError, KeyError)):
                raise
            raise ValueError(
                f"{what}={workdir!r}: the checkpoint of step {step} does not match this "
                f"config's model. Details (truncated): {str(err)[:1500]}"
            ) from None
    finally:
        src.close()
    checkpoint_checks.check_finite(restored, path, step, what=what)
    return restored, step


def restore_weights(
    workdir: str,
    params,
    model_state,
    params_sharding,
    model_state_sharding,
    step: int | None = None,
    optional: tuple[tuple[str, ...], ...] = (),
):
    """``(params, model_state, step)`` from another run's checkpoint, nothing else.

    Only the weights and model state (e.g. BatchNorm statistics) are read (orbax
    partial restore), so the source run may have had another optimizer, frozen
    parameters or task state (e.g. end-to-end training -> DREAM stitching). Their
    structure and shapes must match this config's model; a mismatch is an error. The
    sub-trees of ``params`` at the key paths ``optional`` are read when the checkpoint
    has them and otherwise keep the values given here (e.g. a DREAM block stitched onto
    a naive stem). ``workdir`` is a run directory (its ``checkpoints/``) or a
    checkpoints directory.
    """
    target = {"params": _without(params, optional), "model_state": model_state}
    shard = {"params": _without(params_sharding, optional), "model_state": model_state_sharding}
    restored, step = restore_partial(workdir, abstract_like(target, shard), step)
    saved = saved_shapes(_checkpoints_dir(workdir), step, "state") if optional else None
    for path in optional:
        prefix = "/".join(("params", *path)) + "/"
        if saved is not None and not any(k.startswith(prefix) for k in saved):
            source = params  # not in the checkpoint: keep the given values
            logging.info(
                "init_from %s: no %s in the checkpoint; kept at initialisation",
                workdir,
                "/".join(path),
            )
        else:  # present: read it (a shape mismatch is an error, never skipped)
            sub = {"params": _only(params, path)}
            got, _ = restore_partial(
                workdir, abstract_like(sub, {"params": _only(params_sharding, path)}), step
            )
            source = got["params"]
        restored["params"] = _graft(restored["params"], source, [path])
    return restored["params"], restored["model_state"], step


def _only(tree, path):
    """Nested dicts holding only the sub-tree of ``tree`` at ``path``."""
    node = tree
    for k in path:
        node = node[k]
    for k in reversed(path):
        node = {k: node}
    return node


def _without(tree, paths):
    """``tree`` (nested dicts) without the sub-trees at ``paths``."""
    out = dict(tree)
    for path in paths:
        node = out
        for k in path[:-1]:
            node[k] = dict(node[k])
            node = node[k]
        node.pop(path[-1], None)
    return out


def _graft(tree, source, paths):
    """``tree`` with the sub-trees of ``source`` at ``paths`` put back."""
    out = dict(tree)
    for path in paths:
        node, src = out, source
        for k in path[:-1]:
            node[k] = dict(node[k])
            node, src = node[k], src[k]
        node[path[-1]] = src[path[-1]]
    return out


def abstract_like(tree, sharding):
    """``jax.ShapeDtypeStruct`` of each leaf of ``tree`` with the matching ``sharding``."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, sharding
    )


def _key_name(key) -> str:
    for attr in ("name", "key", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def shapes_by_path(tree) -> dict[str, tuple]:
    """``{"a/b/0": shape}`` of the array leaves of ``tree`` (attribute, dict and sequence
    keys alike, so a dataclass and the nested dict orbax stores of it compare equal)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        "/".join(_key_name(k) for k in path): tuple(leaf.shape)
        for path, leaf in leaves
        if hasattr(leaf, "shape")
    }


def saved_shapes(directory, step: int, item: str) -> dict | None:
    """The array shapes of ``item`` in checkpoint ``step`` of a checkpoints ``directory``
    from its metadata file alone (no array is read), or None when the metadata cannot be
    read (the restore then says what is wrong)."""
    try:
        metadata = ocp.StandardCheckpointHandler().metadata(
            epath.Path(str(directory)) / str(step) / item
        )
    except Exception:  # pylint: disable=broad-except
        return None
    return shapes_by_path(getattr(metadata, "tree", metadata))
