"""The cluster path on whatever devices exist: the real trainer's step, timed.

    python benchmarks/accelerator_check.py                 # every row, full sizes
    python benchmarks/accelerator_check.py --rows precision,msceleb_1m
    python benchmarks/accelerator_check.py --tiny          # tiny sizes (the test suite runs this)

Rows (each builds `jaxface.train.Trainer` from a config in ``configs/`` and times its
jitted train step on synthetic batches of the right shapes; no dataset is read):

  resnet50     the recognition step of ``dream.py:msceleb`` (ResNet-50, 112 px, bf16,
               batch 128 per device): step time, TFLOP/s from XLA's cost analysis, and MFU
               against the device's bf16 peak where it is known.
  scaleface    the detection step of ``scaleface.py:wider`` at 1,024 px in bf16 (batch 2
               per device).
  recognition  ``dream.py:msceleb_1m``: 1,000,000 classes x 512 split over every device
               (``model_parallel`` = device count), ArcFace, Partial FC r = 0.1, bf16.
  precision    per task, its quickstart config's step in fp32 and in bf16.
  msceleb_1m   compiled per-device memory (`memory_analysis`) of ``msceleb_1m`` at
               ``model_parallel`` 1 vs all devices, and the step time with Partial FC
               r = 0.1 vs r = 1.0 (the stem shrunk to a ResNet-10 at width 1/4 on CPU, so
               the classifier dominates as it does at scale).

``--tiny`` shrinks every model, image and class count so that all rows run in about a
minute on a CPU; its numbers mean nothing but that the path works.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

import jax
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jaxface import train  # noqa: E402
from jaxface.quickstart import load_config  # noqa: E402

ROWS = ("resnet50", "scaleface", "recognition", "precision", "msceleb_1m")

# Dense bf16 peak per device (TFLOP/s), from the vendors' data sheets.
BF16_PEAK_TFLOPS = {
    "H100": 989.0,
    "H200": 989.0,
    "A100": 312.0,
    "L4": 121.0,
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,
    "TPU v6 lite": 918.0,
}


def device_peak(kind: str) -> float | None:
    for name, peak in BF16_PEAK_TFLOPS.items():
        if name.lower() in kind.lower():
            return peak
    return None


def _config(file: str, variant: str, **overrides):
    c = load_config(REPO / "configs" / file, variant)
    c.evals = []
    for key, value in overrides.items():
        node = c
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return c


def _examples(trainer, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A host batch of ``n`` synthetic examples through the task's own training transform."""
    task, c = trainer.task, trainer.config
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        if task.name == "detection":
            side = int(c.image_size)
            faces = 4
            y0 = rng.uniform(0.05, 0.7, faces)
            x0 = rng.uniform(0.05, 0.7, faces)
            s = rng.uniform(0.03, 0.25, faces)
            ex = {
                "image": rng.integers(0, 256, (side, side, 3), np.uint8),
                "faces": {"bbox": np.stack([y0, x0, y0 + s, x0 + s], -1).astype(np.float32)},
            }
        elif task.name == "recognition":
            ex = {
                "image": rng.integers(0, 256, (int(c.image_size),) * 2 + (3,), np.uint8),
                "label": i % min(int(c.num_classes), n),
                "yaw": np.float32(rng.uniform(-90, 90)),
                "is_profile": bool(i % 2),
            }
        else:
            ex = {
                "image": rng.integers(0, 256, (int(c.image_size),) * 2 + (3,), np.uint8),
                "attributes": rng.integers(0, 2, (task.num_attributes,)).astype(np.int32),
            }
        out.append(trainer.task.transform(ex, np.random.default_rng(seed + i), train=True))
    return {k: np.stack([o[k] for o in out]) for k in out[0]}


def time_step(config, *, steps: int, workdir: str) -> dict:
    """Compile and time the trainer's step: median seconds, FLOPs, per-device memory."""
    trainer = train.Trainer(config, workdir)
    host = _examples(trainer, trainer.per_host_batch)
    state, sharding = trainer.init_state(host)
    step = trainer.make_train_step(sharding)
    batch = trainer.ctx.to_global(host)
    rng = jax.device_put(jax.random.key(0), trainer.replicated)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch, rng).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
    mem = compiled.memory_analysis()
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        state, m = step(state, batch, rng)
        jax.block_until_ready(state.params)
        times.append(time.perf_counter() - t0)
    loss = float(m.compute()["loss"])
    return {
        "step_s": float(np.median(times[1:])),
        "compile_s": compile_s,
        "flops": flops,
        "loss": loss,
        "per_device_bytes": _device_bytes(mem),
        "trainer": trainer,
        "state": state,
    }


def _device_bytes(mem) -> float | None:
    if mem is None:
        return None
    return float(
        mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        + mem.temp_size_in_bytes
        - mem.alias_size_in_bytes
    )


def row_resnet50(args, emit):
    n = jax.device_count()
    size = dict(image_size=32, **{"model.width": 0.125}) if args.tiny else {}
    c = _config(
        "dream.py",
        "msceleb",
        compute_dtype="bfloat16",
        batch_size=(2 if args.tiny else 128) * n,
        num_classes=64 if args.tiny else 85742,
        **size,
    )
    r = time_step(c, steps=args.steps, workdir=args.workdir)
    tflops = r["flops"] / r["step_s"] / 1e12
    peak = device_peak(jax.devices()[0].device_kind)
    # cost_analysis counts the whole (SPMD-partitioned) program of one device.
    mfu = f"{tflops / peak:.1%}" if peak else "peak unknown"
    emit(
        "resnet50",
        f"{r['step_s'] * 1e3:.1f} ms/step",
        f"{tflops:.2f} TFLOP/s per device, MFU {mfu}",
    )


def row_scaleface(args, emit):
    n = jax.device_count()
    c = _config("scaleface.py", "wider", compute_dtype="bfloat16", batch_size=2 * n)
    if args.tiny:
        c.image_size = 128
        c.model.backbone.update(stage_sizes=[1, 1, 1, 1], block="basic", width=0.125)
        c.model.update(merge_channels=16, rpn_channels=16, head_conv_channels=16, head_fc=[32, 32])
    # Timing only: random weights (the ImageNet file need not be present).
    c.model.backbone.pretrained = ""
    r = time_step(c, steps=args.steps, workdir=args.workdir)
    emit(
        "scaleface",
        f"{r['step_s'] * 1e3:.1f} ms/step",
        f"{int(c.image_size)} px, batch {int(c.batch_size)}, {r['flops'] / r['step_s'] / 1e12:.2f} TFLOP/s per device",
    )


def _msceleb_1m(args, mp: int, rate: float, **extra):
    n = jax.device_count()
    small = {"image_size": 32, "model.width": 0.25, "model.backbone.name": "resnet10"}
    c = _config(
        "dream.py",
        "msceleb_1m",
        model_parallel=mp,
        batch_size=(2 if args.tiny else 64) * (n // mp),
        **{"head.sample_rate": rate, "head.class_groups": max(n, 8)},
        **small,
        **extra,
    )
    if args.tiny:
        c.num_classes = 4096
    return c


def row_recognition(args, emit):
    n = jax.device_count()
    c = _msceleb_1m(args, n, 0.1, compute_dtype="bfloat16")
    if not args.tiny:  # the real stem on an accelerator
        c.model.backbone.name = "resnet50"
        c.model.width = 1.0
        c.image_size = 112
    r = time_step(c, steps=args.steps, workdir=args.workdir)
    emit(
        "recognition",
        f"{r['step_s'] * 1e3:.1f} ms/step",
        f"{int(c.num_classes):,} classes over {n} devices, Partial FC 0.1, loss {r['loss']:.3f}",
    )


def row_precision(args, emit):
    for file, task in (
        ("lmle.py", "attributes"),
        ("dream.py", "recognition"),
        ("scaleface.py", "detection"),
    ):
        times = {}
        for dtype in ("float32", "bfloat16"):
            c = _config(file, "tiny" if args.tiny else "synthetic", compute_dtype=dtype)
            times[dtype] = time_step(c, steps=args.steps, workdir=args.workdir)["step_s"]
        emit(
            f"precision/{task}",
            f"fp32 {times['float32'] * 1e3:.1f} ms, bf16 {times['bfloat16'] * 1e3:.1f} ms",
            f"bf16 / fp32 = {times['bfloat16'] / times['float32']:.2f}",
        )


def row_msceleb_1m(args, emit):
    n = jax.device_count()
    mem = {}
    for mp in (1, n):
        c = _msceleb_1m(args, mp, 1.0)
        trainer = train.Trainer(c, args.workdir)
        host = _examples(trainer, trainer.per_host_batch)
        # Compile only: a replicated 1M x 512 classifier per device need not fit in RAM.
        abstract, sharding = _abstract_state(trainer, host)
        compiled = (
            trainer.make_train_step(sharding)
            .lower(abstract, trainer.ctx.to_global(host), jax.random.key(0))
            .compile()
        )
        mem[mp] = _device_bytes(compiled.memory_analysis())
        d = int(c.model.embed_dim)
        cls = trainer.task.classifier_columns * d * 4 * 2 / mp  # kernel + momentum, fp32
        emit(
            f"msceleb_1m/memory mp={mp}",
            f"{mem[mp] / 2**30:.2f} GiB per device",
            f"classifier + momentum {cls / 2**30:.2f} GiB per device",
        )
    emit(
        "msceleb_1m/memory ratio",
        f"{mem[n] / mem[1]:.3f}",
        f"mp={n} / mp=1 (whole step, per device)",
    )
    for rate in (1.0, 0.1):
        r = time_step(_msceleb_1m(args, n, rate), steps=args.steps, workdir=args.workdir)
        emit(
            f"msceleb_1m/step r={rate}",
            f"{r['step_s'] * 1e3:.0f} ms/step",
            f"mp={n}, batch {int(r['trainer'].global_batch)}",
        )


def _abstract_state(trainer, host):
    batch = trainer.ctx.to_global(host)
    rng = jax.random.key(int(trainer.config.seed))
    abstract = jax.eval_shape(trainer._init_state, rng, batch)
    sharding = trainer.state_sharding(abstract)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, sharding
    )
    return abstract, sharding


def main(argv=None) -> list[tuple[str, str, str]]:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows of {ROWS}")
    ap.add_argument(
        "--tiny", action="store_true", help="tiny sizes: checks the path, times nothing"
    )
    ap.add_argument("--steps", type=int, default=5, help="timed steps per row (median)")
    ap.add_argument("--workdir", default="/tmp/jaxface_accelerator_check")
    args = ap.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    bad = sorted(set(rows) - set(ROWS))
    if bad:
        ap.error(f"--rows: unknown {bad}; expected some of {ROWS}")
    os.makedirs(args.workdir, exist_ok=True)
    dev = jax.devices()[0]
    print(
        f"devices: {jax.device_count()} x {dev.device_kind} ({dev.platform}), processes {jax.process_count()}"
    )
    out: list[tuple[str, str, str]] = []

    def emit(name, value, note):
        out.append((name, value, note))
        print(f"| {name} | {value} | {note} |", flush=True)

    print("| row | result | note |\n|---|---|---|")
    for r in rows:
        globals()[f"row_{r}"](args, emit)
    return out


if __name__ == "__main__":
    main()
