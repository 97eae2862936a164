"""The attributes task end to end on the tiny synthetic config, 8 CPU devices: each loss
trains, the re-clustering hook changes the task state, the balanced source is a
deterministic class-balanced stream, and the cluster_knn evaluator equals
`cluster_knn_predict` applied by hand."""

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface import train
from jaxface.data import pipeline
from jaxface.evaluation import attributes as attr_eval
from jaxface.ops import cluster_knn_predict
from jaxface.quickstart import load_config
from jaxface.tasks import attributes as task_lib
from jaxface.tasks import common

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def tiny(tfds_dir, loss="lmle", **overrides):
    c = load_config(REPO / "configs" / "lmle.py", "tiny")
    c.data.data_dir = tfds_dir
    c.async_checkpointing = False
    c.loss = loss
    c.evals = ["cluster_knn"] if loss in task_lib.METRIC_LOSSES else ["balanced_accuracy"]
    for k, v in overrides.items():
        c[k] = v
    return c


def setup(config, workdir):
    """Trainer, a fixed training batch (host and global) and the initial state."""
    trainer = train.Trainer(config, workdir)
    source, transform = trainer.task.data("train", train=True)
    batch = pipeline.collate(
        [transform(source[i], np.random.default_rng(i)) for i in range(config.batch_size)]
    )
    state, sharding = trainer.init_state(batch)
    return trainer, trainer.ctx.to_global(batch), state, sharding


def fixed_batch_losses(trainer, gbatch, state, sharding, steps):
    step_fn = trainer.make_train_step(sharding)
    out = []
    for _ in range(steps):
        state, metrics = step_fn(state, gbatch, jax.random.key(0))
        out.append({k: float(v) for k, v in metrics.compute().items()})
    losses = [x["loss"] for x in out]
    assert np.all(np.isfinite(losses)) and losses[0] > 0, losses
    return out, state


@pytest.fixture(scope="module")
def lmle(tfds_dir, tmp_path_factory):
    """One LMLE trainer for the hook, step and evaluator tests (one compilation of each)."""
    config = tiny(tfds_dir, "lmle")
    config.optimizer.schedule = "constant"
    config.optimizer.learning_rate = 3e-3
    trainer, gbatch, state, sharding = setup(config, str(tmp_path_factory.mktemp("lmle")))
    return config, trainer, gbatch, state, sharding


def test_recluster_hook_changes_task_state(lmle):
    config, trainer, _, state, _ = lmle
    (hook,) = trainer.task.hooks()
    assert hook.name == "recluster" and hook.at_start and hook.every_steps == config.recluster_every
    before = jax.device_get(state.task_state)
    assert before["centroid_valid"][:, :, 1:].sum() == 0 and int(before["clustered_at"]) == -1
    trainer.ctx.step = 3
    new_state = hook.fn(state, trainer.ctx)
    after = jax.device_get(new_state.task_state)
    assert int(after["clustered_at"]) == 3
    assert not np.allclose(after["centroids"], before["centroids"])
    # every sampled point is counted once per attribute, in a cluster of its own class
    assert after["counts"].sum() == config.cluster_sample * 40
    assert after["centroid_valid"].sum() > 40 * 2  # more than one cluster per class
    norms = np.linalg.norm(after["centroids"][after["centroid_valid"]], axis=-1)
    assert np.all(norms <= 1 + 1e-5) and np.all(norms > 0.1)  # means of unit vectors
    # the new state is placed like the old one (the jitted step accepts it)
    for leaf in jax.tree.leaves(new_state.task_state):
        assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 8


def test_cluster_knn_evaluator_equals_by_hand(lmle):
    config, trainer, _, state, _ = lmle
    task = trainer.task
    got = trainer.evaluate(state, 5)
    # By hand: the same clustering, test embeddings, cluster_knn_predict per attribute.
    trainer.ctx.step = 5
    clusters = jax.device_get(task.cluster(common.variables_of(state), trainer.ctx))
    out = task.embed(common.variables_of(state), trainer.ctx, task.source("test"))
    emb, labels = out["embedding"], out["attributes"]
    assert emb.shape == (64, 40, 16)
    preds = []
    for a in range(40):
        c = clusters["centroids"][a].reshape(-1, 16)
        lab = np.repeat([0, 1], config.clusters_per_class)
        v = clusters["centroid_valid"][a].reshape(-1)
        preds.append(
            np.asarray(
                cluster_knn_predict(
                    jnp.asarray(emb[:, a]),
                    jnp.asarray(c),
                    jnp.asarray(lab),
                    k=config.knn_k,
                    centroid_valid=jnp.asarray(v),
                )
            )
        )
    pred = np.stack(preds, axis=1)
    assert set(np.unique(pred)) <= {0, 1}
    rep = attr_eval.attribute_metrics(pred, labels, positive_rate=task.positive_rates())
    assert got["cluster_knn/mean_balanced_accuracy"] == pytest.approx(
        rep["mean_balanced_accuracy"], abs=1e-12
    )
    assert got["cluster_knn/mean_accuracy"] == pytest.approx(rep["mean_accuracy"], abs=1e-12)
    with open(os.path.join(trainer.workdir, "attributes_cluster_knn_latest.json")) as f:
        saved = json.load(f)
    np.testing.assert_allclose(saved["balanced_accuracy"], rep["balanced_accuracy"])
    for name in ("attributes_cluster_knn_step5.md", "attributes_cluster_knn_gain_step5.png"):
        assert os.path.exists(os.path.join(trainer.workdir, name)), name


def test_triplet_knn_run_with_hook_and_baseline(lmle, tfds_dir, tmp_path):
    """A short triplet_knn run through the trainer: the hook runs at start and every 3
    steps and is timed; the loss is finite; the evaluator compares with a baseline report
    (the LMLE evaluation written by the previous test)."""
    _, lmle_trainer, _, _, _ = lmle
    config = tiny(
        tfds_dir,
        "triplet_knn",
        num_train_steps=6,
        baseline_report=lmle_trainer.workdir,
        baseline_name="LMLE",
    )
    r = train.train_and_evaluate(config, str(tmp_path))
    assert r.status == "finished" and r.step == 6 and r.nonfinite_total == 0
    assert np.isfinite(r.train_metrics["train/loss"]) and r.train_metrics["train/loss"] > 0
    assert 0.0 <= r.eval_results["cluster_knn/mean_balanced_accuracy"] <= 1.0
    assert "cluster_knn/gain_top10_imbalanced" in r.eval_results
    with open(tmp_path / "attributes_cluster_knn_step6.md") as f:
        assert "gain bal.acc" in f.read()
    from tensorboard.backend.event_processing import event_accumulator  # noqa: PLC0415

    (ev,) = [f for f in os.listdir(tmp_path) if f.startswith("events.out")]
    acc = event_accumulator.EventAccumulator(str(tmp_path / ev))
    acc.Reload()
    tags = acc.Tags().get("tensors", []) + acc.Tags().get("scalars", [])
    assert "hooks/recluster_time_s" in tags, tags


def test_lmle_and_bce_learn_a_fixed_batch(lmle, tfds_dir, tmp_path):
    """Runs last of the tests sharing the LMLE trainer: the step donates the state."""
    config, trainer, gbatch, state, sharding = lmle
    (hook,) = trainer.task.hooks()
    trainer.ctx.step = 0
    state = hook.fn(state, trainer.ctx)
    m, _ = fixed_batch_losses(trainer, gbatch, state, sharding, 8)
    losses = [x["loss"] for x in m]
    assert losses[-1] < 0.9 * losses[0], losses
    assert 0 < m[0]["complete_partners"] <= 1 and 0 < m[0]["violating_anchors"] <= 1
    bce = tiny(tfds_dir, "bce")
    bce.optimizer.schedule = "constant"
    m, _ = fixed_batch_losses(*setup(bce, str(tmp_path)), 6)
    losses = [x["loss"] for x in m]
    assert np.all(np.diff(losses) < 0), losses


def test_balanced_source_is_deterministic_and_class_balanced(tfds_dir):
    config = tiny(tfds_dir, "lmle", num_train_steps=40)
    task = task_lib.AttributesTask(config)
    src, _ = task.data("train", train=True)
    assert isinstance(src, task_lib.ClassBalancedSource) and len(src) == 40 * config.batch_size
    labels = task.labels("train")
    sampler = pipeline.IndexSampler(len(src), config.batch_size, seed=config.seed)
    for step in (0, 4, 39):  # attribute 4 (Bald) is rare: half the batch is still positive
        real = [src.record_index(v) for v in sampler.indices(step)]
        assert sorted(real) == sorted(src.batch_indices(step))
        attr = step % 40
        assert labels[real, attr].sum() == config.batch_size // 2, (step, labels[real, attr])
    again = task_lib.AttributesTask(config).data("train", train=True)[0]
    assert [again.record_index(v) for v in range(50)] == [src.record_index(v) for v in range(50)]


def test_balanced_anchor_weights():
    y = jnp.array([0, 0, 0, 1, 1, 1])
    z = jnp.array([0, 0, 1, 0, 0, 0])
    w = np.asarray(task_lib.balanced_anchor_weights(y, z, k=2))
    np.testing.assert_allclose(w, [1 / 8, 1 / 8, 1 / 4, 1 / 6, 1 / 6, 1 / 6])
    assert w.sum() == pytest.approx(1.0)


def test_bad_config_fields_are_named(tfds_dir):
    with pytest.raises(ValueError, match="config.loss"):
        task_lib.AttributesTask(tiny(tfds_dir, "softmax"))
    with pytest.raises(ValueError, match="config.knn_k"):
        task_lib.AttributesTask(tiny(tfds_dir, "lmle", knn_k=5))
    c = load_config(REPO / "configs" / "lmle.py", "celeba")
    with pytest.raises(ValueError, match="config.data.manual_dir"):
        task_lib.AttributesTask(c).source("train")
