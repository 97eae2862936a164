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
    echo "pid=$JAXFACE_PROCESS_ID n=$JAXFACE_NUM_PROCESSES coord=$JAXFACE_COORDINATOR xla=$XLA_FLAGS args=$*"
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
        assert f"pid={k} n=3 coord=127.0.0.1:12345" in log
        assert "--xla_force_host_platform_device_count=2" in log
        assert f"--workdir {wd} --config.batch_size=8" in log


def test_multiprocess_failure_stops_the_others(tmp_path):
    r, wd, took = _multiprocess(tmp_path, fail_id="1")
    assert r.returncode == 3, r.stdout + r.stderr
    assert took < 40  # the sleeping processes were stopped, not waited for
    assert "stopping the others" in r.stderr
