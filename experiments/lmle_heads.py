"""LMLE heads on a frozen BCE trunk (docs/results/lmle_heads.md).

One command: trains the BCE trunk once (`configs/lmle.py:bce`, the one trainer), caches
its pooled features of the training and test images, and compares five heads on the
same frozen features for 15 attributes (the 10 most imbalanced and the 5 most balanced,
chosen from the TRAINING positive rates):

  (a)  linear BCE probe, thresholded at logit 0;
  (a') the same logits at the prior-corrected threshold logit(p_train) (reported, not a
       claim head);
  (b)  class-weighted linear BCE probe (`losses.balanced_class_weights`), logit 0;
  (c)  cluster-wise kNN (`ops.cluster_knn_predict`) on the L2-normalised raw features;
  (d)  a triplet head trained on the frozen trunk (`configs/lmle.py:triplet_head`, the
       trainer with ``model.frozen_trunk`` and ``init_from``) + the same kNN rule;
  (e)  the LMLE head (`configs/lmle.py:lmle_head`: balanced-only losses, equal-size
       clusters, no embedding BatchNorm, a mining pool) + the same kNN rule.

Every head is fitted with ``--seeds`` seeds (probe init and batch order; k-means
initialisation; the head run's seed: sampler, mining pool, clusterings). Balanced
accuracy per attribute on the test split; per-head means over the imbalanced and the
balanced group, with 95 % paired bootstrap intervals over test images
(`evaluation.stats.paired_bootstrap` on `evaluation.attributes.mean_balanced_accuracy_fn`,
the seeds' predictions averaged inside each replicate).

The kNN heads (c)-(e) are all evaluated on centroids of the WHOLE training split
(`tasks.attributes_lmle.cluster_all_attributes` with the head config's cluster_size,
clusters_per_class cap, kmeans_iters and knn_k), computed from cached features, so the
three differ only in the feature map.

Synthetic (default): `synthetic_faces/attributes` with ``--num_test`` test images (the
rarest imbalanced attribute needs >= ``--min_positives`` test positives; checked).
Real CelebA: ``--celeba_dir`` (the original layout, e.g. ``$JAXFACE_DATA/celeba``) and
``--test_split`` (e.g. ``test``; CelebA's test split may hold fewer than 500 positives
of its rarest attributes: the check says so).

  python experiments/lmle_heads.py --workdir /tmp/lmle_heads
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import logging
import os
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxface import losses
from jaxface import train as jf_train
from jaxface.evaluation import attributes as attr_eval
from jaxface.evaluation import stats
from jaxface.ops.norm import l2_normalize
from jaxface.tasks import common
from jaxface.tasks.attributes_lmle import cluster_all_attributes, knn_predict_all_attributes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADS = ("a", "a_prior", "b", "c", "d", "e")
HEAD_NAMES = {
    "a": "(a) linear BCE, logit 0",
    "a_prior": "(a') linear BCE, prior threshold",
    "b": "(b) class-weighted BCE",
    "c": "(c) kNN on raw features",
    "d": "(d) triplet head + kNN",
    "e": "(e) LMLE head + kNN",
}
# Fixed before any test number was seen: the claim is (e) - (b) on the imbalanced group.
COMPARISONS = (
    ("e", "b"),
    ("e", "a"),
    ("e", "c"),
    ("e", "d"),
    ("d", "b"),
    ("c", "b"),
    ("b", "a"),
    ("a_prior", "b"),
)
# Linear probes (a), (b): AdamW on standardised features (a choice, not tuned on test).
PROBE = dict(epochs=30, batch_size=256, learning_rate=1e-2, weight_decay=1e-4)


def lmle_config(variant: str):
    spec = importlib.util.spec_from_file_location(
        "lmle_config", os.path.join(ROOT, "configs", "lmle.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def with_data(c, args):
    """The experiment's data on config ``c``."""
    if args.celeba_dir:
        c.data.builder = "celeb_a_manual"
        c.data.config = ""
        c.data.manual_dir = args.celeba_dir
        c.square_crop = True
    else:
        c.data.overrides = dict(num_train=args.num_train, num_test=args.num_test)
    c.data.data_dir = args.data_dir or os.path.join(args.workdir, "tfds")
    c.eval_split = args.test_split
    return c


def trunk_config(args):
    """`bce` with the heads' parameter shapes (16-d embedding per attribute, no embedding
    BatchNorm: neither is used by BCE) so that the head runs can start from it."""
    c = with_data(lmle_config("bce"), args)
    c.model.embedding_dim = 16
    c.model.embedding_bn = False
    c.num_train_steps = args.trunk_steps
    c.optimizer.warmup_steps = min(c.optimizer.warmup_steps, args.trunk_steps)
    c.checkpoint_every = args.trunk_steps
    c.eval_every = args.trunk_steps
    c.evals = []  # evaluated here, on cached features
    return c


def head_config(variant, args, seed, trunk_dir, names):
    c = with_data(lmle_config(variant), args)
    c.seed = seed
    c.init_from = trunk_dir
    c.metric_attributes = list(names)
    c.evals = []  # evaluated here on cached features, against the whole training split
    if args.head_steps:
        c.num_train_steps = args.head_steps
        c.optimizer.warmup_steps = min(c.optimizer.warmup_steps, args.head_steps)
        c.recluster_every = min(c.recluster_every, args.head_steps)
        c.eval_every = c.checkpoint_every = args.head_steps
    return c


def cache(trainer, state, split):
    """``feature [N, F]``, ``logits [N, A]``, ``attributes [N, A]`` of a split, in order."""
    task = trainer.task
    out = task.embed(
        task.predict_fns()["attributes"],
        common.variables_of(state),
        trainer.ctx,
        task.source(split),
    )
    return {k: np.asarray(out[k]) for k in ("feature", "logits", "attributes")}


def choose_attributes(rate):
    """(10 most imbalanced, 5 most balanced) attribute indices by training positive rate."""
    imb = attr_eval.imbalance_level(rate)
    order = np.argsort(-imb, kind="stable")
    return order[:10], order[::-1][:5][::-1]


@functools.partial(jax.jit, static_argnames=("epochs", "batch_size"))
def fit_probe(key, x, y, class_weights, *, epochs, batch_size, learning_rate, weight_decay):
    """Logistic regression per attribute (``W [F, K]``, ``b [K]``) by AdamW minibatches,
    loss `losses.sigmoid_binary_cross_entropy` with ``class_weights [2, K]``."""
    n, f = x.shape
    k = y.shape[1]
    k_init, k_perm = jax.random.split(key)
    # Bias at the weighted prior's logit, log(w+ p / (w- (1 - p))): the optimum of a
    # feature-free probe, so that the intercept need not be learnt from 0.
    p = jnp.clip(jnp.mean(y, axis=0), 1e-6, 1 - 1e-6)
    b0 = jnp.log(class_weights[1] * p) - jnp.log(class_weights[0] * (1 - p))
    params = {"w": 0.01 * jax.random.normal(k_init, (f, k)), "b": b0}
    tx = optax.adamw(learning_rate, weight_decay=weight_decay)
    steps = n // batch_size

    def loss_fn(p, xb, yb):
        logits = xb @ p["w"] + p["b"]
        return jnp.mean(
            losses.sigmoid_binary_cross_entropy(logits, yb, class_weights=class_weights)
        )

    def epoch(carry, ek):
        p, s = carry
        perm = jax.random.permutation(ek, n)[: steps * batch_size].reshape(steps, batch_size)

        def step(carry, idx):
            p, s = carry
            g = jax.grad(loss_fn)(p, x[idx], y[idx])
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        return jax.lax.scan(step, (p, s), perm)[0], None

    (params, _), _ = jax.lax.scan(
        epoch, (params, tx.init(params)), jax.random.split(k_perm, epochs)
    )
    return params


def knn_predictions(key, emb_tr, y_tr, emb_te, cfg):
    """Cluster-wise kNN of ``emb_te [T, K, D]`` on centroids of ``emb_tr [N, K, D]``, one
    attribute at a time (bounds memory); ``[T, K]`` predictions."""
    preds = []
    for j in range(y_tr.shape[1]):
        c = cluster_all_attributes(
            jax.random.fold_in(key, j),
            jnp.asarray(emb_tr[:, j : j + 1]),
            jnp.asarray(y_tr[:, j : j + 1]),
            k=int(cfg.clusters_per_class),
            max_iters=int(cfg.kmeans_iters),
            cluster_size=int(cfg.cluster_size) or None,
        )
        preds.append(
            np.asarray(
                knn_predict_all_attributes(
                    jnp.asarray(emb_te[:, j : j + 1]),
                    c["centroids"],
                    c["centroid_valid"],
                    k=int(cfg.knn_k),
                )
            )[:, 0]
        )
    return np.stack(preds, axis=1)


def head_embedding(kernel, feature, num_attributes, sel):
    """The model's embedding head (``Dense`` without bias, no BatchNorm, per-attribute L2
    normalisation) on cached features: ``[N, len(sel), D]``."""
    e = (jnp.asarray(feature) @ jnp.asarray(kernel)).reshape(feature.shape[0], num_attributes, -1)
    return np.asarray(l2_normalize(e))[:, sel]


def run_head(variant, args, seed, trunk_dir, trunk_state, names, sel, cached, check_batch):
    """Trains one head with the trainer; returns its ``(train, test)`` embeddings."""
    cfg = head_config(variant, args, seed, trunk_dir, names)
    wd = os.path.join(args.workdir, "heads", f"{variant}_seed{seed}")
    jf_train.train_and_evaluate(cfg, wd)
    trainer, state, _ = jf_train.load_state(cfg, wd)
    # The trunk stayed frozen: bit-identical parameters and BatchNorm statistics.
    same = jax.tree.map(
        lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
        (state.params["trunk"], state.model_state["batch_stats"]),
        (trunk_state.params["trunk"], trunk_state.model_state["batch_stats"]),
    )
    if not all(jax.tree.leaves(same)):
        raise RuntimeError(f"{wd}: the frozen trunk changed during head training")
    kernel = np.asarray(state.params["embedding"]["kernel"])
    a = int(cfg.num_attributes)
    # The cached-feature embedding is the model's own (checked on a few test images).
    ref = trainer.task.predict_fns()["attributes"](common.variables_of(state), check_batch)
    mine = head_embedding(kernel, np.asarray(ref["feature"]), a, np.arange(a))
    if not np.allclose(mine, np.asarray(ref["embedding"]), atol=1e-4):
        raise RuntimeError(f"{wd}: cached-feature embedding differs from the model's")
    return (
        head_embedding(kernel, cached["train"]["feature"], a, sel),
        head_embedding(kernel, cached["test"]["feature"], a, sel),
    )


def cpu_seconds():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--data_dir", default="", help="TFDS data dir (default WORKDIR/tfds)")
    p.add_argument("--celeba_dir", default="", help="real CelebA (original layout)")
    p.add_argument("--num_train", type=int, default=20_000, help="synthetic train images")
    p.add_argument("--num_test", type=int, default=25_000, help="synthetic test images")
    p.add_argument("--test_split", default="test")
    p.add_argument("--min_positives", type=int, default=500)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--trunk_steps", type=int, default=1000)
    p.add_argument("--head_steps", type=int, default=0, help="0: the head configs' own")
    p.add_argument("--n_boot", type=int, default=2000)
    p.add_argument("--heads", default="e,d", help="the trained heads to run, in this order")
    p.add_argument(
        "--reverse_seeds",
        action="store_true",
        help="seeds in reverse order: a second process can fill the saved predictions "
        "from the other end (a head run held by the other process is a lock error)",
    )
    p.add_argument(
        "--report_only",
        action="store_true",
        help="no training: the report of the predictions already saved in WORKDIR/preds",
    )
    args = p.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    t0, c0 = time.time(), cpu_seconds()
    timing = {}

    def mark(name, since):
        timing[name] = {"wall_s": time.time() - since[0], "cpu_s": cpu_seconds() - since[1]}
        logging.warning("%s: %.0f s wall, %.0f s CPU", name, *timing[name].values())
        return time.time(), cpu_seconds()

    since = (t0, c0)
    tcfg = trunk_config(args)
    trunk_dir = os.path.join(args.workdir, "trunk")
    if not args.report_only:
        jf_train.train_and_evaluate(tcfg, trunk_dir)
        since = mark("trunk", since)
        trainer, trunk_state, _ = jf_train.load_state(tcfg, trunk_dir)
    # Cached trunk features (a rerun reuses them and every saved prediction).
    feat_path = os.path.join(args.workdir, "features.npz")
    if os.path.exists(feat_path):
        with np.load(feat_path) as z:
            cached = {
                s: {k: z[f"{s}_{k}"] for k in ("feature", "logits", "attributes")}
                for s in ("train", "test")
            }
    else:
        cached = {s: cache(trainer, trunk_state, s) for s in (tcfg.train_split, args.test_split)}
        cached = {"train": cached[tcfg.train_split], "test": cached[args.test_split]}
        np.savez(feat_path, **{f"{s}_{k}": v for s, d in cached.items() for k, v in d.items()})
        since = mark("features", since)
    pred_dir = os.path.join(args.workdir, "preds")
    os.makedirs(pred_dir, exist_ok=True)

    def saved(h, seed, compute):
        """The saved ``[T, K]`` test predictions of head ``h`` and ``seed``, computed
        (and saved) when missing; None with --report_only."""
        path = os.path.join(pred_dir, f"{h}_seed{seed}.npy")
        if os.path.exists(path):
            return np.load(path)
        if args.report_only:
            return None
        out = compute()
        np.save(path, out)
        return out

    names = list(tcfg.attribute_names)
    y_tr_all = cached["train"]["attributes"] > 0
    y_te_all = cached["test"]["attributes"] > 0
    rate = y_tr_all.mean(axis=0)
    imb_idx, bal_idx = choose_attributes(rate)
    sel = np.concatenate([imb_idx, bal_idx])
    groups = {"imbalanced": np.arange(10), "balanced": np.arange(10, 15)}
    sel_names = [names[i] for i in sel]
    pos_te = y_te_all[:, sel].sum(axis=0)
    short = [f"{sel_names[j]} ({pos_te[j]})" for j in range(10) if pos_te[j] < args.min_positives]
    short += [
        f"{sel_names[j]} ({len(y_te_all) - pos_te[j]} negatives)"
        for j in range(10)
        if len(y_te_all) - pos_te[j] < args.min_positives
    ]
    if short:
        raise SystemExit(
            f"test split {args.test_split!r} ({len(y_te_all)} images) has fewer than "
            f"{args.min_positives} minority examples of: {', '.join(short)}; use a larger one"
        )
    y_tr, y_te = y_tr_all[:, sel], y_te_all[:, sel]

    # Standardised features for the probes; L2-normalised ones for the raw kNN.
    f_tr, f_te = cached["train"]["feature"], cached["test"]["feature"]
    mu, sd = f_tr.mean(0), f_tr.std(0) + 1e-6
    x_tr, x_te = jnp.asarray((f_tr - mu) / sd), jnp.asarray((f_te - mu) / sd)
    cw_plain = jnp.ones((2, len(sel)))
    cw_bal = losses.balanced_class_weights(rate[sel])
    prior_logit = np.log(rate[sel] / (1 - rate[sel]))
    head_cfg = lmle_config("lmle_head")
    raw_tr = np.asarray(l2_normalize(jnp.asarray(f_tr)))[:, None, :]
    raw_te = np.asarray(l2_normalize(jnp.asarray(f_te)))[:, None, :]
    preds = {h: [] for h in HEADS}

    def probe_logits(seed, cw):
        w = fit_probe(jax.random.key(seed), x_tr, jnp.asarray(y_tr, jnp.float32), cw, **PROBE)
        return np.asarray(x_te @ w["w"] + w["b"])

    seeds = list(range(args.seeds))[:: -1 if args.reverse_seeds else 1]
    for seed in seeds:
        logits = {"a": None}

        def plain(seed=seed):
            logits["a"] = probe_logits(seed, cw_plain)
            return logits["a"] > 0

        def prior(seed=seed):
            if logits["a"] is None:
                logits["a"] = probe_logits(seed, cw_plain)
            return logits["a"] > prior_logit

        def raw_knn(seed=seed):
            return knn_predictions(
                jax.random.key(seed),
                np.broadcast_to(raw_tr, (len(f_tr), len(sel), raw_tr.shape[-1])),
                y_tr,
                np.broadcast_to(raw_te, (len(f_te), len(sel), raw_te.shape[-1])),
                head_cfg,
            )

        preds["a"].append(saved("a", seed, plain))
        preds["a_prior"].append(saved("a_prior", seed, prior))
        preds["b"].append(saved("b", seed, lambda seed=seed: probe_logits(seed, cw_bal) > 0))
        preds["c"].append(saved("c", seed, raw_knn))
    since = mark("heads a-c", since)

    if not args.report_only:
        src = trainer.task.source(args.test_split)
        transform = functools.partial(trainer.task.transform, train=False)
        batch = [transform(src[i], None) for i in range(16)]
        check_batch = {"image": jnp.asarray(np.stack([b["image"] for b in batch]))}
    # The claim's head first: with a deadline, (e) is complete before (d) starts.
    variants = {"e": "lmle_head", "d": "triplet_head"}
    for h in args.heads.split(","):
        variant = variants[h]
        for seed in seeds:

            def trained(variant=variant, seed=seed):
                e_tr, e_te = run_head(
                    variant, args, seed, trunk_dir, trunk_state, sel_names, sel, cached, check_batch
                )
                return knn_predictions(jax.random.key(seed), e_tr, y_tr, e_te, head_cfg)

            preds[h].append(saved(h, seed, trained))
        since = mark(f"head {h}", since)
    preds = {h: [p for p in v if p is not None] for h, v in preds.items()}

    results = evaluate(preds, y_te, rate[sel], sel_names, groups, args.n_boot)
    results["test_positives"] = dict(zip(sel_names, map(int, pos_te)))
    results["test_images"] = int(len(y_te))
    results["train_images"] = int(len(y_tr))
    timing["total"] = {"wall_s": time.time() - t0, "cpu_s": cpu_seconds() - c0}
    results["timing"] = timing
    results["args"] = vars(args)
    with open(os.path.join(args.workdir, "lmle_heads.json"), "w") as f:
        json.dump(results, f, indent=2)
    md = report_markdown(results)
    with open(os.path.join(args.workdir, "lmle_heads.md"), "w") as f:
        f.write(md)
    plot(results, os.path.join(args.workdir, "lmle_heads.png"))
    print(md)


def evaluate(preds, y_te, rate, sel_names, groups, n_boot):
    """Per-head, per-seed balanced accuracy; group means with bootstrap intervals; the
    paired differences of `COMPARISONS`."""
    out = {"attributes": sel_names, "imbalance": attr_eval.imbalance_level(rate).tolist()}
    per = {}
    for h in HEADS:
        if not preds[h]:
            continue
        p = np.stack(preds[h]).astype(np.int32)  # [S, T, K]
        bal = np.stack([attr_eval.attribute_metrics(ps, y_te)["balanced_accuracy"] for ps in p])
        per[h] = {"per_seed": bal.tolist(), "mean": bal.mean(0).tolist()}
        for g, idx in groups.items():
            fn = attr_eval.mean_balanced_accuracy_fn(p[:, :, idx], y_te[:, idx])
            ci = stats.bootstrap_ci(
                metric_fn=fn, n_units=len(y_te), vectorized=True, n_boot=n_boot, seed=0
            )
            seed_means = bal[:, idx].mean(1)
            per[h][g] = {
                "estimate": ci.estimate,
                "low": ci.low,
                "high": ci.high,
                "seed_sd": float(seed_means.std(ddof=1)) if len(seed_means) > 1 else 0.0,
            }
    out["heads"] = per
    diffs = []
    for a, b in COMPARISONS:
        if not (preds[a] and preds[b]):
            continue
        for g, idx in groups.items():
            pa = np.stack(preds[a]).astype(np.int32)[:, :, idx]
            pb = np.stack(preds[b]).astype(np.int32)[:, :, idx]
            r = stats.paired_bootstrap(
                metric_fn_a=attr_eval.mean_balanced_accuracy_fn(pa, y_te[:, idx]),
                metric_fn_b=attr_eval.mean_balanced_accuracy_fn(pb, y_te[:, idx]),
                n_units=len(y_te),
                vectorized=True,
                n_boot=n_boot,
                seed=0,
            )
            diffs.append(
                {
                    "a": a,
                    "b": b,
                    "group": g,
                    "estimate": r.estimate,
                    "low": r.low,
                    "high": r.high,
                    "p_value": r.p_value,
                }
            )
    out["differences"] = diffs
    return out


def report_markdown(r) -> str:
    pct = 100.0
    present = [h for h in HEADS if h in r["heads"]]
    seeds = ", ".join(f"{h}: {len(r['heads'][h]['per_seed'])}" for h in present)
    lines = [
        f"Test images: {r['test_images']}; training images: {r['train_images']}; seeds per "
        f"head: {seeds}.",
        "",
        "| head | imbalanced (10): bal. acc. [95% CI] | seed sd | balanced (5): bal. acc. "
        "[95% CI] | seed sd |",
        "|---|---|---|---|---|",
    ]
    for h in present:
        cells = [HEAD_NAMES[h]]
        for g in ("imbalanced", "balanced"):
            x = r["heads"][h][g]
            cells += [
                f"{pct * x['estimate']:.2f} [{pct * x['low']:.2f}, {pct * x['high']:.2f}]",
                f"{pct * x['seed_sd']:.2f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| difference | group | points [95% paired CI] | p |",
        "|---|---|---|---|",
    ]
    for d in r["differences"]:
        lines.append(
            f"| {d['a']} - {d['b']} | {d['group']} | {pct * d['estimate']:+.2f} "
            f"[{pct * d['low']:+.2f}, {pct * d['high']:+.2f}] | {d['p_value']:.3g} |"
        )
    lines += [
        "",
        "| attribute | imbalance % | test positives | "
        + " | ".join(HEAD_NAMES[h].split(" ")[0] for h in present)
        + " |",
    ]
    lines.append("|" + "---|" * (3 + len(present)))
    for j, name in enumerate(r["attributes"]):
        cells = [name, f"{r['imbalance'][j]:.1f}", str(r["test_positives"][name])]
        cells += [f"{pct * r['heads'][h]['mean'][j]:.2f}" for h in present]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Timing (process CPU = user + sys, self + children):", ""]
    for k, v in r["timing"].items():
        lines.append(f"* {k}: {v['wall_s']:.0f} s wall, {v['cpu_s']:.0f} s CPU")
    return "\n".join(lines) + "\n"


def plot(r, path):
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 5), gridspec_kw={"width_ratios": [3, 2]})
    k = len(r["attributes"])
    present = [h for h in HEADS if h in r["heads"]]
    width = 0.8 / len(present)
    for i, h in enumerate(present):
        per_seed = 100 * np.asarray(r["heads"][h]["per_seed"])
        ax1.bar(
            np.arange(k) + (i - len(present) / 2 + 0.5) * width,
            per_seed.mean(0),
            width,
            yerr=per_seed.std(0),
            label=HEAD_NAMES[h],
        )
    ax1.set_xticks(np.arange(k))
    ax1.set_xticklabels(
        [f"{n}\n{imb:.0f}%" for n, imb in zip(r["attributes"], r["imbalance"])],
        rotation=60,
        fontsize=7,
    )
    ax1.axvline(9.5, color="k", lw=0.8)
    ax1.set_ylim(40, 100)
    ax1.set_ylabel("balanced accuracy % (mean of seeds, sd bars)")
    ax1.set_title("per attribute (imbalance level under the name)")
    ax1.legend(fontsize=7, loc="lower left")
    diffs = r["differences"]
    ys = np.arange(len(diffs))
    est = np.array([100 * d["estimate"] for d in diffs])
    lo = np.array([100 * d["low"] for d in diffs])
    hi = np.array([100 * d["high"] for d in diffs])
    colours = ["C3" if d["group"] == "imbalanced" else "C0" for d in diffs]
    ax2.errorbar(est, ys, xerr=[est - lo, hi - est], fmt="none", ecolor=colours)
    ax2.scatter(est, ys, c=colours, s=12)
    ax2.axvline(0, color="k", lw=0.8)
    ax2.set_yticks(ys)
    ax2.set_yticklabels([f"{d['a']} - {d['b']} ({d['group']})" for d in diffs], fontsize=7)
    ax2.invert_yaxis()
    ax2.set_xlabel("difference in mean balanced accuracy, points (95% paired bootstrap CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
