"""The one trainer: sharded smoke run, exact resume, preemption, non-finite guard."""

import os
import pathlib
import signal

import jax
import numpy as np
import pytest

from jaxface import train
from jaxface.data import pipeline
from jaxface.quickstart import load_config
from jaxface.tasks import base as task_base

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def tiny_config(tfds_dir, **overrides):
    c = load_config(REPO / "configs" / "lmle.py", "tiny")
    c.data.data_dir = tfds_dir
    c.async_checkpointing = False
    for k, v in overrides.items():
        c[k] = v
    return c


def params_of(config, workdir):
    _, state, step = train.load_state(config, workdir)
    return step, jax.device_get(state.params), jax.device_get(state.opt_state)


def test_eight_devices():
    assert jax.device_count() == 8


def test_smoke_fixed_batch_loss_decreases(tfds_dir, tmp_path):
    """Eight devices, a fixed batch, a few steps: the loss goes down and the batch is sharded."""
    config = tiny_config(tfds_dir)
    config.optimizer.schedule = "constant"
    trainer = train.Trainer(config, str(tmp_path))
    source, transform = trainer.task.data("train", train=False)
    batch = pipeline.collate(
        [transform(source[i], np.random.default_rng(i)) for i in range(config.batch_size)]
    )
    state, sharding = trainer.init_state(batch)
    step_fn = trainer.make_train_step(sharding)
    gbatch = trainer.ctx.to_global(batch)
    assert len(gbatch["image"].sharding.device_set) == 8
    rng = jax.random.key(0)
    losses = []
    for _ in range(8):
        state, metrics = step_fn(state, gbatch, rng)
        losses.append(float(metrics.compute()["loss"]))
    assert int(state.step) == 8
    assert np.all(np.isfinite(losses))
    assert np.all(np.diff(losses) < 0), losses  # every step lowers it on a fixed batch
    assert losses[-1] < losses[0] * 0.95, losses


def test_resume_is_exact(tfds_dir, tmp_path):
    """2N steps straight == N steps, stop, resume N steps (parameters and optimizer state).
    The stop writes its own checkpoint (checkpoint_every is larger than the run)."""
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    n = 3
    r = train.train_and_evaluate(
        tiny_config(tfds_dir, num_train_steps=2 * n, checkpoint_every=n), straight
    )
    assert r.status == "finished" and r.step == 2 * n
    r1 = train.train_and_evaluate(
        tiny_config(tfds_dir, num_train_steps=2 * n, checkpoint_every=100, stop_at_step=n), split
    )
    assert r1.step == n and r1.status == "stopped"
    r2 = train.train_and_evaluate(
        tiny_config(tfds_dir, num_train_steps=2 * n, checkpoint_every=n), split
    )
    assert r2.step == 2 * n
    cfg = tiny_config(tfds_dir, num_train_steps=2 * n)
    s_a, p_a, o_a = params_of(cfg, straight)
    s_b, p_b, o_b = params_of(cfg, split)
    assert s_a == s_b == 2 * n
    jax.tree.map(np.testing.assert_array_equal, p_a, p_b)
    jax.tree.map(np.testing.assert_array_equal, o_a, o_b)
    # ...and training moved them between steps N and 2N: the comparison is not vacuous.
    _, state_n, _ = train.load_state(cfg, split, step=n)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(jax.device_get(state_n.params)), jax.tree.leaves(p_a))
    )


def _signal_hook(at_step, signum):
    def fn(state, ctx):
        if ctx.step == at_step:
            os.kill(os.getpid(), signum)
        return state

    return task_base.Hook(name="send_signal", every_steps=1, fn=fn)


@pytest.mark.parametrize("signum", [signal.SIGTERM])
def test_sigterm_saves_and_resume_matches(tfds_dir, tmp_path, monkeypatch, signum):
    """SIGTERM mid-run: checkpoint at that step, status "preempted"; resuming ends with the
    parameters of an uninterrupted run."""
    from jaxface.tasks import attributes

    total = 6
    straight, preempted = str(tmp_path / "straight"), str(tmp_path / "preempted")
    train.train_and_evaluate(tiny_config(tfds_dir, num_train_steps=total), straight)
    monkeypatch.setattr(attributes.AttributesTask, "hooks", lambda self: [_signal_hook(2, signum)])
    r = train.train_and_evaluate(tiny_config(tfds_dir, num_train_steps=total), preempted)
    assert r.status == "preempted" and r.step == 2
    step, _, _ = params_of(tiny_config(tfds_dir), preempted)
    assert step == 2
    monkeypatch.setattr(attributes.AttributesTask, "hooks", lambda self: [])
    r = train.train_and_evaluate(tiny_config(tfds_dir, num_train_steps=total), preempted)
    assert r.status == "finished" and r.step == total
    _, p_a, _ = params_of(tiny_config(tfds_dir), straight)
    _, p_b, _ = params_of(tiny_config(tfds_dir), preempted)
    jax.tree.map(np.testing.assert_array_equal, p_a, p_b)


def test_nonfinite_updates_are_skipped_and_stop_the_run(tfds_dir, tmp_path, monkeypatch):
    """A NaN loss skips the update (params unchanged, counted); K in a row stops the run and
    the last good checkpoint stays loadable and finite."""
    from jaxface.tasks import attributes

    original_loss = attributes.AttributesTask.loss

    def poisoned(self, params, model_state, batch, rng, task_state):
        loss, aux = original_loss(self, params, model_state, batch, rng, task_state)
        return loss * jax.numpy.where(batch["attributes"].sum() >= 0, jax.numpy.nan, 1.0), aux

    workdir = str(tmp_path / "run")
    good = tiny_config(tfds_dir, num_train_steps=2, checkpoint_every=2)
    train.train_and_evaluate(good, workdir)
    _, p_good, _ = params_of(good, workdir)
    monkeypatch.setattr(attributes.AttributesTask, "loss", poisoned)
    bad = tiny_config(
        tfds_dir, num_train_steps=12, checkpoint_every=1, log_every=1, max_consecutive_nonfinite=3
    )
    with pytest.raises(train.NonFiniteError, match="3 consecutive steps"):
        train.train_and_evaluate(bad, workdir)
    monkeypatch.setattr(attributes.AttributesTask, "loss", original_loss)
    _, state, _ = train.load_state(good, workdir)
    assert train.tree_all_finite(state.params)
    assert int(state.nonfinite_total) >= 1  # skipped steps are counted in the state
    jax.tree.map(np.testing.assert_array_equal, p_good, jax.device_get(state.params))


def test_batch_size_must_divide_devices(tfds_dir, tmp_path):
    with pytest.raises(ValueError, match="divisible by the data-parallel size 8"):
        train.Trainer(tiny_config(tfds_dir, batch_size=12), str(tmp_path))


def test_resume_from_a_different_model_is_a_clear_error(tfds_dir, tmp_path):
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(tiny_config(tfds_dir, num_train_steps=1), workdir)
    other = tiny_config(tfds_dir, num_train_steps=2)
    other.model.widths = [8, 32]
    # Found from the checkpoint's metadata before orbax reads an array (no pending reads
    # are left behind), naming a parameter whose shape differs.
    with pytest.raises(ValueError, match=r"does not match the train state.*checkpoint \(") as err:
        train.train_and_evaluate(other, workdir)
    assert "truncated" not in str(err.value)


def _fixed_batch(trainer, n):
    source, transform = trainer.task.data("train", train=False)
    return pipeline.collate([transform(source[i], np.random.default_rng(i)) for i in range(n)])


def test_grad_accumulation_averages_microbatch_gradients(tfds_dir, tmp_path):
    """One step with k microbatches == an SGD step on the mean of the k microbatch
    gradients computed independently (microbatch i = rows i, i+k, ...)."""
    k, lr = 2, 0.05
    config = tiny_config(tfds_dir, grad_accum_steps=k)
    config.optimizer.name, config.optimizer.schedule = "sgd", "constant"
    config.optimizer.learning_rate, config.optimizer.momentum = lr, 0.0
    config.optimizer.weight_decay = 0.0
    trainer = train.Trainer(config, str(tmp_path))
    assert trainer.per_device_batch == config.batch_size // 8
    assert trainer.per_device_microbatch == trainer.per_device_batch // k
    batch = _fixed_batch(trainer, config.batch_size)
    state, sharding = trainer.init_state(batch)
    params0 = jax.device_get(state.params)
    model_state0 = jax.device_get(state.model_state)
    task_state0 = jax.device_get(state.task_state)
    grads = []
    for i in range(k):
        mb = {key: v[i::k] for key, v in batch.items()}
        g = jax.grad(
            lambda p: trainer.task.loss(p, model_state0, mb, jax.random.key(0), task_state0)[0]
        )(params0)
        grads.append(g)
    expected = jax.tree.map(lambda p, *gs: p - lr * sum(gs) / k, params0, *grads)
    step = trainer.make_train_step(sharding)
    state, _ = step(state, trainer.ctx.to_global(batch), jax.random.key(0))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6),
        jax.device_get(state.params),
        expected,
    )


def test_grad_accumulation_must_divide_the_batch(tfds_dir, tmp_path):
    with pytest.raises(ValueError, match="grad_accum_steps=3"):
        train.Trainer(tiny_config(tfds_dir, grad_accum_steps=3), str(tmp_path))


def test_bf16_compute_keeps_fp32_parameters(tfds_dir, tmp_path):
    losses = {}
    for dtype in ("float32", "bfloat16"):
        config = tiny_config(tfds_dir, compute_dtype=dtype)
        trainer = train.Trainer(config, str(tmp_path / dtype))
        batch = _fixed_batch(trainer, config.batch_size)
        state, sharding = trainer.init_state(batch)
        step = trainer.make_train_step(sharding)
        hlo = step.lower(state, trainer.ctx.to_global(batch), jax.random.key(0)).as_text()
        convs = [line for line in hlo.splitlines() if "stablehlo.convolution" in line]
        assert convs and all(("bf16" in line) == (dtype == "bfloat16") for line in convs)
        seen = []
        for _ in range(3):
            state, m = step(state, trainer.ctx.to_global(batch), jax.random.key(0))
            seen.append(float(m.compute()["loss"]))
        assert all(x.dtype == np.float32 for x in jax.tree.leaves(state.params))
        assert np.all(np.isfinite(seen)) and seen[-1] < seen[0]
        losses[dtype] = seen
    # Same initial parameters, so the first losses agree to bf16 precision (but differ).
    assert abs(losses["bfloat16"][0] - losses["float32"][0]) < 2e-2
    assert losses["bfloat16"][0] != losses["float32"][0]
