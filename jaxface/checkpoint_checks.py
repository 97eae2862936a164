"""Checks on restored checkpoints (`jaxface.train` restores through them).

* `check_finite`: a restored tree whose float arrays hold NaN or infinity is an error
  naming the checkpoint, the step and the first bad array. jaxface never writes such a
  checkpoint (`jaxface.train.save_checkpoint`), so one found on disk was damaged (flipped
  bits in a data file) or written by something else; loading it silently would turn
  every score into NaN.
* `corrupt_checkpoint_error`: orbax / TensorStore report a damaged checkpoint (a
  truncated or bit-flipped data file, a corrupt OCDBT manifest) as a generic exception
  whose text buries the file in a multi-kilobyte spec dump; this turns it into one line
  naming the step, the array and the file.
"""

from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp

__all__ = ["CorruptCheckpointError", "check_finite", "corrupt_checkpoint_error"]


class CorruptCheckpointError(RuntimeError):
    """A checkpoint on disk is damaged or holds non-finite values (the message names it)."""


# TensorStore / absl status codes and orbax phrases that mean "the bytes on disk are bad".
_CORRUPT = re.compile(
    r"DATA_LOSS|OUT_OF_RANGE|Error decoding|Error reading|Encountered error while reading"
    r"|checksum|Invalid .*manifest|Unexpected end of|corrupt",
    re.IGNORECASE,
)


def _messages(err: BaseException):
    seen = 0
    while err is not None and seen < 10:
        yield str(err)
        err = err.__cause__ or err.__context__
        seen += 1


def corrupt_checkpoint_error(
    err: BaseException, directory, step, *, what: str = "checkpoint"
) -> CorruptCheckpointError | None:
    """The one-line error for a restore that failed on damaged files, or None when
    ``err`` is something else (e.g. a structure mismatch, reported by the caller)."""
    msgs = list(_messages(err))
    text = " | ".join(msgs)
    if not _CORRUPT.search(text):
        return None
    array = re.search(r'Error reading "([^"]+)"', text)
    file = re.search(r'Error decoding local file "([^"]+)"', text) or re.search(
        r'local file "([^"]+)"', text
    )
    # The most specific message: the one with a status code, after the file it names.
    status = next((m for m in msgs if re.match(r"[A-Z_]{5,}: ", m)), msgs[0])
    code = re.match(r"([A-Z_]{5,}): ", status)
    detail = status.rsplit('": ', 1)[-1] if '": ' in status else status
    detail = " ".join(detail.split())[:200]
    parts = [_prefix(what, directory, step) + " is corrupt or unreadable"]
    if array:
        parts.append(f"array {array.group(1).split('/')[0]}")
    if file:
        parts.append(f"file {file.group(1)}")
    reason = code.group(1) if code else type(err).__name__
    return CorruptCheckpointError(
        "; ".join(parts) + f" ({reason}: {detail}); restore another step or retrain"
    )


def _prefix(what: str, directory, step) -> str:
    where = os.path.join(os.fspath(directory), str(step))
    return ("" if what == "checkpoint" else f"{what}: ") + f"checkpoint step {step} in {where}"


@jax.jit
def _finite_flags(leaves):
    return [jnp.all(jnp.isfinite(x)) for x in leaves]


def check_finite(tree, directory, step, *, what: str = "checkpoint") -> None:
    """Raises `CorruptCheckpointError` naming the checkpoint and the first array of
    ``tree`` that holds a NaN or infinity; float arrays only."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    floats = [
        (path, x)
        for path, x in flat
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    if not floats:
        return
    flags = jax.device_get(_finite_flags([x for _, x in floats]))
    bad = [jax.tree_util.keystr(path) for (path, _), ok in zip(floats, flags) if not bool(ok)]
    if bad:
        raise CorruptCheckpointError(
            f"{_prefix(what, directory, step)}: {len(bad)} array(s) hold NaN/inf, "
            f"first {bad[0]}; jaxface never writes such a checkpoint, so its files are damaged "
            "(or were written elsewhere); restore another step or retrain"
        )
