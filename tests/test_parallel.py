"""jaxface.parallel: what the environment asked for, compared with the cluster JAX formed
(this test session: one process, 8 CPU devices)."""

import jax
import numpy as np
import pytest

from jaxface import parallel

SCHEDULER_VARS = (
    "SLURM_JOB_ID", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS", "SLURM_NNODES",
    "SLURM_STEP_NUM_NODES", "SLURM_GPUS_ON_NODE", "SLURM_STEP_ID", "SLURM_STEPID",
    "TPU_WORKER_HOSTNAMES", "TPU_WORKER_ID", "JAXFACE_COORDINATOR", "JAXFACE_NUM_PROCESSES",
    "JAXFACE_PROCESS_ID", "JAXFACE_EXPECTED_DEVICES",
)  # fmt: skip


@pytest.fixture
def env(monkeypatch):
    for k in SCHEDULER_VARS:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def _slurm(env, tasks, procid, nodes, gpus, step="0"):
    env.setenv("SLURM_JOB_ID", "4242")
    env.setenv("SLURM_STEP_ID", step)
    env.setenv("SLURM_NTASKS", str(tasks))
    env.setenv("SLURM_PROCID", str(procid))
    env.setenv("SLURM_STEP_NUM_NODES", str(nodes))
    if gpus is not None:
        env.setenv("SLURM_GPUS_ON_NODE", str(gpus))


def test_no_scheduler_expects_nothing(env):
    assert parallel.expected_cluster() is None and parallel.cluster_detected() is None
    parallel.check_cluster()  # nothing to compare with
    assert not parallel.maybe_initialize()


def test_slurm_expectation(env):
    _slurm(env, tasks=16, procid=9, nodes=2, gpus=8)
    e = parallel.expected_cluster()
    assert (e.processes, e.process_id, e.devices) == (16, 9, 16)
    assert e.describe() == (
        "SLURM job 4242 step 0 asked for 16 processes, 16 devices (2 node(s) x SLURM_GPUS_ON_NODE=8)"
    )
    assert parallel.mismatches(e, 16, 9, 16) == []
    # Per-gpu tasks on 8-GPU nodes but only 4 tasks per node: half the GPUs unused.
    assert parallel.mismatches(e, 8, 9, 8) == [
        "16 processes asked, 8 formed",
        "16 global devices asked, 8 formed",
    ]
    assert parallel.mismatches(e, 16, 3, 16) == ["process id 9 asked, JAX says 3"]
    env.setenv("JAXFACE_EXPECTED_DEVICES", "8")  # an explicit expectation wins
    assert parallel.expected_cluster().devices == 8


def test_tpu_and_explicit_expectations(env):
    env.setenv("TPU_WORKER_HOSTNAMES", "w0,w1,w2,w3")
    env.setenv("TPU_WORKER_ID", "2")
    e = parallel.expected_cluster()
    assert parallel.cluster_detected() == "tpu"
    assert (e.processes, e.process_id, e.devices) == (4, 2, None)
    env.setenv("JAXFACE_COORDINATOR", "127.0.0.1:1234")
    env.setenv("JAXFACE_NUM_PROCESSES", "2")
    env.setenv("JAXFACE_PROCESS_ID", "1")
    env.setenv("JAXFACE_EXPECTED_DEVICES", "8")
    e = parallel.expected_cluster()
    assert parallel.cluster_detected() == "explicit"
    assert (e.processes, e.process_id, e.devices) == (2, 1, 8)


def test_check_cluster_names_both_sides(env):
    # A one-task SLURM step on a node with 4 GPUs, where JAX formed 8 (CPU) devices.
    _slurm(env, tasks=1, procid=0, nodes=1, gpus=4)
    assert parallel.cluster_detected() is None  # one task: nothing to initialise...
    with pytest.raises(parallel.ClusterMismatchError) as e:
        parallel.maybe_initialize()  # ...but the formed cluster is still checked
    assert str(e.value) == (
        "SLURM job 4242 step 0 asked for 1 processes, 4 devices (1 node(s) x SLURM_GPUS_ON_NODE=4), "
        f"but JAX formed 1 processes (this is process 0) with {jax.local_device_count()} local / "
        f"{jax.device_count()} global cpu devices: 4 global devices asked, {jax.device_count()} formed"
    )
    env.setenv("SLURM_GPUS_ON_NODE", str(jax.device_count()))
    parallel.check_cluster()


def test_cluster_line(env):
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()).reshape(-1, 2), ("data", "model"))
    line = parallel.cluster_line(mesh)
    n = jax.device_count()
    assert line.startswith("cluster: process 0 of 1 on ")
    assert line.endswith(
        f"(single process), {n} local / {n} global cpu devices, mesh data={n // 2} x model=2"
    )
    _slurm(env, tasks=1, procid=0, nodes=1, gpus=n)
    assert parallel.cluster_line(mesh).endswith(
        f"; SLURM job 4242 step 0 asked for 1 processes, {n} devices (1 node(s) x SLURM_GPUS_ON_NODE={n})"
    )
