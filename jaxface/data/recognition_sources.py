"""Random-access sources of the recognition task and its evaluators.

Training data: `InsightFaceSource` (insightface RecordIO), `IdentityFolderSource`
(``root/<identity>/<image>``). Verification sets:
`ImageListSource` (images as paths or bytes), `lfw_pairs_source` (LFW View 2's
``pairs.txt``), `bin_pairs_source` (insightface ``.bin``).
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Sequence

import numpy as np

from jaxface.data import protocol_files, recognition_formats
from jaxface.data.images import read_image

__all__ = [
    "InsightFaceSource",
    "IdentityFolderSource",
    "ImageListSource",
    "lfw_pairs_source",
    "bin_pairs_source",
]


def _load_yaw(yaw_file: str, n: int, root) -> np.ndarray | None:
    """The per-image yaw array (``.npy``, degrees, the source's order) or None."""
    if not yaw_file:
        return None
    yaw = np.load(yaw_file, mmap_mode="r", allow_pickle=False)
    if yaw.shape != (n,):
        raise ValueError(
            f"config.data.yaw_file={yaw_file!r}: shape {yaw.shape}, expected ({n},) "
            f"(one yaw per image of {root})"
        )
    return yaw


class InsightFaceSource:
    """Random access over insightface's RecordIO (``train.rec/.idx/property`` in a folder):
    examples ``{"image": uint8 [H, W, 3], "label"}`` (JPEG decoded with PIL), plus ``yaw``
    from ``yaw_file`` (a ``.npy`` of one yaw in degrees per image, RecordIO order) if given."""

    def __init__(self, root, yaw_file: str = ""):
        self.ds = recognition_formats.InsightFaceRecordDataset(root)
        self.yaw = _load_yaw(yaw_file, len(self.ds), root)

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        data, label = self.ds[int(i)]
        image = read_image(data, name=f"{self.ds.reader.path} image {int(i)}")
        ex = {"image": image, "label": np.int64(label)}
        if self.yaw is not None:
            ex["yaw"] = np.float32(self.yaw[int(i)])
        return ex


class IdentityFolderSource:
    """Random access over ``root/<identity>/<image>`` (`jaxface.data.recognition_formats.
    list_identity_folder`: identities sorted by folder name are labels 0, 1, ...), with
    ``yaw`` from ``yaw_file`` (one per image, in the listing's order) if given."""

    def __init__(self, root, yaw_file: str = "", min_images: int = 1):
        self.folder = recognition_formats.list_identity_folder(root, min_images=min_images)
        self.yaw = _load_yaw(yaw_file, len(self.folder), root)

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, i):
        i = int(i)
        ex = {"image": read_image(self.folder.paths[i]), "label": self.folder.labels[i]}
        if self.yaw is not None:
            ex["yaw"] = np.float32(self.yaw[i])
        return ex

    def light_metadata(self) -> dict[str, np.ndarray]:
        """Labels (and yaw) without decoding an image."""
        meta = {"label": self.folder.labels.copy()}
        if self.yaw is not None:
            meta["yaw"] = np.asarray(self.yaw, np.float32)
        return meta


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
    pairs = protocol_files.parse_lfw_pairs(pairs_file)
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
