"""A trained run loaded from its workdir without its data (`load_model`: the config, the
task, the variables and the task state of a checkpoint), and the attribute model's
cluster centroids recomputed and stored for the analyzer (`recluster_attributes`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

__all__ = ["LoadedModel", "load_model", "read_config", "recluster_attributes", "CENTROIDS_FILE"]


@dataclasses.dataclass
class LoadedModel:
    """A task rebuilt from a workdir's config with the weights of one checkpoint."""

    workdir: str
    config: ml_collections.ConfigDict
    task: Any
    variables: dict
    task_state: dict
    step: int


def read_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path}: not a training workdir (jaxface train writes config.json there)"
        )
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def load_model(workdir: str, step: Optional[int] = None) -> LoadedModel:
    """The task of ``workdir/config.json`` with the weights of ``step`` (default latest)."""
    from jaxface import tasks, train  # pylint: disable=import-outside-toplevel

    config = read_config(workdir)
    task = tasks.get_task(config.task)(config)
    rng = jax.random.key(0)
    abstract = dict(jax.eval_shape(task.init_variables, rng, task.example_batch()))
    params = abstract.pop("params")
    target = {"params": params, "model_state": abstract}
    metric_attrs = bool(getattr(task, "metric", False))  # LMLE: centroids in the task state
    if metric_attrs:
        full = {"params": params, **abstract}
        target["task_state"] = jax.eval_shape(lambda: task.init_task_state(rng, full))
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), target
    )
    restored, step = train.restore_partial(workdir, target, step, what="checkpoint")
    variables = {"params": restored["params"], **restored["model_state"]}
    task_state = dict(restored.get("task_state", {}))
    if metric_attrs:
        task_state = _fresh_centroids(workdir, int(step), task_state)
    return LoadedModel(
        workdir=workdir,
        config=config,
        task=task,
        variables=variables,
        task_state=task_state,
        step=int(step),
    )


CENTROIDS_FILE = os.path.join("calibration", "attribute_centroids.npz")


def _fresh_centroids(workdir: str, step: int, task_state: dict) -> dict:
    """LMLE's centroids: the checkpoint's task state holds those of the last
    re-clustering *during* training (e.g. step 750 of 1000); `recluster_attributes` writes
    the clustering of the checkpoint's own embedding (what the ``cluster_knn`` evaluator
    uses), which replaces them when it was made for this step."""
    path = os.path.join(workdir, CENTROIDS_FILE)
    if os.path.isfile(path):
        with np.load(path) as z:
            if int(z["step"]) == step:
                return {
                    **task_state,
                    "centroids": jnp.asarray(z["centroids"]),
                    "centroid_valid": jnp.asarray(z["centroid_valid"]),
                    "clustered_at": jnp.asarray(step, jnp.int32),
                }
    if "clustered_at" in task_state and int(task_state["clustered_at"]) != step:
        logging.warning(
            "%s: the LMLE centroids were clustered at step %d, the weights are of step %d; "
            "run `jaxface calibrate --attributes %s` for the evaluator's clustering",
            workdir,
            int(task_state["clustered_at"]),
            step,
            workdir,
        )
    return task_state


def recluster_attributes(model: LoadedModel) -> dict:
    """Re-clusters an LMLE model's training embeddings at its checkpoint exactly as its
    ``cluster_knn`` evaluator does (`AttributesTask.cluster`, reading the training data)
    and writes ``WD/calibration/attribute_centroids.npz``; returns a summary."""
    from jaxface import train  # pylint: disable=import-outside-toplevel
    from jaxface.tasks.base import Arrays, EvalContext  # pylint: disable=import-outside-toplevel
    from jaxface.training.eval_writer import write_artefacts  # pylint: disable=import-outside-toplevel

    if not getattr(model.task, "metric", False):
        raise ValueError(f"{model.workdir}: not an LMLE / triplet attribute model")
    ctx = EvalContext(
        mesh=train.create_mesh(model.config),
        workdir=model.workdir,
        step=model.step,
        process_index=0,
        process_count=1,
    )
    variables = jax.device_put(model.variables, ctx.replicated)  # onto the whole mesh
    predict_fn = model.task.predict_fns()["attributes"]
    new = jax.device_get(model.task.cluster(predict_fn, variables, ctx))
    centroids = Arrays(
        {
            "step": np.int64(model.step),
            "centroids": new["centroids"],
            "centroid_valid": new["centroid_valid"],
        }
    )
    (path,) = write_artefacts(model.workdir, model.step, {CENTROIDS_FILE: centroids})
    model.task_state = {**model.task_state, **new}
    return {"file": path, "step": model.step, "non_empty_clusters": int((new["counts"] > 0).sum())}
