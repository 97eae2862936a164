"""The report of `experiments/scaleface_branches.py`: per-seed and seed-mean APs, paired
bootstrap intervals of the seed-averaged AP differences, a JSON, a Markdown table file and
a PNG.

Protocol (fixed before the runs): units = the held-out scenes (``config.eval_split``);
metric = the official WIDER AP (easy / medium / hard, and per face-size bucket) of each
(detector, seed); the statistic compared is the AP averaged over the seeds; its difference
between two detectors gets a paired percentile bootstrap over scenes (the same resampled
scenes for every detector and seed in a replicate; ``--n-boot`` replicates, 95 %,
resampling seed 0). "How much of the small-face gain is the stride" is the ratio
(s8 - s16) / (three - s16) on the 10-28 px bucket, with its percentile interval over the
same replicates.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import time

import numpy as np

from jaxface.evaluation import stats
from jaxface.evaluation import widerface as wider_eval
from jaxface.evaluation.widerface_bootstrap import ResampledWiderAP

CONFIDENCE = 0.95


class _Cached:
    """`ResampledWiderAP` remembering its ``[rows, settings]`` answer per index block
    (every comparison and setting reuses the same blocks)."""

    def __init__(self, ap: ResampledWiderAP):
        self.ap, self.settings, self._memo = ap, ap.settings, {}

    def __call__(self, idx):
        idx = np.ascontiguousarray(idx, np.int64)
        key = (idx.shape, hashlib.blake2b(idx.tobytes(), digest_size=16).digest())
        if key not in self._memo:
            self._memo[key] = self.ap(idx)
        return self._memo[key]


def _ground_truth(config):
    from jaxface import tasks as tasks_lib
    from jaxface.tasks.detection_data import faces_of
    from jaxface.tasks.detection_evaluators import synthetic_ground_truth

    task = tasks_lib.get_task(config.task)(config)
    src, _ = task.data(config.eval_split, train=False)
    faces = [faces_of(src[i]) for i in range(len(src))]
    return synthetic_ground_truth(faces, size_buckets=[tuple(b) for b in config.eval_size_buckets])


def _setting_label(s: str) -> str:
    if s.startswith("size_"):
        lo, hi = s[5:].split("_")
        return f"{lo}–{hi} px" if hi != "up" else f"≥ {lo} px"
    return s


def write(out: pathlib.Path, args, costs: dict) -> dict:
    from experiments.scaleface_branches import ARMS, COMPARISONS, arm_config

    t0, c0 = time.time(), _cpu()
    seeds = list(args.seeds)
    config = arm_config(ARMS[0][1], seeds[0], args.steps, str(out / "data"), args.smoke)
    gt = _ground_truth(config)
    settings = ("easy", "medium", "hard") + tuple(s for s in gt.settings if s.startswith("size_"))
    n = gt.face.num_images
    plain, fns = {}, {}
    for name, _, _ in ARMS:
        for seed in seeds:
            wd = out / f"{name}_seed{seed}"
            det = np.load(wd / f"wider_detections_step{args.steps}.npz")
            from jaxface.tasks.detection_evaluators import predictions_from_arrays

            preds = predictions_from_arrays(det["boxes"], det["scores"], det["valid"])
            res = wider_eval.evaluate(gt, preds, settings=settings)
            plain[(name, seed)] = {s: float(res[s].ap) for s in settings}
            logged = costs[f"{name}_seed{seed}"]["eval"]
            for s in settings:  # the trainer's own evaluation of the same detections
                if not np.isclose(logged[f"wider/ap_{s}"], plain[(name, seed)][s], equal_nan=True):
                    raise RuntimeError(f"{wd}: AP {s} differs from the trainer's evaluation")
            fns[(name, seed)] = _Cached(ResampledWiderAP(gt, preds, settings=settings))

    def seed_mean(name, j):
        return lambda idx: np.mean([fns[(name, s)](idx)[:, j] for s in seeds], axis=0)

    boot = dict(n_units=n, vectorized=True, n_boot=args.n_boot, confidence=CONFIDENCE, seed=0)
    boot["chunk"] = 64
    per_arm, diffs = {}, {}
    for name, _, _ in ARMS:
        for j, s in enumerate(settings):
            r = stats.bootstrap_ci(metric_fn=seed_mean(name, j), **boot)
            per_arm[(name, s)] = r
    for a, b in COMPARISONS:
        for j, s in enumerate(settings):
            diffs[(a, b, s)] = stats.paired_bootstrap(
                metric_fn_a=seed_mean(a, j), metric_fn_b=seed_mean(b, j), **boot
            )
    # Share of the small-face gain (three - s16) that one stride-8 detector already gets.
    small = next(s for s in settings if s.startswith("size_"))
    share = {}
    for s in (small, "hard"):
        num, den = diffs[("s8", "s16", s)], diffs[("three", "s16", s)]
        with np.errstate(invalid="ignore", divide="ignore"):
            reps = num.replicates / den.replicates
        lo, hi = stats.percentile_interval(reps, CONFIDENCE)
        share[s] = (num.estimate / den.estimate, lo, hi)
    analysis_cost = {"wall_s": time.time() - t0, "cpu_s": _cpu() - c0}

    payload = {
        "steps": args.steps,
        "seeds": seeds,
        "n_boot": args.n_boot,
        "num_images": n,
        "num_faces": {s: int(gt.settings[s].keep_list_lengths.sum()) for s in settings},
        "ap": {f"{k[0]}_seed{k[1]}": v for k, v in plain.items()},
        "seed_mean": {f"{k[0]}/{k[1]}": [r.estimate, r.low, r.high] for k, r in per_arm.items()},
        "differences": {
            f"{a}-{b}/{s}": [r.estimate, r.low, r.high, r.p_value] for (a, b, s), r in diffs.items()
        },
        "stride_share": {s: list(v) for s, v in share.items()},
        "costs": costs,
        "analysis_cost": analysis_cost,
    }
    report = pathlib.Path(args.report) if args.report else out
    report.mkdir(parents=True, exist_ok=True)
    (report / "scaleface_branches.json").write_text(json.dumps(payload, indent=1))
    tables = _tables(ARMS, COMPARISONS, seeds, settings, plain, per_arm, diffs, share, costs, gt)
    (out / "scaleface_branches_tables.md").write_text(tables)
    print(tables, flush=True)
    _plot(
        report / "scaleface_branches.png", ARMS, COMPARISONS, seeds, settings, plain, per_arm, diffs
    )
    return payload


def _cpu() -> float:
    from experiments.scaleface_branches import cpu_seconds

    return cpu_seconds()


def _tables(arms, comparisons, seeds, settings, plain, per_arm, diffs, share, costs, gt) -> str:
    head = "| detector | seed | " + " | ".join(_setting_label(s) + " AP" for s in settings)
    lines = [head + " | train+eval CPU-s | wall s |", "|---|---|" + "---|" * (len(settings) + 2)]
    for name, _, label in arms:
        for seed in seeds:
            row = " | ".join(f"{plain[(name, seed)][s]:.3f}" for s in settings)
            c = costs[f"{name}_seed{seed}"]
            lines.append(f"| {label} | {seed} | {row} | {c['cpu_s']:.0f} | {c['wall_s']:.0f} |")
    lines += ["", "| detector | " + " | ".join(_setting_label(s) for s in settings) + " |"]
    lines.append("|---|" + "---|" * len(settings))
    for name, _, label in arms:
        cells = []
        for s in settings:
            r = per_arm[(name, s)]
            sd = np.std([plain[(name, k)][s] for k in seeds], ddof=1) if len(seeds) > 1 else 0
            cells.append(f"{r.estimate:.3f} ± {sd:.3f} [{r.low:.3f}, {r.high:.3f}]")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "| difference | " + " | ".join(_setting_label(s) for s in settings) + " |"]
    lines.append("|---|" + "---|" * len(settings))
    for a, b in comparisons:
        cells = []
        for s in settings:
            r = diffs[(a, b, s)]
            cells.append(f"{r.estimate:+.3f} [{r.low:+.3f}, {r.high:+.3f}]")
        lines.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
    lines.append("")
    for s, (est, lo, hi) in share.items():
        lines.append(
            f"share of the (three − s16) gain that s8 gets, {_setting_label(s)}: "
            f"{est:.2f} [{lo:.2f}, {hi:.2f}]"
        )
    faces = ", ".join(
        f"{_setting_label(s)} {int(gt.settings[s].keep_list_lengths.sum())}" for s in settings
    )
    lines.append(f"kept faces on {gt.face.num_images} images: {faces}")
    return "\n".join(lines) + "\n"


def _plot(path, arms, comparisons, seeds, settings, plain, per_arm, diffs) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax, bx = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    x = np.arange(len(settings))
    width = 0.8 / len(arms)
    for k, (name, _, label) in enumerate(arms):
        pos = x + (k - (len(arms) - 1) / 2) * width
        est = [per_arm[(name, s)].estimate for s in settings]
        err = np.array(
            [
                [e - per_arm[(name, s)].low, per_arm[(name, s)].high - e]
                for e, s in zip(est, settings)
            ]
        ).T
        ax.bar(pos, est, width, yerr=err, capsize=2, label=label, alpha=0.8)
        for seed in seeds:
            ax.plot(pos, [plain[(name, seed)][s] for s in settings], "k.", ms=3)
    ax.set_xticks(x, [_setting_label(s) for s in settings], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"AP, mean of {len(seeds)} seeds (dots: seeds)")
    ax.set_title("AP with 95 % bootstrap CI over test scenes", fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    width = 0.8 / len(comparisons)
    for k, (a, b) in enumerate(comparisons):
        pos = x + (k - (len(comparisons) - 1) / 2) * width
        r = [diffs[(a, b, s)] for s in settings]
        est = np.array([d.estimate for d in r])
        err = np.array([[e - d.low, d.high - e] for e, d in zip(est, r)]).T
        bx.bar(pos, est, width, yerr=err, capsize=2, label=f"{a} − {b}", alpha=0.8)
    bx.axhline(0, color="k", lw=0.8)
    bx.set_xticks(x, [_setting_label(s) for s in settings], fontsize=8)
    bx.set_ylabel("seed-mean AP difference")
    bx.set_title("paired differences, 95 % bootstrap CI", fontsize=10)
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png")
