"""Where the ResNet-18 train step's time goes: every distinct convolution of the `train` row
(ResNet-18, insightface 3x3 stem, 112x112, batch 16, NHWC) timed alone, forward and backward
(input and weight gradients), in JAX (XLA:CPU) and PyTorch (channels-last), alternated.

    python benchmarks/conv_profile.py [--batch 16] [--repeats 5]

The per-layer table is a profile of the gap between the two train steps: the summed conv
time per framework is compared with the whole train step measured by `run.py --only train`.
Not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import statistics
import time


def shapes(batch: int):
    """(name, count in the network, N, H, W, Cin, Cout, k, stride) of ResNet-18 at 112 px."""
    out = [("stem 3x3", 1, batch, 112, 112, 3, 64, 3, 1)]
    h, cin = 112, 64
    for stage, cout in enumerate((64, 128, 256, 512)):
        # block 1: stride-2 3x3, 3x3, 1x1 stride-2 shortcut; block 2: two 3x3
        out.append((f"s{stage + 1} 3x3/2", 1, batch, h, h, cin, cout, 3, 2))
        h //= 2
        out.append((f"s{stage + 1} 3x3", 3, batch, h, h, cout, cout, 3, 1))
        out.append((f"s{stage + 1} 1x1/2 shortcut", 1, batch, h * 2, h * 2, cin, cout, 1, 2))
        cin = cout
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    rows, tot_j, tot_t = [], 0.0, 0.0
    for name, count, n, h, w, cin, cout, k, s in shapes(args.batch):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, h, w, cin), dtype=np.float32)
        wt = rng.standard_normal((k, k, cin, cout), dtype=np.float32) * 0.05
        pad = (k - 1) // 2

        def conv(x, w):
            return jax.lax.conv_general_dilated(
                x, w, (s, s), [(pad, pad), (pad, pad)], dimension_numbers=("NHWC", "HWIO", "NHWC")
            )

        step = jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(conv(x, w) ** 2), argnums=(0, 1)))
        xj, wj = jnp.asarray(x), jnp.asarray(wt)
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).contiguous(
            memory_format=torch.channels_last
        )
        xt.requires_grad_(True)
        mod = torch.nn.Conv2d(cin, cout, k, s, pad, bias=False).to(
            memory_format=torch.channels_last
        )
        with torch.no_grad():
            mod.weight.copy_(torch.from_numpy(wt.transpose(3, 2, 0, 1).copy()))

        def jf():
            jax.block_until_ready(step(xj, wj))

        def tf():
            mod.zero_grad(set_to_none=True)
            xt.grad = None
            (mod(xt) ** 2).sum().backward()

        jf(), tf()
        tj, tt = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            jf()
            tj.append(time.perf_counter() - t)
            t = time.perf_counter()
            tf()
            tt.append(time.perf_counter() - t)
        mj, mt = statistics.median(tj), statistics.median(tt)
        flops = 3 * 2 * n * (h // s) * (w // s) * cin * cout * k * k  # fwd + 2 bwd convs
        tot_j += count * mj
        tot_t += count * mt
        rows.append((name, count, f"{n}x{h}x{w}x{cin}->{cout}", mj, mt, flops / mj / 1e9))
    print("| conv | x | shape | jax fwd+bwd ms | torch fwd+bwd ms | torch/jax | jax GFLOP/s |")
    print("|---|---|---|---|---|---|---|")
    for name, count, shp, mj, mt, gf in rows:
        print(
            f"| {name} | {count} | {shp} | {mj * 1e3:.1f} | {mt * 1e3:.1f} | {mt / mj:.2f}x | {gf:.0f} |"
        )
    print(
        f"\nall convolutions of one train step (x count): jax {tot_j * 1e3:.0f} ms, "
        f"torch {tot_t * 1e3:.0f} ms (torch/jax {tot_t / tot_j:.2f}x)"
    )


if __name__ == "__main__":
    main()
