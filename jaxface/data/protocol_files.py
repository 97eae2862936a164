"""Files of the verification protocols, parsed without TensorFlow: LFW View 2's
``pairs.txt``, CFP's protocol folder (pair lists, splits, image lists) and its 30-point
fiducial files; plus `check_finite`, the NaN/inf check of every array read or scored.

The data builders (`jaxface.data.cfp`, `jaxface.data.cfp_scenes`) and the protocols
(`jaxface.evaluation.verification`) both read them from here.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Mapping

import numpy as np

__all__ = [
    "LFWPairs",
    "parse_lfw_pairs",
    "lfw_image_path",
    "CFPProtocol",
    "parse_cfp_protocol",
    "read_cfp_fiducials",
    "check_finite",
]

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
