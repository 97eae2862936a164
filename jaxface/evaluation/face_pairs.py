"""Pair sets and reports of the recognition evaluators, on embeddings.

`build_verification_pairs` deals the held-out identities of a split into FF / FP pair
sets; `verification_report` runs the 10-fold protocol of
`jaxface.evaluation.verification` on flip-fused embeddings; `flatten_report` gives its
scalars; `drop_skipped_pairs` re-points pairs at the embedded images when some were
skipped.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxface.evaluation import verification

__all__ = [
    "build_verification_pairs",
    "verification_report",
    "flatten_report",
    "drop_skipped_pairs",
]


def build_verification_pairs(
    labels,
    abs_yaw,
    *,
    frontal_max_yaw: float = 20.0,
    profile_min_yaw: float = 50.0,
    pairs_per_identity: int = 3,
    num_folds: int = 10,
    seed: int = 0,
) -> dict[str, tuple]:
    """Deterministic FF and FP pair sets over the images of held-out identities.

    Identities are shuffled by ``seed`` and dealt into ``num_folds`` identity-disjoint
    folds (as CFP's splits are). Per identity and protocol, up to ``pairs_per_identity``
    genuine pairs (FF: two distinct frontal images; FP: a frontal and a profile image)
    and as many impostor pairs (a frontal image of the identity with a frontal (FF) or
    profile (FP) image of another identity of the same fold). Frontal: ``|yaw| <=
    frontal_max_yaw``; profile: ``|yaw| >= profile_min_yaw``.

    Args:
      labels: ``[N]`` identity of each image. abs_yaw: ``[N]`` absolute yaw (degrees).

    Returns:
      ``{"FF": (i, j, same, fold), "FP": (i, j, same, fold)}``: int64 row indices into the
      inputs, bool, int64 fold ids.
    """
    labels = np.asarray(labels)
    abs_yaw = np.abs(np.asarray(abs_yaw, np.float64))
    rng = np.random.default_rng(seed)
    ids = np.unique(labels)
    ids = ids[rng.permutation(len(ids))]
    fold_of = {int(k): n % num_folds for n, k in enumerate(ids)}
    frontal = {int(k): np.flatnonzero((labels == k) & (abs_yaw <= frontal_max_yaw)) for k in ids}
    profile = {int(k): np.flatnonzero((labels == k) & (abs_yaw >= profile_min_yaw)) for k in ids}
    by_fold = [[int(k) for k in ids if fold_of[int(k)] == f] for f in range(num_folds)]
    out = {}
    for name, second in (("FF", frontal), ("FP", profile)):
        rows = []
        for k in ids:
            k = int(k)
            fk = frontal[k]
            if name == "FF":
                cand = [(a, b) for x, a in enumerate(fk) for b in fk[x + 1 :]]
            else:
                cand = [(a, b) for a in fk for b in profile[k]]
            if not cand:
                continue
            pick = rng.permutation(len(cand))[:pairs_per_identity]
            others = [o for o in by_fold[fold_of[k]] if o != k and len(second[o])]
            for p in pick:
                a, b = cand[p]
                rows.append((a, b, True, fold_of[k]))
                if others:
                    o = others[int(rng.integers(len(others)))]
                    rows.append(
                        (
                            int(fk[rng.integers(len(fk))]),
                            int(second[o][rng.integers(len(second[o]))]),
                            False,
                            fold_of[k],
                        )
                    )
        if not rows:
            raise ValueError(
                f"build_verification_pairs: no {name} pair could be built (no identity has "
                f"{'two frontal' if name == 'FF' else 'frontal and profile'} images with "
                f"frontal |yaw| <= {frontal_max_yaw}, profile |yaw| >= {profile_min_yaw})"
            )
        r = list(zip(*rows))
        out[name] = (
            np.array(r[0], np.int64),
            np.array(r[1], np.int64),
            np.array(r[2], bool),
            np.array(r[3], np.int64),
        )
    return out


def verification_report(
    emb, emb_flip, pairs: dict[str, tuple], *, far: float | None = None
) -> dict[str, Any]:
    """Per protocol: `verification.evaluate_folds` on squared L2 distances of the
    flip-fused, L2-normalised embeddings, plus the pooled ROC (fpr, tpr) and, with ``far``,
    the k-fold TAR at that FAR (`verification.kfold_tar_at_far`: ``tar_at_far`` per fold,
    ``tar_at_far_mean`` / ``_std``)."""
    fused = verification.fuse_flip(emb, emb_flip)
    out = {}
    for name, (i, j, same, fold) in pairs.items():
        dist = verification.pair_distances(fused[i], fused[j])
        rep = verification.evaluate_folds(dist, same, fold, kind="distance")
        fpr, tpr, _ = verification.roc_curve(dist, same, kind="distance")
        out[name] = {**rep, "roc": (fpr, tpr), "num_pairs": len(same)}
        if far is not None:
            val = verification.kfold_tar_at_far(dist, same, fold, far, kind="distance")
            out[name].update(
                far_target=far,
                tar_at_far=val["tar"],
                tar_at_far_mean=val["tar_mean"],
                tar_at_far_std=val["tar_std"],
            )
    return out


def flatten_report(report: dict[str, Any]) -> dict[str, float]:
    flat = {}
    for name, rep in report.items():
        p = name.lower()
        for m in ("accuracy", "eer", "auc"):
            flat[f"{p}_{m}_mean"] = rep[f"{m}_mean"]
            flat[f"{p}_{m}_std"] = rep[f"{m}_std"]
    return flat


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
