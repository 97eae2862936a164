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

from jaxface import checkpoint_checks
from jaxface.checkpoint_weights import (  # noqa: F401  (re-exported)
    abstract_like,
    restore_partial,
    restore_weights,
    saved_shapes,
    shapes_by_path,
)

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
        saved = saved_shapes(mngr.directory, step, "state")
        details = "" if saved is None else _structure_mismatch(saved, shapes_by_path(abstract))
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
