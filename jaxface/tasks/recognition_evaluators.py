"""The evaluators of `jaxface.tasks.recognition.RecognitionTask` (``config.evals``).

Each is a `jaxface.tasks.base.Evaluator` over the task's ``embed`` predict function
(`RecognitionTask.predict`) that returns its metrics and its artefacts (ROC / CMC
figure, JSON report) for the caller to write.

``verification``, ``cfp``, ``identification``: on the task's own data (see the task's
docstring).

Verification protocols on image sets outside the training data, LFW and insightface
``.bin`` (sources: `jaxface.data.recognition_sources`):

``lfw``
    LFW View 2 from its original layout: ``config.lfw.manual_dir`` holds ``pairs.txt``
    (header ``10 300``, then per fold 300 same and 300 different pairs) and the images as
    ``<name>/<name>_<NNNN>.jpg`` (``lfw.tgz`` unpacked, or an aligned variant with the same
    names; ``config.lfw.image_dir`` if the images are elsewhere). LFW's images are 250x250
    with the face in the middle and no landmarks, so each is cut to its central
    ``config.lfw.crop_fraction`` square (default 0.6: 150 px, the loose face box) and resized
    to ``config.image_size`` -- the ``center`` crop of the training data. A model trained on
    ``aligned`` crops should be evaluated on an aligned LFW (e.g. insightface's ``lfw.bin``).
``bins``
    insightface verification files (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``: pairs of
    112x112 aligned crops), loaded by the restricted unpickler
    `jaxface.data.recognition_formats.load_verification_bin`; every path in
    ``config.bins.files``. Folds: 10 contiguous blocks of pairs, insightface's ``KFold``
    without shuffling.

Both report the 10-fold protocol on squared L2 distances of flip-fused, L2-normalised
embeddings (`jaxface.evaluation.verification`): accuracy (threshold chosen on the other
folds), EER and AUC as mean and std over folds, TAR at ``config.lfw.far`` (facenet's
``calculate_val``), and return the ROC (log FAR axis) as a PNG figure plus a JSON of
per-fold numbers. These sets carry no pose: the DREAM gate sees ``config.<set>.yaw`` degrees
(default 0, the sets are near-frontal) for ``yaw_source='metadata'``, a frontal flag for
``'profile_flag'``, its own prediction for ``'learned'``; ``'landmarks'`` is refused (no
landmarks to fit).
"""

from __future__ import annotations

import functools
import logging
import pathlib

import ml_collections
import numpy as np
from PIL import Image

from jaxface.data import pipeline, recognition_sources
from jaxface.evaluation import face_pairs, verification
from jaxface.evaluation import identification as ident_eval
from jaxface.tasks import common
from jaxface.tasks.base import Artefacts, EvalContext, Evaluator, Figure, Json

__all__ = [
    "evaluators",
    "report_artefacts",
    "evaluate_verification",
    "evaluate_cfp",
    "evaluate_identification",
    "evaluate_lfw",
    "evaluate_bins",
]


def evaluators(task) -> dict[str, Evaluator]:
    """The task's evaluators by ``config.evals`` name, all on its ``embed`` function."""
    return {
        name: Evaluator("embed", functools.partial(fn, task))
        for name, fn in (
            ("verification", evaluate_verification),
            ("cfp", evaluate_cfp),
            ("identification", evaluate_identification),
            ("lfw", evaluate_lfw),
            ("bins", evaluate_bins),
        )
    }


def report_artefacts(name, report, title) -> Artefacts:
    """ROC figure and JSON (per-fold numbers, no curves) of a verification report."""
    curves = {k: rep["roc"] for k, rep in report.items()}
    return {
        f"{name}_roc_step{{step}}.png": Figure(
            functools.partial(verification.plot_roc, curves, title=title)
        ),
        f"{name}_eval_step{{step}}.json": Json(
            {
                k: {m: (np.asarray(x).tolist() if m != "roc" else None) for m, x in rep.items()}
                for k, rep in report.items()
            }
        ),
    }


def evaluate_verification(task, predict_fn, variables, ctx: EvalContext):
    split = task.config.eval_split
    out = task.embed_split(predict_fn, variables, ctx, split)
    pairs = task.verification_pairs(split, n=len(out["label"]))
    report = face_pairs.verification_report(out["embedding"], out["embedding_flip"], pairs)
    title = f"{split}: FF / FP ({task.config.model.use_dream and 'DREAM' or 'naive'})"
    return face_pairs.flatten_report(report), report_artefacts("verification", report, title)


def evaluate_cfp(task, predict_fn, variables, ctx: EvalContext):
    c = task.config
    d = c.data
    if d.builder == "cfp_manual":
        data_cfg, split, root = d, c.eval_split, d.manual_dir
    else:  # trained on other data (e.g. MS-Celeb): CFP's eval splits from their own builder
        root = c.cfp.manual_dir
        rest = [k for k in range(1, 11) if k not in [int(x) for x in c.cfp.eval_splits]]
        data_cfg = ml_collections.ConfigDict(
            dict(
                builder="cfp_manual",
                config="",
                data_dir=d.data_dir,
                manual_dir=root,
                overrides=dict(image_size=int(c.image_size), train_splits=rest),
            )
        )
        split = "test"
    if not root:
        raise ValueError(
            "config.data.manual_dir (CFP data) or config.cfp.manual_dir (other training data): "
            "the CFP root holding Data/ and Protocol/ is needed by the 'cfp' evaluator"
        )
    out = task.embed_split(predict_fn, variables, ctx, split, data_cfg)
    meta = task.metadata(split, data_cfg)
    n = len(out["label"])
    pairs = cfp_pairs(meta, root, c.cfp.eval_splits, split, n)
    report = face_pairs.verification_report(out["embedding"], out["embedding_flip"], pairs)
    title = f"CFP splits {list(c.cfp.eval_splits)} ({'DREAM' if c.model.use_dream else 'naive'})"
    return face_pairs.flatten_report(report), report_artefacts("cfp", report, title)


def cfp_pairs(meta, root, eval_splits, split: str, n: int | None = None) -> dict:
    """CFP's FF and FP protocol pairs of ``eval_splits`` as rows of a split:
    ``{"FF" | "FP": (rows_a, rows_b, same, protocol_split)}``; ``meta`` is the split's
    metadata (``is_profile``, ``index``), ``n`` the rows embedded (default all)."""
    n = len(meta["index"]) if n is None else n
    proto = verification.parse_cfp_protocol(root, check_exists=False)
    row_of = {
        (bool(p), int(i)): r
        for r, (p, i) in enumerate(zip(meta["is_profile"][:n], meta["index"][:n]))
    }
    pairs = {}
    for name in ("FF", "FP"):
        ii, jj, ss, ff = [], [], [], []
        for k in eval_splits:
            a, b, same = proto.splits[name][int(k) - 1]
            try:
                ii.append([row_of[(False, int(x))] for x in a])
                jj.append([row_of[(name == "FP", int(x))] for x in b])
            except KeyError as err:
                raise ValueError(
                    f"config.cfp.eval_splits: split {int(k):02d} refers to image {err} that is not in "
                    f"split {split!r} (its identities are in config.data.overrides.train_splits?)"
                ) from None
            ss.append(same)
            ff.append(np.full(len(same), int(k)))
        pairs[name] = tuple(np.concatenate(x) for x in (ii, jj, ss, ff))
    return pairs


def evaluate_identification(task, predict_fn, variables, ctx: EvalContext):
    split = task.config.eval_split
    out = task.embed_split(predict_fn, variables, ctx, split)
    meta = task.metadata(split)
    n = len(out["label"])
    lab = out["label"]
    yaw = meta["abs_yaw"][:n] if "abs_yaw" in meta else np.zeros(n)
    fused = verification.fuse_flip(out["embedding"], out["embedding_flip"]).astype(np.float32)
    gallery = []
    for k in np.unique(lab):
        rows = np.flatnonzero(lab == k)
        gallery.append(rows[np.argmin(yaw[rows])])
    gallery = np.array(gallery)
    probes = np.setdiff1d(np.arange(n), gallery)
    k = min(5, len(gallery))
    _, idx = ident_eval.search_top_k(fused[probes], fused[gallery], k=k)
    res, curves = {}, {}
    frontal_max = float(task.config.verification.frontal_max_yaw)
    profile_min = float(task.config.verification.profile_min_yaw)
    for name, m in (
        ("all", np.ones(len(probes), bool)),
        ("frontal", yaw[probes] <= frontal_max),
        ("profile", yaw[probes] >= profile_min),
    ):
        if m.any():
            curve = ident_eval.cmc(idx[m], lab[probes][m], lab[gallery])
            curves[f"{name} probes"] = curve
            res[f"{name}_rank1"] = float(curve[0])
            res[f"{name}_rank{k}"] = float(curve[-1])
    title = f"{split}: closed-set identification, {len(gallery)}-identity gallery"
    return res, {
        "identification_cmc_step{step}.png": Figure(
            functools.partial(ident_eval.plot_cmc, curves, title=title)
        )
    }


def _transform(task, set_config):
    """Example -> batch row for ``task.predict``: resized, normalised, with the pose the gate needs."""
    size = int(task.config.image_size)
    src = task.config.yaw_source
    if src == "landmarks":
        raise ValueError(
            "config.yaw_source='landmarks': LFW / .bin sets carry no landmarks to fit a yaw to; "
            "evaluate with yaw_source 'metadata' (config.<set>.yaw), 'profile_flag' or 'learned'"
        )
    yaw = np.float32(set_config.get("yaw", 0.0))

    def fn(example, rng=None):
        image = example["image"]
        if image.shape[:2] != (size, size):
            image = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
        out = {"image": common.normalize_image(image)}
        if src == "metadata":
            out["yaw"] = yaw
        elif src == "profile_flag":
            out["is_profile"] = np.bool_(False)
        return out

    return fn


def _evaluate_pairs(
    task, predict_fn, variables, ctx: EvalContext, name: str, set_config, data, title: str
):
    src, i, j, same, fold = data
    skips = pipeline.EvalSkips(name, float(set_config.get("max_bad_fraction", 0.01)))
    out = common.predict_split(
        ctx,
        predict_fn,
        variables,
        src,
        _transform(task, set_config),
        int(task.config.eval_batch_size),
        skips=skips,
    )
    i, j, same, fold, dropped = face_pairs.drop_skipped_pairs(
        out["index"], len(src), i, j, same, fold
    )
    if skips.bad:
        logging.warning(
            "%s\n%s: %d of %d pairs dropped (they use a skipped image); %d pairs evaluated",
            skips.report(),
            name,
            dropped,
            dropped + len(same),
            len(same),
        )
    far = float(set_config.get("far", 1e-3))
    report = face_pairs.verification_report(
        out["embedding"], out["embedding_flip"], {name: (i, j, same, fold)}, far=far
    )
    report[name]["skipped_images"] = [skips.bad[k] for k in sorted(skips.bad)]
    report[name]["pairs_dropped"] = dropped
    rep, tag = report[name], f"tar_at_far_{far:g}"
    metrics = {
        f"{name}_accuracy_mean": rep["accuracy_mean"],
        f"{name}_accuracy_std": rep["accuracy_std"],
        f"{name}_eer_mean": rep["eer_mean"],
        f"{name}_auc_mean": rep["auc_mean"],
        f"{name}_{tag}_mean": rep["tar_at_far_mean"],
        f"{name}_{tag}_std": rep["tar_at_far_std"],
        f"{name}_skipped_images": len(skips.bad),
        f"{name}_pairs_dropped": dropped,
    }
    return metrics, report_artefacts(name, report, title)


def evaluate_lfw(task, predict_fn, variables, ctx: EvalContext):
    """The ``lfw`` evaluator (see the module docstring)."""
    c = task.config.get("lfw")
    if c is None or not c.get("manual_dir"):
        raise ValueError(
            "the 'lfw' evaluator needs config.lfw.manual_dir (the folder holding pairs.txt)"
        )
    root = pathlib.Path(c.manual_dir)
    data = recognition_sources.lfw_pairs_source(
        root / "pairs.txt",
        c.get("image_dir") or root,
        crop_fraction=float(c.get("crop_fraction", 0.6)),
    )
    return _evaluate_pairs(
        task, predict_fn, variables, ctx, "lfw", c, data, "LFW View 2 (10 folds)"
    )


def evaluate_bins(task, predict_fn, variables, ctx: EvalContext):
    """The ``bins`` evaluator: each insightface ``.bin`` in ``config.bins.files``."""
    c = task.config.get("bins")
    if c is None or not list(c.get("files", [])):
        raise ValueError("the 'bins' evaluator needs config.bins.files (insightface .bin paths)")
    metrics, artefacts = {}, {}
    for path in c.files:
        name = pathlib.Path(path).stem
        data = recognition_sources.bin_pairs_source(path)
        m, a = _evaluate_pairs(
            task, predict_fn, variables, ctx, name, c, data, f"{name} (10 folds)"
        )
        metrics.update(m)
        artefacts.update(a)
    return metrics, artefacts
