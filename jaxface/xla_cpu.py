"""The XLA CPU options `jaxface train`, `eval` and `quickstart` run with by default.

On CPU, XLA's own convolution and matmul code leaves speed on the table; its
experimental YNNPACK fusion (dot, elementwise and reduce ops handed to YNNPACK's
kernels) ran the trainer's ResNet-18 112-px step 1.31x faster than XLA's defaults on a
2-core AMD EPYC (0.81x of hand-written PyTorch instead of 0.62x), the best of the
options measured side by side by ``benchmarks/step_options.py`` (oneDNN, its custom
calls and fusions, XNNPACK fusions, YNNPACK with convolutions, bf16; table in
``benchmarks/README.md``), and 2.07x on ResNet-50 at 224 px. So the training commands add

    --xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce --xla_cpu_use_xnnpack=false

to ``XLA_FLAGS`` before JAX starts. They are CPU-only flags: other backends ignore them.

Results under these flags are not bitwise those of XLA's defaults (other kernels sum in
another order); a few train steps agree to float32 rounding (`tests/test_xla_cpu.py`).
Off: ``JAXFACE_XLA_CPU=xla`` (XLA's own defaults). Flags the user already put in
``XLA_FLAGS`` for the same options win: nothing is added then.
"""

from __future__ import annotations

import os
from typing import MutableMapping

__all__ = ["ENV_VAR", "FAST_FLAGS", "flags_with_defaults", "apply"]

ENV_VAR = "JAXFACE_XLA_CPU"
# YNNPACK fusion of dots, elementwise and reduce ops; the XNNPACK path is turned off
# because the two libraries' fusions are exclusive.
FAST_FLAGS = (
    "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce",
    "--xla_cpu_use_xnnpack=false",
)
_CHOICES = ("ynn", "xla")


def _flag_name(flag: str) -> str:
    return flag.split("=", 1)[0]


def flags_with_defaults(xla_flags: str, choice: str = "ynn") -> str:
    """``xla_flags`` with `FAST_FLAGS` appended (``choice="ynn"``) unless it already sets
    any of their options; unchanged for ``choice="xla"``."""
    if choice not in _CHOICES:
        raise ValueError(f"{ENV_VAR}={choice!r}: expected one of {', '.join(_CHOICES)}")
    if choice == "xla":
        return xla_flags
    given = {_flag_name(f) for f in xla_flags.split()}
    if any(_flag_name(f) in given for f in FAST_FLAGS):
        return xla_flags
    return " ".join([*xla_flags.split(), *FAST_FLAGS])


def apply(environ: MutableMapping[str, str] = os.environ) -> str:
    """Sets ``environ["XLA_FLAGS"]`` to `flags_with_defaults` of its value and the choice
    in ``environ[ENV_VAR]`` (default ``ynn``); returns the new value. Call it before JAX
    initialises a backend (XLA reads the flags once, at that moment)."""
    choice = environ.get(ENV_VAR, "ynn").strip().lower() or "ynn"
    flags = flags_with_defaults(environ.get("XLA_FLAGS", ""), choice)
    if flags:
        environ["XLA_FLAGS"] = flags
    return flags
