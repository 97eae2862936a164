"""The one trainer: ``train_and_evaluate(config, workdir)``.

* a device mesh over every device (axes ``("data", "model")``; ``model`` has size
  ``config.model_parallel``, 1 by default), the train state placed with
  ``NamedSharding`` (replicated unless the task says otherwise), the batch sharded
  on ``data``;
* one jitted train step with donated state; optional gradient accumulation over
  ``config.grad_accum_steps`` microbatches; per-host / per-device batch sizes are
  derived from the global ``config.batch_size``; a non-finite loss or gradient skips the
  update (params, optimizer and model state are kept) and is counted; after
  ``config.max_consecutive_nonfinite`` in a row the run stops with the last good
  checkpoint intact;
* **precision contract** (``config.compute_dtype``, ``float32`` or ``bfloat16``), the
  same for every task:

  - cast to the compute dtype inside the step: the floating parameters (a bf16 copy of
    the fp32 master params) and only the batch fields the task names in
    ``Task.compute_fields`` (its image inputs). Nothing else in the batch is cast:
    geometry (boxes, landmarks, yaw, sizes, scales), labels, masks and targets keep
    their fp32 / integer dtype;
  - logits are promoted to fp32 before any softmax, log-sum-exp, margin or sigmoid,
    and every loss and metric reduction runs in fp32 (each task does this on its
    model outputs; tests read the lowered step's HLO to hold them to it);
  - BatchNorm statistics, gradients, optimizer state and stored params stay fp32;
* model parallelism: ``config.model_parallel`` devices form the mesh's ``model`` axis;
  the task says which parameters are split over it (`Task.param_partition`, e.g. the
  recognition classifier by class), their optimizer state is split the same way, and
  a task with nothing to split refuses ``model_parallel > 1``;
* ``clu.metrics`` averages inside the step, ``clu.metric_writers`` (TensorBoard +
  log), ``jaxface.progress`` (compilation time; steps/s and ETA);
* evaluators from ``config.evals`` every ``config.eval_every`` steps and at the end;
* orbax checkpoints every ``config.checkpoint_every`` steps keeping
  ``config.keep_checkpoints``; resume order: the workdir's latest checkpoint, then
  ``config.init_from`` (params and model state only), then the task's pretrained
  weights (`Task.load_pretrained`, e.g. a torchvision backbone), then scratch. The data order
  is a function of the step (`jaxface.data.pipeline`), so a resumed run sees
  exactly the batches an uninterrupted run would;
* SIGTERM / SIGINT: the current step finishes, a checkpoint is written, the run
  returns with ``status == "preempted"``;
* a checkpoint holding non-finite parameters is never written;
* a checkpoint is committed atomically by orbax (written to a temporary directory,
  renamed when complete), so a process killed while writing one leaves the previous
  checkpoint as the latest loadable one; the half-written directory is ignored.

Fault injection (tests only; no effect unless the variable is set):
``JAXFACE_FAULT_SLEEP_IN_SAVE=<step>`` makes the save of checkpoint ``<step>`` stop
after every array is written and before orbax commits it (the rename), create
``<workdir>/FAULT_SLEEPING_IN_SAVE`` and sleep, so a test can SIGKILL the process at
the worst moment of a checkpoint write, deterministically
(tests/test_reliability.py::test_sigkill_during_checkpoint_write_keeps_previous).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import metric_writers, metrics as clu_metrics
import orbax.checkpoint as ocp

from jaxface import config as config_lib
from jaxface import tasks as tasks_lib
from jaxface import parallel
from jaxface import progress
from jaxface import workdir_lock
from jaxface.data import pipeline
from jaxface.tasks.base import EvalContext, Task
from jaxface.training.checkpoints import (  # noqa: F401  (public names of jaxface.train)
    FAULT_MARKER,
    FAULT_SLEEP_IN_SAVE,
    abstract_like,
    make_checkpoint_manager,
    restore_partial,
    restore_state,
    restore_weights,
    save_checkpoint,
    tree_all_finite,
    tree_finite,
)
from jaxface.training.optimizer import make_optimizer, make_schedule, optimizer_for  # noqa: F401
from jaxface.training.precision import cast_batch, cast_params
from jaxface.training.preemption import PreemptionFlag


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    model_state: Any
    opt_state: Any
    task_state: Any
    nonfinite_consecutive: jax.Array
    nonfinite_total: jax.Array


class NonFiniteError(RuntimeError):
    """Raised when too many consecutive steps produced non-finite values."""


# ---------------------------------------------------------------------------------
# Mesh
# ---------------------------------------------------------------------------------


def create_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
    """A ``("data", "model")`` mesh over every device (of every host)."""
    devices = np.asarray(jax.devices())
    model = int(config.get("model_parallel", 1))
    if devices.size % model:
        raise ValueError(f"config.model_parallel={model} does not divide {devices.size} devices")
    return jax.sharding.Mesh(
        devices.reshape(-1, model), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2
    )


# ---------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainResult:
    status: str  # "finished" | "preempted" | "stopped" (stop_at_step)
    step: int
    eval_results: dict[str, float]
    train_metrics: dict[str, float]
    wall_time_s: float
    nonfinite_total: int
    data_report: str


def _train_data(config: ml_collections.ConfigDict):
    """The training (source, transform) of ``config``'s task, built anew (in a loader
    worker process: `pipeline.BatchLoader` with ``config.data_processes``)."""
    task = tasks_lib.get_task(config.task)(config)
    return task.data(config.train_split, train=True)


class Trainer:
    """Builds the task, mesh, state and step for a config. Used by
    :func:`train_and_evaluate` and by ``jaxface eval``; rarely needed directly."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        self.config = config
        self.workdir = workdir
        self.mesh = create_mesh(config)
        self.task: Task = tasks_lib.get_task(config.task)(config)
        self.task.mesh = self.mesh
        data_parallel = jax.device_count() // int(config.model_parallel)
        self.global_batch = int(config.batch_size)
        accum = int(config.grad_accum_steps)
        if accum < 1:
            raise ValueError(f"config.grad_accum_steps={accum} must be >= 1")
        if self.global_batch % (data_parallel * accum):
            raise ValueError(
                f"config.batch_size={self.global_batch} must be divisible by the "
                f"data-parallel size {data_parallel} (devices / model_parallel)"
                + (f" times config.grad_accum_steps={accum}" if accum > 1 else "")
            )
        if self.global_batch % jax.process_count():
            raise ValueError(
                f"config.batch_size={self.global_batch} must be divisible by the "
                f"number of processes {jax.process_count()}"
            )
        # Derived from the global batch, never configured separately.
        self.per_host_batch = self.global_batch // jax.process_count()
        self.per_device_batch = self.global_batch // data_parallel
        self.per_device_microbatch = self.per_device_batch // accum
        if jnp.dtype(config.compute_dtype) not in (jnp.float32, jnp.bfloat16):
            raise ValueError(
                f"config.compute_dtype={config.compute_dtype!r}: expected float32 or bfloat16"
            )
        self.replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        self.batch_sharding = jax.sharding.NamedSharding(
            self.mesh, jax.sharding.PartitionSpec("data")
        )
        self.ctx = EvalContext(
            mesh=self.mesh,
            workdir=workdir,
            step=0,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        self.metric_names = ("loss",) + tuple(self.task.metric_names())
        self.collection = clu_metrics.Collection.create(
            **{k: clu_metrics.Average.from_output(k) for k in self.metric_names}
        )
        self._tx = None  # `optimizer`: built once

    # -- data ------------------------------------------------------------------
    def train_loader(self) -> pipeline.BatchLoader:
        source, transform = self.task.data(self.config.train_split, train=True)
        sampler = pipeline.IndexSampler(len(source), self.global_batch, seed=int(self.config.seed))
        return pipeline.BatchLoader(
            source,
            sampler,
            transform,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            num_workers=int(self.config.data_workers),
            prefetch=int(self.config.prefetch),
            name="train",
            processes=int(self.config.get("data_processes", 0)),
            make_data=functools.partial(_train_data, self.config),
        )

    # -- state -----------------------------------------------------------------
    def _init_state(self, rng, batch):
        vrng, trng = jax.random.split(rng)
        variables = dict(self.task.init_variables(vrng, batch))
        params = variables.pop("params")
        tx = self.optimizer(params)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            model_state=variables,
            opt_state=tx.init(params),
            task_state=self.task.init_task_state(trng, {"params": params, **variables}),
            nonfinite_consecutive=jnp.zeros((), jnp.int32),
            nonfinite_total=jnp.zeros((), jnp.int32),
        )

    def optimizer(self, params):
        """The optimizer (`jaxface.training.optimizer.optimizer_for`), built on the first
        call (from the parameters or their shapes) and the same object afterwards."""
        if self._tx is None:
            self._tx = optimizer_for(self.config, self.task, params)
        return self._tx

    def state_sharding(self, abstract_state):
        """Replicated, except the parameters the task splits over the ``model`` axis
        (`Task.param_partition`) and their optimizer state, which is split the same way."""
        P = jax.sharding.PartitionSpec
        specs = self.task.param_partition(abstract_state.params)
        mp = int(self.config.model_parallel)
        uses_model = any(
            "model" in jax.tree.leaves(tuple(s))
            for s in jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
        )
        if mp > 1 and not uses_model:
            raise ValueError(
                f"config.model_parallel={mp}: task {self.task.name!r} has no parameter to split "
                "over the 'model' axis (only the recognition classifier is); set model_parallel=1"
            )
        param_sh = jax.tree.map(
            lambda s: jax.sharding.NamedSharding(self.mesh, s),
            specs,
            is_leaf=lambda x: isinstance(x, P),
        )
        # An optimizer-state leaf whose key path ends with a parameter's path and has its
        # shape (momentum, Adam moments, under any chain / mask) is split like it.
        by_path = {
            tuple(path): (leaf.shape, sh)
            for (path, leaf), sh in zip(
                jax.tree_util.tree_leaves_with_path(abstract_state.params),
                jax.tree.leaves(param_sh),
            )
        }

        def opt_leaf_sharding(path, leaf):
            for start in range(len(path)):
                hit = by_path.get(tuple(path[start:]))
                if hit is not None and hit[0] == getattr(leaf, "shape", None):
                    return hit[1]
            return self.replicated

        opt_sh = jax.tree_util.tree_map_with_path(opt_leaf_sharding, abstract_state.opt_state)
        rep = lambda tree: jax.tree.map(lambda _: self.replicated, tree)
        return abstract_state.replace(
            step=self.replicated,
            params=param_sh,
            model_state=rep(abstract_state.model_state),
            opt_state=opt_sh,
            task_state=rep(abstract_state.task_state),
            nonfinite_consecutive=self.replicated,
            nonfinite_total=self.replicated,
        )

    def init_state(self, example_batch: Mapping[str, np.ndarray]):
        batch = self.ctx.to_global(example_batch)
        rng = jax.random.key(int(self.config.seed))
        abstract = jax.eval_shape(self._init_state, rng, batch)
        sharding = self.state_sharding(abstract)
        state = jax.jit(self._init_state, out_shardings=sharding)(rng, batch)
        return state, sharding

    # -- step ------------------------------------------------------------------
    def make_train_step(self, state_sharding):
        task, collection = self.task, self.collection

        accum = int(self.config.grad_accum_steps)
        compute_dtype = jnp.dtype(self.config.compute_dtype)

        params_to_compute = functools.partial(cast_params, dtype=compute_dtype)
        batch_to_compute = functools.partial(
            cast_batch, fields=tuple(task.compute_fields), dtype=compute_dtype
        )

        def like(tree, ref):
            return jax.tree.map(lambda x, r: x.astype(r.dtype), tree, ref)

        def micro_grads(params, model_state, batch, rng, task_state):
            def loss_fn(p):
                # Model state (BatchNorm statistics) stays fp32: flax promotes where it meets it.
                loss, (ms, aux) = task.loss(
                    params_to_compute(p), model_state, batch_to_compute(batch), rng, task_state
                )
                if loss.dtype != jnp.float32:
                    raise TypeError(
                        f"task {task.name!r} returned a {loss.dtype} loss; the precision "
                        "contract (jaxface.train) wants every loss reduction in float32"
                    )
                return loss, (like(ms, model_state), aux)

            (loss, (ms, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            return loss, ms, {k: jnp.asarray(v, jnp.float32) for k, v in aux.items()}, grads

        def train_step(state: TrainState, batch, rng):
            tx = self.optimizer(state.params)
            step_rng = jax.random.fold_in(rng, state.step)

            if accum == 1:
                loss, new_model_state, aux, grads = micro_grads(
                    state.params, state.model_state, batch, step_rng, state.task_state
                )
            else:
                # Microbatch i takes rows i, i + k, i + 2k, ...: every device contributes to each
                # microbatch, so all of them stay busy. Gradients and metrics are averaged; the
                # model state (e.g. BatchNorm statistics) is threaded through the microbatches.
                micro = jax.tree.map(
                    lambda x: x.reshape((x.shape[0] // accum, accum) + x.shape[1:]).swapaxes(0, 1),
                    batch,
                )

                def body(carry, xs):
                    model_state, g_sum, i = carry
                    mb = xs
                    loss, ms, aux, g = micro_grads(
                        state.params,
                        model_state,
                        mb,
                        jax.random.fold_in(step_rng, i),
                        state.task_state,
                    )
                    g_sum = jax.tree.map(jnp.add, g_sum, g)
                    return (ms, g_sum, i + 1), (loss, aux)

                zeros = jax.tree.map(jnp.zeros_like, state.params)
                (new_model_state, g_sum, _), (losses, auxs) = jax.lax.scan(
                    body, (state.model_state, zeros, jnp.zeros((), jnp.int32)), micro
                )
                grads = jax.tree.map(lambda g: g / accum, g_sum)
                loss = jnp.mean(losses)
                aux = {k: jnp.mean(v) for k, v in auxs.items()}

            updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
            new_params = optax.apply_updates(state.params, updates)
            finite = jnp.isfinite(loss) & tree_finite(grads) & tree_finite(new_params)
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
            new_state = state.replace(
                step=state.step + 1,
                params=keep(new_params, state.params),
                opt_state=keep(new_opt_state, state.opt_state),
                model_state=keep(new_model_state, state.model_state),
                nonfinite_consecutive=jnp.where(finite, 0, state.nonfinite_consecutive + 1),
                nonfinite_total=state.nonfinite_total + jnp.where(finite, 0, 1),
            )
            outputs = {"loss": loss, **aux}
            outputs = {k: jnp.where(finite, v, 0.0) for k, v in outputs.items()}
            metrics = collection.single_from_model_output(
                mask=finite[None], **{k: v[None] for k, v in outputs.items()}
            )
            return new_state, metrics

        return jax.jit(
            train_step,
            in_shardings=(state_sharding, self.batch_sharding, self.replicated),
            out_shardings=(state_sharding, self.replicated),
            donate_argnums=(0,),
        )

    # -- checkpoints -------------------------------------------------------------
    def restore(self, mngr: ocp.CheckpointManager, state, sharding):
        """Resume order: latest checkpoint in workdir, then config.init_from, then the task's
        pretrained weights (`Task.load_pretrained`), then scratch."""
        latest = mngr.latest_step()
        if latest is not None:
            logging.info("resuming from %s step %d", mngr.directory, latest)
            restored = restore_state(
                mngr, abstract_like(state, sharding), latest, explain_mismatch=True
            )
            return restored, f"resumed from step {latest}"
        init_from = self.config.init_from
        if init_from:
            params, model_state, step = restore_weights(
                init_from, state.params, state.model_state, sharding.params, sharding.model_state
            )
            logging.info("initialised params from %s step %d", init_from, step)
            return state.replace(
                params=params, model_state=model_state
            ), f"init_from {init_from}@{step}"
        loaded = self.task.load_pretrained(state.params, state.model_state)
        if loaded is not None:
            params, model_state, what = loaded
            params = jax.tree.map(jax.device_put, params, sharding.params)
            model_state = jax.tree.map(jax.device_put, model_state, sharding.model_state)
            logging.info("initialised from %s", what)
            return state.replace(params=params, model_state=model_state), what
        return state, "from scratch"

    def save(
        self, mngr: ocp.CheckpointManager, state: TrainState, step: int, *, force=False
    ) -> bool:
        return save_checkpoint(mngr, state, step, force=force, workdir=self.workdir)

    # -- evaluation ---------------------------------------------------------------
    def evaluate(self, state, step: int, writer=None) -> dict[str, float]:
        self.ctx.step = step
        self.ctx.writer = writer
        evaluators = self.task.evaluators()
        names = list(self.config.evals or [])
        unknown = [n for n in names if n not in evaluators]
        if unknown:
            raise ValueError(
                f"config.evals names unknown evaluators {unknown}; task {self.task.name!r} "
                f"offers {sorted(evaluators)}"
            )
        results = {}
        for name in names:
            t0 = time.time()
            out = evaluators[name](state, self.ctx)
            results.update({f"{name}/{k}": float(v) for k, v in out.items()})
            results[f"{name}/eval_time_s"] = time.time() - t0
        return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainResult:
    """Trains ``config.task`` for ``config.num_train_steps`` steps in ``workdir``.

    The config is validated first (`jaxface.config.validate`), and the run holds the
    workdir's lock (`jaxface.workdir_lock`): a second run into a live workdir is refused."""
    config_lib.validate(config)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise NotADirectoryError(f"--workdir {workdir}: exists and is not a directory")
    lock = workdir_lock.acquire_for_run(workdir)
    try:
        return _train_and_evaluate(config, workdir)
    finally:
        if lock is not None:
            lock.release()


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainResult:
    t_start = time.time()
    os.makedirs(workdir, exist_ok=True)
    trainer = Trainer(config, workdir)
    parallel.log_cluster(trainer.mesh)
    is_chief = jax.process_index() == 0
    writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)
    if is_chief:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))

    with progress.Phase("setting up the data loader, the initial state and any checkpoint"):
        loader = trainer.train_loader()
        state, sharding = trainer.init_state(loader.batch(0))
        mngr = make_checkpoint_manager(workdir, config)
        state, origin = trainer.restore(mngr, state, sharding)
    start_step = int(state.step)
    num_steps = int(config.num_train_steps)
    stop_at = int(config.stop_at_step) or num_steps
    logging.info(
        "task %s: %s, step %d/%d; %d device(s), %d process(es); batch %d "
        "(%d/host, %d/device, %d/device/microbatch), %s",
        config.task,
        origin,
        start_step,
        num_steps,
        jax.device_count(),
        jax.process_count(),
        trainer.global_batch,
        trainer.per_host_batch,
        trainer.per_device_batch,
        trainer.per_device_microbatch,
        config.compute_dtype,
    )
    logging.info("config: %s (all fields: config.json)", progress.config_summary(config))
    logging.debug("config:\n%s", config)
    if start_step == 0:
        writer.write_hparams(
            {
                k: v
                for k, v in _flatten(config.to_dict()).items()
                if isinstance(v, (int, float, str, bool))
            }
        )

    train_step = trainer.make_train_step(sharding)
    # Made under jit so it is a global array on every host (device_put of a host value
    # to a sharding spanning other processes' devices is not allowed).
    rng = jax.jit(lambda: jax.random.key(int(config.seed) + 1), out_shardings=trainer.replicated)()
    report = progress.report_progress(
        num_train_steps=num_steps,
        writer=writer,
        every_steps=int(config.log_every),
        every_secs=10.0,  # a progress line at least every 10 s of training
    )
    compiling = progress.FirstCall("compiling the train step", "compiled the train step")
    hooks = trainer.task.hooks()
    log_every, eval_every = int(config.log_every), int(config.eval_every)
    ckpt_every = int(config.checkpoint_every)
    max_nonfinite = int(config.max_consecutive_nonfinite)
    train_metrics, last_train = None, {}
    eval_results: dict[str, float] = {}
    status = "finished"

    for hook in hooks:
        if hook.at_start and start_step == 0:
            with report.timed(hook.name), progress.Phase(f"{hook.name} before step 1"):
                t0 = time.time()
                trainer.ctx.step = 0
                state = hook.fn(state, trainer.ctx)
                writer.write_scalars(0, {f"hooks/{hook.name}_time_s": time.time() - t0})

    batches = loader.iterate(start_step)
    step = start_step
    with PreemptionFlag() as preempt:
        while step < min(num_steps, stop_at):
            batch = trainer.ctx.to_global(next(batches))
            with compiling:
                state, m = train_step(state, batch, rng)
            step += 1
            train_metrics = m if train_metrics is None else train_metrics.merge(m)
            report(step)
            epoch_before = ((step - 1) * trainer.global_batch) // loader.sampler.num_records
            if (step * trainer.global_batch) // loader.sampler.num_records != epoch_before:
                if loader.report():  # unreadable records so far, named, at each epoch end
                    logging.warning(
                        "end of epoch %d (step %d): %s", epoch_before, step, loader.report()
                    )

            for hook in hooks:
                if hook.every_steps and step % hook.every_steps == 0 and step < num_steps:
                    t0 = time.time()
                    with report.timed(hook.name):
                        trainer.ctx.step = step
                        state = hook.fn(state, trainer.ctx)
                    writer.write_scalars(step, {f"hooks/{hook.name}_time_s": time.time() - t0})

            if step % log_every == 0 or step == num_steps:
                nonfinite = int(state.nonfinite_consecutive)
                last_train = {f"train/{k}": float(v) for k, v in train_metrics.compute().items()}
                last_train["train/nonfinite_total"] = int(state.nonfinite_total)
                writer.write_scalars(step, last_train)
                train_metrics = None
                if nonfinite >= max_nonfinite:
                    mngr.wait_until_finished()
                    raise NonFiniteError(
                        f"{nonfinite} consecutive steps up to step {step} had a non-finite loss or gradient "
                        f"(config.max_consecutive_nonfinite={max_nonfinite}); updates were skipped, the last "
                        f"good checkpoint (step {mngr.latest_step()}) is intact in {mngr.directory}"
                    )

            if step % ckpt_every == 0 or step in (num_steps, stop_at):
                with report.timed("checkpoint"):
                    trainer.save(mngr, state, step)

            if step % eval_every == 0 or step == num_steps:
                with report.timed("eval"), progress.Phase(f"evaluating step {step}"):
                    eval_results = trainer.evaluate(state, step, writer)
                writer.write_scalars(step, {f"eval/{k}": v for k, v in eval_results.items()})

            if preempt.is_set(step, sync_every=log_every):
                if mngr.latest_step() != step:
                    trainer.save(mngr, state, step, force=True)
                status = "preempted"
                logging.warning(
                    "preempted (%s) at step %d; checkpoint saved", preempt.received, step
                )
                break

    if status == "finished" and step < num_steps:
        status = "stopped"
    mngr.wait_until_finished()
    mngr.close()
    writer.flush()
    loader.close()
    if loader.report():
        logging.warning("%s", loader.report())
    result = TrainResult(
        status=status,
        step=step,
        eval_results=eval_results,
        train_metrics=last_train,
        wall_time_s=time.time() - t_start,
        nonfinite_total=int(state.nonfinite_total),
        data_report=loader.report(),
    )
    if is_chief:
        with open(os.path.join(workdir, "result.json"), "w") as f:
            json.dump(dataclasses.asdict(result), f, indent=2)
    return result


def load_state(config: ml_collections.ConfigDict, workdir: str, step: int | None = None):
    """``(trainer, state, step)`` restored from a checkpoint of ``workdir`` (latest by default)."""
    trainer = Trainer(config, workdir)
    # Shapes from the config (`Task.example_batch`): restoring reads no data.
    state, sharding = trainer.init_state(trainer.task.example_batch(trainer.per_host_batch))
    mngr = make_checkpoint_manager(workdir, config)
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}")
    if step not in mngr.all_steps():
        raise FileNotFoundError(
            f"no checkpoint of step {step} in {mngr.directory}; "
            f"available: {sorted(mngr.all_steps())}"
        )
    try:
        state = restore_state(mngr, abstract_like(state, sharding), step)
    finally:
        mngr.close()
    return trainer, state, step


def evaluate_checkpoint(
    config: ml_collections.ConfigDict, workdir: str, step: int | None = None
) -> dict[str, float]:
    """Runs the config's evaluators on a checkpoint of ``workdir`` (latest by default)."""
    trainer, state, step = load_state(config, workdir, step)
    return trainer.evaluate(state, step)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out
