"""Checkpoint I/O of the trainer (orbax): the manager of a workdir, saving (never a
non-finite state), restoring a whole train state, or only the weights of another run
(partial restore), and the fault injection of the reliability tests (see `jaxface.train`)."""

from __future__ import annotations

import collections
import logging
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from jaxface import checkpoint_checks

__all__ = [
    "make_checkpoint_manager",
    "save_checkpoint",
    "restore_state",
    "restore_partial",
    "restore_weights",
    "abstract_like",
    "tree_finite",
    "tree_all_finite",
    "FAULT_SLEEP_IN_SAVE",
    "FAULT_MARKER",
]


def tree_finite(tree) -> jax.Array:
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def tree_all_finite(tree) -> bool:
    """Host-side check that every float leaf of a pytree is finite."""
    return bool(jax.jit(tree_finite)(tree))


def make_checkpoint_manager(
    workdir: str, config: ml_collections.ConfigDict
) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=int(config.keep_checkpoints),
        create=True,
        enable_async_checkpointing=bool(config.async_checkpointing),
    )
    return ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")), options=options
    )


def save_checkpoint(
    mngr: ocp.CheckpointManager, state, step: int, *, force: bool = False, workdir: str = ""
) -> bool:
    """Saves ``state`` as checkpoint ``step`` unless its parameters or model state hold a
    NaN or infinity (then logs an error, writes nothing and returns False)."""
    if not tree_all_finite((state.params, state.model_state)):
        logging.error("step %d: parameters are not finite; checkpoint NOT written", step)
        return False
    if os.environ.get(FAULT_SLEEP_IN_SAVE) == str(step):
        _install_sleep_before_commit(workdir or os.path.dirname(str(mngr.directory)))
    return mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=force)


FAULT_SLEEP_IN_SAVE = "JAXFACE_FAULT_SLEEP_IN_SAVE"
FAULT_MARKER = "FAULT_SLEEPING_IN_SAVE"


def _install_sleep_before_commit(workdir: str) -> None:
    """Fault injection (see the module docstring): the next orbax commit writes a marker
    file and sleeps instead of renaming the finished temporary directory into place."""
    from orbax.checkpoint._src.path import atomicity  # pylint: disable=import-outside-toplevel

    cls = atomicity.AtomicRenameTemporaryPath

    async def finalize(self, *args, **kwargs):
        del args, kwargs
        logging.error("%s: sleeping before committing %s", FAULT_SLEEP_IN_SAVE, self.get())
        with open(os.path.join(workdir, FAULT_MARKER), "w") as f:
            f.write(str(self.get()))
        while True:  # until killed
            time.sleep(1.0)

    cls.finalize = finalize


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
    saved = _saved_shapes(_checkpoints_dir(workdir), step, "state") if optional else None
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


def _shapes_by_path(tree) -> dict[str, tuple]:
    """``{"a/b/0": shape}`` of the array leaves of ``tree`` (attribute, dict and sequence
    keys alike, so a dataclass and the nested dict orbax stores of it compare equal)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        "/".join(_key_name(k) for k in path): tuple(leaf.shape)
        for path, leaf in leaves
        if hasattr(leaf, "shape")
    }


def _structure_mismatch(saved: dict, wanted: dict) -> str:
    """One line describing how the saved shapes differ from the wanted ones, or "" when
    they agree. Paths that only differ in naming (the same shapes under other keys) are
    left to orbax."""
    if saved.keys() == wanted.keys():
        diffs = [k for k in wanted if saved[k] != wanted[k]]
        return "; ".join(f"{k}: checkpoint {saved[k]} vs config {wanted[k]}" for k in diffs[:3]) + (
            f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else ""
        )
    if collections.Counter(saved.values()) == collections.Counter(wanted.values()):
        return ""
    only_saved = sorted(saved.keys() - wanted.keys())
    only_wanted = sorted(wanted.keys() - saved.keys())
    changed = sorted(k for k in saved.keys() & wanted.keys() if saved[k] != wanted[k])
    parts = [f"{k}: checkpoint {saved[k]} vs config {wanted[k]}" for k in changed[:3]]
    parts += [f"{k} only in the checkpoint" for k in only_saved[:2]]
    parts += [f"{k} only in the config" for k in only_wanted[:2]]
    return "; ".join(parts) or f"{len(saved)} arrays saved vs {len(wanted)} in the config"


def _saved_shapes(directory, step: int, item: str) -> dict | None:
    """The array shapes of ``item`` in checkpoint ``step`` of a checkpoints ``directory``
    from its metadata file alone (no array is read), or None when the metadata cannot be
    read (the restore then says what is wrong)."""
    try:
        metadata = ocp.StandardCheckpointHandler().metadata(
            epath.Path(str(directory)) / str(step) / item
        )
    except Exception:  # pylint: disable=broad-except
        return None
    return _shapes_by_path(getattr(metadata, "tree", metadata))


def restore_state(
    mngr: ocp.CheckpointManager, abstract, step: int, *, explain_mismatch: bool = False
):
    """The train state of checkpoint ``step`` (``abstract``: its shapes and shardings).
    A corrupt checkpoint is a `checkpoint_checks` error naming it; with
    ``explain_mismatch`` a structure mismatch is a ValueError saying what to do, found
    from the checkpoint's metadata before any array is read; non-finite parameters are an
    error."""

    def mismatch_error(details: str) -> ValueError:
        return ValueError(
            f"the checkpoint of step {step} in {mngr.directory} does not match the train state "
            f"of this config (was it written by another model or config?). Use a fresh --workdir "
            f"or restore the config it was trained with. Details: {details}"
        )

    if explain_mismatch:
        saved = _saved_shapes(mngr.directory, step, "state")
        details = "" if saved is None else _structure_mismatch(saved, _shapes_by_path(abstract))
        if details:
            raise mismatch_error(details)
    try:
        restored = mngr.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        )
    except Exception as err:  # pylint: disable=broad-except
        corrupt = checkpoint_checks.corrupt_checkpoint_error(err, mngr.directory, step)
        if corrupt is not None:
            raise corrupt from None
        if not explain_mismatch or not isinstance(err, ValueError):
            raise
        raise mismatch_error(f"(truncated) {str(err)[:1500]}") from None
    checkpoint_checks.check_finite(restored["state"], mngr.directory, step)
    return restored["state"]
