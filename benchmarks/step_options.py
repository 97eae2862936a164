"""The trainer's CPU train step under each XLA:CPU option and dtype, beside PyTorch, in one run.

    python benchmarks/step_options.py                       # every option, 3 rounds
    python benchmarks/step_options.py --only default,ynn,torch --rounds 5
    python benchmarks/step_options.py --backbone resnet50 --image 224 --batch 8

XLA flags are read once per process, so every option runs in its own process: the
driver starts one process per (round, option) and **alternates** the options inside each
round (default, bf16, onednn, ..., torch, then again), so slow drift of the machine's
load spreads over all of them. Each process builds the trainer's own jitted step
(`benchmarks/train_step.py`: ``Trainer.make_train_step``, the function ``jaxface
train`` runs), compiles it (the first round fills a compilation cache in a temporary
folder, so later rounds mostly skip compiling), runs one warm-up step and times
``--steps`` steps. The table gives, per option, the median step over all rounds,
images/s, and the speed-up against PyTorch's median (the same workload hand-written,
`train_step.torch_twin`).

Not a test: run it on an otherwise idle machine; nothing asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

#: name -> (XLA_FLAGS added to the environment, compute dtype, what it is)
OPTIONS = {
    "default": ("", "float32", "XLA:CPU defaults, float32"),
    "bf16": ("", "bfloat16", "bfloat16 compute, float32 parameters"),
    "onednn": ("--xla_cpu_use_onednn=true", "float32", "--xla_cpu_use_onednn"),
    "onednn_cc": (
        "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
        "float32",
        "oneDNN custom calls",
    ),
    "onednn_fusion": (
        "--xla_cpu_experimental_onednn_fusion_type=dot,eltwise,reduce",
        "float32",
        "oneDNN fusions dot,eltwise,reduce",
    ),
    "xnn_fusion": (
        "--xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce",
        "float32",
        "XNNPACK fusions dot,eltwise,reduce",
    ),
    "xnn_conv": (
        "--xla_cpu_experimental_xnn_fusion_type=individual_convolution,individual_dot",
        "float32",
        "XNNPACK convolutions and dots",
    ),
    "xnn_graph": (
        "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
        "float32",
        "XNNPACK graph fusion, greedy",
    ),
    "ynn": (
        "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce --xla_cpu_use_xnnpack=false",
        "float32",
        "YNN fusions dot,eltwise,reduce",
    ),
    "ynn_conv": (
        "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce,individual_convolution "
        "--xla_cpu_use_xnnpack=false",
        "float32",
        "YNN fusions + convolutions",
    ),
    "ynn_bf16": (
        "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce --xla_cpu_use_xnnpack=false",
        "bfloat16",
        "YNN fusions, bfloat16 compute",
    ),
    "torch": ("", "float32", "PyTorch twin"),
}


def worker(args) -> None:
    """One option in this process: prints one JSON line with its step times."""
    name = args.worker
    if name == "torch":
        import torch  # pylint: disable=import-outside-toplevel

        from train_step import torch_twin  # pylint: disable=import-outside-toplevel

        step, describe = torch_twin(args.batch, args.image, args.backbone, args.stem)
        step()
        times, loss = [], 0.0
        for _ in range(args.steps):
            t0 = time.perf_counter()
            loss = step()
            times.append(time.perf_counter() - t0)
        print(
            json.dumps(
                {
                    "times": times,
                    "loss": loss,
                    "describe": describe,
                    "threads": torch.get_num_threads(),
                }
            ),
            flush=True,
        )
        return

    import jax  # pylint: disable=import-outside-toplevel

    jax.config.update("jax_compilation_cache_dir", args.cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    from train_step import trainer_step, workload_config  # pylint: disable=import-outside-toplevel

    _, dtype, _ = OPTIONS[name]
    config = workload_config(args.batch, args.image, dtype, args.backbone, args.stem)
    t0 = time.perf_counter()
    step, state, batch, rng, flops = trainer_step(config)
    state, m = step(state, batch, rng)
    jax.block_until_ready((state, m))
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        state, m = step(state, batch, rng)
        jax.block_until_ready((state, m))
        times.append(time.perf_counter() - t0)
    print(json.dumps({"times": times, "flops": flops, "first_s": first}), flush=True)


def load_average() -> str:
    try:
        return open("/proc/loadavg").read().split()[0]
    except OSError:
        return "?"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", default=",".join(OPTIONS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=4, help="timed steps per process")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--image", type=int, default=112)
    p.add_argument("--backbone", default="resnet18", choices=("resnet18", "resnet34", "resnet50"))
    p.add_argument(
        "--stem",
        default="small",
        choices=("small", "imagenet"),
        help="small: insightface's 3x3/1 (112 px faces); imagenet: 7x7/2 + max-pool",
    )
    p.add_argument("--markdown", default="", help="also write the table to this file")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0

    names = args.only.split(",")
    for n in names:
        if n not in OPTIONS:
            p.error(f"--only: unknown option {n!r}; choose from {','.join(OPTIONS)}")
    cache = tempfile.mkdtemp(prefix="jaxface_step_cache_")
    results = {n: [] for n in names}
    extra = {}
    print(
        f"load {load_average()} at the start; {args.rounds} rounds x {len(names)} options",
        flush=True,
    )
    t_all = time.time()
    for r in range(args.rounds):
        for n in names:
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
            flags = OPTIONS[n][0]
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                n,
                "--cache-dir",
                cache,
                "--steps",
                str(args.steps),
                "--batch",
                str(args.batch),
                "--image",
                str(args.image),
                "--backbone",
                args.backbone,
                "--stem",
                args.stem,
            ]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            line = [x for x in out.stdout.splitlines() if x.startswith("{")]
            if out.returncode or not line:
                tail = (out.stderr.strip().splitlines() or ["no output"])[-1][:160]
                print(f"round {r + 1} {n:14s} FAILED: {tail}", flush=True)
                continue
            rec = json.loads(line[-1])
            results[n] += rec["times"]
            extra.setdefault(n, rec)
            med = statistics.median(rec["times"])
            print(
                f"round {r + 1} {n:14s} {med * 1e3:8.1f} ms/step  "
                f"{args.batch / med:6.1f} img/s  load {load_average()}",
                flush=True,
            )
    torch_med = statistics.median(results["torch"]) if results.get("torch") else None
    rows = [
        "| option | XLA flags / dtype | ms/step (median) | img/s | vs PyTorch | GFLOP/s |",
        "|---|---|---|---|---|---|",
    ]
    for n in names:
        if not results[n]:
            rows.append(f"| {n} | | failed | | | |")
            continue
        med = statistics.median(results[n])
        flags, dtype, what = OPTIONS[n]
        ratio = f"{torch_med / med:.2f}x" if torch_med else "n/a"
        flops = extra[n].get("flops") or 0.0
        gfs = f"{flops / med / 1e9:.1f}" if flops else ""
        desc = extra[n].get("describe", "") if n == "torch" else f"`{flags or '-'}` {dtype}"
        rows.append(
            f"| {n} ({what}) | {desc} | {med * 1e3:.1f} | {args.batch / med:.1f} | "
            f"{ratio} | {gfs} |"
        )
    table = "\n".join(rows)
    print(table)
    head = (
        f"{args.backbone} {args.image} px, batch {args.batch}; {args.rounds} rounds x "
        f"{args.steps} steps per option; {time.time() - t_all:.0f} s; load at the end "
        f"{load_average()}"
    )
    print(head)
    if args.markdown:
        pathlib.Path(args.markdown).write_text(head + "\n\n" + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
