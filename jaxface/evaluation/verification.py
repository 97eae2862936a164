"""Face verification protocols: LFW View 2, CFP (FF / FP), ROC metrics, TAR@FAR, plots.

Everything here is NumPy on the host: the inputs are at most a few thousand pair
scores. (All-pairs TAR@FAR over large sets, streamed on device, lives in
`jaxface.evaluation.identification`.)

Conventions:
- LFW: embedding = L2-normalise(f(x) + f(flip x)) (`fuse_flip`), distance = squared
  L2 (`pair_distances`); per fold the threshold with the best accuracy on the other
  nine folds, thresholds ``0:0.01:4`` (MATLAB notation, 401 values, inclusive; the
  facenet / insightface scripts use ``np.arange(0, 4, 0.01)``, 400 values -- the
  difference is a threshold at 4.0, the largest possible squared distance of unit
  vectors). Ties between thresholds go to the smallest one (``np.argmax``), as in
  facenet / insightface.
- Scores are "distance" (smaller = same) or "similarity" (larger = same); every
  metric takes ``kind=`` and converts internally (similarity = -distance).
- EER = the FPR at the ROC point minimising ``|FPR + TPR - 1|`` (CFP's definition);
  AUC = trapezoidal area under the full ROC (equals sklearn's ``roc_auc_score``).
- TAR@FAR: ``method="closest"`` is the IJB-B/C convention (insightface's
  ``IJB_11.py``: the TPR at the ROC point whose FPR is closest to the target,
  the first such point on ties); ``"closest_upper"`` takes the best TPR at that
  FPR; ``method="interpolated"`` linearly interpolates TPR over FPR on the ROC.
  `kfold_tar_at_far` is the LFW variant (facenet's
  ``calculate_val``): the threshold reaching the target FAR on the 9 training
  folds, interpolated over the threshold grid, applied to the held-out fold.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Mapping, Sequence

import numpy as np

__all__ = [
    "LFWPairs",
    "parse_lfw_pairs",
    "lfw_image_path",
    "CFPProtocol",
    "parse_cfp_protocol",
    "read_cfp_fiducials",
    "fuse_flip",
    "pair_distances",
    "check_finite",
    "roc_curve",
    "roc_auc",
    "eer",
    "tar_at_far",
    "read_roc",
    "threshold_at_far",
    "kfold_accuracy",
    "kfold_tar_at_far",
    "evaluate_folds",
    "plot_roc",
    "LFW_THRESHOLDS",
]

LFW_THRESHOLDS = np.round(np.arange(401) * 0.01, 2)  # 0:0.01:4 inclusive


# --------------------------------------------------------------------------- checks


def check_finite(name: str, x) -> np.ndarray:
    """Return ``x`` as an array; raise a ValueError naming ``name`` and the first bad index if it holds NaN/inf."""
    a = np.asarray(x)
    if a.dtype.kind in "fc":
        bad = ~np.isfinite(a)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{name}: {int(bad.sum())} non-finite value(s) (NaN/inf), first at index {first}; "
                "a diverged model or an empty/failed image load produces these"
            )
    return a


def _scores_labels(scores, same, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert to (similarity scores float64, bool labels)."""
    s = check_finite("scores", scores).astype(np.float64).ravel()
    y = np.asarray(same)
    if y.dtype != bool:
        if not np.all(np.isin(y, (0, 1))):
            raise ValueError("same: expected booleans or 0/1 labels")
        y = y.astype(bool)
    y = y.ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.shape}) and same ({y.shape}) must have the same length")
    if kind == "distance":
        s = -s
    elif kind != "similarity":
        raise ValueError(f"kind: expected 'distance' or 'similarity', got {kind!r}")
    return s, y


# --------------------------------------------------------------------------- LFW


@dataclasses.dataclass(frozen=True)
class LFWPairs:
    """LFW View 2 pairs. Arrays of length ``n_folds * 2 * pairs_per_fold``."""

    name1: np.ndarray  # str
    index1: np.ndarray  # int, 1-based image number
    name2: np.ndarray
    index2: np.ndarray
    same: np.ndarray  # bool
    fold: np.ndarray  # int in [0, n_folds)
    n_folds: int
    pairs_per_fold: int  # per class: 300 same + 300 different

    def __len__(self) -> int:
        return len(self.same)

    def paths(
        self, root: str | os.PathLike, ext: str = "jpg"
    ) -> tuple[list[pathlib.Path], list[pathlib.Path]]:
        p1 = [lfw_image_path(root, n, i, ext) for n, i in zip(self.name1, self.index1)]
        p2 = [lfw_image_path(root, n, i, ext) for n, i in zip(self.name2, self.index2)]
        return p1, p2


def lfw_image_path(
    root: str | os.PathLike, name: str, index: int, ext: str = "jpg"
) -> pathlib.Path:
    """``root/<name>/<name>_<index:04d>.jpg`` (the layout of lfw.tgz and its aligned variants)."""
    return pathlib.Path(root) / name / f"{name}_{int(index):04d}.{ext}"


def _parse_int(tok: str, where: str, field: str) -> int:
    try:
        v = int(tok)
    except ValueError:
        raise ValueError(f"{where}: field {field}: expected an integer, got {tok!r}") from None
    return v


def parse_lfw_pairs(path: str | os.PathLike) -> LFWPairs:
    """Parse LFW's ``pairs.txt`` (View 2).

    Header ``<n_folds> <n>``; then per fold ``n`` same pairs ``name i j`` and ``n``
    different pairs ``name1 i name2 j`` (tab or space separated). Image numbers
    are 1-based. Every deviation raises a ValueError naming ``file:line``.
    """
    path = pathlib.Path(path)
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if not lines:
        raise ValueError(f"{path}:1: empty file, expected header '<n_folds> <pairs_per_fold>'")
    head = lines[0].split()
    if len(head) != 2:
        raise ValueError(
            f"{path}:1: expected header '<n_folds> <pairs_per_fold>', got {lines[0]!r}"
        )
    n_folds = _parse_int(head[0], f"{path}:1", "n_folds")
    n = _parse_int(head[1], f"{path}:1", "pairs_per_fold")
    if n_folds <= 0 or n <= 0:
        raise ValueError(
            f"{path}:1: n_folds and pairs_per_fold must be positive, got {n_folds} {n}"
        )
    body = [(k + 2, ln) for k, ln in enumerate(lines[1:]) if ln.strip()]
    expected = n_folds * 2 * n
    if len(body) != expected:
        last = body[-1][0] if body else 1
        raise ValueError(
            f"{path}:{last}: expected {expected} pair lines ({n_folds} folds x ({n} same + {n} different)), "
            f"found {len(body)}"
        )
    name1, idx1, name2, idx2, same, fold = [], [], [], [], [], []
    for k, (lineno, ln) in enumerate(body):
        f_idx, r = divmod(k, 2 * n)
        is_same = r < n
        tok = ln.split()
        where = f"{path}:{lineno}"
        if is_same:
            if len(tok) != 3:
                raise ValueError(
                    f"{where}: fold {f_idx + 1}, same pair {r + 1}: expected 'name i j', got {ln!r}"
                )
            a, i, j = tok[0], _parse_int(tok[1], where, "i"), _parse_int(tok[2], where, "j")
            b = a
        else:
            if len(tok) != 4:
                raise ValueError(
                    f"{where}: fold {f_idx + 1}, different pair {r - n + 1}: expected 'name1 i name2 j', got {ln!r}"
                )
            a, i, b, j = (
                tok[0],
                _parse_int(tok[1], where, "i"),
                tok[2],
                _parse_int(tok[3], where, "j"),
            )
            if a == b:
                raise ValueError(f"{where}: a 'different' pair names the same person {a!r}")
        if i < 1 or j < 1:
            raise ValueError(f"{where}: image numbers are 1-based, got {i} {j}")
        for nm in (a, b):  # a name is one folder of the LFW root, never a path
            if nm in (".", "..") or any(c in nm for c in "/\\") or "\0" in nm:
                raise ValueError(f"{where}: person name {nm!r} is not a plain folder name")
        name1.append(a)
        idx1.append(i)
        name2.append(b)
        idx2.append(j)
        same.append(is_same)
        fold.append(f_idx)
    return LFWPairs(
        name1=np.array(name1),
        index1=np.array(idx1),
        name2=np.array(name2),
        index2=np.array(idx2),
        same=np.array(same, bool),
        fold=np.array(fold),
        n_folds=n_folds,
        pairs_per_fold=n,
    )


# --------------------------------------------------------------------------- CFP


@dataclasses.dataclass(frozen=True)
class CFPProtocol:
    """The CFP protocol, resolved.

    ``frontal_paths[k]`` is the image numbered ``k + 1`` in ``Pair_list_F.txt``
    (5,000), ``profile_paths`` likewise for ``Pair_list_P.txt`` (2,000);
    ``*_identity`` the 0-based identity (from the ``Data/Images/NNN`` folder).
    ``splits[protocol]`` (protocol "FF" or "FP") is a list of
    ``(index1, index2, same)`` per split, 0-based indices into frontal_paths
    (first) and frontal_paths / profile_paths (second, for FF / FP).
    """

    root: pathlib.Path
    frontal_paths: list[pathlib.Path]
    profile_paths: list[pathlib.Path]
    frontal_identity: np.ndarray
    profile_identity: np.ndarray
    splits: Mapping[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]

    def pairs(self, protocol: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """All pairs of a protocol concatenated: (index1, index2, same, split)."""
        parts = self.splits[protocol]
        return (
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]),
            np.concatenate([np.full(len(p[2]), k) for k, p in enumerate(parts)]),
        )

    def fiducial_path(self, image_path: pathlib.Path) -> pathlib.Path:
        """``Data/Images/NNN/{frontal,profile}/NN.jpg`` -> ``Data/Fiducials/NNN/.../NN.txt``."""
        rel = pathlib.Path(image_path).relative_to(self.root / "Data" / "Images")
        return (self.root / "Data" / "Fiducials" / rel).with_suffix(".txt")


def _resolve_inside(root: pathlib.Path, base: pathlib.Path, rel: str, where: str) -> pathlib.Path:
    if os.path.isabs(rel):
        raise ValueError(
            f"{where}: absolute path {rel!r} not allowed (paths are relative to Protocol/)"
        )
    p = pathlib.Path(os.path.normpath(base / rel))
    try:
        p.relative_to(root)
    except ValueError:
        raise ValueError(f"{where}: path {rel!r} escapes the dataset root {root}") from None
    # Symlinks must not lead outside either.
    real = pathlib.Path(os.path.realpath(p))
    try:
        real.relative_to(pathlib.Path(os.path.realpath(root)))
    except ValueError:
        raise ValueError(
            f"{where}: path {rel!r} resolves (via a link) outside the dataset root {root}"
        ) from None
    return p


def _read_pair_list(
    path: pathlib.Path, root: pathlib.Path, check_exists: bool
) -> list[pathlib.Path]:
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, ln in enumerate(f, 1):
            if not ln.strip():
                continue
            tok = ln.split(maxsplit=1)
            where = f"{path}:{lineno}"
            if len(tok) != 2:
                raise ValueError(
                    f"{where}: expected '<number> <relative path>', got {ln.rstrip()!r}"
                )
            num = _parse_int(tok[0], where, "number")
            if num != len(out) + 1:
                raise ValueError(
                    f"{where}: images must be numbered 1, 2, ... in order; expected {len(out) + 1}, got {num}"
                )
            p = _resolve_inside(root, path.parent, tok[1].strip(), where)
            if check_exists and not p.is_file():
                raise FileNotFoundError(f"{where}: image {p} does not exist")
            out.append(p)
    if not out:
        raise ValueError(f"{path}: no images listed")
    return out


def _identity_of(p: pathlib.Path, where: str) -> int:
    # .../Data/Images/<NNN>/<frontal|profile>/<NN>.jpg
    try:
        return int(p.parent.parent.name) - 1
    except ValueError:
        raise ValueError(
            f"{where}: cannot read the identity folder of {p} (expected Images/NNN/...)"
        ) from None


def _read_split_file(path: pathlib.Path, n1: int, n2: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, ln in enumerate(f, 1):
            if not ln.strip():
                continue
            where = f"{path}:{lineno}"
            tok = ln.strip().split(",")
            if len(tok) != 2:
                raise ValueError(f"{where}: expected 'i,j', got {ln.rstrip()!r}")
            i, j = _parse_int(tok[0].strip(), where, "i"), _parse_int(tok[1].strip(), where, "j")
            if not 1 <= i <= n1:
                raise ValueError(f"{where}: field i={i} out of range 1..{n1}")
            if not 1 <= j <= n2:
                raise ValueError(f"{where}: field j={j} out of range 1..{n2}")
            a.append(i - 1)
            b.append(j - 1)
    return np.array(a, np.int64), np.array(b, np.int64)


def parse_cfp_protocol(
    root: str | os.PathLike, *, check_exists: bool = True, n_splits: int = 10
) -> CFPProtocol:
    """Parse CFP's ``Protocol/`` folder under ``root`` (the folder holding ``Data`` and ``Protocol``).

    Paths in the pair lists are relative to ``Protocol/`` (``../Data/Images/...``);
    any path that leaves ``root`` is refused. With ``check_exists`` every image must
    exist. Each split's ``same.txt`` / ``diff.txt`` pairs are checked: indices in range,
    same pairs share an identity and different pairs do not.
    """
    root = pathlib.Path(os.path.normpath(os.path.abspath(root)))
    proto = root / "Protocol"
    if not proto.is_dir():
        raise FileNotFoundError(f"{proto}: CFP protocol folder not found")
    frontal = _read_pair_list(proto / "Pair_list_F.txt", root, check_exists)
    profile = _read_pair_list(proto / "Pair_list_P.txt", root, check_exists)
    fid = np.array([_identity_of(p, str(proto / "Pair_list_F.txt")) for p in frontal])
    pid = np.array([_identity_of(p, str(proto / "Pair_list_P.txt")) for p in profile])
    splits: dict[str, list] = {}
    for name, second_n, second_id in (("FF", len(frontal), fid), ("FP", len(profile), pid)):
        parts = []
        for k in range(1, n_splits + 1):
            d = proto / "Split" / name / f"{k:02d}"
            ia, ja = _read_split_file(d / "same.txt", len(frontal), second_n)
            ib, jb = _read_split_file(d / "diff.txt", len(frontal), second_n)
            if np.any(fid[ia] != second_id[ja]):
                bad = int(np.argmax(fid[ia] != second_id[ja]))
                raise ValueError(f"{d / 'same.txt'}: pair {bad + 1} joins different identities")
            if np.any(fid[ib] == second_id[jb]):
                bad = int(np.argmax(fid[ib] == second_id[jb]))
                raise ValueError(f"{d / 'diff.txt'}: pair {bad + 1} joins one identity")
            same = np.concatenate([np.ones(len(ia), bool), np.zeros(len(ib), bool)])
            parts.append((np.concatenate([ia, ib]), np.concatenate([ja, jb]), same))
        splits[name] = parts
    return CFPProtocol(root, frontal, profile, fid, pid, splits)


def read_cfp_fiducials(path: str | os.PathLike, n_points: int = 30) -> np.ndarray:
    """Read one CFP fiducial file (``x,y`` per line) as ``[n_points, 2]`` float64 pixels."""
    path = pathlib.Path(path)
    pts = []
    with open(path, encoding="utf-8") as f:
        for lineno, ln in enumerate(f, 1):
            if not ln.strip():
                continue
            tok = ln.strip().split(",")
            if len(tok) != 2:
                raise ValueError(f"{path}:{lineno}: expected 'x,y', got {ln.rstrip()!r}")
            try:
                pts.append((float(tok[0]), float(tok[1])))
            except ValueError:
                raise ValueError(
                    f"{path}:{lineno}: expected numbers 'x,y', got {ln.rstrip()!r}"
                ) from None
    if len(pts) != n_points:
        raise ValueError(f"{path}: expected {n_points} points, found {len(pts)}")
    return check_finite(str(path), np.array(pts))


# --------------------------------------------------------------------------- scores


def fuse_flip(emb, emb_flip) -> np.ndarray:
    """LFW embedding: ``L2-normalise(f(x) + f(flip x))``, ``[N, D]``."""
    e = check_finite("emb", emb).astype(np.float64) + check_finite("emb_flip", emb_flip)
    n = np.linalg.norm(e, axis=1, keepdims=True)
    if np.any(n == 0):
        raise ValueError(f"fuse_flip: zero embedding at row {int(np.argmax(n[:, 0] == 0))}")
    return e / n


def pair_distances(emb1, emb2) -> np.ndarray:
    """Squared L2 distance per row of two ``[N, D]`` arrays (both should be L2-normalised)."""
    a = check_finite("emb1", emb1).astype(np.float64)
    b = check_finite("emb2", emb2).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"emb1 {a.shape} and emb2 {b.shape} differ in shape")
    return np.sum((a - b) ** 2, axis=1)


# --------------------------------------------------------------------------- ROC


def roc_curve(
    scores, same, *, kind: str = "similarity"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC over all distinct thresholds: (fpr, tpr, thresholds), like sklearn's ``roc_curve``
    with ``drop_intermediate=False``: starts at (0, 0) with threshold +inf, then one point
    per distinct score in decreasing order (predict "same" when score >= threshold).
    Thresholds are in the caller's units (distances for ``kind="distance"``; then
    "same" means distance <= threshold)."""
    s, y = _scores_labels(scores, same, kind)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"ROC needs both genuine and impostor pairs (got {n_pos} and {n_neg})")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    thr = np.r_[np.inf, s[distinct]]
    if kind == "distance":
        thr = -thr
    return fpr, tpr, thr


def roc_auc(scores, same, *, kind: str = "similarity") -> float:
    """Area under the ROC (trapezoidal; ties count one half, as sklearn's ``roc_auc_score``)."""
    fpr, tpr, _ = roc_curve(scores, same, kind=kind)
    return float(np.trapezoid(tpr, fpr))


def eer(scores, same, *, kind: str = "similarity") -> float:
    """Equal error rate: the FPR at the ROC point minimising ``|FPR + TPR - 1|`` (CFP's definition)."""
    fpr, tpr, _ = roc_curve(scores, same, kind=kind)
    return float(fpr[np.argmin(np.abs(fpr + tpr - 1.0))])


def tar_at_far(
    scores,
    same,
    far_targets: float | Sequence[float],
    *,
    kind: str = "similarity",
    method: str = "closest",
) -> np.ndarray:
    """TAR at each target FAR on a list of pairs.

    ``method="closest"``: IJB-B/C convention exactly as insightface's ``IJB_11.py``
    computes it: the TPR at the ROC point whose FPR is closest to the target, the
    first (highest-threshold) such point on ties. A vertical ROC segment holds many
    points with one FPR, so this is the *bottom* of the segment (perfectly separated
    scores report TAR 0 at FAR 1e-6: the (0, 0) start point wins the tie).
    ``method="closest_upper"``: same FPR, the top of the segment (the best TPR
    reachable at that FAR).
    ``method="interpolated"``: linear interpolation of TPR over FPR along the ROC
    (on a vertical segment ``np.interp`` takes its top).

    Returns an array shaped like ``far_targets``. A target below ``1 / n_impostors``
    cannot be measured: it returns the TAR at FPR 0 for "closest" and is interpolated
    towards (0, 0) by "interpolated" -- report the impostor count beside it.
    """
    fpr, tpr, thr = roc_curve(scores, same, kind=kind)
    targets = np.asarray(far_targets, np.float64)
    if np.any((targets < 0) | (targets > 1)):
        raise ValueError(f"far_targets must lie in [0, 1], got {far_targets}")
    return read_roc(fpr, tpr, thr, targets, method=method)["tar"]


def read_roc(fpr, tpr, thresholds, far_targets, *, method: str = "closest") -> dict:
    """The one TAR@FAR reading of a ROC (points ordered by decreasing threshold, from
    (0, 0)), for `tar_at_far` (exact pair scores) and
    `jaxface.evaluation.all_pairs.histogram_tar_at_far` (histogram bin edges).

    ``method``: ``"closest"`` the first point whose FPR is closest to the target,
    ``"closest_upper"`` the best TPR among those points, ``"interpolated"`` TPR (and
    threshold; an infinite one counts as 1.0) linear in FPR. Returns ``tar``, ``far``
    (reached; the target for "interpolated") and ``threshold``, shaped like
    ``far_targets``."""
    fpr, tpr, thresholds = (np.asarray(a) for a in (fpr, tpr, thresholds))
    targets = np.asarray(far_targets, np.float64)
    flat = targets.ravel()
    if method in ("closest", "closest_upper"):
        idx = []
        for t in flat:
            gap = np.abs(fpr - t)
            if method == "closest":
                idx.append(int(np.argmin(gap)))
            else:
                tied = np.flatnonzero(gap == gap.min())
                idx.append(int(tied[np.argmax(tpr[tied])]))
        idx = np.asarray(idx, np.int64)
        out = {"tar": tpr[idx], "far": fpr[idx], "threshold": thresholds[idx]}
    elif method == "interpolated":
        out = {
            "tar": np.interp(flat, fpr, tpr),
            "far": flat.copy(),
            "threshold": np.interp(flat, fpr, np.where(np.isfinite(thresholds), thresholds, 1.0)),
        }
    else:
        raise ValueError(
            f"method: expected 'closest', 'closest_upper' or 'interpolated', got {method!r}"
        )
    return {k: v.reshape(targets.shape) for k, v in out.items()}


def threshold_at_far(impostor: np.ndarray, far: float, genuine=None) -> dict:
    """The lowest threshold t with FAR(t) = #(impostor >= t) / n <= far (``same`` iff
    ``score >= t``), with the FAR and (given genuine scores) TAR achieved there."""
    imp = np.sort(np.asarray(impostor, np.float64))[::-1]
    n = len(imp)
    if n == 0:
        raise ValueError("threshold_at_far: no impostor scores")
    k = int(np.floor(far * n))  # at most k impostors may reach t
    t = float(np.nextafter(imp[k], np.inf)) if k < n else float(imp[-1])
    achieved = float(np.mean(imp >= t))
    out = {
        "threshold": t,
        "far": achieved,
        "far_resolution": 1.0 / n,
    }
    if genuine is not None and len(genuine):
        out["tar"] = float(np.mean(np.asarray(genuine) >= t))
    return out


# --------------------------------------------------------------------------- folds


def _fold_masks(folds) -> tuple[np.ndarray, np.ndarray]:
    folds = np.asarray(folds)
    ids = np.unique(folds)
    if len(ids) < 2:
        raise ValueError(f"need at least 2 folds, got {len(ids)}")
    return folds, ids


def _accuracy_at(s: np.ndarray, y: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    # s: similarity; predict same when s >= thr. Vectorised over thresholds.
    pred = s[None, :] >= thresholds[:, None]
    return (pred == y[None, :]).mean(axis=1)


def kfold_accuracy(
    scores, same, folds, *, kind: str = "distance", thresholds: np.ndarray | None = None
) -> dict[str, np.ndarray | float]:
    """k-fold verification accuracy with the threshold chosen on the other folds.

    Args:
      scores: ``[P]`` pair scores (squared L2 distances for ``kind="distance"``, the LFW
        convention; predict "same" when distance < threshold, insightface's ``np.less``;
        for ``kind="similarity"`` when similarity >= threshold).
      same: ``[P]`` bool. folds: ``[P]`` fold id per pair.
      thresholds: candidate thresholds in the caller's units; default `LFW_THRESHOLDS`
        for distances, ``-1:0.01:1`` for similarities (cosine).

    Returns:
      dict with ``accuracy`` ``[K]`` per held-out fold, ``threshold`` ``[K]``, ``mean``, ``std``
      (population std, ``np.std``, as facenet / insightface report it).
    """
    s, y = _scores_labels(scores, same, kind)
    folds, ids = _fold_masks(folds)
    if thresholds is None:
        thresholds = (
            LFW_THRESHOLDS if kind == "distance" else np.round(np.arange(-100, 101) * 0.01, 2)
        )
    thresholds = np.asarray(thresholds, np.float64)
    if kind == "distance":
        # distance < t  <=>  -distance > -t; use a strict comparison to match np.less.
        sim_thr = -thresholds

        def acc(mask, t):
            return ((s[mask][None, :] > t[:, None]) == y[mask][None, :]).mean(axis=1)
    else:
        sim_thr = thresholds

        def acc(mask, t):
            return _accuracy_at(s[mask], y[mask], t)

    accs, thrs = [], []
    for k in ids:
        test = folds == k
        train_acc = acc(~test, sim_thr)
        best = int(np.argmax(train_acc))
        thrs.append(thresholds[best])
        accs.append(float(acc(test, sim_thr[best : best + 1])[0]))
    accs = np.array(accs)
    return {
        "accuracy": accs,
        "threshold": np.array(thrs),
        "mean": float(accs.mean()),
        "std": float(accs.std()),
    }


def kfold_tar_at_far(
    scores,
    same,
    folds,
    far_target: float = 1e-3,
    *,
    kind: str = "distance",
    thresholds: np.ndarray | None = None,
) -> dict[str, np.ndarray | float]:
    """LFW-style TAR@FAR (facenet's ``calculate_val``): per held-out fold, the threshold at
    which the training folds reach ``far_target``, found by linear interpolation of the
    threshold over the (monotone) FAR-vs-threshold curve on the threshold grid; TAR and
    FAR are then measured on the held-out fold. If the training FAR never reaches the
    target, the most lenient threshold of the grid is used (its FAR is already within the
    target; facenet falls back to 0.0, which accepts nothing).

    Returns dict with per-fold ``tar``, ``far``, ``threshold`` and ``tar_mean``,
    ``tar_std``, ``far_mean``.
    """
    s, y = _scores_labels(scores, same, kind)
    folds, ids = _fold_masks(folds)
    if thresholds is None:
        thresholds = (
            LFW_THRESHOLDS if kind == "distance" else np.round(np.arange(-100, 101) * 0.01, 2)
        )
    thresholds = np.asarray(thresholds, np.float64)
    # Express everything as "accept when sim > u" with u increasing => FAR decreasing.
    u = -thresholds if kind == "distance" else thresholds
    order = np.argsort(u)
    u = u[order]

    def rates(mask, uu):
        acc = (
            s[mask][None, :] > uu[:, None]
            if kind == "distance"
            else s[mask][None, :] >= uu[:, None]
        )
        yy = y[mask]
        tar = acc[:, yy].sum(1) / max(int(yy.sum()), 1)
        far = acc[:, ~yy].sum(1) / max(int((~yy).sum()), 1)
        return tar, far

    tars, fars, ts = [], [], []
    for k in ids:
        test = folds == k
        _, far_train = rates(~test, u)
        if far_train.max() >= far_target:
            # far_train is non-increasing in u; np.interp needs increasing x.
            uu = float(np.interp(far_target, far_train[::-1], u[::-1]))
        else:
            uu = float(u[0])
        tar, far = rates(test, np.array([uu]))
        tars.append(float(tar[0]))
        fars.append(float(far[0]))
        ts.append(-uu if kind == "distance" else uu)
    tars, fars = np.array(tars), np.array(fars)
    return {
        "tar": tars,
        "far": fars,
        "threshold": np.array(ts),
        "tar_mean": float(tars.mean()),
        "tar_std": float(tars.std()),
        "far_mean": float(fars.mean()),
    }


def evaluate_folds(scores, same, folds, *, kind: str = "distance") -> dict[str, float | np.ndarray]:
    """CFP-style report: per fold accuracy (threshold from the other folds), EER and AUC,
    each with mean and std over folds."""
    s = check_finite("scores", scores)
    same = np.asarray(same)
    folds, ids = _fold_masks(folds)
    acc = kfold_accuracy(s, same, folds, kind=kind)
    eers = np.array([eer(s[folds == k], same[folds == k], kind=kind) for k in ids])
    aucs = np.array([roc_auc(s[folds == k], same[folds == k], kind=kind) for k in ids])
    return {
        "accuracy": acc["accuracy"],
        "accuracy_mean": acc["mean"],
        "accuracy_std": acc["std"],
        "eer": eers,
        "eer_mean": float(eers.mean()),
        "eer_std": float(eers.std()),
        "auc": aucs,
        "auc_mean": float(aucs.mean()),
        "auc_std": float(aucs.std()),
    }


# --------------------------------------------------------------------------- plots


def plot_roc(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | os.PathLike,
    *,
    title: str = "ROC",
    min_far: float | None = None,
) -> pathlib.Path:
    """Write a ROC plot (TAR vs FAR, log FAR axis) as PNG. ``curves``: name -> (fpr, tpr).

    Points at FAR 0 cannot be drawn on a log axis; the axis starts at ``min_far``
    (default: the smallest positive FAR over the curves)."""
    # The Agg canvas directly, not pyplot: no global backend switch, no GUI, thread-safe.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = pathlib.Path(path)
    fig = Figure(figsize=(6, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    lo = 1.0
    for name, (fpr, tpr) in curves.items():
        fpr = check_finite(f"{name} fpr", fpr)
        tpr = check_finite(f"{name} tpr", tpr)
        keep = fpr > 0
        if keep.any():
            lo = min(lo, float(fpr[keep].min()))
        ax.plot(fpr[keep], tpr[keep], label=name)
    ax.set_xscale("log")
    ax.set_xlim(min_far if min_far is not None else lo, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("FAR (false accept rate)")
    ax.set_ylabel("TAR (true accept rate)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
