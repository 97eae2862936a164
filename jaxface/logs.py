"""A quiet log: third-party noise filtered where it is emitted, jaxface's own lines kept.

`install_filters` adds one filter to the absl handler (which the command line uses for
every Python logger). It drops, by the emitting library and the message:

* TensorFlow Datasets' INFO lines and its warnings about a builder config being
  "custom" or a variant folder lacking ``dataset_info.json`` (both normal for data
  this project generates on first use) and about decoding PNGs without OpenCV;
* jax's INFO lines (e.g. "Unable to initialize backend 'tpu'" on a machine without TPU);
* orbax's INFO lines (one per step of every save);
* clu's ``[Hyperparameters]`` dump (the full config is logged at DEBUG by the trainer
  and written to the workdir's ``config.json``).

Warnings and errors of jaxface itself are never filtered. `import_tensorflow_quietly`
imports TensorFlow with the C++ start-up notices it prints on stderr (oneDNN, "All log
messages before absl::InitializeLog()") held back; any other line it prints is passed on.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile

__all__ = ["install_filters", "NoiseFilter", "import_tensorflow_quietly", "MAX_LINE"]

# The longest line jaxface logs (tests/test_quiet_log.py checks a run's log against it).
MAX_LINE = 200

_TFDS_NOISE = re.compile(
    r"Using custom data configuration|has no dataset_info\.json|Load dataset info from"
    r"|Reusing dataset|Constructing tf\.data\.Dataset|Generating dataset"
    # PNG decoding through PIL is lossless, as through OpenCV; only speed differs.
    r"|OpenCV is not installed"
)
_TF_STARTUP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\)|oneDNN custom operations are on"
    r"|cpu_feature_guard|This TensorFlow binary is optimized|To enable the following instructions"
)


def _library(record: logging.LogRecord) -> str:
    path = record.pathname.replace(os.sep, "/")
    for lib in ("tensorflow_datasets", "orbax", "jax", "clu"):
        if f"/{lib}/" in path or record.name.startswith(lib):
            return lib
    return ""


class NoiseFilter(logging.Filter):
    """Drops the third-party records listed in the module docstring; keeps all others."""

    def filter(self, record: logging.LogRecord) -> bool:
        lib = _library(record)
        if not lib:
            return True
        if lib == "tensorflow_datasets":
            if record.levelno < logging.WARNING:
                return False
            return record.levelno >= logging.ERROR or not _TFDS_NOISE.search(record.getMessage())
        if lib in ("jax", "orbax"):
            return record.levelno >= logging.WARNING
        if lib == "clu" and record.levelno < logging.WARNING:
            message = record.getMessage()
            if message.startswith("[Hyperparameters]"):
                return False
            if len(message) > MAX_LINE - 60:  # the absl prefix takes ~60 characters
                # clu's LoggingWriter puts every scalar of a step on one line
                # ("[step] a=1, b=2, ..."); wrap it at the commas, indented.
                record.msg, record.args = _wrap(message, MAX_LINE - 60), None
        return True


def _wrap(message: str, width: int) -> str:
    lines, line = [], ""
    for part in message.split(", "):
        if line and len(line) + 2 + len(part) > width:
            lines.append(line + ",")
            line = "    " + part
        else:
            line = f"{line}, {part}" if line else part
    return "\n".join(lines + [line])


def install_filters(handler: logging.Handler | None = None) -> NoiseFilter:
    """Adds a `NoiseFilter` to ``handler`` (default: absl's handler), once."""
    if handler is None:
        from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel

        handler = absl_logging.get_absl_handler()
    for f in handler.filters:
        if isinstance(f, NoiseFilter):
            return f
    f = NoiseFilter()
    handler.addFilter(f)
    return f


def import_tensorflow_quietly():
    """``import tensorflow`` with its C++ start-up notices held back (they are written to
    file descriptor 2 by native code, before Python logging exists, and no environment
    variable silences them in this TensorFlow). Other lines are passed on to stderr.
    Numerics are untouched (oneDNN stays as TensorFlow configures it)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real stderr (e.g. embedded)
        import tensorflow  # pylint: disable=import-outside-toplevel

        return tensorflow
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            import tensorflow  # pylint: disable=import-outside-toplevel
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [
                line
                for line in tmp.read().decode("utf-8", "replace").splitlines()
                if line.strip() and not _TF_STARTUP_NOISE.search(line)
            ]
            if kept:
                print("\n".join(kept), file=sys.stderr)
    return tensorflow
