"""WIDER FACE annotation parsing (no TensorFlow): the official text and .mat files.

Layout of the original download (``root`` below)::

    WIDER_{train,val,test}/images/<event>/<image>.jpg
    wider_face_split/wider_face_{train,val}_bbx_gt.txt
    wider_face_split/wider_face_{train,val}.mat
    eval_tools/ground_truth/wider_{face,easy,medium,hard}_val.mat

Both formats are parsed into one flat, NumPy-backed `WiderFaceAnnotations`
(faces of all images concatenated, with per-image offsets), which the tfds
builder and the evaluator (`jaxface.evaluation.widerface`) share.

Per-face labels (``wider_face_split/readme.txt``): blur 0 clear / 1 normal /
2 heavy; expression 0 typical / 1 exaggerate; illumination 0 normal / 1 extreme;
invalid 0 valid / 1 invalid; occlusion 0 none / 1 partial / 2 heavy; pose
0 typical / 1 atypical.

Every path read from an annotation is relative to the dataset root; absolute
paths and ``..`` components are rejected (`UnsafePathError`) so a crafted file
cannot make a reader open anything outside the dataset.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from typing import Dict, Mapping, Optional, Tuple, Union

import numpy as np

__all__ = [
    "LABEL_NAMES",
    "WiderFaceAnnotations",
    "WiderFaceFormatError",
    "UnsafePathError",
    "check_relative_path",
    "resolve_in_root",
    "read_bbx_gt_txt",
    "read_mat",
    "read_split",
    "image_file",
]

PathLike = Union[str, os.PathLike]

# Column order of the text format after "x1 y1 w h", and the .mat field stems.
LABEL_NAMES: Tuple[str, ...] = (
    "blur",
    "expression",
    "illumination",
    "invalid",
    "occlusion",
    "pose",
)


class WiderFaceFormatError(ValueError):
    """An annotation file does not follow the official layout (names file and line/field)."""


class UnsafePathError(ValueError):
    """A path inside an annotation would escape the dataset root."""


_DRIVE = re.compile(r"^[A-Za-z]:")


def check_relative_path(rel: str, *, where: str) -> str:
    """Validates a dataset-relative path from an annotation and returns it.

    Rejects empty paths, absolute paths (``/x``, ``\\x``, ``C:x``), backslashes,
    and empty, ``.`` or ``..`` components.

    Args:
      rel: the path as written in the annotation (``/``-separated).
      where: ``"file:line"`` or ``"file: field"`` used in the error message.
    Raises:
      UnsafePathError: naming ``where`` and the offending path.
    """
    if not rel:
        raise UnsafePathError(f"{where}: empty path")
    if rel.startswith(("/", "\\")) or _DRIVE.match(rel) or "\\" in rel or "\x00" in rel:
        raise UnsafePathError(f"{where}: path {rel!r} must be relative to the dataset root")
    for part in rel.split("/"):
        if part in ("", ".", ".."):
            raise UnsafePathError(
                f"{where}: path {rel!r} has an empty, '.' or '..' component; "
                "paths must stay inside the dataset root"
            )
    return rel


def resolve_in_root(root: PathLike, rel: str, *, where: str = "path") -> pathlib.Path:
    """``root / rel`` after `check_relative_path`, also checked after resolving symlinks."""
    check_relative_path(rel, where=where)
    root_p = pathlib.Path(root).resolve()
    full = (root_p / rel).resolve()
    if full != root_p and root_p not in full.parents:
        raise UnsafePathError(f"{where}: path {rel!r} resolves outside the dataset root {root_p}")
    return full


@dataclasses.dataclass(frozen=True)
class WiderFaceAnnotations:
    """Annotations of one split, flat over faces.

    Attributes (``I`` images, ``F`` faces, ``E`` events):
      events: ``E`` event folder names, e.g. ``"0--Parade"``, in file order.
      image_event: ``[I]`` int32 index into ``events``.
      image_names: ``I`` image names without extension (the prediction file stem).
      image_paths: ``I`` paths relative to ``WIDER_<split>/images``, ``<event>/<name>.jpg``.
      face_offsets: ``[I + 1]`` int64; image ``i`` owns faces ``face_offsets[i]:face_offsets[i+1]``.
      boxes: ``[F, 4]`` ``x y w h`` exactly as stored (int32 for the official files;
        the evaluator relies on that dtype to reproduce MATLAB's integer arithmetic).
      labels: name -> ``[F]`` int array for each of `LABEL_NAMES` present in the source.
      keep: ``[F]`` bool, the faces listed in ``gt_list`` (eval_tools difficulty files), else None.
      keep_list_lengths: ``[I]`` int64 ``length(gt_list{j})`` (duplicates included, as
        the official tool counts them), else None.
      source: the file it was read from.
    """

    events: Tuple[str, ...]
    image_event: np.ndarray
    image_names: Tuple[str, ...]
    image_paths: Tuple[str, ...]
    face_offsets: np.ndarray
    boxes: np.ndarray
    labels: Mapping[str, np.ndarray]
    keep: Optional[np.ndarray] = None
    keep_list_lengths: Optional[np.ndarray] = None
    source: str = ""

    @property
    def num_images(self) -> int:
        return len(self.image_names)

    @property
    def num_faces(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def faces_per_image(self) -> np.ndarray:
        """``[I]`` int64 number of faces of each image."""
        return np.diff(self.face_offsets)

    @property
    def image_index(self) -> np.ndarray:
        """``[F]`` int64 image of each face."""
        return np.repeat(np.arange(self.num_images), self.faces_per_image)

    def image(self, i: int) -> Dict[str, object]:
        """One image's record: ``path``, ``event``, ``name``, ``boxes`` ``[n, 4]``, labels ``[n]``."""
        s, e = int(self.face_offsets[i]), int(self.face_offsets[i + 1])
        rec: Dict[str, object] = {
            "path": self.image_paths[i],
            "event": self.events[int(self.image_event[i])],
            "name": self.image_names[i],
            "boxes": self.boxes[s:e],
        }
        for k, v in self.labels.items():
            rec[k] = v[s:e]
        if self.keep is not None:
            rec["keep"] = self.keep[s:e]
        return rec


# ---------------------------------------------------------------------------
# Text format
# ---------------------------------------------------------------------------
def read_bbx_gt_txt(path: PathLike) -> WiderFaceAnnotations:
    """Parses ``wider_face_{train,val}_bbx_gt.txt``.

    Layout, repeated per image: the image path ``<event>/<name>.jpg``; the number
    of faces ``n``; then ``n`` lines ``x1 y1 w h blur expression illumination
    invalid occlusion pose`` (integers). An image with no face is written as
    ``0`` followed by one line of ten zeros, which is consumed and yields 0 faces.
    (A count of 1 with an all-zero line is kept as one face, as the official
    ``.mat`` files do for the same images.)

    Raises:
      WiderFaceFormatError: naming the file and 1-based line of the problem.
      UnsafePathError: an image path is absolute or contains ``..``.
    """
    path = os.fspath(path)
    with open(path, "r", encoding="utf-8") as f:
        lines = f.read().splitlines()
    n_lines = len(lines)
    events: list = []
    event_ids: Dict[str, int] = {}
    image_event: list = []
    names: list = []
    paths: list = []
    counts: list = []
    rows: list = []
    i = 0
    while i < n_lines:
        line = lines[i].strip()
        if not line:
            i += 1
            continue
        where = f"{path}:{i + 1}"
        rel = check_relative_path(line, where=where)
        parts = rel.split("/")
        if len(parts) != 2:
            raise WiderFaceFormatError(
                f"{where}: expected an image path '<event>/<image>.jpg', got {line!r}"
            )
        event, fname = parts
        if i + 1 >= n_lines:
            raise WiderFaceFormatError(f"{path}:{i + 2}: missing face count after {line!r}")
        count_s = lines[i + 1].strip()
        if not count_s.isdigit():
            raise WiderFaceFormatError(
                f"{path}:{i + 2}: expected the number of faces (a non-negative integer), got {count_s!r}"
            )
        n = int(count_s)
        n_rows = n if n > 0 else 1
        if i + 2 + n_rows > n_lines:
            raise WiderFaceFormatError(
                f"{path}:{n_lines + 1}: file ends inside {line!r}: expected {n_rows} face line(s)"
            )
        block = []
        for k in range(n_rows):
            ln = i + 2 + k
            toks = lines[ln].split()
            try:
                vals = [int(t) for t in toks]
            except ValueError:
                vals = None
            if vals is None or len(vals) != 10:
                raise WiderFaceFormatError(
                    f"{path}:{ln + 1}: expected 10 integers 'x1 y1 w h blur expression "
                    f"illumination invalid occlusion pose', got {lines[ln]!r}"
                )
            block.append(vals)
        if n == 0:
            if any(block[0]):
                raise WiderFaceFormatError(
                    f"{path}:{i + 3}: an image with 0 faces must be followed by one line of "
                    f"zeros, got {lines[i + 2]!r}"
                )
            block = []
        if event not in event_ids:
            event_ids[event] = len(events)
            events.append(event)
        image_event.append(event_ids[event])
        names.append(fname[:-4] if fname.lower().endswith(".jpg") else fname)
        paths.append(rel)
        counts.append(n)
        rows.extend(block)
        i += 2 + n_rows
    table = np.asarray(rows, dtype=np.int32).reshape(-1, 10)
    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    return WiderFaceAnnotations(
        events=tuple(events),
        image_event=np.asarray(image_event, np.int32),
        image_names=tuple(names),
        image_paths=tuple(paths),
        face_offsets=offsets,
        boxes=np.ascontiguousarray(table[:, :4]),
        labels={k: np.ascontiguousarray(table[:, 4 + j]) for j, k in enumerate(LABEL_NAMES)},
        source=path,
    )


# ---------------------------------------------------------------------------
# .mat format
# ---------------------------------------------------------------------------
def _mat_str(x, *, where: str) -> str:
    a = np.asarray(x)
    if a.dtype == object and a.size == 1:
        a = np.asarray(a.reshape(-1)[0])
    if a.dtype.kind != "U":
        raise WiderFaceFormatError(f"{where}: expected a string, got {a.dtype} {a.shape}")
    return "".join(a.reshape(-1).tolist())


def _cells(x, n: Optional[int], *, where: str) -> list:
    a = np.asarray(x)
    if a.dtype != object:
        raise WiderFaceFormatError(f"{where}: expected a cell array, got {a.dtype} {a.shape}")
    cells = list(a.reshape(-1))
    if n is not None and len(cells) != n:
        raise WiderFaceFormatError(f"{where}: expected {n} cells, got {len(cells)}")
    return cells


def read_mat(path: PathLike) -> WiderFaceAnnotations:
    """Parses ``wider_face_{train,val}.mat`` or eval_tools ``wider_{face,easy,medium,hard}_val.mat``.

    Fields used: ``event_list`` {E}, ``file_list`` {E}{n_e}, ``face_bbx_list``
    {E}{n_e}[k, 4] (``x y w h``), the six ``<label>_label_list`` {E}{n_e}[k, 1] when
    present, and ``gt_list`` {E}{n_e}[m, 1] (1-based indices of the faces kept by a
    difficulty setting) in the eval_tools files.

    Raises:
      WiderFaceFormatError: a field is missing or malformed (names file, field, event, image).
      UnsafePathError: an event or image name would escape the dataset root.
    """
    import scipy.io  # local: scipy is only needed for .mat files

    path = os.fspath(path)
    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:  # scipy raises several types for corrupt files
        raise WiderFaceFormatError(f"{path}: cannot read as a MATLAB .mat file: {e}") from e
    for field in ("event_list", "file_list", "face_bbx_list"):
        if field not in mat:
            raise WiderFaceFormatError(f"{path}: missing field {field!r}")
    ev_cells = _cells(mat["event_list"], None, where=f"{path}: event_list")
    n_ev = len(ev_cells)
    events = []
    for e, c in enumerate(ev_cells):
        name = _mat_str(c, where=f"{path}: event_list{{{e + 1}}}")
        check_relative_path(name, where=f"{path}: event_list{{{e + 1}}}")
        if "/" in name:
            raise UnsafePathError(
                f"{path}: event_list{{{e + 1}}}: event name {name!r} contains '/'"
            )
        events.append(name)
    file_cells = _cells(mat["file_list"], n_ev, where=f"{path}: file_list")
    box_cells = _cells(mat["face_bbx_list"], n_ev, where=f"{path}: face_bbx_list")
    label_fields = [k for k in LABEL_NAMES if f"{k}_label_list" in mat]
    label_cells = {
        k: _cells(mat[f"{k}_label_list"], n_ev, where=f"{path}: {k}_label_list")
        for k in label_fields
    }
    gt_cells = _cells(mat["gt_list"], n_ev, where=f"{path}: gt_list") if "gt_list" in mat else None

    image_event, names, paths, counts, keep_lens = [], [], [], [], []
    box_parts, label_parts, keep_parts = [], {k: [] for k in label_fields}, []
    box_dtype = None
    for e in range(n_ev):
        fl = _cells(file_cells[e], None, where=f"{path}: file_list{{{e + 1}}}")
        bl = _cells(box_cells[e], len(fl), where=f"{path}: face_bbx_list{{{e + 1}}}")
        ll = {
            k: _cells(label_cells[k][e], len(fl), where=f"{path}: {k}_label_list{{{e + 1}}}")
            for k in label_fields
        }
        gl = (
            _cells(gt_cells[e], len(fl), where=f"{path}: gt_list{{{e + 1}}}")
            if gt_cells is not None
            else None
        )
        for j in range(len(fl)):
            where = f"{path}: event {e + 1} ({events[e]}), image {j + 1}"
            name = _mat_str(fl[j], where=f"{where}, file_list")
            if "/" in name:
                raise UnsafePathError(f"{where}, file_list: image name {name!r} contains '/'")
            check_relative_path(name, where=f"{where}, file_list")
            rel = check_relative_path(f"{events[e]}/{name}.jpg", where=f"{where}, file_list")
            b = np.asarray(bl[j])
            if b.size == 0:
                b = b.reshape(0, 4)
            if b.ndim != 2 or b.shape[1] != 4 or b.dtype.kind not in "iuf":
                raise WiderFaceFormatError(
                    f"{where}, face_bbx_list: expected a numeric [k, 4] array, got {b.dtype} {b.shape}"
                )
            if box_dtype is None:
                box_dtype = b.dtype
            elif b.dtype != box_dtype and b.shape[0]:
                raise WiderFaceFormatError(
                    f"{where}, face_bbx_list: class {b.dtype} differs from earlier images' {box_dtype}"
                )
            k_faces = b.shape[0]
            for k in label_fields:
                lab = np.asarray(ll[k][j]).reshape(-1)
                if lab.size != k_faces:
                    raise WiderFaceFormatError(
                        f"{where}, {k}_label_list: {lab.size} labels for {k_faces} faces"
                    )
                label_parts[k].append(lab.astype(np.int16))
            if gl is not None:
                idx = np.asarray(gl[j]).reshape(-1)
                if idx.size and (idx.dtype.kind not in "iuf" or np.any(idx != np.round(idx))):
                    raise WiderFaceFormatError(f"{where}, gt_list: indices must be integers")
                idx = idx.astype(np.int64)
                if idx.size and (idx.min() < 1 or idx.max() > k_faces):
                    raise WiderFaceFormatError(
                        f"{where}, gt_list: index out of range 1..{k_faces}: {idx.min()}..{idx.max()}"
                    )
                kp = np.zeros(k_faces, bool)
                kp[idx - 1] = True
                keep_parts.append(kp)
                keep_lens.append(idx.size)
            image_event.append(e)
            names.append(name)
            paths.append(rel)
            counts.append(k_faces)
            box_parts.append(b)
    dtype = box_dtype if box_dtype is not None else np.dtype(np.int32)
    boxes = (
        np.concatenate([b.astype(dtype, copy=False) for b in box_parts])
        if box_parts
        else np.zeros((0, 4), dtype)
    )
    return WiderFaceAnnotations(
        events=tuple(events),
        image_event=np.asarray(image_event, np.int32),
        image_names=tuple(names),
        image_paths=tuple(paths),
        face_offsets=np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]),
        boxes=np.ascontiguousarray(boxes),
        labels={
            k: (np.concatenate(v) if v else np.zeros(0, np.int16)) for k, v in label_parts.items()
        },
        keep=(np.concatenate(keep_parts) if keep_parts else np.zeros(0, bool))
        if gt_cells is not None
        else None,
        keep_list_lengths=np.asarray(keep_lens, np.int64) if gt_cells is not None else None,
        source=path,
    )


def read_split(root: PathLike, split: str, *, fmt: str = "txt") -> WiderFaceAnnotations:
    """Reads ``root/wider_face_split/wider_face_<split>_bbx_gt.txt`` (or ``.mat`` with ``fmt="mat"``).

    Args:
      root: the dataset root (the folder holding ``wider_face_split``).
      split: ``"train"`` or ``"val"``.
      fmt: ``"txt"`` or ``"mat"``.
    """
    if split not in ("train", "val"):
        raise ValueError(
            f"split must be 'train' or 'val' (test has no public boxes), got {split!r}"
        )
    if fmt == "txt":
        return read_bbx_gt_txt(
            resolve_in_root(root, f"wider_face_split/wider_face_{split}_bbx_gt.txt")
        )
    if fmt == "mat":
        return read_mat(resolve_in_root(root, f"wider_face_split/wider_face_{split}.mat"))
    raise ValueError(f"fmt must be 'txt' or 'mat', got {fmt!r}")


def image_file(root: PathLike, split: str, ann: WiderFaceAnnotations, i: int) -> pathlib.Path:
    """Absolute path of image ``i``: ``root/WIDER_<split>/images/<event>/<name>.jpg``, kept inside ``root``."""
    return resolve_in_root(root, f"WIDER_{split}/images/{ann.image_paths[i]}", where=ann.source)
