"""The evaluators of `jaxface.tasks.attributes.AttributesTask` (``config.evals``).

Both run the task's ``attributes`` predict function (`AttributesTask.predict`: linear
heads' logits and per-attribute embeddings) over ``config.eval_split``:
``balanced_accuracy`` (linear heads, for ``bce``: logits > 0) and ``cluster_knn``
(re-clusters the training embeddings exactly as the task's hook does at this step, then
`cluster_knn_predict` per attribute over its ``2k`` class centroids, ``k =
config.knn_k`` neighbours). Both compute per-attribute balanced accuracy, accuracy and
imbalance level (of the training rates) and return, for the caller to write,
``attributes_<evaluator>_step<N>.{json,md}`` (the latter a per-attribute table, with the
gain over ``config.baseline_report`` when set), ``attributes_<evaluator>_latest.json``
and ``attributes_<evaluator>_gain_step<N>.png`` (gain against the imbalance level; the
baseline is the ``config.baseline_report`` run, or, without one, the majority-class
predictor whose balanced accuracy is 50%).
"""

from __future__ import annotations

import functools
import glob
import json
import os

import jax.numpy as jnp
import numpy as np

from jaxface.evaluation import attributes as attr_eval
from jaxface.tasks.attributes_lmle import METRIC_LOSSES, knn_predict_all_attributes
from jaxface.tasks.base import Artefacts, EvalContext, Evaluator, Figure, Json, Text


def evaluators(task) -> dict[str, Evaluator]:
    """The task's evaluators by ``config.evals`` name, both on its ``attributes`` function."""
    return {
        "balanced_accuracy": Evaluator(
            "attributes", functools.partial(evaluate_balanced_accuracy, task)
        ),
        "cluster_knn": Evaluator("attributes", functools.partial(evaluate_cluster_knn, task)),
    }


def eval_outputs(task, predict_fn, variables, ctx: EvalContext) -> dict:
    split = task.config.eval_split
    return task.embed(
        predict_fn,
        variables,
        ctx,
        task.source(split),
        limit=task.config.get("eval_limit") or None,
    )


def evaluate_balanced_accuracy(task, predict_fn, variables, ctx: EvalContext):
    out = eval_outputs(task, predict_fn, variables, ctx)
    pred = (out["logits"] > 0).astype(np.int32)
    return report(task, "balanced_accuracy", pred, out["attributes"], ctx.step)


def cluster_knn_predictions(task, cluster_state, embeddings) -> np.ndarray:
    """``[T, A]`` cluster-wise kNN predictions of ``[T, A, D]`` embeddings."""
    return np.asarray(
        knn_predict_all_attributes(
            jnp.asarray(embeddings),
            cluster_state["centroids"],
            cluster_state["centroid_valid"],
            k=int(task.config.knn_k),
        )
    )


def evaluate_cluster_knn(task, predict_fn, variables, ctx: EvalContext):
    if not task.metric:
        raise ValueError(
            f"config.evals: 'cluster_knn' needs an embedding loss (config.loss in "
            f"{METRIC_LOSSES}), got config.loss={task.config.loss!r}"
        )
    clusters = task.cluster(predict_fn, variables, ctx)
    out = eval_outputs(task, predict_fn, variables, ctx)
    pred = cluster_knn_predictions(task, clusters, out["embedding"])
    return report(task, "cluster_knn", pred, out["attributes"], ctx.step)


def baseline(config):
    """The ``config.baseline_report`` run's report (a JSON file, or the one
    ``attributes_*_latest.json`` of a workdir), or None."""
    path = config.get("baseline_report", "")
    if not path:
        return None
    if os.path.isdir(path):
        found = sorted(glob.glob(os.path.join(path, "attributes_*_latest.json")))
        if len(found) != 1:
            raise ValueError(
                f"config.baseline_report={path!r}: expected one attributes_*_latest.json "
                f"there, found {[os.path.basename(f) for f in found]}"
            )
        path = found[0]
    if not os.path.exists(path):
        raise FileNotFoundError(f"config.baseline_report={path!r} does not exist")
    with open(path) as f:
        raw = json.load(f)
    return {
        k: (np.asarray(v) if isinstance(v, list) and k != "names" else v) for k, v in raw.items()
    }


def report(task, name, pred, labels, step: int) -> tuple[dict[str, float], Artefacts]:
    """Per-attribute metrics of ``pred`` against ``labels``; their JSON, markdown table
    and gain figure as artefacts."""
    config = task.config
    names = list(config.get("attribute_names", [])) or None
    rep = attr_eval.attribute_metrics(
        pred, labels, names=names, positive_rate=task.positive_rates()
    )
    base = baseline(config)
    results = {
        "mean_balanced_accuracy": rep["mean_balanced_accuracy"],
        "mean_accuracy": rep["mean_accuracy"],
    }
    top10 = np.argsort(-rep["imbalance"], kind="stable")[:10]
    if base is not None:
        gain = rep["balanced_accuracy"] - base["balanced_accuracy"]
        results["mean_gain"] = float(np.mean(gain))
        results["gain_top10_imbalanced"] = float(np.mean(gain[top10]))
    base_name = config.get("baseline_name", "") or "baseline"
    method = config.get("method_name", "") or config.loss
    stem = f"attributes_{name}"
    payload = {
        k: (np.asarray(v).tolist() if not isinstance(v, (str, float)) else v)
        for k, v in rep.items()
    }
    payload.update({"evaluator": name, "loss": config.loss, "step": int(step)})
    lines = [
        f"# attributes: {method} ({name}) at step {step}",
        "",
        attr_eval.format_metrics_table(rep, base, method_name=method, baseline_name=base_name),
        "",
    ]
    lines.append(
        f"Mean balanced accuracy {100 * rep['mean_balanced_accuracy']:.2f}%, mean accuracy "
        f"{100 * rep['mean_accuracy']:.2f}%; on the 10 most imbalanced attributes "
        f"{100 * np.mean(rep['balanced_accuracy'][top10]):.2f}%."
    )
    if base is not None:
        lines.append(
            f"Gain over {base_name}: mean {100 * results['mean_gain']:+.2f} points, on the 10 "
            f"most imbalanced {100 * results['gain_top10_imbalanced']:+.2f} points."
        )
    ref = (
        base["balanced_accuracy"]
        if base is not None
        else np.full_like(rep["balanced_accuracy"], 0.5)
    )
    gain_figure = functools.partial(
        attr_eval.plot_gain_vs_imbalance,
        rep["balanced_accuracy"],
        ref,
        rep["imbalance"],
        names=rep["names"],
        method_name=method,
        baseline_name=base_name if base is not None else "majority class",
    )
    return results, {
        f"{stem}_step{{step}}.json": Json(payload),
        f"{stem}_latest.json": Json(payload),
        f"{stem}_step{{step}}.md": Text("\n".join(lines) + "\n"),
        f"{stem}_gain_step{{step}}.png": Figure(gain_figure),
    }
