"""Two processes x 4 CPU devices on loopback train to the same parameters as one
process with 8 devices (data slices per host, gloo collectives, checkpoints from all
hosts), with the recognition classifier split over a ``model`` axis of 4 devices inside
each process and Partial FC sampling. (tests/test_launch_cluster.py runs the same
comparison through the SLURM and TPU launch scripts.)"""

import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np

from jaxface import train
from jaxface.quickstart import load_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


OVERRIDES = {
    "num_classes": 512,
    "model_parallel": 4,
    "head.sample_rate": 0.5,
    "head.class_groups": 8,
    "num_train_steps": 6,
    "checkpoint_every": 3,
    "keep_checkpoints": 2,
    "async_checkpointing": False,
}


def _config(tfds_dir):
    c = load_config(REPO / "configs" / "dream.py", "tiny")
    c.data.data_dir = tfds_dir
    c.evals = ()
    for key, value in OVERRIDES.items():
        node = c
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return c


def test_two_processes_match_one_process(tmp_path):
    tfds_dir = str(tmp_path / "tfds")
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    # One process, the 8 devices of this test session.
    r = train.train_and_evaluate(_config(tfds_dir), one)
    assert r.status == "finished"

    port = _free_port()
    args = [
        sys.executable,
        "-m",
        "jaxface.main",
        "train",
        "--config",
        str(REPO / "configs" / "dream.py") + ":tiny",
        "--workdir",
        two,
        f"--config.data.data_dir={tfds_dir}",
        "--config.evals=()",
    ] + [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    procs = []
    for pid in range(2):
        env = dict(
            os.environ,
            JAXFACE_COORDINATOR=f"127.0.0.1:{port}",
            JAXFACE_NUM_PROCESSES="2",
            JAXFACE_PROCESS_ID=str(pid),
            JAX_PLATFORMS="cpu",
            XLA_FLAGS="--xla_force_host_platform_device_count=4",
        )
        procs.append(
            subprocess.Popen(
                args,
                env=env,
                cwd=str(tmp_path),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    assert "process 1 of 2" in outs[1] or "process 1 of 2" in outs[0]

    _, s1, _ = train.load_state(_config(tfds_dir), one)
    _, s2, _ = train.load_state(_config(tfds_dir), two)
    assert int(s1.step) == int(s2.step) == _config(tfds_dir).num_train_steps
    p1, p2 = jax.device_get(s1.params), jax.device_get(s2.params)
    # Same data, same order, same sharding; only the cross-process all-reduce differs.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), p1, p2)
    init = jax.device_get(train.load_state(_config(tfds_dir), one, step=3)[1].params)
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(init), jax.tree.leaves(p1)))
