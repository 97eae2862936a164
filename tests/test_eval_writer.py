"""The one writer of evaluation artefacts, and running evaluators through the contract."""

import functools
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from jaxface.tasks import base
from jaxface.training import eval_writer


class _Writer:
    def __init__(self):
        self.images = {}

    def write_images(self, step, images):
        self.images[step] = images


def _write_text(path, text):
    pathlib.Path(path).write_text(text)


def _fill_folder(path):
    pathlib.Path(path, "a").mkdir(parents=True)
    pathlib.Path(path, "a", "b.txt").write_text("b")


def test_every_artefact_kind_is_written_at_its_key_with_the_step(tmp_path):
    pixels = np.zeros((2, 4, 3, 3), np.uint8)
    pixels[1, :, :, 0] = 255
    artefacts = {
        "fig_step{step}.png": base.Figure(functools.partial(_write_text, text="drawn")),
        "images_step{step}.png": base.Images(pixels, tag="eval/images"),
        "report_step{step}.json": base.Json({"a": [1, 2], "b": "x"}),
        "latest.json": base.Json({"c": 3}),
        "table_step{step}.md": base.Text("| a |\n"),
        "sub/arrays.npz": base.Arrays({"x": np.arange(3), "step": np.int64(7)}),
        "pred_step{step}": base.Folder(_fill_folder),
    }
    writer = _Writer()
    paths = eval_writer.write_artefacts(str(tmp_path), 7, artefacts, writer=writer)
    names = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert names == [
        "fig_step7.png",
        "images_step7.png",
        "latest.json",
        "pred_step7/a/b.txt",
        "report_step7.json",
        "sub/arrays.npz",
        "table_step7.md",
    ]
    assert len(paths) == len(artefacts)
    assert (tmp_path / "fig_step7.png").read_text() == "drawn"
    row = np.asarray(Image.open(tmp_path / "images_step7.png"))
    np.testing.assert_array_equal(row, np.concatenate(list(pixels), axis=1))
    np.testing.assert_array_equal(writer.images[7]["eval/images"], pixels)
    assert json.loads((tmp_path / "report_step7.json").read_text()) == {"a": [1, 2], "b": "x"}
    assert json.loads((tmp_path / "latest.json").read_text()) == {"c": 3}
    assert (tmp_path / "table_step7.md").read_text() == "| a |\n"
    with np.load(tmp_path / "sub" / "arrays.npz") as z:
        np.testing.assert_array_equal(z["x"], [0, 1, 2])
        assert int(z["step"]) == 7
    with pytest.raises(TypeError, match="unknown kind"):
        eval_writer.write_artefacts(str(tmp_path), 7, {"x.bin": b"raw"})


class _Task(base.Task):
    """Two evaluators on one predict function that doubles the batch's ``x``."""

    name = "toy"
    predictors = {"double": "predict"}

    def data(self, split, *, train):
        raise AssertionError("the evaluators below read no data")

    def init_variables(self, rng, batch):
        return {"params": {}}

    def loss(self, params, model_state, batch, rng, task_state):
        raise AssertionError("not trained")

    def predict(self, variables, batch):
        return {"y": 2 * batch["x"]}

    def evaluators(self):
        def total(predict_fn, variables, ctx):
            y = np.asarray(predict_fn(variables, {"x": np.arange(4.0)})["y"])
            return {"total": float(y.sum())}, {"total_step{step}.json": base.Json(y.tolist())}

        def count(predict_fn, variables, ctx):
            return {"count": 4.0}, {}

        return {
            "total": base.Evaluator("double", total),
            "count": base.Evaluator("double", count),
        }


def test_run_evaluators_names_metrics_and_writes_on_process_zero_only(tmp_path):
    import ml_collections

    task = _Task(ml_collections.ConfigDict({"image_size": 4}))
    assert task.predict_fns() is task.predict_fns()  # jitted once per task
    ctx = base.EvalContext(
        mesh=None, workdir=str(tmp_path / "p1"), step=3, process_index=1, process_count=2
    )
    metrics = eval_writer.evaluate_and_write(task, ["total", "count"], {"params": {}}, ctx)
    assert metrics["total/total"] == 12.0 and metrics["count/count"] == 4.0
    assert metrics["total/eval_time_s"] >= 0 and metrics["count/eval_time_s"] >= 0
    assert not (tmp_path / "p1").exists()  # only process 0 writes
    ctx.process_index, ctx.workdir = 0, str(tmp_path / "p0")
    eval_writer.evaluate_and_write(task, ["total"], {"params": {}}, ctx)
    assert json.loads((tmp_path / "p0" / "total_step3.json").read_text()) == [0, 2, 4, 6]
    with pytest.raises(ValueError, match="unknown evaluators \\['nope'\\]"):
        eval_writer.run_evaluators(task, ["nope"], {"params": {}}, ctx)
