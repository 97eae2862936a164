"""Verify's thresholds: held-out impostor / genuine scores of a recogniser.

`calibrate` scores every frontal pair of a recognition run's held-out split and writes
``WD/calibration/{verification.json, impostor_scores.npy, genuine_scores.npy}``;
`jaxface.evaluation.verification.threshold_at_far` reads the threshold of a FAR off
the impostor scores;
`load_calibration` reads them back (``jaxface verify`` / ``jaxface calibrate``).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Optional

import numpy as np

from jaxface.evaluation.verification import threshold_at_far

__all__ = ["CALIBRATION_DIR", "calibrate", "threshold_at_far", "load_calibration"]

CALIBRATION_DIR = "calibration"


def calibrate(recognizer, *, max_images: int = 2000, batch_size: int = 64) -> dict:
    """Scores every frontal pair of the recogniser's held-out split; writes
    ``WD/calibration/{verification.json, impostor_scores.npy, genuine_scores.npy}``.

    ``recognizer``: a `jaxface.analyzer.LoadedModel` of a recognition run. Images are
    prepared by the task's own evaluation transform (what its evaluators score), and
    scored as they are (flip-fused L2-normalised embeddings); frontal = CFP's folder
    flag, else ``|yaw| <= config.verification.frontal_max_yaw``, else every image.
    """
    import jax  # pylint: disable=import-outside-toplevel

    from jaxface.data import pipeline  # pylint: disable=import-outside-toplevel
    from jaxface.evaluation import verification as verif  # pylint: disable=import-outside-toplevel
    from jaxface.data.sources import Subset  # pylint: disable=import-outside-toplevel

    task, cfg = recognizer.task, recognizer.config
    split = cfg.eval_split
    meta = task.metadata(split)
    labels = np.asarray(meta["label"])
    if "is_profile" in meta:
        frontal = ~np.asarray(meta["is_profile"], bool)
        rule = "CFP folder flag: frontal/"
    elif "abs_yaw" in meta:
        frontal = np.asarray(meta["abs_yaw"]) <= float(cfg.verification.frontal_max_yaw)
        rule = f"|yaw| <= {float(cfg.verification.frontal_max_yaw)}"
    else:
        frontal = np.ones(len(labels), bool)
        rule = "all images (no pose metadata)"
    rows = np.flatnonzero(frontal)[: int(max_images)]
    transform = functools.partial(task.transform, train=False)
    source = Subset(task.source(split), rows)
    predict = jax.jit(task.predict)
    emb, emb_f = [], []
    for batch in pipeline.eval_batches(source, batch_size, transform):
        valid = np.asarray(batch.pop("_valid"), bool)
        batch.pop("_global_index")
        batch.pop("label", None)
        out = jax.device_get(predict(recognizer.variables, batch))
        emb.append(np.asarray(out["embedding"])[valid])
        emb_f.append(np.asarray(out["embedding_flip"])[valid])
    fused = verif.fuse_flip(np.concatenate(emb), np.concatenate(emb_f))
    lab = labels[rows]
    sims = fused @ fused.T
    iu, ju = np.triu_indices(len(rows), 1)
    same = lab[iu] == lab[ju]
    s = sims[iu, ju].astype(np.float32)
    genuine, impostor = np.sort(s[same]), np.sort(s[~same])
    out_dir = os.path.join(recognizer.workdir, CALIBRATION_DIR)
    os.makedirs(out_dir, exist_ok=True)
    np.save(os.path.join(out_dir, "impostor_scores.npy"), impostor)
    np.save(os.path.join(out_dir, "genuine_scores.npy"), genuine)
    info = {
        "source": (
            f"{cfg.data.builder} split {split!r} (identities unseen in training"
            + (
                f"; CFP protocol splits {list(cfg.cfp.eval_splits)}"
                if cfg.data.builder == "cfp_manual"
                else ""
            )
            + f"), frontal images ({rule}), every pair"
        ),
        "crops": f"the task's evaluation transform (config.data.crop={cfg.data.get('crop', 'center')!r})",
        "score": "cosine similarity of flip-fused L2-normalised embeddings",
        "checkpoint_step": recognizer.step,
        "num_images": int(len(rows)),
        "num_identities": int(len(np.unique(lab))),
        "num_genuine": int(len(genuine)),
        "num_impostor": int(len(impostor)),
        "thresholds": {
            f"{far:g}": threshold_at_far(impostor, far, genuine) for far in (1e-1, 1e-2, 1e-3, 1e-4)
        },
    }
    with open(os.path.join(out_dir, "verification.json"), "w") as f:
        json.dump(info, f, indent=1)
    return info


def load_calibration(recognizer_workdir: str) -> Optional[tuple[dict, np.ndarray, np.ndarray]]:
    d = os.path.join(recognizer_workdir, CALIBRATION_DIR)
    path = os.path.join(d, "verification.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        info = json.load(f)
    return (
        info,
        np.load(os.path.join(d, "impostor_scores.npy")),
        np.load(os.path.join(d, "genuine_scores.npy")),
    )
