"""A one-page, self-contained HTML report of trainer runs (the quickstart writes one).

`write_html_report(path, runs, title=...)` takes, per run, its label, config, workdir and
results and writes one HTML file with:

* the results table (one row per run);
* per run: its training curves, drawn from the run's TensorBoard event files (every
  ``train/*`` scalar and the loss, PNG), every evaluation metric of the last evaluation,
  and every picture the run's evaluators wrote into its workdir (ROC, PR, CMC, attribute
  gain, sample detections: the latest step of each), the file name under each.

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
    """PNG bytes of the given scalar series against step (one panel, shared axis)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for tag in tags:
        steps, values = scalars[tag]
        ok = np.isfinite(values)
        ax.plot(steps[ok], values[ok], label=tag)
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


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


def _img(png: bytes, alt: str) -> str:
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{alt}: not a PNG file")
    b64 = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


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
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1e4 else f"{v:.4g}"
    return str(v)


_CSS = """
body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #bbb;padding:3px 8px;
font-size:13px;text-align:left}th{background:#eee}img{max-width:520px;margin:4px;border:1px solid #ddd}
figure{display:inline-block;margin:0 8px 8px 0}figcaption{font-size:12px;color:#555}
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
        scalars = read_scalars(wd)
        curves = [t for t in sorted(scalars) if t.startswith("train/") and len(scalars[t][0]) > 1]
        figs = []
        if curves:
            losses = [t for t in curves if "loss" in t or t.endswith("_ce")]
            others = [t for t in curves if t not in losses and "nonfinite" not in t]
            for tags, name in ((losses, "training losses"), (others, "training metrics")):
                if tags:
                    png = plot_curves(scalars, tags, f"{r['label']}: {name}")
                    figs.append((png, name))
        for p in latest_pictures(wd):
            figs.append((p.read_bytes(), str(p.relative_to(wd))))
        if figs:
            parts.append(
                "".join(
                    f"<figure>{_img(png, cap)}<figcaption>{html.escape(cap)}</figcaption></figure>"
                    for png, cap in figs
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
