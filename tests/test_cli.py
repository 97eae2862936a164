"""The command line: train / eval with overrides, and clear errors."""

import json
import pathlib

import pytest

from jaxface import main as cli

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "lmle.py") + ":tiny"


def test_train_then_eval_with_overrides(tmp_path, capsys):
    workdir = tmp_path / "run"
    common = [f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.async_checkpointing=False"]
    rc = cli.main(
        [
            "train",
            "--config",
            CONFIG,
            "--workdir",
            str(workdir),
            "--config.num_train_steps=4",
            "--config.checkpoint_every=2",
            *common,
        ]
    )
    assert rc == 0
    result = json.loads((workdir / "result.json").read_text())
    assert result["status"] == "finished" and result["step"] == 4  # the override took effect
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["num_train_steps"] == 4
    capsys.readouterr()
    rc = cli.main(["eval", "--config", CONFIG, "--workdir", str(workdir), "--step", "2", *common])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert 0.0 <= printed["balanced_accuracy/mean_balanced_accuracy"] <= 1.0
    _loading_needs_no_data(workdir, tmp_path / "tfds")


def _loading_needs_no_data(workdir, data_dir):
    """With the data directory gone, `load_state` (what ``jaxface eval`` loads with) and
    the analyzer's `load_model` restore the checkpoint's weights: shapes come from the
    config (`Task.example_batch`), never from the data."""
    import shutil

    import jax
    import numpy as np

    from jaxface import analyzer, train
    from jaxface.quickstart import load_config

    path, variant = CONFIG.split(":")
    config = load_config(pathlib.Path(path), variant)
    config.data.data_dir = str(data_dir)
    _, state, _ = train.load_state(config, str(workdir), step=4)
    want = jax.device_get(state.params)
    shutil.rmtree(data_dir)
    assert not data_dir.exists()
    _, state, step = train.load_state(config, str(workdir))
    assert step == 4
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), want)
    config.evals = ()
    assert train.evaluate_checkpoint(config, str(workdir)) == {}
    model = analyzer.load_model(str(workdir))
    assert model.step == 4
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(model.variables["params"]), want)


# The precheck's message is checked directly: capsys would bind absl's handler (imported
# by the experiment file's ml_collections) to a capture stream closed after the test.
def test_unknown_config_field_is_an_error_naming_it(tmp_path):
    argv = ["--config", CONFIG, "--workdir", str(tmp_path)]
    err = cli.precheck_config_args(argv + ["--config.seed=1", "--config.batch_sise=8"])
    # One line naming only the unknown field (not the valid --config.seed), with a hint.
    assert "\n" not in err and "batch_sise" in err and "seed" not in err, err
    assert "did you mean batch_size?" in err
    assert cli.main(["train", *argv, "--config.batch_sise=8"]) == 2


def test_missing_config_file_or_variant_is_one_line(tmp_path):
    import sys

    path, variant = CONFIG.split(":")
    bad_file = path.replace(".py", "x.py")
    for config, words in (
        (f"{bad_file}:{variant}", ["no such file", bad_file]),
        (f"{path}:{variant}x", ["unknown variant", f"{variant}x"]),
    ):
        heavy_before = "tensorflow" in sys.modules
        argv = ["--config", config, "--workdir", str(tmp_path)]
        err = cli.precheck_config_args(argv)
        assert "\n" not in err and all(w in err for w in words), err
        assert cli.main(["train", *argv]) == 2
        # Nothing heavy was started on the way to the error.
        assert ("tensorflow" in sys.modules) == heavy_before


def test_help_is_plain_text(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "``" not in out and "`jaxface." not in out


def test_missing_flags_and_unknown_command():
    with pytest.raises(SystemExit, match="--workdir is required"):
        cli.main(["train", "--config", CONFIG])
    assert cli.main(["no-such-command"]) == 2


def test_eval_without_checkpoint_is_an_error(tmp_path, capsys):
    args = [
        "eval",
        "--config",
        CONFIG,
        "--workdir",
        str(tmp_path / "empty"),
        f"--config.data.data_dir={tmp_path / 'tfds'}",
    ]
    # One line on stderr, exit 1; the traceback only with --debug.
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    ours = [ln for ln in err.splitlines() if ln.startswith("jaxface eval:")]
    assert len(ours) == 1 and "no checkpoint" in ours[0], err[-2000:]
    assert "Traceback" not in err
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        cli.main(args + ["--debug"])


def test_evaluator_list_and_tuple_fields_override_from_the_command_line(tmp_path):
    fv = cli._parse_config_flags(
        "jaxface train",
        [
            "--config",
            str(REPO / "configs" / "dream.py") + ":cfp",
            "--workdir",
            str(tmp_path),
            '--config.evals=("cfp","lfw")',
            '--config.bins.files=("/data/lfw.bin","/data/cfp_fp.bin")',
        ],
    )
    assert tuple(fv.config.evals) == ("cfp", "lfw")
    assert tuple(fv.config.bins.files) == ("/data/lfw.bin", "/data/cfp_fp.bin")
