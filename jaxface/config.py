"""The trainer's config fields, declared once; experiment files in `configs/` extend them.

Every field the trainer reads is declared here with its default, so a typo on the
command line (``--config.batch_sise=8``) is an error naming the field rather than
a silently ignored value. Task fields are declared by each config file.
"""

from __future__ import annotations

import math
import os
from typing import Callable, Mapping, Sequence

import ml_collections

# The folder holding the real datasets (``$JAXFACE_DATA/cfp``, ``$JAXFACE_DATA/celeba``, ...).
DATA_ENV = "JAXFACE_DATA"


def data_dir_for(name: str) -> str:
    """``$JAXFACE_DATA/<name>`` when the environment variable is set, else ``""``.

    Configs call it while building a variant that reads real data, so
    ``JAXFACE_DATA=/data jaxface train --config configs/dream.py:cfp`` finds CFP in
    ``/data/cfp``; ``--config.data.manual_dir=...`` overrides it. An empty value is an
    error where the data is read (`jaxface.data.sources.get_builder`), not here.
    """
    root = os.environ.get(DATA_ENV, "")
    return os.path.join(root, name) if root else ""


Overlay = Callable[[ml_collections.ConfigDict], None]


def variant_config(
    file: str,
    arg: str,
    base: Callable[[], ml_collections.ConfigDict],
    variants: Mapping[str, Sequence[Overlay]],
) -> ml_collections.ConfigDict:
    """``base()`` with the overlays of variant ``arg`` applied in order.

    ``variants`` maps each variant name to its overlays (functions that set fields of
    the config in place); an unknown name is a one-line `ValueError` listing the valid
    ones.
    """
    if arg not in variants:
        raise ValueError(f"{file}: unknown variant {arg!r}; valid variants: {', '.join(variants)}")
    c = base()
    for overlay in variants[arg]:
        overlay(c)
    return c


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = ""  # a name from jaxface.tasks.available()
    c.seed = 0  # init, data order and augmentation all derive from it
    c.batch_size = 64  # global batch (all hosts, all devices); per-device is derived
    c.grad_accum_steps = 1  # microbatches per step (gradients averaged)
    c.compute_dtype = "float32"  # float32 | bfloat16 (parameters and optimizer stay fp32)
    c.eval_batch_size = 128
    c.num_train_steps = 1000
    c.stop_at_step = 0  # >0: stop (with a checkpoint) at this step; resume later
    c.model_parallel = 1  # size of the mesh's "model" axis
    c.train_split = "train"
    c.eval_split = "test"
    c.eval_limit = 0  # 0: the whole eval split
    # Names of the task's evaluators to run; a tuple, so --config.evals='("a","b")' works.
    c.evals = ()
    c.log_every = 50
    c.eval_every = 1000
    c.checkpoint_every = 500
    c.keep_checkpoints = 3
    c.async_checkpointing = True
    c.init_from = ""  # a workdir whose latest checkpoint initialises params
    c.max_consecutive_nonfinite = 10
    c.data_workers = 2  # reader threads (with data_processes = 0)
    # grain worker processes reading whole batches instead of threads (0: threads); each
    # builds the task's training source and transform anew (benchmarks/loader.py)
    c.data_processes = 0
    c.prefetch = 2

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "sgd"  # sgd | adamw
    c.optimizer.learning_rate = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = False
    c.optimizer.weight_decay = 1e-4
    c.optimizer.schedule = "cosine"  # constant | cosine | steps
    c.optimizer.decay_at = [0.8, 0.9, 0.95]  # for "steps": fractions of training
    c.optimizer.decay_factor = 0.1
    c.optimizer.warmup_steps = 0
    c.optimizer.grad_clip_norm = 0.0

    c.data = ml_collections.ConfigDict()
    c.data.builder = ""  # tfds name (jaxface.data.sources.BUILDER_MODULES)
    c.data.config = ""  # builder config name
    c.data.data_dir = ""  # tfds data_dir ("" = $TFDS_DATA_DIR or ~/tensorflow_datasets)
    c.data.manual_dir = ""  # original-layout directory of a real dataset
    c.data.overrides = ml_collections.ConfigDict()  # builder-config fields to change
    return c


class ConfigError(ValueError):
    """A config field holds a value outside what it allows (the message names both)."""


def _rule(kind, lo=None, hi=None, *, lo_open=False, hi_open=False, choices=None):
    return dict(kind=kind, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open, choices=choices)


# Field -> what it allows. Checked by `validate` before anything is built or run.
RULES = {
    "batch_size": _rule(int, 1),
    "grad_accum_steps": _rule(int, 1),
    "eval_batch_size": _rule(int, 1),
    "num_train_steps": _rule(int, 1),
    "stop_at_step": _rule(int, 0),
    "model_parallel": _rule(int, 1),
    "eval_limit": _rule(int, 0),
    "log_every": _rule(int, 1),
    "eval_every": _rule(int, 1),
    "checkpoint_every": _rule(int, 1),
    "keep_checkpoints": _rule(int, 1),
    "max_consecutive_nonfinite": _rule(int, 1),
    "data_workers": _rule(int, 0),
    "data_processes": _rule(int, 0),
    "prefetch": _rule(int, 0),
    "compute_dtype": _rule(str, choices=("float32", "bfloat16")),
    "optimizer.name": _rule(str, choices=("sgd", "adamw")),
    "optimizer.learning_rate": _rule(float, 0.0, lo_open=True),
    "optimizer.momentum": _rule(float, 0.0, 1.0, hi_open=True),
    "optimizer.weight_decay": _rule(float, 0.0),
    "optimizer.schedule": _rule(str, choices=("constant", "cosine", "steps")),
    "optimizer.decay_factor": _rule(float, 0.0, lo_open=True),
    "optimizer.warmup_steps": _rule(int, 0),
    "optimizer.grad_clip_norm": _rule(float, 0.0),
}


def _allowed(r) -> str:
    if r["choices"]:
        return "one of " + ", ".join(repr(c) for c in r["choices"])
    kind = "an integer" if r["kind"] is int else "a finite number"
    if r["lo"] is not None and r["hi"] is not None:
        lb = "(" if r["lo_open"] else "["
        hb = ")" if r["hi_open"] else "]"
        return f"{kind} in {lb}{r['lo']:g}, {r['hi']:g}{hb}"
    if r["lo"] is not None:
        return f"{kind} {'>' if r['lo_open'] else '>='} {r['lo']:g}"
    return kind


def _get(config, dotted: str):
    node = config
    for part in dotted.split("."):
        if part not in node:
            return _MISSING
        node = node[part]
    return node


_MISSING = object()


def _check(field: str, value, r) -> None:
    bad = False
    if r["choices"]:
        bad = value not in r["choices"]
    elif r["kind"] is int:
        bad = isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value)
    else:
        bad = (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        )
    if not bad and not r["choices"]:
        v = float(value)
        if r["lo"] is not None and (v < r["lo"] or (r["lo_open"] and v == r["lo"])):
            bad = True
        if r["hi"] is not None and (v > r["hi"] or (r["hi_open"] and v == r["hi"])):
            bad = True
    if bad:
        raise ConfigError(f"config.{field}={value!r}: must be {_allowed(r)}")


def _walk(node, prefix=""):
    for k, v in node.items():
        if isinstance(v, ml_collections.ConfigDict):
            yield from _walk(v, f"{prefix}{k}.")
        elif isinstance(v, (list, tuple)):
            for i, item in enumerate(v):
                yield f"{prefix}{k}[{i}]", item
        else:
            yield f"{prefix}{k}", v


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises `ConfigError` (one line: the field, its value, what it allows) for the first
    field of the trainer outside its range (`RULES`), a ``stop_at_step`` or warmup beyond
    the run, a ``steps`` schedule boundary outside (0, 1), or a NaN / infinite number
    anywhere in the config (task fields included)."""
    for field, r in RULES.items():
        value = _get(config, field)
        if value is not _MISSING:
            _check(field, value, r)
    for field, value in _walk(config):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"config.{field}={value!r}: must be a finite number")
    steps = int(config.num_train_steps)
    opt = config.get("optimizer", {})
    if int(opt.get("warmup_steps", 0)) > steps:
        raise ConfigError(
            f"config.optimizer.warmup_steps={opt.warmup_steps}: must be <= "
            f"config.num_train_steps={steps}"
        )
    if opt.get("schedule") == "steps":
        for i, f in enumerate(opt.get("decay_at", ())):
            _check(
                f"optimizer.decay_at[{i}]", f, _rule(float, 0.0, 1.0, lo_open=True, hi_open=True)
            )
    batch, accum = int(config.batch_size), int(config.get("grad_accum_steps", 1))
    if batch % accum:
        raise ConfigError(
            f"config.batch_size={batch}: must be divisible by config.grad_accum_steps={accum}"
        )
