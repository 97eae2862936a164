"""The quickstart's HTML report: built from a real (tiny) run's event files and pictures."""

import base64
import html.parser
import io
import json
import pathlib

import numpy as np
from PIL import Image

from jaxface import quickstart, report

REPO = pathlib.Path(__file__).resolve().parents[1]
METRIC = "balanced_accuracy/mean_balanced_accuracy"


class _Collect(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.cells, self.h2 = [], [], []
        self._tag = None

    def handle_starttag(self, tag, attrs):
        self._tag = tag
        if tag == "img":
            self.imgs.append(dict(attrs))

    def handle_data(self, data):
        if self._tag in ("td", "h2"):
            (self.cells if self._tag == "td" else self.h2).append(data)

    def handle_endtag(self, tag):
        self._tag = None


def test_quickstart_writes_a_self_contained_html_report(tmp_path, monkeypatch):
    monkeypatch.setattr(
        quickstart, "ENTRIES", [("attributes / tiny", "lmle.py", "tiny", (METRIC,))]
    )
    rows = quickstart.run(str(tmp_path), configs_dir=str(REPO / "configs"))
    run_dir = tmp_path / "lmle_tiny"
    page = (tmp_path / "report.html").read_text()
    parsed = _Collect()
    parsed.feed(page)
    assert parsed.h2 == ["Results", "attributes / tiny"]
    # The summary table is the printed one; the metric table holds the run's own numbers.
    result = json.loads((run_dir / "result.json").read_text())
    assert rows[0]["results"] in parsed.cells
    assert report._fmt(result["eval_results"][METRIC]) in parsed.cells
    # Every picture is an embedded, decodable PNG: the training curves drawn from the
    # event files plus each PNG the evaluators wrote (latest step only).
    on_disk = report.latest_pictures(run_dir)
    assert on_disk, "the tiny run's evaluator wrote no PNG"
    alts = [i["alt"] for i in parsed.imgs]
    assert "training losses" in alts
    assert sorted(i["title"] for i in parsed.imgs if "title" in i) == sorted(
        str(p.relative_to(run_dir)) for p in on_disk
    )
    # Captions are words, not file names; the task's numbers are explained.
    assert not any(a.endswith(".png") for a in alts), alts
    assert "LMLE paper reports 84%" in page
    for img in parsed.imgs:
        head, b64 = img["src"].split(",", 1)
        assert head == "data:image/png;base64"
        with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
            im.verify()


def test_read_scalars_matches_what_was_written(tmp_path):
    from clu import metric_writers

    w = metric_writers.create_default_writer(str(tmp_path), just_logging=False)
    rng = np.random.default_rng(0)
    vals = rng.normal(size=5)
    for s, v in zip((10, 20, 30, 40, 50), vals):
        w.write_scalars(s, {"train/loss": float(v), "other": 2.0 * s})
    w.flush()
    w.close()
    got = report.read_scalars(tmp_path)
    np.testing.assert_array_equal(got["train/loss"][0], [10, 20, 30, 40, 50])
    np.testing.assert_allclose(got["train/loss"][1], vals, rtol=1e-6)  # float32 on disk
    np.testing.assert_allclose(got["other"][1], [20, 40, 60, 80, 100])


def test_latest_pictures_keeps_the_last_step(tmp_path):
    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, format="PNG")
    for name in ("roc_step5.png", "roc_step40.png", "roc_step300.png", "pr.png"):
        (tmp_path / name).write_bytes(png.getvalue())
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "x.png").write_bytes(png.getvalue())
    assert [p.name for p in report.latest_pictures(tmp_path)] == ["pr.png", "roc_step300.png"]


def test_numbers_are_formatted_for_reading():
    assert report._fmt(432.4) == "432.4"
    assert report._fmt(0.96141) == "0.9614"
    assert report._fmt(0.0633312) == "0.06333"
    assert report._fmt(12345.67) == "12,346"
    assert report._fmt(400.0) == "400"
    assert report._fmt(1000) == "1,000"


def test_captions_are_words_and_curves_split_by_scale():
    assert report.caption("wd/sample_detections_step400.png") == "Detections on held-out scenes"
    assert "ROC" in report.caption("wd/verification_roc_step3.png")
    assert report.caption("wd/some_new_plot_step3.png") == "some new plot"
    steps = np.arange(3)
    scalars = {
        "train/loss": (steps, np.array([3.0, 2.0, 1.0])),
        "train/cls_loss": (steps, np.array([2.0, 1.0, 0.5])),
        "train/accuracy": (steps, np.array([0.1, 0.5, 0.9])),
        "train/grad_norm": (steps, np.array([40.0, 12.0, 9.0])),
        "train/nonfinite_total": (steps, np.zeros(3)),
    }
    panels = dict(report.curve_panels(scalars))
    assert panels["training losses"] == ["train/cls_loss", "train/loss"]
    assert panels["training accuracies and rates (0 to 1)"] == ["train/accuracy"]
    assert panels["other training quantities"] == ["train/grad_norm"]
    png = report.plot_curves(scalars, ["train/loss", "train/cls_loss"], "training losses")
    assert png[:4] == b"\x89PNG"
