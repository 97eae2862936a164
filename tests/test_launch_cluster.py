"""The unmodified launch scripts, run end to end on emulated clusters (tests/fake_cluster.py:
sbatch / srun / scontrol / scancel / gcloud on PATH, every node and worker this host, CPU
devices standing in for GPUs and TPU chips), train to the same parameters as one process
with 8 devices:

* launch/slurm.sbatch, one task per "GPU" (2 tasks x 4 devices): one task is SIGKILLed
  mid-run; --kill-on-bad-exit ends the step, the script requeues, the requeued run
  resumes and finishes;
* launch/slurm.sbatch per node (2 nodes x 1 task x 4 devices): every task gets SIGTERM
  mid-run (what --signal=TERM@180 does); result.json says "preempted", the script
  requeues, the requeued run (SLURM_RESTART_COUNT=1) resumes and finishes;
* launch/tpu_pod.sh run: 2 TPU-VM workers x 4 devices;
* a job whose devices do not add up (SLURM asked for 8 GPUs, JAX formed 4 devices) fails
  at start-up with an error naming both.

Every run uses configs/lmle.py:tiny for 16 steps without evaluators; the tfds data and
JAX's compilation cache are shared by all runs of this module.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxface import train
from jaxface.quickstart import load_config

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "lmle.py") + ":tiny"
STEPS, CKPT_EVERY = 16, 4
# A run's last checkpoints come STEPS - CKPT_EVERY steps after the first one, which is
# when the tests interrupt it: plenty of time for the signal to land mid-run.
OVERRIDES = [
    f"--config.num_train_steps={STEPS}",
    f"--config.checkpoint_every={CKPT_EVERY}",
    f"--config.eval_every={STEPS}",
    "--config.evals=()",  # what is launched and trained is under test here, not evaluation
]


def _config(tfds_dir):
    c = load_config(REPO / "configs" / "lmle.py", "tiny")
    c.data.data_dir = tfds_dir
    c.num_train_steps, c.checkpoint_every, c.eval_every = STEPS, CKPT_EVERY, STEPS
    c.evals = ()
    return c


def _params(tfds_dir, workdir):
    _, state, _ = train.load_state(_config(tfds_dir), workdir)
    return int(state.step), jax.device_get(state.params)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The 1 x 8 reference run (in this process, 8 devices) and what the emulated runs
    share: its tfds data, a compilation cache, the fake tools on PATH."""
    root = tmp_path_factory.mktemp("cluster")
    tfds_dir = str(root / "tfds")
    r = train.train_and_evaluate(_config(tfds_dir), str(root / "one"))
    assert r.status == "finished" and r.step == STEPS
    step, params = _params(tfds_dir, str(root / "one"))
    assert step == STEPS
    subprocess.run(
        [sys.executable, str(REPO / "tests" / "fake_cluster.py"), "install", str(root / "bin")],
        check=True,
    )
    env = dict(
        os.environ,
        PATH=f"{root / 'bin'}{os.pathsep}{os.environ['PATH']}",
        FAKE_CLUSTER_STATE=str(root / "state"),
        JAXFACE_PYTHON=sys.executable,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
        JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        FAKE_SLURM_KILL_WAIT="3",  # SLURM's KillWait (30 s by default): SIGTERM -> SIGKILL
    )
    return dict(root=root, tfds=tfds_dir, params=params, env=env)


def _assert_matches(cluster, workdir):
    step, params = _params(cluster["tfds"], workdir)
    assert step == STEPS
    # Same data, same order, same sharding; only the cross-process all-reduce differs.
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        cluster["params"],
        params,
    )


def _sbatch(cluster, tmp_path, *options, env=()):
    """Starts `sbatch OPTIONS launch/slurm.sbatch tiny WORKDIR ...`; returns (process, job, workdir)."""
    wd = tmp_path / "wd"
    p = subprocess.Popen(
        [
            "sbatch",
            *options,
            str(REPO / "launch" / "slurm.sbatch"),
            CONFIG,
            str(wd),
            f"--config.data.data_dir={cluster['tfds']}",
            *OVERRIDES,
        ],
        env=dict(cluster["env"], **dict(env)),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    first = p.stdout.readline()
    assert first.startswith("Submitted batch job "), first
    return p, first.split()[-1], wd


def _wait_for_checkpoint(p, wd, step, timeout=600):
    deadline = time.time() + timeout
    while not (wd / "checkpoints" / str(step)).is_dir():
        assert p.poll() is None, "the job ended before its first checkpoint"
        assert time.time() < deadline, f"no checkpoint {step} after {timeout} s"
        time.sleep(0.05)


def _task_pids(cluster, job, run=0, step=0):
    f = (
        pathlib.Path(cluster["env"]["FAKE_CLUSTER_STATE"])
        / "slurm"
        / job
        / f"run{run}-step{step}.pids"
    )
    return {int(t): int(pid) for t, pid in (line.split() for line in f.read_text().splitlines())}


def _finish(p, tmp_path, job, timeout=600):
    out = p.communicate(timeout=timeout)[0]
    batch = (tmp_path / f"slurm-jaxface-{job}.out").read_text()
    return out, batch


def _requeues(cluster, job):
    f = pathlib.Path(cluster["env"]["FAKE_CLUSTER_STATE"]) / "slurm" / job / "requeue.log"
    return [line.split()[1] for line in f.read_text().splitlines()] if f.exists() else []


def test_slurm_per_gpu_killed_task_ends_step_and_requeued_run_matches(cluster, tmp_path):
    # One task per "GPU": SLURM asks for 1 node x 8 GPUs, 2 tasks; each task's 4 CPU
    # devices stand in for the GPUs JAX would give it.
    p, job, wd = _sbatch(cluster, tmp_path, "--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=8")
    _wait_for_checkpoint(p, wd, CKPT_EVERY)
    killed_at = time.time()
    os.kill(_task_pids(cluster, job)[1], signal.SIGKILL)
    out, batch = _finish(p, tmp_path, job)
    assert p.returncode == 0, out + batch
    print(batch)
    # The step ended (task 0 was not left hanging in a collective), with a non-zero code;
    # the script saw no result.json and requeued; the second run resumed and finished.
    runs = batch.split("jaxface: job ")[1:]
    assert (
        len(runs) == 2
        and runs[0].startswith(f"{job} restart 0")
        and runs[1].startswith(f"{job} restart 1")
    )
    assert "task 1: Killed by signal 9" in runs[0]
    first_rc = int(runs[0].split("srun exit code ")[1].split(",")[0])
    assert first_rc != 0 and "status 'none'" in runs[0] and "requeueing" in runs[0]
    assert (
        "srun exit code 0, result.json status 'finished'" in runs[1] and "requeueing" not in runs[1]
    )
    assert _requeues(cluster, job) == ["restart=0"]
    print(
        f"SIGKILL to task 1 at {killed_at:.1f}; " + runs[0].split("srun: step ")[1].splitlines()[0]
    )
    log0 = (wd / "logs" / f"slurm-{job}-task0.log").read_text()
    assert "resuming from" in log0
    # The per-process start-up line, labelled by srun -l, once per run.
    for t in (0, 1):
        log = (wd / "logs" / f"slurm-{job}-task{t}.log").read_text()
        line = f"cluster: process {t} of 2 on "
        assert log.count(line) == 2 and all(
            ln.startswith(f"{t}: ") for ln in log.splitlines() if line in ln
        ), log[-3000:]
        assert "4 local / 8 global cpu devices, mesh data=8 x model=1" in log
    assert json.loads((wd / "result.json").read_text())["status"] == "finished"
    _assert_matches(cluster, str(wd))


def test_slurm_per_node_preempted_requeues_resumes_and_matches(cluster, tmp_path):
    # One task per node driving all of its 4 "GPUs" (JAX_LOCAL_DEVICE_IDS=0,1,2,3).
    p, job, wd = _sbatch(
        cluster,
        tmp_path,
        "--nodes=2",
        "--ntasks-per-node=1",
        "--gpus-per-node=4",
        env={"JAXFACE_TASKS": "per-node"},
    )
    _wait_for_checkpoint(p, wd, CKPT_EVERY)
    # What --signal=TERM@180 does 3 minutes before the time limit: SIGTERM to every task.
    subprocess.run(["scancel", "--signal=TERM", job], env=cluster["env"], check=True)
    out, batch = _finish(p, tmp_path, job)
    assert p.returncode == 0, out + batch
    print(batch)
    runs = batch.split("jaxface: job ")[1:]
    assert len(runs) == 2 and "restart 1" in runs[1] and "(per-node)" in runs[0]
    assert "srun exit code 0, result.json status 'preempted'" in runs[0] and "requeueing" in runs[0]
    assert (
        "srun exit code 0, result.json status 'finished'" in runs[1] and "requeueing" not in runs[1]
    )
    assert _requeues(cluster, job) == ["restart=0"]
    log0 = (wd / "logs" / f"slurm-{job}-task0.log").read_text()
    preempted_at = int(log0.split("preempted (SIGTERM) at step ")[1].split(";")[0])
    assert CKPT_EVERY <= preempted_at < STEPS
    assert f"resuming from {wd / 'checkpoints'} step {preempted_at}" in log0
    log1 = (wd / "logs" / f"slurm-{job}-task1.log").read_text()
    assert f"preempted (SIGTERM) at step {preempted_at}" in log1
    assert "cluster: process 1 of 2 on " in log1 and "SLURM_GPUS_ON_NODE=4" in log1
    _assert_matches(cluster, str(wd))


def test_tpu_pod_run_matches(cluster, tmp_path):
    # The workers' checkout (`setup` would copy it there) and their python3.
    vm_bin = tmp_path / "vm_bin"
    vm_bin.mkdir()
    (vm_bin / "python3").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (vm_bin / "python3").chmod(0o755)
    state = tmp_path / "state"
    for k in range(2):
        (state / "tpu" / "jf-v4" / f"worker{k}").mkdir(parents=True)
        (state / "tpu" / "jf-v4" / f"worker{k}" / "jaxface").symlink_to(REPO)
    with __import__("socket").socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    vm_env = {  # what each emulated TPU VM itself provides: 4 "chips" each
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_COORDINATOR_PORT": str(port),
        "JAX_COMPILATION_CACHE_DIR": cluster["env"]["JAX_COMPILATION_CACHE_DIR"],
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    wd = tmp_path / "wd"
    env = dict(
        cluster["env"],
        FAKE_CLUSTER_STATE=str(state),
        FAKE_TPU_WORKERS="2",
        FAKE_TPU_PATH=str(vm_bin),
        FAKE_TPU_ENV=json.dumps(vm_env),
    )
    r = subprocess.run(
        [
            str(REPO / "launch" / "tpu_pod.sh"),
            "run",
            "jf-v4",
            "us-central2-b",
            CONFIG,
            str(wd),
            f"--config.data.data_dir={cluster['tfds']}",
            *OVERRIDES,
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    for k in range(2):
        log = (state / "tpu" / "jf-v4" / f"worker{k}" / "jaxface_train.log").read_text()
        assert f"jax.distributed initialised (tpu): process {k} of 2" in log
        assert (
            f"cluster: process {k} of 2 on " in log and "TPU_WORKER_HOSTNAMES/TPU_WORKER_ID" in log
        )
    assert json.loads((wd / "result.json").read_text())["status"] == "finished"
    _assert_matches(cluster, str(wd))


def test_slurm_device_mismatch_is_an_error(cluster, tmp_path):
    # SLURM gave each node 8 GPUs, but each task's JAX sees 2 devices: 4 in all, not 8.
    p, job, wd = _sbatch(
        cluster,
        tmp_path,
        "--nodes=1",
        "--ntasks-per-node=2",
        "--gpus-per-node=8",
        env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAXFACE_REQUEUE": "0"},
    )
    out, batch = _finish(p, tmp_path, job)
    assert p.returncode != 0
    assert "srun exit code 1, result.json status 'none'" in batch and not _requeues(cluster, job)
    for t in (0, 1):
        log = (wd / "logs" / f"slurm-{job}-task{t}.log").read_text()
        # The CLI's one-line error: "jaxface train: <message>" (no traceback).
        assert (
            f"jaxface train: SLURM job {job} step 0 asked for 2 processes, 8 devices "
            f"(1 node(s) x SLURM_GPUS_ON_NODE=8), but JAX formed 2 processes (this is process {t}) "
            "with 2 local / 4 global cpu devices: 8 global devices asked, 4 formed"
        ) in log, log[-3000:]
    assert not (wd / "checkpoints").exists()
