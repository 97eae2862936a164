"""The persistent XLA compilation cache of the inference commands.

`jaxface detect`, ``verify``, ``attributes``, ``identify``, ``calibrate`` and ``export``
compile the same model functions for the same shapes on every run; with JAX's
persistent compilation cache the second run loads the compiled executables from disk
instead of compiling them again.

Where: ``$XDG_CACHE_HOME/jaxface/jax_cache`` (``~/.cache/jaxface/jax_cache`` when
``XDG_CACHE_HOME`` is unset). Off: ``--no-compile-cache`` on the command, or
``JAXFACE_COMPILE_CACHE=0`` (also ``false``/``no``/``off``) in the environment.
Every executable is cached, whatever its compile time or size (JAX's defaults skip
compilations under one second, which on CPU is most of them). The cache key covers
the program, the JAX/XLA versions and the device, so a stale entry is never used;
deleting the folder is always safe.
"""

from __future__ import annotations

import os
import pathlib
import sys
from typing import Optional

__all__ = ["ENV_VAR", "default_dir", "enabled", "enable", "add_argument", "setup"]

ENV_VAR = "JAXFACE_COMPILE_CACHE"
_OFF = ("0", "false", "no", "off")


def default_dir() -> pathlib.Path:
    """``$XDG_CACHE_HOME/jaxface/jax_cache``, else ``~/.cache/jaxface/jax_cache``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "jaxface" / "jax_cache"


def enabled(no_compile_cache: bool = False) -> bool:
    """False when ``--no-compile-cache`` was given or ``JAXFACE_COMPILE_CACHE`` is off."""
    if no_compile_cache:
        return False
    return os.environ.get(ENV_VAR, "1").strip().lower() not in _OFF


def enable(path: Optional[os.PathLike] = None) -> Optional[pathlib.Path]:
    """Turns JAX's persistent compilation cache on in ``path`` (default `default_dir`).

    Must run before the first compilation of the process. Returns the folder, or None
    (with a warning on stderr) when it cannot be created: the command then runs
    uncached.
    """
    import jax  # pylint: disable=import-outside-toplevel

    folder = pathlib.Path(path) if path is not None else default_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"warning: compilation cache off: cannot create {folder}: {err}", file=sys.stderr)
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return folder


def add_argument(parser) -> None:
    """``--no-compile-cache`` on an inference command's parser."""
    parser.add_argument(
        "--no-compile-cache",
        action="store_true",
        help=f"do not use the persistent compilation cache ({default_dir()}; "
        f"{ENV_VAR}=0 turns it off too). With the cache, a second run skips compilation",
    )


def setup(args) -> Optional[pathlib.Path]:
    """`enable` unless the parsed ``args`` or the environment turn the cache off."""
    if not enabled(getattr(args, "no_compile_cache", False)):
        return None
    return enable()
