"""Verification protocols on image sets outside the training data: LFW and insightface `.bin`.

Two evaluators of `jaxface.tasks.recognition.RecognitionTask`:

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
``calculate_val``), and write the ROC (log FAR axis) as PNG plus a JSON of per-fold
numbers. These sets carry no pose: the DREAM gate sees ``config.<set>.yaw`` degrees
(default 0, the sets are near-frontal) for ``yaw_source='metadata'``, a frontal flag for
``'profile_flag'``, its own prediction for ``'learned'``; ``'landmarks'`` is refused (no
landmarks to fit).
"""

from __future__ import annotations

import logging
import os
import pathlib
from typing import Any, Sequence

import numpy as np
from PIL import Image

from jaxface.data import pipeline, recognition_formats
from jaxface.data.images import read_image
from jaxface.evaluation import verification as verif
from jaxface.tasks import common
from jaxface.tasks.base import EvalContext

__all__ = [
    "ImageListSource",
    "lfw_pairs_source",
    "bin_pairs_source",
    "evaluate_lfw",
    "evaluate_bins",
]


class ImageListSource:
    """Random access over images given as paths or encoded bytes -> ``{"image": uint8 [H, W, 3]}``.

    ``crop_fraction`` < 1 cuts the central square of that fraction of the shorter side.
    Images are read by `jaxface.data.images.read_image`; an unreadable one raises
    `jaxface.data.images.UnreadableImageError` naming it (``names[i]``), which the
    evaluation pass skips and reports (`jaxface.data.pipeline.EvalSkips`)."""

    def __init__(self, items: Sequence[Any], *, crop_fraction: float = 1.0, names=None):
        if not 0.0 < crop_fraction <= 1.0:
            raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
        self.items = list(items)
        self.crop_fraction = float(crop_fraction)
        self.names = list(names) if names is not None else [str(i) for i in range(len(items))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        image = read_image(self.items[i], name=self.names[i])
        if self.crop_fraction < 1.0:
            h, w = image.shape[:2]
            side = int(round(min(w, h) * self.crop_fraction))
            left, top = (w - side) // 2, (h - side) // 2
            image = image[top : top + side, left : left + side]
        return {"image": np.ascontiguousarray(image)}


def lfw_pairs_source(
    pairs_file: str | os.PathLike, image_dir: str | os.PathLike, *, crop_fraction: float = 0.6
):
    """``(source, i, j, same, fold)``: one source row per distinct image of ``pairs.txt``
    (paths checked to exist, a missing one is an error naming it) and the pair indices."""
    pairs = verif.parse_lfw_pairs(pairs_file)
    p1, p2 = pairs.paths(image_dir)
    uniq = sorted(set(map(str, p1)) | set(map(str, p2)))
    missing = [p for p in uniq if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"LFW: {len(missing)} of the {len(uniq)} images named by {pairs_file} are missing "
            f"under {image_dir}, first {missing[0]}"
        )
    row = {p: k for k, p in enumerate(uniq)}
    i = np.array([row[str(p)] for p in p1], np.int64)
    j = np.array([row[str(p)] for p in p2], np.int64)
    src = ImageListSource(uniq, crop_fraction=crop_fraction, names=uniq)
    return src, i, j, pairs.same.astype(bool), pairs.fold.astype(np.int64)


def bin_pairs_source(path: str | os.PathLike, *, num_folds: int = 10):
    """``(source, i, j, same, fold)`` of an insightface verification ``.bin``."""
    images, issame = recognition_formats.load_verification_bin(path)
    n = len(issame)
    if n < num_folds:
        raise ValueError(f"{path}: {n} pairs, fewer than the {num_folds} folds")
    i = 2 * np.arange(n)
    # sklearn's KFold(n_splits, shuffle=False) sizes: the first n % k folds get one more.
    sizes = np.full(num_folds, n // num_folds)
    sizes[: n % num_folds] += 1
    fold = np.repeat(np.arange(num_folds), sizes)
    names = [f"{pathlib.Path(path).name}[{k}]" for k in range(len(images))]
    return ImageListSource(images, names=names), i, i + 1, np.asarray(issame, bool), fold


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


def _evaluate_pairs(task, state, ctx: EvalContext, name: str, set_config, data, title: str):
    from jaxface.tasks.recognition import verification_report  # pylint: disable=import-outside-toplevel

    src, i, j, same, fold = data
    skips = pipeline.EvalSkips(name, float(set_config.get("max_bad_fraction", 0.01)))
    out = common.predict_split(
        ctx,
        task.predict,
        common.variables_of(state),
        src,
        _transform(task, set_config),
        int(task.config.eval_batch_size),
        skips=skips,
    )
    i, j, same, fold, dropped = drop_skipped_pairs(out["index"], len(src), i, j, same, fold)
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
    report = verification_report(
        out["embedding"], out["embedding_flip"], {name: (i, j, same, fold)}, far=far
    )
    report[name]["skipped_images"] = [skips.bad[k] for k in sorted(skips.bad)]
    report[name]["pairs_dropped"] = dropped
    task._write(ctx, name, report, title)  # pylint: disable=protected-access
    rep, tag = report[name], f"tar_at_far_{far:g}"
    return {
        f"{name}_accuracy_mean": rep["accuracy_mean"],
        f"{name}_accuracy_std": rep["accuracy_std"],
        f"{name}_eer_mean": rep["eer_mean"],
        f"{name}_auc_mean": rep["auc_mean"],
        f"{name}_{tag}_mean": rep["tar_at_far_mean"],
        f"{name}_{tag}_std": rep["tar_at_far_std"],
        f"{name}_skipped_images": len(skips.bad),
        f"{name}_pairs_dropped": dropped,
    }


def drop_skipped_pairs(index, n: int, i, j, same, fold):
    """Pairs over the embedded images only: ``index`` holds the source row of each
    embedding (skipped images have none). Returns ``(i, j, same, fold, dropped)`` with
    ``i`` / ``j`` re-pointed at embedding rows; a pair with a skipped image is dropped."""
    row = np.full(n, -1, np.int64)
    row[np.asarray(index, np.int64)] = np.arange(len(index))
    ri, rj = row[np.asarray(i)], row[np.asarray(j)]
    keep = (ri >= 0) & (rj >= 0)
    if not keep.any():
        raise ValueError("every pair uses a skipped image: nothing to evaluate")
    return ri[keep], rj[keep], np.asarray(same)[keep], np.asarray(fold)[keep], int((~keep).sum())


def evaluate_lfw(task, state, ctx: EvalContext) -> dict[str, float]:
    """The ``lfw`` evaluator (see the module docstring)."""
    c = task.config.get("lfw")
    if c is None or not c.get("manual_dir"):
        raise ValueError(
            "the 'lfw' evaluator needs config.lfw.manual_dir (the folder holding pairs.txt)"
        )
    root = pathlib.Path(c.manual_dir)
    data = lfw_pairs_source(
        root / "pairs.txt",
        c.get("image_dir") or root,
        crop_fraction=float(c.get("crop_fraction", 0.6)),
    )
    return _evaluate_pairs(task, state, ctx, "lfw", c, data, "LFW View 2 (10 folds)")


def evaluate_bins(task, state, ctx: EvalContext) -> dict[str, float]:
    """The ``bins`` evaluator: each insightface ``.bin`` in ``config.bins.files``."""
    c = task.config.get("bins")
    if c is None or not list(c.get("files", [])):
        raise ValueError("the 'bins' evaluator needs config.bins.files (insightface .bin paths)")
    res = {}
    for path in c.files:
        name = pathlib.Path(path).stem
        data = bin_pairs_source(path)
        res.update(_evaluate_pairs(task, state, ctx, name, c, data, f"{name} (10 folds)"))
    return res
