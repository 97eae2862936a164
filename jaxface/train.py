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

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from clu import metric_writers, metrics as clu_metrics
import orbax.checkpoint as ocp

from jaxface import config as config_lib
from jaxface import tasks as tasks_lib
from jaxface import parallel
from jaxface import progress
from jaxface import workdir_lock
from jaxface.data import pipeline, step_batches
from jaxface.tasks.base import EvalContext, Task
from jaxface.tasks.common import variables_of
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
from jaxface.training.eval_writer import evaluate_and_write
from jaxface.training.preemption import PreemptionFlag
from jaxface.training.state import TrainState, create_mesh, state_sharding
from jaxface.training.step import make_train_step


class NonFiniteError(RuntimeError):
    """Raised when too many consecutive steps produced non-finite values."""


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
    def train_loader(self) -> pipeline.BatchLoader | step_batches.StepBatches:
        whole = self.task.train_batches(
            self.config.train_split,
            self.global_batch,
            int(self.config.seed),
            jax.process_index(),
            jax.process_count(),
        )
        if whole is not None:
            return whole
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
        """Where each leaf of the state lives (`jaxface.training.state.state_sharding`)."""
        return state_sharding(self.task, self.mesh, self.config, abstract_state)

    def init_state(self, example_batch: Mapping[str, np.ndarray]):
        batch = self.ctx.to_global(example_batch)
        rng = jax.random.key(int(self.config.seed))
        abstract = jax.eval_shape(self._init_state, rng, batch)
        sharding = self.state_sharding(abstract)
        state = jax.jit(self._init_state, out_shardings=sharding)(rng, batch)
        return state, sharding

    # -- step ------------------------------------------------------------------
    def make_train_step(self, state_sharding):
        """The jitted train step (`jaxface.training.step.make_train_step`)."""
        return make_train_step(
            self.task,
            self.config,
            self.optimizer,
            self.collection,
            state_sharding,
            self.batch_sharding,
            self.replicated,
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
            fresh = set(self.task.fresh_collections)

            def weights(tree):
                return {k: v for k, v in tree.items() if k not in fresh}

            params, model_state, step = restore_weights(
                init_from,
                state.params,
                weights(state.model_state),
                sharding.params,
                weights(sharding.model_state),
                optional=self.task.init_from_optional(state.params),
            )
            model_state = {**state.model_state, **model_state}
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
        """The evaluators of ``config.evals`` on the state's variables at ``step``; their
        artefacts are written to the workdir (`jaxface.training.eval_writer`)."""
        self.ctx.step = step
        self.ctx.writer = writer
        return evaluate_and_write(
            self.task, list(self.config.evals or []), variables_of(state), self.ctx
        )


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
        try:
            state, origin = trainer.restore(mngr, state, sharding)
        except BaseException:
            mngr.close()  # no pending reads left behind on a failed restore
            loader.close()
            raise
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
        every_secs=9.0,  # a line every 9 s plus one step: at least every 10 s of training
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
                    with (
                        report.timed(hook.name),
                        progress.Phase(f"{hook.name} at step {step}", quiet=True),
                    ):
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
    try:
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}")
        if step not in mngr.all_steps():
            raise FileNotFoundError(
                f"no checkpoint of step {step} in {mngr.directory}; "
                f"available: {sorted(mngr.all_steps())}"
            )
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
