"""The trainer's CPU default flags (`jaxface.xla_cpu`): how they are added, and that a few
train steps under them match XLA's defaults to float32 rounding."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from jaxface import main as cli
from jaxface import xla_cpu

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_flags_are_appended_once_and_the_users_own_win():
    assert xla_cpu.flags_with_defaults("") == " ".join(xla_cpu.FAST_FLAGS)
    forced = "--xla_force_host_platform_device_count=8"
    assert xla_cpu.flags_with_defaults(forced).split() == [forced, *xla_cpu.FAST_FLAGS]
    once = xla_cpu.flags_with_defaults(forced)
    assert xla_cpu.flags_with_defaults(once) == once
    own = "--xla_cpu_use_xnnpack=true"
    assert xla_cpu.flags_with_defaults(own) == own
    assert xla_cpu.flags_with_defaults(forced, "xla") == forced
    with pytest.raises(ValueError, match="JAXFACE_XLA_CPU='fast'"):
        xla_cpu.flags_with_defaults("", "fast")


def test_apply_reads_the_choice_from_the_environment():
    env = {"XLA_FLAGS": "--a=1"}
    assert xla_cpu.apply(env) == " ".join(["--a=1", *xla_cpu.FAST_FLAGS])
    assert env["XLA_FLAGS"].endswith(xla_cpu.FAST_FLAGS[-1])
    env = {xla_cpu.ENV_VAR: "xla"}
    assert xla_cpu.apply(env) == "" and "XLA_FLAGS" not in env


def test_a_bad_choice_is_one_line_before_anything_runs(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(xla_cpu.ENV_VAR, "fast")
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
    args = ["train", "--config", str(REPO / "configs" / "lmle.py") + ":tiny"]
    assert cli.main(args + ["--workdir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxface train: JAXFACE_XLA_CPU='fast'") and "\n" not in err
    assert not (tmp_path / "run").exists()


def _steps(tmp_path, name: str, flags: str) -> dict:
    out = tmp_path / f"{name}.npz"
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    subprocess.run(
        [sys.executable, str(REPO / "tests" / "_xla_cpu_steps.py"), str(out)],
        env=env,
        check=True,
        capture_output=True,
        timeout=900,
    )
    with np.load(out) as f:
        return {k: f[k] for k in f.files}


def test_train_steps_under_the_default_flags_match_xlas_own(tmp_path):
    """Three steps of the trainer's step, once under XLA's defaults and once under the
    flags the training commands add: losses and every parameter agree to a few float32
    ulps of their scale (other kernels only change the order of the sums)."""
    ref = _steps(tmp_path, "xla", "")
    fast = _steps(tmp_path, "ynn", xla_cpu.flags_with_defaults(""))
    assert ref.keys() == fast.keys() and len(ref) > 10
    np.testing.assert_allclose(fast["losses"], ref["losses"], rtol=1e-5)
    for name in ref:
        scale = max(float(np.abs(ref[name]).max()), 1e-3)
        np.testing.assert_allclose(fast[name], ref[name], rtol=0, atol=1e-5 * scale, err_msg=name)
