"""jaxface side by side with its peers, in one run; prints one table of ratios.

    python benchmarks/run.py                      # every row
    python benchmarks/run.py --only nms,roi       # some rows
    python benchmarks/run.py --repeats 7 --batch 32 --markdown out.md

Each row times a jaxface function and its peer on the same inputs, **alternating**
them (jax, peer, jax, peer, ...) after a warm-up (compilation excluded), and reports
the median of ``--repeats`` runs of each. ``speed-up = peer time / jaxface time``:
above 1 jaxface is faster. Peers are optional and never dependencies of jaxface
(install them for measuring: ``pip install faiss-cpu opencv-python-headless
scikit-learn torch``); a row whose peer is missing says so and is skipped.

Rows:
  nms        jaxface.ops.batched_nms vs cv2.dnn.NMSBoxes (2,000 boxes, IoU 0.4, no top-k cap)
  roi        jaxface.ops.roi_align (7x7, 2x2 samples) vs tf.image.crop_and_resize (14x14)
             + 2x2 average pool, the usual TF RoIAlign (same samples, same maths)
  kmeans     jaxface.ops.kmeans vs faiss.Kmeans and sklearn KMeans (k-means++ seeding and
             exactly --kmeans-iters Lloyd iterations each)
  search     jaxface.evaluation.identification.search_top_k vs faiss.IndexFlatIP (exact 1:N):
             1,000 queries over a 1,000,000 x 512 gallery, top-30 (--search-*); two rows:
             the gallery memory-mapped from a .npy (read in place) and in RAM (staged)
  allpairs   all-pairs TAR@FAR histograms over 100,000 x 512 embeddings (5e9 pairs) vs the
             bare matmul of the same tiles; exact float64 check on a 10,000 subset
  widerface  the whole WIDER FACE val set evaluated (3 settings) from synthesised detections;
             peer: the quoted 27 s of the public Python port (not installed: quoted, not measured)
  detect     ScaleFace inference (`configs/scaleface.py:wider`: ResNet-50, three branches,
             RPN + RoIAlign heads, NMS), images/s, vs the same ResNet-50 trunk in PyTorch
             eager (trunk only: the peer does less work; the note gives jaxface's trunk alone)
  train      the trainer's own jitted train step (`Trainer.make_train_step`, see
             benchmarks/train_step.py): ResNet-18 (insightface 3x3 stem) at 112x112, Dense 512,
             FC 1000, SGD momentum/weight decay, vs the same network and optimiser
             hand-written in PyTorch (channels-last); images/s
  flops      achieved FLOP/s of that jax train step (XLA's cost analysis / time) vs a measured
             f32 matmul peak (a 2048^3 jnp.dot)

Not a test: timings depend on the machine and its load; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import platform
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


class Row:
    def __init__(
        self,
        name,
        what,
        jax_s=None,
        peer_s=None,
        peer="",
        note="",
        unit="s",
        jax_v=None,
        peer_v=None,
        ratio=None,
    ):
        self.name, self.what, self.peer, self.note, self.unit = name, what, peer, note, unit
        self.jax_s, self.peer_s = jax_s, peer_s
        self.jax_v, self.peer_v = jax_v, peer_v  # shown values (defaults: the times)
        self.ratio = ratio if ratio is not None else (peer_s / jax_s if jax_s and peer_s else None)


def alternate_all(fns, repeats: int, warmup: int = 1):
    """Median seconds of each function, timed in turn (round robin) after warm-up."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return [statistics.median(ts) for ts in times]


def alternate(jax_fn, peer_fn, repeats: int, warmup: int = 1):
    """Median seconds of jax_fn and peer_fn, timed alternately after warm-up."""
    if peer_fn is None:
        return alternate_all([jax_fn], repeats, warmup)[0], None
    return tuple(alternate_all([jax_fn, peer_fn], repeats, warmup))


# ----------------------------------------------------------------------------- rows


def bench_nms(args):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jaxface.ops import nms as nms_lib

    n, thr = 2000, 0.4
    top = n  # OpenCV's top_k caps the candidates *before* NMS; keep all of them on both sides
    rng = np.random.default_rng(0)
    # Integer corners: OpenCV converts a list of boxes to cv::Rect (ints).
    xy = rng.integers(0, 900, (n, 2)).astype(np.float32)
    wh = rng.integers(10, 120, (n, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + wh], 1)
    scores = rng.uniform(0, 1, n).astype(np.float32)
    f = jax.jit(lambda b, s: nms_lib.batched_nms(b, s, iou_threshold=thr, max_output=top))
    bj, sj = jnp.asarray(boxes[None]), jnp.asarray(scores[None])
    jax_fn = lambda: jax.block_until_ready(f(bj, sj))  # noqa: E731
    what = f"{n} boxes, IoU {thr}, no cap"
    if not have("cv2"):
        return Row(
            "nms",
            what,
            *alternate(jax_fn, None, args.repeats),
            peer="cv2.dnn.NMSBoxes",
            note="peer not installed (pip install opencv-python-headless)",
        )
    import cv2

    xywh = np.concatenate([xy, wh], 1).tolist()
    sl = scores.tolist()
    peer_fn = lambda: cv2.dnn.NMSBoxes(xywh, sl, 0.0, thr, 1.0, 0)  # noqa: E731
    kept_cv = set(np.asarray(peer_fn()).reshape(-1).tolist())
    out = f(bj, sj)
    kept_j = set(np.asarray(out.indices[0])[np.asarray(out.valid[0])].tolist())
    # OpenCV's IoU uses (x2 - x1) areas like ours (plus_one=False); report agreement.
    agree = len(kept_cv & kept_j) / max(len(kept_cv | kept_j), 1)
    tj, tp = alternate(jax_fn, peer_fn, args.repeats)
    return Row(
        "nms",
        what,
        tj,
        tp,
        peer="cv2.dnn.NMSBoxes",
        note=f"kept sets agree {agree:.0%} ({len(kept_j)} vs {len(kept_cv)})",
    )


def bench_roi(args):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jaxface.ops import roi as roi_lib

    b, h, w, c, r, out = 2, 64, 64, 256, 512, 7
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(b, h, w, c)).astype(np.float32)
    # RoIs inside the map: at the border TF extrapolates with 0, torchvision clamps.
    x1y1 = rng.uniform(1, 46, (r, 2)).astype(np.float32)
    rois = np.concatenate([x1y1, x1y1 + rng.uniform(4, 16, (r, 2)).astype(np.float32)], 1)
    bidx = rng.integers(0, b, r).astype(np.int32)
    f = jax.jit(
        lambda f_, r_, i_: roi_lib.roi_align(f_, r_, i_, out, sampling_ratio=2, aligned=True)
    )
    fj, rj, ij = map(jnp.asarray, (feats, rois, bidx))
    jax_fn = lambda: jax.block_until_ready(f(fj, rj, ij))  # noqa: E731
    what = f"[{b},{h},{w},{c}] map, {r} RoIs -> {out}x{out}"
    if not have("tensorflow"):
        return Row(
            "roi",
            what,
            *alternate(jax_fn, None, args.repeats),
            peer="tf.image.crop_and_resize",
            note="peer not installed",
        )
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    # crop_and_resize samples a regular grid with corners at the box edges; RoIAlign with
    # aligned=True and a 2x2 grid samples bin centres. The box that makes the 2*out grid
    # of crop_and_resize land on RoIAlign's sample points (pixel-centre model):
    s = 2 * out
    x1, y1, x2, y2 = [rois[:, i] - 0.5 for i in range(4)]
    bw, bh = (x2 - x1) / s, (y2 - y1) / s
    nb = np.stack(
        [
            (y1 + bh / 2) / (h - 1),
            (x1 + bw / 2) / (w - 1),
            (y2 - bh / 2) / (h - 1),
            (x2 - bw / 2) / (w - 1),
        ],
        1,
    ).astype(np.float32)
    ft, bt, it = tf.constant(feats), tf.constant(nb), tf.constant(bidx)

    @tf.function(jit_compile=False)
    def tf_roi(ft, bt, it):
        crops = tf.image.crop_and_resize(ft, bt, it, (s, s), method="bilinear")
        return tf.nn.avg_pool2d(crops, 2, 2, "VALID")

    peer_fn = lambda: tf_roi(ft, bt, it).numpy()  # noqa: E731
    diff = float(np.max(np.abs(peer_fn() - np.asarray(f(fj, rj, ij)))))
    tj, tp = alternate(jax_fn, peer_fn, args.repeats)
    return Row(
        "roi",
        what,
        tj,
        tp,
        peer="tf.image.crop_and_resize+avg_pool",
        note=f"max |diff| {diff:.1e} (same samples inside the map)",
    )


def bench_kmeans(args):
    import jax
    import numpy as np
    import importlib

    km = importlib.import_module("jaxface.ops.kmeans")  # jaxface.ops.kmeans is also a function name
    n, d, k, iters = 20000, 64, 100, args.kmeans_iters
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(k, d)) * 3
    x = (centres[rng.integers(0, k, n)] + rng.normal(size=(n, d))).astype(np.float32)
    key = jax.random.key(0)
    xj = jax.numpy.asarray(x)
    f = jax.jit(lambda key, p: km.kmeans(key, p, k=k, max_iters=iters))
    res = f(key, xj)
    jax_fn = lambda: jax.block_until_ready(f(key, xj))  # noqa: E731
    what = f"{n}x{d}, k={k}, <= {iters} Lloyd iters"
    rows = []
    note_j = f"jax ran {int(res.num_iters)} iters, inertia {float(res.inertia):.4g}"
    if have("faiss"):
        import faiss

        def peer_fn():
            m = faiss.Kmeans(d, k, niter=iters, seed=0, verbose=False)
            m.train(x)
            return m

        tj, tp = alternate(jax_fn, peer_fn, args.repeats)
        m = peer_fn()
        rows.append(
            Row(
                "kmeans",
                what,
                tj,
                tp,
                peer="faiss.Kmeans",
                note=f"{note_j}; faiss inertia {float(m.obj[-1]):.4g} (random init)",
            )
        )
    else:
        rows.append(
            Row(
                "kmeans",
                what,
                *alternate(jax_fn, None, args.repeats),
                peer="faiss.Kmeans",
                note="peer not installed (pip install faiss-cpu)",
            )
        )
    if have("sklearn"):
        from sklearn.cluster import KMeans

        def sk_fn():
            return KMeans(
                k,
                init="k-means++",
                n_init=1,
                max_iter=iters,
                tol=0.0,
                random_state=0,
                algorithm="lloyd",
            ).fit(x)

        tj, tp = alternate(jax_fn, sk_fn, args.repeats)
        m = sk_fn()
        rows.append(
            Row(
                "kmeans",
                what,
                tj,
                tp,
                peer="sklearn KMeans(lloyd)",
                note=f"{note_j}; sklearn {m.n_iter_} iters, inertia {m.inertia_:.4g}",
            )
        )
    return rows


def _unit(x):
    import numpy as np

    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def bench_search(args):
    """Two rows: the gallery as a memory-mapped .npy (read in place, no copy) and as a NumPy
    array in RAM (each chunk copied into a staging buffer); faiss holds its own copy."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="jaxface-bench-") as tmp:
        return _bench_search(args, pathlib.Path(tmp) / "gallery.npy")


def _bench_search(args, npy_path):
    import numpy as np
    from jaxface.evaluation import identification as ident

    q, g, d, k = 1000, args.search_gallery, args.search_dim, args.search_k
    rng = np.random.default_rng(0)
    gal = _unit(rng.standard_normal((g, d), dtype=np.float32))
    qry = _unit(gal[rng.integers(0, g, q)] + 0.05 * rng.standard_normal((q, d), dtype=np.float32))
    chunk = args.search_chunk
    np.save(npy_path, gal)
    gal_npy = np.load(npy_path, mmap_mode="r")
    fns = {
        "npy": lambda: ident.search_top_k(qry, gal_npy, k=k, chunk=chunk),
        "ram": lambda: ident.search_top_k(qry, gal, k=k, chunk=chunk),
    }
    what = f"{q} queries x {g:,} gallery, D={d}, top-{k}, chunk {chunk:,} rows"
    where = {
        "npy": "gallery np.load(.npy, mmap_mode='r'): read in place",
        "ram": "gallery a NumPy array in RAM: chunks copied to staging",
    }
    if not have("faiss"):
        times = alternate_all(list(fns.values()), args.repeats)
        return [
            Row(
                "search",
                f"{what}; {where[n]}",
                t,
                peer="faiss.IndexFlatIP",
                note="peer not installed (pip install faiss-cpu)",
            )
            for n, t in zip(fns, times)
        ]
    import faiss

    index = faiss.IndexFlatIP(d)
    index.add(gal)
    peer_fn = lambda: index.search(qry, k)  # noqa: E731
    sp, ip = peer_fn()
    notes = {}
    for name, fn in fns.items():
        sj, ij = fn()
        same_rows = float(np.mean(np.all(ij == ip, axis=1)))
        same_sets = float(np.mean([set(a) == set(b) for a, b in zip(ij, ip)]))
        notes[name] = (
            f"identical top-{k} lists {same_rows:.1%} (same sets {same_sets:.1%}), "
            f"max |score diff| {np.abs(sj - sp).max():.1e}"
        )
    *tj, tp = alternate_all([*fns.values(), peer_fn], args.repeats)
    peer = f"faiss {faiss.__version__} IndexFlatIP (exact; index built once)"
    return [
        Row("search", f"{what}; {where[n]}", t, tp, peer=peer, note=notes[n])
        for n, t in zip(fns, tj)
    ]


def _identities(n, d, per_id, noise, seed=0):
    """n unit embeddings of n // per_id identities: a centre plus Gaussian noise each."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lab = np.repeat(np.arange(n // per_id + 1), per_id)[:n]
    cent = rng.standard_normal((n // per_id + 1, d), dtype=np.float32)
    return _unit(cent[lab] + noise * rng.standard_normal((n, d), dtype=np.float32)), lab


def bench_allpairs(args):
    """All-pairs TAR@FAR (histograms streamed on device) vs the bare matmul of the same tiles."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jaxface.evaluation import identification as ident
    from jaxface.evaluation import verification as verif

    n, d, block = args.allpairs_n, 512, args.allpairs_block
    emb, lab = _identities(n, d, 10, 2.0)
    ej = jnp.asarray(emb)
    ident.all_pairs_histograms(emb[: 2 * block], lab[: 2 * block], block=block)  # compile
    nb = -(-n // block)
    pad = jnp.pad(ej, ((0, nb * block - n), (0, 0)))

    @jax.jit
    def mm_row(e, bi):  # the same triangular tiles, the scores reduced to a max only
        rows = jax.lax.dynamic_slice_in_dim(e, bi * block, block)

        def body(bj, acc):
            cols = jax.lax.dynamic_slice_in_dim(e, bj * block, block)
            return jnp.maximum(acc, jnp.max(rows @ cols.T))

        return jax.lax.fori_loop(bi, nb, body, jnp.float32(-2))

    def jax_fn():
        return ident.all_pairs_histograms(emb, lab, block=block)

    def peer_fn():
        for bi in range(nb):
            mm_row(pad, jnp.int32(bi)).block_until_ready()

    peer_fn()
    t = time.perf_counter()
    gen, imp = jax_fn()
    tj = time.perf_counter() - t
    t = time.perf_counter()
    peer_fn()
    tp = time.perf_counter() - t
    assert gen.sum() + imp.sum() == n * (n - 1) // 2
    far = [1e-8, 1e-6, 1e-4, 1e-2]
    tar = ident.histogram_tar_at_far(gen, imp, far)["tar"]
    # Agreement: an exact float64 NumPy computation on the first m embeddings.
    m = args.allpairs_check
    e64 = emb[:m].astype(np.float64)
    iu = np.triu_indices(m, 1)
    s = (e64 @ e64.T)[iu]
    same = (lab[:m, None] == lab[None, :m])[iu]
    g_sub, i_sub = ident.all_pairs_histograms(emb[:m], lab[:m], block=block)
    nbins = len(g_sub)
    b = np.clip(np.floor((s + 1.0) * (nbins / 2.0)).astype(np.int64), 0, nbins - 1)
    g_ref = np.bincount(b[same], minlength=nbins)
    i_ref = np.bincount(b[~same], minlength=nbins)
    moved = int(np.abs(g_ref - g_sub).sum() + np.abs(i_ref - i_sub).sum()) // 2
    sub_far = [1e-6, 1e-4, 1e-2]
    h = ident.histogram_tar_at_far(g_sub, i_sub, sub_far, method="interpolated")["tar"]
    x = verif.tar_at_far(s, same, sub_far, method="interpolated")
    diff = float(np.max(np.abs(np.asarray(h) - np.asarray(x))))
    return Row(
        "allpairs",
        f"all pairs of {n:,} x {d} ({n * (n - 1) // 2:.2e} pairs, {n // 10:,} identities), "
        f"genuine/impostor histograms, 2^16 bins, block {block}",
        tj,
        tp,
        peer="the bare matmul of the same tiles (lower bound)",
        note=(
            "TAR@FAR "
            + ", ".join(f"{f:g}: {t:.4f}" for f, t in zip(far, tar))
            + f"; exact float64 check on {m:,}: {moved} of {len(s):,} pairs one bin off, "
            f"TAR@FAR (1e-6..1e-2) max diff {diff:.1e}; speed-up < 1 = overhead over matmul"
        ),
    )


def bench_widerface(args):
    import numpy as np

    gt_dir = pathlib.Path(args.widerface_gt)
    what = "WIDER val, 3 settings"
    if not gt_dir.exists():
        return Row("widerface", what, note=f"skipped: ground truth not found at {gt_dir}")
    import widerface_eval as W

    E = W.E
    gt = E.load_ground_truth(str(gt_dir))
    preds = W.synth(gt.face, np.random.default_rng(0), fp_per_image=20)
    E.evaluate(gt, preds)
    ts = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        E.evaluate(gt, preds)
        ts.append(time.perf_counter() - t)
    tj = statistics.median(ts)
    return Row(
        "widerface",
        f"{what}, {gt.face.num_images} images, {preds.num_detections:,} dets",
        tj,
        W.PORT_SECONDS,
        peer="Python port of the official tool",
        note="peer time QUOTED (27 s, issue 5), not measured here: not installed",
    )


def _torch_resnet_bottleneck(stage_sizes):
    """torchvision-layout bottleneck ResNet trunk (7x7/2 stem + max-pool), no classifier."""
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, cin, mid, stride):
            super().__init__()
            cout = 4 * mid
            self.body = nn.Sequential(
                nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout),
            )  # fmt: skip
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x):
            return torch.relu(self.body(x) + (x if self.down is None else self.down(x)))

    layers = [
        nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
    ]  # fmt: skip
    cin = 64
    for i, (n, mid) in enumerate(zip(stage_sizes, (64, 128, 256, 512))):
        for j in range(n):
            layers.append(Bottleneck(cin, mid, 2 if (j == 0 and i > 0) else 1))
            cin = 4 * mid
    return nn.Sequential(*layers)


def bench_detect(args):
    """ScaleFace inference (the `wider` config: ResNet-50, three branches) on one batch."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jaxface.models import scaleface
    from jaxface.quickstart import find_configs_dir, load_config
    from jaxface.tasks.detection import DetectionTask

    cfg = load_config(find_configs_dir() / "scaleface.py", "wider")
    b, size = args.detect_batch, args.detect_size
    task = DetectionTask(cfg)  # the model and the inference path the trainer evaluates
    model = task.model
    x = jax.random.normal(jax.random.key(0), (b, size, size, 3), jnp.float32)
    hw = jnp.full((b, 2), size, jnp.float32)
    variables = jax.jit(lambda k, x: model.init(k, x[:1]))(jax.random.key(1), x)

    @jax.jit
    def run(variables, x, hw):
        return task.predict(variables, {"image": x, "image_hw": hw, "scale": jnp.ones(b)})

    trunk = jax.jit(lambda v, x: model.apply(v, x, method=scaleface.ScaleFace.backbone_features))

    def jax_fn():
        jax.block_until_ready(run(variables, x, hw))

    def trunk_fn():
        jax.block_until_ready(trunk(variables, x))

    what = (
        f"ScaleFace `wider` config (ResNet-50, 3 branches, RPN+RoIAlign heads, NMS), "
        f"batch {b} at {size}x{size}"
    )
    t_trunk, _ = alternate(trunk_fn, None, args.repeats)

    def gflop(fn, *a):
        cost = fn.lower(*a).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost.get("flops", 0.0)) / 1e9 / b if cost else float("nan")

    note = (
        f"jaxface trunk alone {b / t_trunk:.2f} img/s; per image {gflop(run, variables, x, hw):.0f} "
        f"GFLOP in all vs {gflop(trunk, variables, x):.0f} in the trunk (XLA cost analysis; "
        "benchmarks/detector_flops.py splits it); peer runs the trunk only"
    )
    if not have("torch"):
        tj, _ = alternate(jax_fn, None, args.repeats)
        return Row("detect", what, tj, None, unit="img/s", jax_v=b / tj, note=note)
    import torch

    net = _torch_resnet_bottleneck(tuple(cfg.model.backbone.stage_sizes)).eval()
    net = net.to(memory_format=torch.channels_last)
    xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).contiguous(
        memory_format=torch.channels_last
    )

    def peer_fn():
        with torch.inference_mode():
            net(xt)

    tj, tp = alternate(jax_fn, peer_fn, args.repeats)
    return Row(
        "detect",
        what,
        tj,
        tp,
        peer=f"PyTorch {torch.__version__} ResNet-50 trunk only, eval, channels-last",
        unit="img/s",
        jax_v=b / tj,
        peer_v=b / tp,
        note=note,
    )


def bench_train(args, keep):
    import jax

    from train_step import trainer_step, torch_twin, workload_config

    b, image = args.batch, 112
    config = workload_config(b, image, args.compute_dtype)
    step, state, batch, rng, flops = trainer_step(config)
    box = [state]

    def jax_fn():
        box[0], m = step(box[0], batch, rng)
        jax.block_until_ready(m)

    jax_fn()  # compile
    keep["train_flops"] = flops
    what = (
        f"the trainer's step, configs/dream.py:msceleb_naive as ResNet-18 (3x3 stem) "
        f"{image}px, batch {b}, Dense 512 + FC 1000, SGD+mom+wd, {args.compute_dtype}"
    )
    if not have("torch"):
        tj, _ = alternate(jax_fn, None, args.repeats)
        keep["train_s"] = tj
        return Row(
            "train",
            what,
            tj,
            None,
            peer="PyTorch (hand-written)",
            unit="img/s",
            jax_v=b / tj,
            note="peer not installed (pip install torch)",
        )
    peer_fn, describe = torch_twin(b, image)
    tj, tp = alternate(jax_fn, peer_fn, args.repeats)
    keep["train_s"] = tj
    return Row(
        "train",
        what,
        tj,
        tp,
        peer=describe,
        unit="img/s",
        jax_v=b / tj,
        peer_v=b / tp,
    )


def bench_flops(args, keep):
    import jax
    import jax.numpy as jnp

    n = 2048
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    bm = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    mm = jax.jit(jnp.dot)
    jax.block_until_ready(mm(a, bm))
    ts = []
    for _ in range(max(args.repeats, 5)):
        t = time.perf_counter()
        jax.block_until_ready(mm(a, bm))
        ts.append(time.perf_counter() - t)
    peak = 2 * n**3 / min(ts)  # the best run: the closest this (shared) machine gets to its peak
    if "train_s" not in keep:
        return Row(
            "flops",
            "train step FLOP/s vs matmul peak",
            note="needs the train row (--only train,flops)",
        )
    achieved = keep["train_flops"] / keep["train_s"]
    return Row(
        "flops",
        f"train step {keep['train_flops'] / 1e9:.0f} GFLOP (XLA cost analysis)",
        peer="f32 matmul 2048^3 (best of runs)",
        unit="GFLOP/s",
        jax_v=achieved / 1e9,
        peer_v=peak / 1e9,
        ratio=achieved / peak,
        note="ratio = achieved / peak",
    )


ROWS = (
    "nms",
    "roi",
    "kmeans",
    "search",
    "allpairs",
    "widerface",
    "detect",
    "train",
    "flops",
)


def fmt(v, unit):
    if v is None:
        return "-"
    if unit == "s":
        return f"{v * 1e3:.1f} ms" if v < 1 else f"{v:.2f} s"
    return f"{v:.1f} {unit}"


def table(rows, markdown=False):
    head = ["row", "workload", "jaxface", "peer", "peer time", "speed-up", "note"]
    lines = []
    for r in rows:
        jv = r.jax_v if r.jax_v is not None else r.jax_s
        pv = r.peer_v if r.peer_v is not None else r.peer_s
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        lines.append(
            [r.name, r.what, fmt(jv, r.unit), r.peer or "-", fmt(pv, r.unit), ratio, r.note]
        )
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in l) + " |" for l in lines]
        return "\n".join(out)
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(head[:-1])]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths)) + "  note"]
    out += ["  ".join(c.ljust(w) for c, w in zip(l, widths)) + "  " + l[-1] for l in lines]
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    ap.add_argument("--only", default=",".join(ROWS), help=f"comma-separated rows of {ROWS}")
    ap.add_argument(
        "--repeats", type=int, default=5, help="alternated timed runs per side (median)"
    )
    ap.add_argument("--batch", type=int, default=16, help="train-step batch size")
    ap.add_argument("--kmeans-iters", type=int, default=20)
    ap.add_argument("--search-gallery", type=int, default=1_000_000)
    ap.add_argument("--search-dim", type=int, default=512)
    ap.add_argument("--search-k", type=int, default=30)
    ap.add_argument("--search-chunk", type=int, default=65536)
    ap.add_argument("--allpairs-n", type=int, default=100_000)
    ap.add_argument("--allpairs-block", type=int, default=2048)
    ap.add_argument("--allpairs-check", type=int, default=10_000, help="exact-check subset size")
    ap.add_argument("--detect-batch", type=int, default=1, help="detector inference batch")
    ap.add_argument("--detect-size", type=int, default=640, help="detector input side (pixels)")
    ap.add_argument(
        "--widerface-gt",
        default=str(REPO.parent / "shared" / "data" / "widerface" / "ground_truth"),
    )
    ap.add_argument(
        "--compute-dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="jax train-step compute dtype (parameters stay float32)",
    )
    ap.add_argument(
        "--xla-flags",
        default="",
        help="appended to XLA_FLAGS before jax starts, e.g. "
        "'--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce --xla_cpu_use_xnnpack=false'",
    )
    ap.add_argument("--markdown", default=None, help="also write the table as Markdown here")
    args = ap.parse_args(argv)
    only = [s for s in args.only.split(",") if s]
    bad = sorted(set(only) - set(ROWS))
    if bad:
        ap.error(f"--only: unknown rows {bad}; expected some of {ROWS}")
    if "flops" in only and "train" not in only:
        only.insert(only.index("flops"), "train")
    if args.xla_flags:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
    import jax

    print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; compute dtype {args.compute_dtype}")
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.1f}; jax {jax.__version__} on {jax.devices()[0].platform}; "
        f"median of {args.repeats} alternated runs",
        flush=True,
    )
    rows, keep = [], {}
    for name in ROWS:
        if name not in only:
            continue
        t = time.time()
        fn = globals()[f"bench_{name}"]
        try:
            got = fn(args, keep) if name in ("train", "flops") else fn(args)
        except Exception as err:  # a broken peer must not hide the other rows
            got = Row(name, "-", note=f"FAILED: {type(err).__name__}: {err}"[:200])
        for r in got if isinstance(got, list) else [got]:
            rows.append(r)
            print(
                f"  {name}: {fmt(r.jax_v if r.jax_v is not None else r.jax_s, r.unit)} vs "
                f"{fmt(r.peer_v if r.peer_v is not None else r.peer_s, r.unit)} "
                f"({time.time() - t:.0f} s) {r.note}",
                flush=True,
            )
    print()
    print(table(rows))
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if args.markdown:
        pathlib.Path(args.markdown).write_text(table(rows, markdown=True) + "\n")


if __name__ == "__main__":
    main()
