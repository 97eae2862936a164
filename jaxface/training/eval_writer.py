"""Running a task's evaluators and writing what they return.

An evaluator (`jaxface.tasks.base.Evaluator`) computes; it writes nothing. Its callers --
the trainer's periodic evaluation, ``jaxface eval`` (`jaxface.train.evaluate_checkpoint`)
and the analyzer's re-clustering (`jaxface.analyzer.recluster_attributes`) -- hand its
artefacts to `write_artefacts`, the one place where evaluation files are written.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from jaxface.tasks.base import (
    Arrays,
    Artefacts,
    EvalContext,
    Figure,
    Folder,
    Images,
    Json,
    Task,
    Text,
)


def run_evaluators(
    task: Task, names: Sequence[str], variables: Mapping[str, Any], ctx: EvalContext
) -> tuple[dict[str, float], Artefacts]:
    """Runs the evaluators ``names`` of ``task`` on ``variables``: metrics as
    ``<evaluator>/<metric>`` (plus ``<evaluator>/eval_time_s``) and every artefact."""
    evaluators = task.evaluators()
    unknown = [n for n in names if n not in evaluators]
    if unknown:
        raise ValueError(
            f"config.evals names unknown evaluators {unknown}; task {task.name!r} "
            f"offers {sorted(evaluators)}"
        )
    predict_fns = task.predict_fns()
    metrics: dict[str, float] = {}
    artefacts: Artefacts = {}
    for name in names:
        evaluator = evaluators[name]
        t0 = time.time()
        out, files = evaluator.run(predict_fns[evaluator.predict], variables, ctx)
        metrics.update({f"{name}/{k}": float(v) for k, v in out.items()})
        metrics[f"{name}/eval_time_s"] = time.time() - t0
        artefacts.update(files)
    return metrics, artefacts


def write_artefacts(workdir: str, step: int, artefacts: Artefacts, *, writer=None) -> list[str]:
    """Writes every artefact to ``workdir/<key>`` (``{step}`` in a key is ``step``);
    `Images` also go to ``writer.write_images`` when a metric writer is given. Returns
    the paths written."""
    paths = []
    for key, artefact in artefacts.items():
        path = os.path.join(workdir, key.format(step=step))
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if isinstance(artefact, Figure):
            artefact.draw(path)
        elif isinstance(artefact, Images):
            pixels = np.asarray(artefact.pixels, np.uint8)
            Image.fromarray(np.concatenate(list(pixels), axis=1)).save(path)
            if writer is not None:
                writer.write_images(step, {artefact.tag: pixels})
        elif isinstance(artefact, Json):
            with open(path, "w") as f:
                json.dump(artefact.payload, f, indent=1)
        elif isinstance(artefact, Text):
            with open(path, "w") as f:
                f.write(artefact.text)
        elif isinstance(artefact, Arrays):
            np.savez(path, **{k: np.asarray(v) for k, v in artefact.arrays.items()})
        elif isinstance(artefact, Folder):
            artefact.write(path)
        else:
            raise TypeError(f"artefact {key!r}: unknown kind {type(artefact).__name__}")
        paths.append(path)
    return paths


def evaluate_and_write(
    task: Task, names: Sequence[str], variables: Mapping[str, Any], ctx: EvalContext
) -> dict[str, float]:
    """`run_evaluators`, then `write_artefacts` into ``ctx.workdir`` on process 0 (with
    ``ctx.writer`` for images); returns the metrics."""
    metrics, artefacts = run_evaluators(task, names, variables, ctx)
    if ctx.process_index == 0:
        write_artefacts(ctx.workdir, ctx.step, artefacts, writer=ctx.writer)
    return metrics
