"""The attributes task end to end on the tiny synthetic config, 8 CPU devices: each loss
trains, the re-clustering hook changes the task state, the balanced source is a
deterministic class-balanced stream, and the cluster_knn evaluator equals
`cluster_knn_predict` applied by hand."""

import functools
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
from jaxface.tasks import attributes_lmle as lmle_lib
from jaxface.tasks import attributes_sampling as sampling
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
    c.evals = ["cluster_knn"] if loss in lmle_lib.METRIC_LOSSES else ["balanced_accuracy"]
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
    predict_fn = task.predict_fns()["attributes"]
    variables = common.variables_of(state)
    clusters = jax.device_get(task.cluster(predict_fn, variables, trainer.ctx))
    out = task.embed(predict_fn, variables, trainer.ctx, task.source("test"))
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
    assert isinstance(src, sampling.ClassBalancedSource) and len(src) == 40 * config.batch_size
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
    w = np.asarray(lmle_lib.balanced_anchor_weights(y, z, k=2))
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


# -- the paper's recipe options (docs/methods.md, LMLE) ---------------------------------


def _step_batch(task, config, step):
    """The host batch the trainer reads at ``step`` from the balanced source."""
    src, transform = task.data("train", train=True)
    sampler = pipeline.IndexSampler(len(src), config.batch_size, seed=config.seed)
    return pipeline.collate(
        [transform(src[v], np.random.default_rng(int(v))) for v in sampler.indices(step)]
    )


def test_balanced_attribute_weights_match_numpy_reference():
    rng = np.random.default_rng(0)
    for balanced_for in (np.full(16, 7), rng.integers(0, 40, size=16)):
        got = np.asarray(lmle_lib.balanced_attribute_weights(jnp.asarray(balanced_for), 40))
        ref = np.zeros(40)
        for a in balanced_for:  # loop reference: each record adds 1/B to its attribute
            ref[a] += 1.0 / len(balanced_for)
        np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_metric_loss_only_on_batches_balanced_for_the_attribute(tfds_dir):
    """With metric_loss_balanced_only, the batch of step s carries balanced_for = s mod 40,
    the loss is the NumPy-weighted sum of the per-attribute losses (only attribute s mod 40
    on a per-step batch), and no other attribute's embedding gets a gradient."""
    config = tiny(tfds_dir, "lmle", metric_loss_balanced_only=True, num_train_steps=40)
    task = task_lib.AttributesTask(config)
    step = 4  # Bald: rare, but half of this batch is positive
    batch = _step_batch(task, config, step)
    np.testing.assert_array_equal(batch["balanced_for"], np.full(config.batch_size, step))
    assert batch["attributes"][:, step].sum() == config.batch_size // 2
    variables = task.init_variables(jax.random.key(0), batch)
    params = variables["params"]
    mstate = {k: v for k, v in variables.items() if k != "params"}
    ts = task.init_task_state(jax.random.key(1), variables)
    jb = {k: jnp.asarray(v) for k, v in batch.items()}

    def per_attribute(b):
        out, _ = task.model.apply(
            {"params": params, **mstate}, b["image"], train=True, mutable=list(mstate)
        )
        fn = functools.partial(
            lmle_lib.metric_loss_per_attribute,
            loss="lmle",
            margins=tuple(config.lmle_margins),
            triplet_margin=float(config.triplet_margin),
        )
        per, _, _ = jax.vmap(fn, in_axes=(1, 1, 0, 0))(
            out["embedding"], b["attributes"], ts["centroids"], ts["centroid_valid"]
        )
        return np.asarray(per)

    for balanced_for in (batch["balanced_for"], np.arange(config.batch_size) % 3):
        b = dict(jb, balanced_for=jnp.asarray(balanced_for, jnp.int32))
        loss, _ = task.loss(params, mstate, b, jax.random.key(2), ts)
        per = per_attribute(b)
        ref = sum(per[a] for a in balanced_for) / len(balanced_for)
        assert float(loss) == pytest.approx(ref, rel=1e-5)

    grads = jax.grad(lambda p: task.loss(p, mstate, jb, jax.random.key(2), ts)[0])(params)
    g = np.abs(np.asarray(grads["embedding"]["kernel"]))  # [F, A * D]
    per_attr = g.reshape(g.shape[0], 40, -1).sum(axis=(0, 2))
    assert per_attr[step] > 0 and np.all(per_attr[np.arange(40) != step] == 0)
    # Option off: every attribute's embedding learns on the same batch.
    off = task_lib.AttributesTask(tiny(tfds_dir, "lmle", num_train_steps=40))
    src_off, _ = off.data("train", train=True)
    assert "balanced_for" not in src_off[0]
    g_off = jax.grad(lambda p: off.loss(p, mstate, jb, jax.random.key(2), ts)[0])(params)
    g_off = np.abs(np.asarray(g_off["embedding"]["kernel"]))
    assert (g_off.reshape(g_off.shape[0], 40, -1).sum(axis=(0, 2)) > 0).sum() > 20
    with pytest.raises(ValueError, match="balanced_sampling"):
        task_lib.AttributesTask(
            tiny(tfds_dir, "lmle", metric_loss_balanced_only=True, balanced_sampling=False)
        )


def test_embedding_head_without_batchnorm(tfds_dir):
    config = tiny(tfds_dir, "lmle")
    config.model.embedding_bn = False
    task = task_lib.AttributesTask(config)
    images = jnp.zeros((4, config.image_size, config.image_size, 3))
    variables = task.model.init(jax.random.key(0), images, train=False)
    names = jax.tree_util.keystr(variables)
    assert "embedding_bn" not in names and "embedding" in variables["params"]
    out = task.model.apply(variables, images + 0.1, train=False)
    np.testing.assert_allclose(np.linalg.norm(out["embedding"], axis=-1), 1.0, rtol=1e-5)
    with_bn = task_lib.AttributesTask(tiny(tfds_dir, "lmle"))
    assert (
        "embedding_bn" in with_bn.model.init(jax.random.key(0), images, train=False)["batch_stats"]
    )


def test_cluster_size_gives_each_class_clusters_in_proportion(tfds_dir):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(400, 3, 4)).astype(np.float32)
    labels = np.zeros((400, 3), np.int32)
    labels[:200, 0] = 1  # balanced: 10 / 10 clusters of ~20
    labels[:20, 1] = 1  # 5% positive: 1 cluster for the minority, 16 (cap) for the majority
    res = lmle_lib.cluster_all_attributes(
        jax.random.key(0),
        jnp.asarray(emb),
        jnp.asarray(labels),
        k=16,
        max_iters=10,
        cluster_size=20,
    )
    np.testing.assert_array_equal(
        np.asarray(res["centroid_valid"]).sum(-1), [[10, 10], [16, 1], [16, 0]]
    )
    # A task with cluster_size sizes its state by the cap and clusters with it.
    t = task_lib.AttributesTask(tiny(tfds_dir, "lmle", cluster_size=50, clusters_per_class=8))
    assert t.k == 8 and t.cluster_size == 50


def test_recipe_defaults_paper_except_published_variants():
    def cfg(v):
        return load_config(REPO / "configs" / "lmle.py", v)

    c = cfg("celeba")
    assert c.metric_loss_balanced_only and c.cluster_size > 0 and c.model.embedding_bn
    for v, k in (("synthetic", 4), ("triplet_knn", 4), ("tiny", 2)):
        c = cfg(v)
        assert not c.metric_loss_balanced_only and c.cluster_size == 0, v
        assert c.clusters_per_class == k and c.model.embedding_bn, v


def _triplet_with_pool_ref(emb, labels, pool_emb, pool_labels, pool_valid, margin):
    """NumPy loop reference of the batch-hard triplet loss whose partners come from the
    batch and the valid pool entries (anchors: the batch's), weights 1 / (#classes present
    * #points of the anchor's class in the batch)."""
    cand = np.concatenate([emb, pool_emb[pool_valid]])
    cand_y = np.concatenate([labels, pool_labels[pool_valid]])
    b = len(emb)
    total = 0.0
    present = len(set(labels.tolist()))
    for i in range(b):
        d = ((cand - emb[i]) ** 2).sum(-1)
        same = (cand_y == labels[i]) & (np.arange(len(cand)) != i)
        other = cand_y != labels[i]
        if not same.any() or not other.any():
            continue
        per = max(0.0, margin + d[same].max() - d[other].min())
        total += per / (present * (labels == labels[i]).sum())
    return total


def test_mining_pool_partners_come_from_the_pool():
    rng = np.random.default_rng(0)

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    emb = unit(rng.normal(size=(6, 4))).astype(np.float32)
    labels = np.array([1, 0, 0, 0, 0, 0], np.int32)  # the positive has no batch partner
    pool_emb = unit(rng.normal(size=(5, 4))).astype(np.float32)
    pool_labels = np.array([1, 1, 0, 1, 0], np.int32)
    pool_valid = np.array([True, True, True, False, False])
    pool_emb[3] = emb[0]  # an invalid slot right on the anchor: must never be drawn
    cent = jnp.zeros((2, 1, 4))
    cvalid = jnp.ones((2, 1), bool)
    kw = dict(loss="triplet_knn", margins=(0.05, 0.05, 0.2), triplet_margin=0.2)
    args = [jnp.asarray(x) for x in (pool_emb, pool_labels, pool_valid)]
    loss, complete, _ = lmle_lib.metric_loss_per_attribute(
        jnp.asarray(emb), jnp.asarray(labels), cent, cvalid, *args, **kw
    )
    ref = _triplet_with_pool_ref(emb, labels, pool_emb, pool_labels, pool_valid, 0.2)
    assert float(loss) == pytest.approx(ref, rel=1e-5)
    assert float(complete) == 1.0  # every anchor has partners, thanks to the pool
    alone, complete_alone, _ = lmle_lib.metric_loss_per_attribute(
        jnp.asarray(emb), jnp.asarray(labels), cent, cvalid, **kw
    )
    assert float(complete_alone) < 1.0  # without the pool the positive anchor has none
    # The pool is a constant: no gradient flows into it.
    g = jax.grad(
        lambda p: lmle_lib.metric_loss_per_attribute(
            jnp.asarray(emb), jnp.asarray(labels), cent, cvalid, p, *args[1:], **kw
        )[0]
    )(args[0])
    assert np.all(np.asarray(g) == 0)


def test_mining_pool_state_is_filled_newest_first(tfds_dir):
    config = tiny(tfds_dir, "lmle", mining_pool=24)
    task = task_lib.AttributesTask(config)
    src, transform = task.data("train", train=True)
    batch = pipeline.collate([transform(src[i], np.random.default_rng(i)) for i in range(16)])
    jb = {k: jnp.asarray(v) for k, v in batch.items()}
    variables = task.init_variables(jax.random.key(0), jb)
    pool = variables[task_lib.POOL]
    assert pool["embedding"].shape == (24, 40, 16) and not np.asarray(pool["valid"]).any()
    mstate = {k: v for k, v in variables.items() if k != "params"}
    ts = task.init_task_state(jax.random.key(1), variables)
    loss, (new_state, _) = task.loss(variables["params"], mstate, jb, jax.random.key(2), ts)
    assert np.isfinite(float(loss))
    new_pool = new_state[task_lib.POOL]
    np.testing.assert_array_equal(np.asarray(new_pool["valid"]), np.r_[[True] * 16, [False] * 8])
    np.testing.assert_array_equal(np.asarray(new_pool["labels"])[:16], batch["attributes"])
    emb = task.predict(variables, jb)["embedding"]  # running-statistics embedding
    assert np.asarray(new_pool["embedding"]).shape == (24, 40, 16)
    assert np.asarray(emb).shape == (16, 40, 16)
    # A second step uses the filled pool and pushes the oldest entries out.
    _, (state2, _) = task.loss(
        variables["params"], {**mstate, **new_state}, jb, jax.random.key(2), ts
    )
    assert np.asarray(state2[task_lib.POOL]["valid"]).all()


def test_balanced_only_and_mining_pool_train_on_8_devices(tfds_dir, tmp_path):
    """Both options through the trainer's sharded step: the batch carries balanced_for,
    the pool in the model state fills up across steps."""
    config = tiny(tfds_dir, "lmle", metric_loss_balanced_only=True, mining_pool=32)
    trainer, gbatch, state, sharding = setup(config, str(tmp_path))
    assert "balanced_for" in gbatch
    m, state = fixed_batch_losses(trainer, gbatch, state, sharding, 2)
    assert 0 < m[-1]["violating_anchors"] <= 1  # before any clustering: no p- yet
    assert np.asarray(state.model_state[task_lib.POOL]["valid"]).all()


def test_class_weights_come_from_a_start_hook_and_loading_reads_no_data(tfds_dir, tmp_path):
    """``class_balanced`` bce: building the state reads no data (placeholder weights 1);
    the ``class_weights`` start hook sets ``w- = 1 / (2 (1 - p))``, ``w+ = 1 / (2 p)`` of
    the training split's positive rates ``p`` (NumPy reference)."""
    absent = tmp_path / "absent"
    trainer = train.Trainer(tiny(str(absent), "bce", class_balanced=True), str(tmp_path / "a"))
    state, _ = trainer.init_state(trainer.task.example_batch(trainer.per_host_batch))
    np.testing.assert_array_equal(jax.device_get(state.task_state["class_weights"]), 1.0)
    assert not absent.exists()

    trainer = train.Trainer(tiny(tfds_dir, "bce", class_balanced=True), str(tmp_path / "b"))
    state, _ = trainer.init_state(trainer.task.example_batch(trainer.per_host_batch))
    (hook,) = trainer.task.hooks()
    assert hook.name == "class_weights" and hook.at_start and hook.every_steps == 0
    state = hook.fn(state, trainer.ctx)
    src = trainer.task.source("train")
    p = np.mean([np.asarray(src[i]["attributes"]) > 0 for i in range(len(src))], axis=0)
    p = np.clip(p, 1e-6, 1 - 1e-6)
    want = np.stack([0.5 / (1 - p), 0.5 / p]).astype(np.float32)
    np.testing.assert_allclose(jax.device_get(state.task_state["class_weights"]), want, rtol=1e-6)
