"""Where a ScaleFace detector's inference FLOPs go, and its images/s.

XLA's cost analysis of each part of `jaxface.tasks.detection.DetectionTask.predict`,
compiled separately at the given input sizes (batch 1):

* trunk: the ResNet (`ScaleFace.backbone_features`);
* per branch: merge (laterals + 3x3 merge conv), RPN (3x3 conv + 1x1 heads) and the
  RoI head on the test-time RoI count (``config.test_post_nms_topk``, RoIAlign
  included);
* total: the whole `predict` (the parts plus proposals, NMS and decoding).

``--time`` also times `predict` (median of ``--repeats`` calls after the compiling one):
run it on an idle machine.

    python benchmarks/detector_flops.py                              # `wider`, 640 and 1024 px
    python benchmarks/detector_flops.py --variant wider --set model.num_head_convs=2 \\
        --set 'model.head_fc=[1024,512]'                             # another head
    python benchmarks/detector_flops.py --variant synthetic --sizes 320 --time
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import statistics
import time


def _gflop(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)) / 1e9


def measure(variant: str, overrides: dict, sizes, *, timed: bool, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    from jaxface.models import scaleface
    from jaxface.quickstart import find_configs_dir, load_config
    from jaxface.tasks.detection import DetectionTask

    cfg = load_config(find_configs_dir() / "scaleface.py", variant)
    cfg.model.backbone.pretrained = ""  # FLOPs and time do not depend on the weights
    cfg.update_from_flattened_dict(overrides)
    task = DetectionTask(cfg)
    model = task.model
    k = int(cfg.test_post_nms_topk)
    out = {"variant": variant, "overrides": overrides, "rois_per_branch": k, "sizes": {}}
    variables = None
    for size in sizes:
        x = jax.random.normal(jax.random.key(0), (1, size, size, 3), jnp.float32)
        hw = jnp.full((1, 2), size, jnp.float32)
        if variables is None:
            variables = jax.jit(model.init)(jax.random.key(1), x)
        apply = functools.partial(model.apply, variables)
        stages = jax.jit(lambda x: apply(x, method=scaleface.ScaleFace.backbone_features))
        row = {"trunk": _gflop(stages.lower(x).compile()), "branches": {}}
        st = stages(x)
        for i, spec in enumerate(task.specs):
            feat_fn = jax.jit(
                lambda s, i=i: apply(s, i, method=scaleface.ScaleFace.branch_features)
            )
            feat = feat_fn(st)
            rpn_fn = jax.jit(lambda f, i=i: apply(f, i, method=scaleface.ScaleFace.branch_rpn))
            rois = jnp.tile(jnp.array([[8.0, 8.0, 72.0, 88.0]]), (1, k, 1))
            head_fn = jax.jit(
                lambda f, r, i=i: apply(f, r, i, method=scaleface.ScaleFace.branch_head)
            )
            row["branches"][spec.name] = {
                "merge": _gflop(feat_fn.lower(st).compile()),
                "rpn": _gflop(rpn_fn.lower(feat).compile()),
                "head": _gflop(head_fn.lower(feat, rois).compile()),
            }
        run = jax.jit(
            lambda v, x, hw: task.predict(v, {"image": x, "image_hw": hw, "scale": jnp.ones(1)})
        )
        compiled = run.lower(variables, x, hw).compile()
        row["total"] = _gflop(compiled)
        row["heads"] = sum(b["head"] for b in row["branches"].values())
        row["total_over_trunk"] = row["total"] / row["trunk"]
        if timed:
            jax.block_until_ready(compiled(variables, x, hw))
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                jax.block_until_ready(compiled(variables, x, hw))
                ts.append(time.perf_counter() - t0)
            row["images_per_s"] = 1.0 / statistics.median(ts)
        out["sizes"][str(size)] = row
    return out


def _parse_set(items) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--variant", default="wider", help="configs/scaleface.py variant")
    p.add_argument("--set", action="append", default=[], help="config override KEY=VALUE")
    p.add_argument("--sizes", default="640,1024", help="square input sides, comma-separated")
    p.add_argument("--time", action="store_true", help="also time predict (idle machine)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default="", help="also write the result to this file")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    res = measure(args.variant, _parse_set(args.set), sizes, timed=args.time, repeats=args.repeats)
    for size, row in res["sizes"].items():
        parts = ", ".join(
            f"{n}: merge {b['merge']:.1f} / rpn {b['rpn']:.1f} / head {b['head']:.1f}"
            for n, b in row["branches"].items()
        )
        speed = f", {row['images_per_s']:.2f} img/s" if "images_per_s" in row else ""
        print(
            f"{res['variant']} {res['overrides'] or ''} at {size} px: total {row['total']:.1f} GFLOP"
            f" = {row['total_over_trunk']:.2f} x trunk {row['trunk']:.1f}; heads {row['heads']:.1f}"
            f" ({res['rois_per_branch']} RoIs/branch); {parts}{speed}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
