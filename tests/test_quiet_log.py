"""The log a user reads: a short `jaxface train` run prints no third-party noise and no
line longer than `jaxface.logs.MAX_LINE`, and says where its time goes."""

import pytest
import os
import pathlib
import subprocess
import sys

from jaxface import logs

REPO = pathlib.Path(__file__).resolve().parents[1]

# What a new user saw in the quickstart's log before it was quieted (issue #17).
NOISE = (
    "Unable to initialize backend",
    "has no dataset_info.json",
    "Using custom data configuration",
    "OpenCV is not installed",
    "oneDNN custom operations",
    "All log messages before absl::InitializeLog",
    "os.fork() was called",
    "Downloading and preparing dataset",
    "download: Unknown size",
    "[Hyperparameters]",
    "Setting work unit notes",
    "Generating splits",
    "Shuffling ",
    "load_module()",
)


def test_a_short_run_logs_no_noise_and_no_long_line(tmp_path):
    env = dict(os.environ, XLA_FLAGS="")
    env.pop("JAX_PLATFORMS", None)  # jax probes its backends, as on a user's machine
    cmd = [sys.executable, "-m", "jaxface.main", "train"]
    cmd += ["--config", f"{REPO / 'configs' / 'lmle.py'}:tiny", "--workdir", str(tmp_path / "w")]
    cmd += [f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.num_train_steps=4"]
    proc = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stderr
    for noise in NOISE:
        assert noise not in log, f"{noise!r} in the log:\n{log[-3000:]}"
    long = [ln for ln in log.splitlines() if len(ln) > logs.MAX_LINE]
    assert not long, long
    # Each phase over a few seconds says so, with its time.
    for phase in (
        "preparing synthetic_faces/",
        "generating synthetic_faces/",
        "prepared ",
        "compiling the train step...",
        "compiled the train step in ",
        "evaluating step 4...",
        "evaluating step 4 done in ",
        "config: task attributes",
    ):
        assert phase in log, f"{phase!r} missing from the log:\n{log[-3000:]}"
    assert "ETA" in log


def test_noise_filter_keeps_jaxface_warnings_and_drops_third_party_chatter():
    import logging

    f = logs.NoiseFilter()

    def rec(path, level, msg, *args, name="absl"):
        return logging.LogRecord(name, level, path, 1, msg, args, None)

    tfds = "/x/site-packages/tensorflow_datasets/core/utils/file_utils.py"
    assert not f.filter(
        rec(tfds, logging.WARNING, "Variant folder %s has no %s", "d", "dataset_info.json")
    )
    assert f.filter(rec(tfds, logging.WARNING, "something else went wrong"))
    jax = "/x/site-packages/jax/_src/xla_bridge.py"
    assert not f.filter(rec(jax, logging.INFO, "Unable to initialize backend 'tpu'"))
    assert f.filter(rec(jax, logging.WARNING, "a real jax warning"))
    ours = "/x/jaxface/train.py"
    assert f.filter(rec(ours, logging.WARNING, "Variant folder has no dataset_info.json"))
    assert f.filter(rec(ours, logging.INFO, "[Hyperparameters] ours"))
    clu = "/x/site-packages/clu/metric_writers/logging_writer.py"
    assert not f.filter(rec(clu, logging.INFO, "[Hyperparameters] %s", "{...}"))
    long = rec(
        clu, logging.INFO, "[%d] %s", 3, ", ".join(f"eval/metric_{i}=0.5" for i in range(40))
    )
    assert f.filter(long)
    assert max(len(x) for x in long.getMessage().splitlines()) <= logs.MAX_LINE - 60


def test_first_call_logs_a_heartbeat_while_it_lasts(caplog):
    import threading

    from jaxface import progress

    first = progress.FirstCall("compiling x", "compiled x", every_secs=0.02)
    released = threading.Event()
    with caplog.at_level("INFO"):
        with first:
            # Wait until at least one heartbeat line is out (no wall-clock assertion).
            for _ in range(500):
                if any(r.getMessage().startswith("still compiling x (") for r in caplog.records):
                    released.set()
                    break
                released.wait(0.01)
        n_beats = sum(r.getMessage().startswith("still") for r in caplog.records)
        with first:  # later uses log nothing
            pass
    messages = [r.getMessage() for r in caplog.records]
    assert released.is_set(), messages
    assert messages[0] == "compiling x..." and messages[-1].startswith("compiled x in ")
    assert sum(m.startswith("still") for m in messages) == n_beats
    assert not first._beat._thread.is_alive()


@pytest.mark.parametrize("quiet", [False, True])
def test_phase_logs_a_heartbeat_and_stops_it(caplog, quiet):
    import threading

    from jaxface import progress

    phase = progress.Phase("recluster at step 5", every_secs=0.02, quiet=quiet)
    seen = threading.Event()
    with caplog.at_level("INFO"):
        with phase:
            for _ in range(500):
                if any(
                    r.getMessage().startswith("still recluster at step 5 (") for r in caplog.records
                ):
                    seen.set()
                    break
                seen.wait(0.01)
        n = len(caplog.records)
        seen.wait(0.1)  # stopped: nothing more arrives
    messages = [r.getMessage() for r in caplog.records]
    assert seen.is_set(), messages
    assert len(caplog.records) == n
    assert not phase._beat._thread.is_alive()
    ends = [m for m in messages if not m.startswith("still")]
    if quiet:
        assert ends == []
    else:
        assert ends[0] == "recluster at step 5..." and ends[-1].startswith(
            "recluster at step 5 done in "
        )
