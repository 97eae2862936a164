"""benchmarks/accelerator_check.py runs at tiny sizes on the 8 CPU devices.

The suite runs the rows that exercise the class-sharded classifier (``recognition``,
``msceleb_1m``: compile-only memory analysis, Partial FC on and off); ``resnet50`` and
``scaleface`` time the same trainer step with other configs and cost ~80 s each on two
cores (``python benchmarks/accelerator_check.py --tiny`` runs them)."""

import importlib.util
import pathlib

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "accelerator_check.py"


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("accelerator_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_accelerator_check_rows_at_tiny_sizes(check, tmp_path, capsys):
    rows = check.main(
        [
            "--tiny",
            "--steps",
            "1",
            "--workdir",
            str(tmp_path),
            "--rows",
            "recognition,msceleb_1m",
        ]
    )
    names = [r[0] for r in rows]
    assert names[0] == "recognition" and "ms/step" in rows[0][1]
    mem = {r[0]: float(r[1].split()[0]) for r in rows if r[0].startswith("msceleb_1m/memory mp=")}
    assert set(mem) == {"msceleb_1m/memory mp=1", "msceleb_1m/memory mp=8"}
    # Splitting the classifier over 8 devices shrinks the per-device footprint.
    assert mem["msceleb_1m/memory mp=8"] < mem["msceleb_1m/memory mp=1"]
    assert "| recognition |" in capsys.readouterr().out


def test_known_device_peaks(check):
    assert check.device_peak("NVIDIA H100 80GB HBM3") == 989.0
    assert check.device_peak("TPU v4") == 275.0
    assert check.device_peak("cpu") is None
