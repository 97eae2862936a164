"""ScaleFace: three scale-variant branches vs one detector at stride 16 vs one at stride 8.

One command trains the three detectors of ``configs/scaleface.py`` (``synthetic`` = three
branches, ``single_branch`` = one branch on res3+res4 at stride 16, ``single_branch_s8`` =
one branch on res2+res3 at stride 8) with every seed (the seed changes the initialisation,
the data order and the augmentation; the scenes are generated once and shared), the same
number of steps each, evaluates them with the WIDER protocol on the held-out scenes, and
writes the comparison: per-seed APs (easy / medium / hard and per face-size bucket), their
mean over seeds, and paired 95 % bootstrap intervals over test images of the seed-averaged
AP differences (three - s16, three - s8, s8 - s16), with the exact per-image decomposition
of the WIDER evaluation (`jaxface.evaluation.widerface_bootstrap`).

    python experiments/scaleface_branches.py --out /tmp/jaxface/scaleface_branches \\
        --report docs/results

Finished runs (``run_cost.json`` and the detections in their workdir) are not trained
again, so an interrupted command resumes where it stopped. ``--train-only`` skips the
report; ``--smoke`` runs the whole pipeline on the tiny scenes (a check of the pipeline:
minutes, mostly compilation).
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import resource
import sys
import time


ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# (short name, configs/scaleface.py variant, label)
ARMS = (
    ("three", "synthetic", "three branches (strides 8 / 16 / 32)"),
    ("s16", "single_branch", "one branch, stride 16"),
    ("s8", "single_branch_s8", "one branch, stride 8"),
)
# (a, b): the paired differences a - b reported.
COMPARISONS = (("three", "s16"), ("three", "s8"), ("s8", "s16"))


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads) and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def arm_config(variant: str, seed: int, steps: int, data_dir: str, smoke: bool):
    """The variant's config with ``seed``, ``steps`` (schedule, evaluation and checkpoint
    at the last step), the shared data folder; ``smoke``: the tiny scenes and net."""
    from jaxface.quickstart import load_config

    c = load_config(ROOT / "configs" / "scaleface.py", variant)
    if smoke:
        tiny = load_config(ROOT / "configs" / "scaleface.py", "tiny")
        for k in ("image_size", "max_faces", "face_sizes", "train_pre_nms_topk"):
            c[k] = tiny[k]
        c.data.overrides = tiny.data.overrides
        c.model.backbone.width = tiny.model.backbone.width
        c.model.update(merge_channels=16, rpn_channels=16, head_conv_channels=16, head_fc=[32, 32])
        c.model.roi_size = 3
        c.eval_sample_images = 0
        c.optimizer.warmup_steps = 0
    c.seed = int(seed)
    c.num_train_steps = int(steps)
    c.eval_every = c.checkpoint_every = c.log_every = int(steps)
    c.data.data_dir = data_dir
    c.evals = ["wider"]
    return c


def prepare_data(config) -> dict:
    """Generates the scenes (once, into ``config.data.data_dir``); returns its cost."""
    from jaxface import tasks as tasks_lib

    t0, c0 = time.time(), cpu_seconds()
    task = tasks_lib.get_task(config.task)(config)
    for split, train in ((config.train_split, True), (config.eval_split, False)):
        task.data(split, train=train)
    return {"wall_s": time.time() - t0, "cpu_s": cpu_seconds() - c0}


def train_arm(config, workdir: pathlib.Path) -> dict:
    """Trains one (arm, seed) into ``workdir`` unless done; returns its cost record."""
    from jaxface.train import train_and_evaluate

    cost_file = workdir / "run_cost.json"
    steps = int(config.num_train_steps)
    if cost_file.exists() and (workdir / f"wider_detections_step{steps}.npz").exists():
        return json.loads(cost_file.read_text())
    t0, c0 = time.time(), cpu_seconds()
    result = train_and_evaluate(config, str(workdir))
    if result.status != "finished":
        raise RuntimeError(f"{workdir}: training {result.status} at step {result.step}")
    cost = {
        "wall_s": time.time() - t0,
        "cpu_s": cpu_seconds() - c0,
        "eval": result.eval_results,
        "step": result.step,
    }
    cost_file.write_text(json.dumps(cost, indent=1))
    return cost


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="/tmp/jaxface/scaleface_branches", help="runs and data")
    p.add_argument("--report", default="", help="folder for the .md / .png / .json report")
    p.add_argument("--steps", type=int, default=200, help="training steps, every arm")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap replicates")
    p.add_argument(
        "--arms",
        nargs="+",
        choices=[a[0] for a in ARMS],
        default=[a[0] for a in ARMS],
        help="train only these arms (with --train-only: to share the runs between processes)",
    )
    p.add_argument("--train-only", action="store_true")
    p.add_argument("--smoke", action="store_true", help="tiny scenes and net (a pipeline check)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from jaxface import compile_cache

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # The seeds of an arm share one train-step program: compiled once, then loaded.
    compile_cache.enable(out / "jax_cache")
    data_dir = str(out / "data")
    costs = {}
    first = arm_config(ARMS[0][1], args.seeds[0], args.steps, data_dir, args.smoke)
    data_cost = out / "data_cost.json"  # the first command's: later ones find the data
    if not data_cost.exists():
        data_cost.write_text(json.dumps(prepare_data(first)))
    costs["data"] = json.loads(data_cost.read_text())
    print(f"data ready: {costs['data']}", flush=True)
    for seed in args.seeds:  # seed-major: an interrupted command leaves whole seeds
        for name, variant, _ in ARMS:
            if name not in args.arms:
                continue
            c = arm_config(variant, seed, args.steps, data_dir, args.smoke)
            cost = train_arm(c, out / f"{name}_seed{seed}")
            costs[f"{name}_seed{seed}"] = cost
            print(f"{name} seed {seed}: {json.dumps(cost)}", flush=True)
    (out / "costs.json").write_text(json.dumps(costs, indent=1))
    if args.train_only:
        return 0
    if len(args.arms) != len(ARMS):
        raise SystemExit("the report needs every arm: drop --arms or add --train-only")
    from experiments import scaleface_branches_report as report

    report.write(out, args, costs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
