"""launch/: the scripts parse, the babysitter relaunches after preemption and crashes,
and the multi-process launcher wires each process and propagates failures.

Fake commands stand in for the trainer (they write result.json the way
`jaxface.train.train_and_evaluate` does), so this runs in seconds.
"""

import json
import os
import pathlib
import stat
import subprocess
import sys
import textwrap
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
BABYSIT = [sys.executable, str(LAUNCH / "babysit.py")]


@pytest.mark.parametrize(
    "script", sorted(p.name for p in LAUNCH.iterdir() if p.suffix in (".sh", ".sbatch"))
)
def test_shell_scripts_parse(script):
    subprocess.run(["bash", "-n", str(LAUNCH / script)], check=True)
    assert os.access(LAUNCH / script, os.X_OK), f"{script} is not executable"


# A fake trainer: run k (counted in WORKDIR/runs) follows the k-th word of PLAN:
# "preempted"/"finished"/"stopped" -> write result.json with that status, exit 0;
# "crash" -> exit 1 without a result; "hang" -> wait for SIGTERM, then write "preempted".
FAKE = textwrap.dedent("""
    import json, os, pathlib, signal, sys, time
    wd = pathlib.Path(sys.argv[1]); plan = sys.argv[2].split(",")
    wd.mkdir(parents=True, exist_ok=True)
    runs = wd / "runs"
    k = int(runs.read_text()) if runs.exists() else 0
    runs.write_text(str(k + 1))
    what = plan[min(k, len(plan) - 1)]
    (wd / "checkpoints" / str(10 * (k + 1))).mkdir(parents=True, exist_ok=True)
    def write(status):
        (wd / "result.json").write_text(json.dumps({"status": status, "step": 10 * (k + 1)}))
    if what == "crash":
        sys.exit(1)
    if what == "hang":
        got = []
        signal.signal(signal.SIGTERM, lambda *a: got.append(1))
        (wd / "ready").write_text("1")
        while not got:
            time.sleep(0.05)
        write("preempted"); sys.exit(0)
    write(what)
""")


def _fake(tmp_path):
    f = tmp_path / "fake_train.py"
    f.write_text(FAKE)
    return [sys.executable, str(f)]


def _babysit(tmp_path, plan, *extra, stale=None):
    wd = tmp_path / "wd"
    if stale is not None:
        wd.mkdir()
        (wd / "result.json").write_text(json.dumps({"status": stale}))
        old = time.time() - 3600
        os.utime(wd / "result.json", (old, old))
    r = subprocess.run(
        BABYSIT
        + ["--workdir", str(wd), "--backoff", "0", *extra, "--", *_fake(tmp_path), str(wd), plan],
        capture_output=True,
        text=True,
        timeout=60,
    )
    runs = int((wd / "runs").read_text()) if (wd / "runs").exists() else 0
    return r, runs, wd


def test_babysit_relaunches_after_preemption(tmp_path):
    r, runs, wd = _babysit(tmp_path, "preempted,preempted,finished")
    assert r.returncode == 0, r.stderr
    assert runs == 3
    assert json.loads((wd / "result.json").read_text())["status"] == "finished"
    # Already finished: a second babysitter does not run the command again.
    r2 = subprocess.run(
        BABYSIT + ["--workdir", str(wd), "--", "false"], capture_output=True, text=True
    )
    assert r2.returncode == 0 and "nothing to do" in r2.stderr


def test_babysit_crash_and_stale_result(tmp_path):
    # A stale "preempted" file from an earlier run must not be mistaken for this run's result:
    # the crash (no fresh result.json) is retried, then the run finishes.
    r, runs, _ = _babysit(tmp_path, "crash,finished", stale="preempted")
    assert r.returncode == 0, r.stderr
    assert runs == 2 and "no fresh result.json" in r.stderr


def test_babysit_gives_up(tmp_path):
    r, runs, _ = _babysit(tmp_path, "preempted", "--max-restarts", "2")
    assert r.returncode == 1 and runs == 3
    assert "max-restarts" in r.stderr


def test_babysit_stopped_is_terminal(tmp_path):
    r, runs, _ = _babysit(tmp_path, "stopped,finished")
    assert r.returncode == 0 and runs == 1


def test_babysit_forwards_sigterm_and_stops(tmp_path):
    wd = tmp_path / "wd"
    p = subprocess.Popen(
        BABYSIT
        + [
            "--workdir",
            str(wd),
            "--backoff",
            "0",
            "--",
            *_fake(tmp_path),
            str(wd),
            "hang,finished",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 30
    while not (wd / "ready").exists():
        assert time.time() < deadline and p.poll() is None
        time.sleep(0.05)
    p.terminate()
    _, err = p.communicate(timeout=30)
    assert p.returncode == 143, err
    # The command got the signal and saved ("preempted"); the babysitter did not relaunch.
    assert json.loads((wd / "result.json").read_text())["status"] == "preempted"
    assert (wd / "runs").read_text() == "1"


FAKE_PYTHON = textwrap.dedent("""\
    #!/usr/bin/env bash
    # Stands in for `python -m jaxface.main train ...`: print the wiring, then act per process.
    echo "pid=$JAXFACE_PROCESS_ID n=$JAXFACE_NUM_PROCESSES coord=$JAXFACE_COORDINATOR devices=$JAXFACE_EXPECTED_DEVICES xla=$XLA_FLAGS args=$*"
    if [ "$JAXFACE_PROCESS_ID" = "$FAIL_ID" ]; then exit 3; fi
    if [ -n "$FAIL_ID" ]; then sleep 60; fi
    exit 0
""")


def _multiprocess(tmp_path, fail_id=""):
    fake = tmp_path / "fakepython"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    wd = tmp_path / "mp"
    env = dict(os.environ, JAXFACE_PYTHON=str(fake), FAIL_ID=fail_id, JAXFACE_PORT="12345")
    t = time.time()
    r = subprocess.run(
        [
            "bash",
            str(LAUNCH / "multiprocess.sh"),
            "3",
            "2",
            "configs/x.py:tiny",
            str(wd),
            "--config.batch_size=8",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
    )
    return r, wd, time.time() - t


def test_multiprocess_wires_each_process(tmp_path):
    r, wd, _ = _multiprocess(tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    for k in range(3):
        log = (wd / "logs" / f"process_{k}.log").read_text()
        assert f"pid={k} n=3 coord=127.0.0.1:12345 devices=6" in log
        assert "--xla_force_host_platform_device_count=2" in log
        assert f"--workdir {wd} --config.batch_size=8" in log


def test_multiprocess_failure_stops_the_others(tmp_path):
    r, wd, took = _multiprocess(tmp_path, fail_id="1")
    assert r.returncode == 3, r.stdout + r.stderr
    assert took < 40  # the sleeping processes were stopped, not waited for
    assert "stopping the others" in r.stderr


# launch/slurm.sbatch under the emulated SLURM (tests/fake_cluster.py) with a fake
# interpreter: `-c` (the script's result.json reader) is the real python; the "trainer"
# prints its wiring and, in run k (SLURM_RESTART_COUNT), follows the k-th word of PLAN:
# finished / preempted -> task 0 writes result.json, exit 0; crash -> task 1 exits 3
# while the others sleep (--kill-on-bad-exit must end them); progress_crash -> task 0
# writes a new checkpoint directory first.
FAKE_SLURM_PYTHON = textwrap.dedent("""\
    #!/usr/bin/env bash
    if [ "$1" = -c ]; then exec "$REAL_PYTHON" "$@"; fi
    echo "task=$SLURM_PROCID of $SLURM_NTASKS local=$SLURM_LOCALID node=$SLURM_NODEID" \\
         "ids=${JAX_LOCAL_DEVICE_IDS:-unset} restart=${SLURM_RESTART_COUNT:-0} args=$*"
    while [ $# -gt 0 ] && [ "$1" != --workdir ]; do shift; done; wd=$2
    IFS=, read -ra plan <<< "$PLAN"; k=${SLURM_RESTART_COUNT:-0}
    what=${plan[$k]:-${plan[-1]}}
    case "$what" in
      finished|preempted)
        if [ "$SLURM_PROCID" = 0 ]; then echo "{\\"status\\": \\"$what\\"}" > "$wd/result.json"; fi ;;
      crash|progress_crash)
        if [ "$what" = progress_crash ] && [ "$SLURM_PROCID" = 0 ]; then mkdir -p "$wd/checkpoints/$((k + 1))"; fi
        if [ "$SLURM_PROCID" = 1 ]; then sleep 0.5; exit 3; fi
        sleep 60 ;;
    esac
""")


def _fake_slurm(tmp_path, plan, *options, env=(), stale=None):
    bin_dir = tmp_path / "bin"
    subprocess.run(
        [sys.executable, str(REPO / "tests" / "fake_cluster.py"), "install", str(bin_dir)],
        check=True,
    )
    fake = tmp_path / "fakepython"
    fake.write_text(FAKE_SLURM_PYTHON)
    fake.chmod(0o755)
    wd = tmp_path / "wd"
    if stale is not None:  # an earlier run's result.json
        wd.mkdir()
        (wd / "result.json").write_text(json.dumps({"status": stale}))
        old = time.time() - 3600
        os.utime(wd / "result.json", (old, old))
    run_env = dict(
        os.environ,
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        FAKE_CLUSTER_STATE=str(tmp_path / "state"),
        FAKE_SLURM_KILL_WAIT="5",
        JAXFACE_PYTHON=str(fake),
        REAL_PYTHON=sys.executable,
        PLAN=plan,
        **dict(env),
    )
    r = subprocess.run(
        [
            "sbatch",
            *options,
            str(LAUNCH / "slurm.sbatch"),
            "configs/x.py:tiny",
            str(wd),
            "--config.seed=3",
        ],
        env=run_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=50,  # the sleeping tasks (60 s) must have been ended by srun
    )
    job = r.stdout.split()[3]
    batch = (tmp_path / f"slurm-jaxface-{job}.out").read_text()
    requeue_log = tmp_path / "state" / "slurm" / job / "requeue.log"
    requeues = requeue_log.read_text().splitlines() if requeue_log.exists() else []
    return r, job, wd, batch, len(requeues)


def test_slurm_sbatch_per_node_wiring(tmp_path):
    r, job, wd, batch, requeues = _fake_slurm(
        tmp_path,
        "finished",
        "--nodes=2",
        "--ntasks-per-node=1",
        "--gpus-per-node=4",
        env={"JAXFACE_TASKS": "per-node"},
    )
    assert r.returncode == 0, r.stdout + r.stderr + batch
    assert "2 nodes, 2 tasks (per-node)" in batch and "status 'finished'" in batch
    assert requeues == 0 and "requeueing" not in batch
    for t in range(2):  # -l labels, one log per task, every GPU of the node in JAX_LOCAL_DEVICE_IDS
        log = (wd / "logs" / f"slurm-{job}-task{t}.log").read_text()
        assert log.startswith(f"{t}: task={t} of 2 local=0 node={t} ids=0,1,2,3 restart=0 args=")
        assert f"--workdir {wd} --config.seed=3" in log


def test_slurm_sbatch_per_gpu_preempted_then_finished(tmp_path):
    r, job, wd, batch, requeues = _fake_slurm(
        tmp_path, "preempted,finished", "--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=2"
    )
    assert r.returncode == 0, r.stdout + r.stderr + batch
    assert requeues == 1 and "restart 1" in batch
    assert "status 'preempted'" in batch and "status 'finished'" in batch
    log1 = (wd / "logs" / f"slurm-{job}-task1.log").read_text()
    # Appended across the requeue (--open-mode=append); per-gpu leaves JAX its SLURM_LOCALID.
    assert "1: task=1 of 2 local=1 node=0 ids=unset restart=0" in log1
    assert "1: task=1 of 2 local=1 node=0 ids=unset restart=1" in log1


def test_slurm_sbatch_failed_task_ends_step_ignores_stale_result_and_gives_up(tmp_path):
    # An earlier run's "stopped" must not stop the requeue of a job whose task failed;
    # three failures in a row without a new checkpoint end the requeueing.
    r, job, wd, batch, requeues = _fake_slurm(
        tmp_path, "crash", "--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=2", stale="stopped"
    )
    assert r.returncode != 0, r.stdout + r.stderr + batch
    assert batch.count("task 1: Exited with exit code 3") == 3
    assert batch.count("task 0: Killed by signal 15") == 3  # ended by --kill-on-bad-exit
    assert batch.count("result.json status 'none'") == 3
    assert requeues == 2 and "giving up: 3 runs in a row failed" in batch


def test_slurm_sbatch_failures_with_progress_keep_requeueing(tmp_path):
    r, job, wd, batch, requeues = _fake_slurm(
        tmp_path,
        "progress_crash,progress_crash,progress_crash,finished",
        "--nodes=1",
        "--ntasks-per-node=2",
    )
    assert r.returncode == 0, r.stdout + r.stderr + batch
    assert requeues == 3 and "giving up" not in batch
    assert "latest checkpoint 2 -> 3" in batch and "status 'finished'" in batch
