"""ScaleFace's RoI head: the paper's two 3x3 convolutions before the FCs vs FCs alone.

The `wider` detector's head went from two 512-channel 3x3 convolutions + FC 1024 -> 512
(the paper's) to FC 1024 -> 1024 (`benchmarks/detector_flops.py`: 249 -> 119 GFLOP per
640 px image). The claim to check is "no AP is lost". It is checked where training fits
on a CPU, on the CPU variants with their own head widths: ``num_head_convs`` 2 (their
recipe) vs 0, everything else equal.

* ``synthetic`` (the quickstart's scenes, 400 steps): ``--seeds`` seeds per arm;
* ``cfp_scenes`` (real CFP faces on photographs, 2,000 steps): ``--cfp-seeds`` seeds per
  arm (needs CFP: ``--cfp-dir`` or $JAXFACE_DATA/cfp; ``--cfp-seeds`` empty skips it).

Each run is ``jaxface train`` in ``OUT/<set>_<arm>_seed<k>``; a finished run (its
``result.json``) is not trained again. The report gives each run's AP, the seed means and
paired 95 % bootstrap intervals over the test images of the seed-mean difference
(FCs only - two convs), with the exact per-image decomposition of the WIDER evaluation
(`jaxface.evaluation.widerface_bootstrap`).

    python experiments/scaleface_head.py --out /tmp/jaxface/scaleface_head --report docs/results
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ARMS = (("convs", 2), ("fc", 0))  # (name, model.num_head_convs)
SETTINGS = ("easy", "medium", "hard")


def run_dir(out: pathlib.Path, variant: str, arm: str, seed: int) -> pathlib.Path:
    return out / f"{variant}_{arm}_seed{seed}"


def train(out: pathlib.Path, variant: str, arm: str, convs: int, seed: int, extra) -> dict:
    wd = run_dir(out, variant, arm, seed)
    result = wd / "result.json"
    if not result.exists():
        cmd = [
            sys.executable,
            "-m",
            "jaxface.main",
            "train",
            "--config",
            f"{ROOT / 'configs' / 'scaleface.py'}:{variant}",
            "--workdir",
            str(wd),
            f"--config.seed={seed}",
            f"--config.model.num_head_convs={convs}",
            *extra,
        ]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return json.loads(result.read_text())


def analyse(out: pathlib.Path, variant: str, seeds, n_boot: int) -> dict:
    from jaxface.evaluation import stats
    from jaxface.evaluation import widerface as wider_eval
    from jaxface.evaluation.widerface_bootstrap import ResampledWiderAP
    from jaxface import tasks as tasks_lib
    from jaxface.tasks.detection_data import faces_of
    from jaxface.tasks.detection_evaluators import predictions_from_arrays, synthetic_ground_truth
    from jaxface.trained_model import read_config

    config = read_config(str(run_dir(out, variant, ARMS[0][0], seeds[0])))
    task = tasks_lib.get_task(config.task)(config)
    src, _ = task.data(config.eval_split, train=False)
    gt = synthetic_ground_truth(
        [faces_of(src[i]) for i in range(len(src))],
        size_buckets=[tuple(b) for b in config.eval_size_buckets],
    )
    step = int(config.num_train_steps)
    plain, fns = {}, {}
    for arm, _ in ARMS:
        for seed in seeds:
            wd = run_dir(out, variant, arm, seed)
            det = np.load(wd / f"wider_detections_step{step}.npz")
            preds = predictions_from_arrays(det["boxes"], det["scores"], det["valid"])
            res = wider_eval.evaluate(gt, preds, settings=SETTINGS)
            plain[(arm, seed)] = {s: float(res[s].ap) for s in SETTINGS}
            logged = json.loads((wd / "result.json").read_text())["eval_results"]
            for s in SETTINGS:  # the trainer's own evaluation of the same detections
                if not np.isclose(logged[f"wider/ap_{s}"], plain[(arm, seed)][s]):
                    raise RuntimeError(f"{wd}: AP {s} differs from the trainer's evaluation")
            fns[(arm, seed)] = ResampledWiderAP(gt, preds, settings=SETTINGS)

    def seed_mean(arm, j):
        return lambda idx: np.mean([fns[(arm, s)](idx)[:, j] for s in seeds], axis=0)

    boot = dict(n_units=gt.face.num_images, vectorized=True, n_boot=n_boot, confidence=0.95, seed=0)
    diffs = {}
    for j, s in enumerate(SETTINGS):
        r = stats.paired_bootstrap(
            metric_fn_a=seed_mean("fc", j), metric_fn_b=seed_mean("convs", j), **boot
        )
        diffs[s] = [r.estimate, r.low, r.high]
    return {
        "variant": variant,
        "seeds": list(seeds),
        "steps": step,
        "num_images": int(gt.face.num_images),
        "ap": {f"{a}_seed{k}": v for (a, k), v in plain.items()},
        "fc_minus_convs": diffs,
    }


def table(res: dict) -> str:
    seeds = res["seeds"]
    lines = [
        f"### `{res['variant']}` ({res['steps']} steps, {res['num_images']} test images)",
        "",
        "| arm | " + " | ".join(f"seed {k} (easy / medium / hard)" for k in seeds) + " |",
        "|---|" + "---|" * len(seeds),
    ]
    for arm, convs in ARMS:
        cells = []
        for k in seeds:
            ap = res["ap"][f"{arm}_seed{k}"]
            cells.append(" / ".join(f"{ap[s]:.4f}" for s in SETTINGS))
        lines.append(f"| {convs} convs + FCs | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| FCs only - two convs (seed mean) | easy | medium | hard |",
        "|---|---|---|---|",
    ]
    d = res["fc_minus_convs"]
    lines.append(
        "| AP difference [95 % CI] | "
        + " | ".join(f"{d[s][0]:+.4f} [{d[s][1]:+.4f}, {d[s][2]:+.4f}]" for s in SETTINGS)
        + " |"
    )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, help="folder of the runs")
    p.add_argument("--report", default="", help="also write scaleface_head.json here")
    p.add_argument("--seeds", default="0,1", help="synthetic seeds, comma-separated")
    p.add_argument("--cfp-seeds", default="0", help="cfp_scenes seeds; empty: skip")
    p.add_argument("--cfp-dir", default="", help="the folder holding CFP (default: the config's)")
    p.add_argument("--n-boot", type=int, default=2000)
    args = p.parse_args(argv)
    out = pathlib.Path(args.out)
    sets = [("synthetic", [int(s) for s in args.seeds.split(",") if s], [])]
    cfp_seeds = [int(s) for s in args.cfp_seeds.split(",") if s]
    if cfp_seeds:
        extra = [f"--config.data.manual_dir={args.cfp_dir}"] if args.cfp_dir else []
        sets.append(("cfp_scenes", cfp_seeds, extra))
    results = []
    for variant, seeds, extra in sets:
        for seed in seeds:
            for arm, convs in ARMS:
                train(out, variant, arm, convs, seed, extra)
        results.append(analyse(out, variant, seeds, args.n_boot))
        print(table(results[-1]), flush=True)
    if args.report:
        path = pathlib.Path(args.report) / "scaleface_head.json"
        path.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
