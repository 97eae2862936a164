"""A one-page, self-contained HTML report of trainer runs (the quickstart writes one).

`write_html_report(path, runs, title=...)` takes, per run, its label, config, workdir and
results and writes one HTML file with:

* the results table (one row per run);
* per run: its training curves, drawn from the run's TensorBoard event files (every
  ``train/*`` scalar and the loss, PNG), every evaluation metric of the last evaluation,
  and every picture the run's evaluators wrote into its workdir (ROC, PR, CMC, attribute
  gain, sample detections: the latest step of each), each captioned in words (the file
  name is the image's title), detection pictures with a colour legend;
* per run, when its ``task`` is known, one paragraph saying what its numbers mean and
  what the paper reports (:data:`TASK_NOTES`).

Images are embedded as ``data:`` URIs, so the page can be mailed or moved on its own.
Event files are read with tensorboard's loader (no TensorFlow import).
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import os
import pathlib
import re
from typing import Mapping, Sequence

import numpy as np

__all__ = ["read_scalars", "plot_curves", "latest_pictures", "write_html_report"]


def read_scalars(workdir: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar in the run's TensorBoard event files: tag -> (steps, values), by step."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    series: dict[str, dict[int, float]] = {}
    for f in sorted(pathlib.Path(workdir).glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(f)).Load():
            for v in event.summary.value:
                kind = v.WhichOneof("value")
                if kind == "simple_value":
                    x = float(v.simple_value)
                elif kind == "tensor" and v.metadata.plugin_data.plugin_name == "scalars":
                    a = tensor_util.make_ndarray(v.tensor)
                    if a.size != 1:
                        continue
                    x = float(a.reshape(()))
                else:
                    continue
                series.setdefault(v.tag, {})[int(event.step)] = x
    out = {}
    for tag, d in series.items():
        steps = np.array(sorted(d), np.int64)
        out[tag] = (steps, np.array([d[s] for s in steps], np.float64))
    return out


def plot_curves(
    scalars: Mapping[str, tuple[np.ndarray, np.ndarray]], tags: Sequence[str], title: str
) -> bytes:
    """PNG bytes of the given scalar series against step (one panel, shared axis; the
    legend under the panel, so it never hides a curve)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = (len(tags) + 1) // 2
    fig = Figure(figsize=(6.4, 3.2 + 0.22 * rows), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for tag in tags:
        steps, values = scalars[tag]
        ok = np.isfinite(values)
        ax.plot(steps[ok], values[ok], label=tag.removeprefix("train/"))
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.legend(loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.06 * rows + 0.02, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def curve_panels(scalars: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> list[tuple[str, list]]:
    """The ``train/*`` series grouped by scale, one panel each: ``(name, tags)`` for the
    loss terms, the accuracies and rates (values in [0, 1]), and the rest (e.g. norms,
    learning rate), each group only when it has a series."""
    curves = [t for t in sorted(scalars) if t.startswith("train/") and len(scalars[t][0]) > 1]
    curves = [t for t in curves if "nonfinite" not in t]
    losses = [t for t in curves if "loss" in t or t.endswith("_ce")]
    rest = [t for t in curves if t not in losses]

    def unit(t):
        v = scalars[t][1]
        v = v[np.isfinite(v)]
        return v.size > 0 and v.min() >= 0.0 and v.max() <= 1.0

    rates = [t for t in rest if unit(t)]
    other = [t for t in rest if t not in rates]
    panels = [
        ("training losses", losses),
        ("training accuracies and rates (0 to 1)", rates),
        ("other training quantities", other),
    ]
    return [(name, tags) for name, tags in panels if tags]


_STEP = re.compile(r"^(?P<stem>.*?)(?:_step(?P<step>\d+))?$")


def latest_pictures(workdir: str | os.PathLike) -> list[pathlib.Path]:
    """The run's PNGs (top level and one level down), keeping only the latest ``_step<N>``
    of each name, sorted by name."""
    best: dict[str, tuple[int, pathlib.Path]] = {}
    root = pathlib.Path(workdir)
    for p in sorted([*root.glob("*.png"), *root.glob("*/*.png")]):
        if "checkpoints" in p.parts:
            continue
        m = _STEP.match(p.stem)
        key = str(p.parent / m["stem"])
        step = int(m["step"]) if m["step"] else -1
        if key not in best or step > best[key][0]:
            best[key] = (step, p)
    return [best[k][1] for k in sorted(best)]


# What each task's numbers mean, and what its paper reports (README.md states the same).
TASK_NOTES = {
    "detection": (
        "Average precision (AP: 0 to 1, higher is better) of the detected faces on the "
        "validation scenes, by the WIDER FACE protocol, on its easy / medium / hard subsets "
        "(hard adds the small, blurred and occluded faces). The ScaleFace paper reports "
        "AP 86.8 / 86.7 / 77.2 (easy / medium / hard, %) on the real WIDER FACE validation "
        "set; synthetic scenes are not comparable with it."
    ),
    "recognition": (
        "Face verification on identities unseen in training: accuracy (higher is better) "
        "and equal error rate (EER: lower is better) on frontal-frontal (ff) and "
        "frontal-profile (fp) pairs, and rank-1 identification of profile faces. The DREAM "
        "paper reports, on real CFP frontal-profile pairs, EER 8.34% for the naive model "
        "and 6.89% with DREAM (0.0834 and 0.0689 on this page's scale)."
    ),
    "attributes": (
        "Mean balanced accuracy over CelebA's 40 attributes (per attribute the mean of the "
        "accuracies on its positives and its negatives, so rare attributes count; 0.5 is "
        "chance, 1 is perfect). The LMLE paper reports 84% (84.25%) on real CelebA; "
        "synthetic attributes are not comparable with it."
    ),
}

_CAPTIONS = (
    # (file-name stem pattern, caption in words)
    (r"sample_detections", "Detections on held-out scenes"),
    (r"wider_pr", "Precision against recall on the validation scenes, easy / medium / hard"),
    (r"pr_(easy|medium|hard)", "Precision against recall, {0} subset"),
    (r"identification_cmc", "Identification: rank-k accuracy (cumulative match curve)"),
    (r"(.*)_roc", "Verification ROC ({0}): true accept rate against false accept rate"),
    (r"(.*)_gain", "Balanced-accuracy gain per attribute over the baseline ({0})"),
)

DETECTION_LEGEND = (
    ("#00ff00", "ground truth"),
    ("#ffff00", "prediction (with its score)"),
)


def caption(path: str | os.PathLike) -> str:
    """A figure's caption in words, from its file name (the name itself as a fallback)."""
    stem = _STEP.match(pathlib.Path(path).stem)["stem"]
    for pattern, text in _CAPTIONS:
        m = re.fullmatch(pattern, stem)
        if m:
            return text.format(*(g.replace("_", " ") for g in m.groups()))
    return stem.replace("_", " ")


def _legend(entries) -> str:
    return "<br>" + " ".join(
        f"<span class='sw' style='border-color:{c}'></span>{html.escape(t)}" for c, t in entries
    )


def _img(png: bytes, alt: str, title: str = "") -> str:
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{title or alt}: not a PNG file")
    b64 = base64.b64encode(png).decode("ascii")
    t = f' title="{html.escape(title)}"' if title else ""
    return f'<img alt="{html.escape(alt)}"{t} src="data:image/png;base64,{b64}">'


def _table(rows: Sequence[Mapping], cols: Sequence[str] | None = None) -> str:
    if not rows:
        return "<p>(none)</p>"
    if cols is None:
        cols = []
        for r in rows:
            cols += [k for k in r if k not in cols]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c, '')))}</td>" for c in cols) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v) -> str:
    """Numbers as a reader wants them: 4 significant digits (``0.9614``, ``432.4``,
    ``0.06333``), thousands separated (``12,346``), integers as integers."""
    if isinstance(v, (bool, np.bool_)):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if not np.isfinite(v):
            return str(v)
        if v == int(v) and abs(v) < 1e15:
            return f"{int(v):,}"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.4g}"
    return str(v)


_CSS = """
body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #bbb;padding:3px 8px;
font-size:13px;text-align:left}th{background:#eee}img{max-width:520px;margin:4px;border:1px solid #ddd}
figure{display:inline-block;margin:0 8px 8px 0;vertical-align:top}
figcaption{font-size:12px;color:#555;max-width:520px}p.note{max-width:900px}
.sw{display:inline-block;width:14px;height:9px;border:2px solid;background:#333;
margin:0 4px 0 10px;vertical-align:middle}
h2{border-bottom:1px solid #ccc;margin-top:2em}
"""


def write_html_report(
    path: str | os.PathLike,
    runs: Sequence[Mapping],
    *,
    title: str = "jaxface report",
    summary_rows: Sequence[Mapping] | None = None,
    command: str = "",
) -> pathlib.Path:
    """Write the report.

    Args:
      path: the HTML file to write.
      runs: per run a mapping with ``label``, ``config``, ``workdir`` and ``eval_results``
        (metric -> number; e.g. `jaxface.train.TrainResult.eval_results`).
      summary_rows: the table at the top (default: label, config and workdir of each run).
      command: the command that produced the runs, shown under the title.
    """
    import jax

    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        "<p>"
        + html.escape(
            f"written {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; "
            f"jax {jax.__version__} on {len(jax.devices())} {jax.devices()[0].platform} device(s)"
        )
        + (f"<br><code>{html.escape(command)}</code>" if command else "")
        + "</p>",
    ]
    if summary_rows is None:
        summary_rows = [{k: r[k] for k in ("label", "config", "workdir")} for r in runs]
    parts.append("<h2>Results</h2>" + _table(summary_rows))
    for r in runs:
        wd = pathlib.Path(r["workdir"])
        parts.append(f"<h2>{html.escape(r['label'])}</h2>")
        parts.append(
            f"<p>config <code>{html.escape(r['config'])}</code>, workdir "
            f"<code>{html.escape(str(wd))}</code></p>"
        )
        note = r.get("note") or TASK_NOTES.get(r.get("task", ""), "")
        if note:
            parts.append(f"<p class='note'>{html.escape(note)}</p>")
        scalars = read_scalars(wd)
        figs = []
        for name, tags in curve_panels(scalars):
            figs.append((plot_curves(scalars, tags, name), name, "", ""))
        for p in latest_pictures(wd):
            legend = _legend(DETECTION_LEGEND) if "detections" in p.stem else ""
            figs.append((p.read_bytes(), caption(p), legend, str(p.relative_to(wd))))
        if figs:
            parts.append(
                "".join(
                    f"<figure>{_img(png, cap, file)}<figcaption>{html.escape(cap)}{legend}"
                    "</figcaption></figure>"
                    for png, cap, legend, file in figs
                )
            )
        metrics = [
            {"metric": k, "value": float(v)}
            for k, v in sorted(r.get("eval_results", {}).items())
            if np.ndim(v) == 0
        ]
        parts.append("<h3>Last evaluation</h3>" + _table(metrics, ["metric", "value"]))
    parts.append("</body></html>")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
