"""Pieces every task uses: image normalisation, one pass of predictions over a split."""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import numpy as np

from jaxface.data import pipeline
from jaxface.tasks.base import EvalContext


def normalize_image(image: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] -> float32 in [-1, 1]."""
    return np.asarray(image, np.float32) * (2.0 / 255.0) - 1.0


_JIT_CACHE: dict = {}


def predict_split(
    ctx: EvalContext,
    predict_fn: Callable,
    variables,
    source,
    transform,
    batch_size: int,
    *,
    limit: int | None = None,
    keep: tuple[str, ...] = (),
    skips: pipeline.EvalSkips | None = None,
) -> dict[str, np.ndarray]:
    """Runs ``predict_fn(variables, batch) -> dict`` over a split; NumPy outputs in order.

    Batches are fixed-size and padded (one compilation), sharded over the ``data``
    axis; padding rows are removed. ``keep`` names input fields copied to the output
    (e.g. labels), so one pass yields predictions and targets together.

    An unreadable record is a `jaxface.data.pipeline.BadRecordError` naming it; with
    ``skips`` (a `jaxface.data.pipeline.EvalSkips`) it is skipped and named there
    instead, and the output gains ``index``: the source index of every output row.
    """
    key = (predict_fn, ctx.mesh, tuple(keep))
    if key not in _JIT_CACHE:

        def fn(variables, batch):
            out = dict(predict_fn(variables, batch))
            out["_valid"] = batch["_valid"]
            for k in keep:
                out[f"_in_{k}"] = batch[k]
            return out

        _JIT_CACHE[key] = jax.jit(fn, out_shardings=ctx.replicated)
    jitted = _JIT_CACHE[key]
    chunks: dict[str, list] = {}
    for batch in pipeline.eval_batches(
        source,
        batch_size,
        transform,
        process_index=ctx.process_index,
        process_count=ctx.process_count,
        limit=limit,
        skips=skips,
    ):
        gidx = batch.pop("_global_index")
        out = jax.device_get(jitted(variables, ctx.to_global(batch)))
        valid = np.asarray(out.pop("_valid"), bool)
        for k, v in out.items():
            chunks.setdefault(k.removeprefix("_in_"), []).append(np.asarray(v)[valid])
        if skips is not None:
            chunks.setdefault("index", []).append(np.asarray(gidx)[valid])
    return {k: np.concatenate(v) for k, v in chunks.items()}


def variables_of(state) -> Mapping:
    return {"params": state.params, **state.model_state}
