"""CelebA in its original layout: annotation parsers (no TensorFlow) and a tfds builder.

The manual directory holds the files as the CelebA authors distribute them::

    <manual_dir>/
      img_align_celeba/000001.jpg ...   (or img_align_celeba.zip holding that folder)
      list_attr_celeba.txt              line 1: image count; line 2: the 40 attribute
                                        names; then "NNNNNN.jpg" and 40 values in {-1, 1}
      list_eval_partition.txt           "NNNNNN.jpg 0|1|2" (train / validation / test)
      list_landmarks_align_celeba.txt   optional; count, 10 coordinate names, then
                                        "NNNNNN.jpg" and 10 integers

The parsers (`parse_eval_partition`, `parse_attributes`, `parse_landmarks`) need only
NumPy, accept CRLF line ends (the released files have them) and raise `CelebAFormatError`
naming the file and 1-based line of the first malformed line. Image names must be plain
file names: anything that could leave ``img_align_celeba/`` (a separator, ``..``, an
absolute path) is an error. The builder (`CelebAManual`, registered as
``celeb_a_manual``) is defined only when `tensorflow_datasets` imports. It decodes
every image while building: a listed image that is missing, truncated or undecodable
is skipped and reported in ``skipped.json`` (`jaxface.data.tfds_base`), never silently
dropped; malformed annotation lines stay errors.

Build::

    tfds.builder("celeb_a_manual", data_dir=...).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir="/path/to/celeba"))
"""

from __future__ import annotations

import os
import re
import zipfile
from typing import NamedTuple, Optional

import numpy as np

__all__ = [
    "CELEBA_ATTRIBUTES",
    "CELEBA_LANDMARKS",
    "CelebAFormatError",
    "LabelTable",
    "SPLIT_IDS",
    "check_image_name",
    "load_manual_annotations",
    "parse_attributes",
    "parse_eval_partition",
    "parse_landmarks",
]

from jaxface.data.attribute_names import CELEBA_ATTRIBUTES  # noqa: E402

# The 10 coordinate names of `list_landmarks_align_celeba.txt`, line 2.
CELEBA_LANDMARKS = (
    "lefteye_x",
    "lefteye_y",
    "righteye_x",
    "righteye_y",
    "nose_x",
    "nose_y",
    "leftmouth_x",
    "leftmouth_y",
    "rightmouth_x",
    "rightmouth_y",
)
# Partition ids of `list_eval_partition.txt` and the tfds split names they become.
SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}

ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
LANDMARKS_FILE = "list_landmarks_align_celeba.txt"
IMAGE_DIR = "img_align_celeba"
IMAGE_ZIP = "img_align_celeba.zip"


class CelebAFormatError(ValueError):
    """A malformed CelebA annotation file; the message names the file and line."""

    def __init__(self, path, line: Optional[int], message: str):
        self.path = os.fspath(path)
        self.line = line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class LabelTable(NamedTuple):
    """A parsed header-and-rows CelebA file.

    Attributes:
      names: column names from line 2.
      images: ``N`` image file names, in file order.
      values: ``[N, len(names)]`` integer values (int8 for attributes, int32 landmarks).
      declared_count: the image count on line 1.
    """

    names: tuple
    images: tuple
    values: np.ndarray
    declared_count: int

    def index(self) -> dict:
        """``{image name: row}``."""
        return {name: i for i, name in enumerate(self.images)}


_BAD_NAME = re.compile(r"[/\\\x00]")


def check_image_name(name: str, path=None, line: Optional[int] = None) -> str:
    """Returns ``name`` when it is a plain file name that stays inside the image folder.

    Rejects empty names, ``.``/``..``, and names holding ``/``, ``\\``, ``:`` or NUL (which
    covers absolute paths and traversal on POSIX and Windows); raises
    `CelebAFormatError` naming ``path:line``.
    """
    if not name or name in (".", "..") or _BAD_NAME.search(name) or ":" in name:
        raise CelebAFormatError(
            path or "<image name>",
            line,
            f"image name {name!r} is not a plain file name inside {IMAGE_DIR}/",
        )
    return name


def _read_lines(path) -> list:
    """Lines of a text file without line ends (CRLF or LF), trailing blank lines dropped."""
    with open(path, "r", encoding="ascii", errors="strict", newline=None) as f:
        try:
            lines = f.read().split("\n")
        except UnicodeDecodeError as e:
            raise CelebAFormatError(path, None, f"not ASCII text ({e})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def parse_eval_partition(path) -> dict:
    """Parse ``list_eval_partition.txt``.

    Args:
      path: the file.

    Returns:
      ``{image name: partition id}`` (0 train, 1 validation, 2 test) in file order.

    Raises:
      CelebAFormatError: a line without exactly two fields, an unsafe image name, a
        partition id outside {0, 1, 2}, a repeated image, or an empty file.
    """
    out = {}
    for lineno, line in enumerate(_read_lines(path), start=1):
        fields = line.split()
        if len(fields) != 2:
            raise CelebAFormatError(
                path,
                lineno,
                f"expected 'image partition' (2 fields), got {len(fields)}: {line.strip()!r}",
            )
        name, part = fields
        check_image_name(name, path, lineno)
        if part not in ("0", "1", "2"):
            raise CelebAFormatError(
                path, lineno, f"partition of {name} must be 0, 1 or 2, got {part!r}"
            )
        if name in out:
            raise CelebAFormatError(path, lineno, f"image {name} listed twice")
        out[name] = int(part)
    if not out:
        raise CelebAFormatError(path, None, "no entry")
    return out


def _parse_table(path, *, expected_names, allowed, dtype, check_count: bool) -> LabelTable:
    lines = _read_lines(path)
    if len(lines) < 2:
        raise CelebAFormatError(
            path, len(lines) + 1, "expected an image count on line 1 and names on line 2"
        )
    try:
        declared = int(lines[0].strip())
    except ValueError:
        raise CelebAFormatError(
            path, 1, f"expected the image count, got {lines[0].strip()!r}"
        ) from None
    names = tuple(lines[1].split())
    if names != tuple(expected_names):
        raise CelebAFormatError(
            path,
            2,
            f"expected the {len(expected_names)} names "
            f"{' '.join(expected_names)!r}, got {len(names)}: {lines[1].strip()!r}",
        )
    ncol = len(names) + 1
    images, tokens = [], []
    seen = set()
    for lineno, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if len(fields) != ncol:
            raise CelebAFormatError(
                path,
                lineno,
                f"expected an image name and {ncol - 1} values, got {len(fields)} fields",
            )
        name = check_image_name(fields[0], path, lineno)
        if name in seen:
            raise CelebAFormatError(path, lineno, f"image {name} listed twice")
        seen.add(name)
        images.append(name)
        tokens.append(fields[1:])
    if check_count and declared != len(images):
        raise CelebAFormatError(
            path,
            1,
            f"declares {declared} images but lists {len(images)} "
            "(pass check_count=False for a deliberately truncated file)",
        )
    values = np.zeros((len(images), ncol - 1), np.int64)
    if images:
        try:
            values = np.asarray(tokens, dtype=np.int64)  # fast path: numpy parses ints
        except ValueError:
            for r, row in enumerate(tokens):  # slow path: find the first bad cell
                for c, tok in enumerate(row):
                    try:
                        int(tok)
                    except ValueError:
                        raise CelebAFormatError(
                            path,
                            r + 3,
                            f"{names[c]} of {images[r]} must be an integer, got {tok!r}",
                        ) from None
            raise
    if allowed is not None:
        bad = ~np.isin(values, allowed)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise CelebAFormatError(
                path,
                int(r) + 3,
                f"{names[c]} of {images[r]} must be one of {sorted(allowed)}, got {tokens[r][c]!r}",
            )
    return LabelTable(names, tuple(images), values.astype(dtype), declared)


def parse_attributes(path, *, check_count: bool = True) -> LabelTable:
    """Parse ``list_attr_celeba.txt``.

    Args:
      path: the file.
      check_count: require the count on line 1 to equal the number of rows (turn off for
        a truncated copy such as ``list_attr_celeba_first20000.txt``).

    Returns:
      `LabelTable` with ``names == CELEBA_ATTRIBUTES`` and int8 values in {-1, 1}.

    Raises:
      CelebAFormatError: naming the file and line of the first malformed line.
    """
    return _parse_table(
        path,
        expected_names=CELEBA_ATTRIBUTES,
        allowed=(-1, 1),
        dtype=np.int8,
        check_count=check_count,
    )


def parse_landmarks(path, *, check_count: bool = True) -> LabelTable:
    """Parse ``list_landmarks_align_celeba.txt`` (int32 pixel coordinates)."""
    return _parse_table(
        path, expected_names=CELEBA_LANDMARKS, allowed=None, dtype=np.int32, check_count=check_count
    )


class _ImageSource:
    """Reads image bytes by name from ``img_align_celeba/`` or ``img_align_celeba.zip``."""

    def __init__(self, manual_dir):
        self.dir = os.path.join(manual_dir, IMAGE_DIR)
        self.zip_path = os.path.join(manual_dir, IMAGE_ZIP)
        self._zip = None
        self._members = None
        if os.path.isdir(self.dir):
            self.kind = "dir"
        elif os.path.isfile(self.zip_path):
            self.kind = "zip"
        else:
            raise FileNotFoundError(
                f"{manual_dir}: neither {IMAGE_DIR}/ nor {IMAGE_ZIP} is present"
            )

    def open(self):
        if self.kind == "zip" and self._zip is None:
            self._zip = zipfile.ZipFile(self.zip_path)
            members = {}
            for info in self._zip.infolist():
                if info.is_dir():
                    continue
                parts = info.filename.split("/")
                # The original archive holds img_align_celeba/NNNNNN.jpg; accept a flat one.
                if (len(parts) == 2 and parts[0] == IMAGE_DIR) or len(parts) == 1:
                    members[parts[-1]] = info
            self._members = members
        return self

    def close(self):
        if self._zip is not None:
            self._zip.close()
            self._zip, self._members = None, None

    def exists(self, name: str) -> bool:
        if self.kind == "dir":
            return os.path.isfile(os.path.join(self.dir, name))
        return name in self._members

    def read(self, name: str) -> bytes:
        if self.kind == "dir":
            with open(os.path.join(self.dir, name), "rb") as f:
                return f.read()
        if name not in self._members:
            raise FileNotFoundError(f"{self.zip_path}: no member {IMAGE_DIR}/{name}")
        return self._zip.read(self._members[name])

    def where(self, name: str) -> str:
        return os.path.join(self.dir if self.kind == "dir" else self.zip_path, name)

    def describe(self) -> str:
        return self.dir + "/" if self.kind == "dir" else self.zip_path


def load_manual_annotations(manual_dir) -> dict:
    """Parse and cross-check the annotation files of a manual directory (no TF).

    Returns:
      dict with ``partition`` (``{image: split id}``), ``attributes`` (`LabelTable`) and
      ``landmarks`` (`LabelTable` or None when the optional file is absent).

    Raises:
      FileNotFoundError: a required file is missing.
      CelebAFormatError: malformed files, or an image of the partition list without
        attributes (or without landmarks when the landmark file is present).
    """
    manual_dir = os.fspath(manual_dir)
    for req in (ATTR_FILE, PARTITION_FILE):
        if not os.path.isfile(os.path.join(manual_dir, req)):
            raise FileNotFoundError(f"{manual_dir}: required CelebA file {req} is missing")
    partition_path = os.path.join(manual_dir, PARTITION_FILE)
    partition = parse_eval_partition(partition_path)
    attributes = parse_attributes(os.path.join(manual_dir, ATTR_FILE))
    lm_path = os.path.join(manual_dir, LANDMARKS_FILE)
    landmarks = parse_landmarks(lm_path) if os.path.isfile(lm_path) else None
    for table, fname in ((attributes, ATTR_FILE), (landmarks, LANDMARKS_FILE)):
        if table is None:
            continue
        listed = set(table.images)
        for lineno, name in enumerate(partition, start=1):
            if name not in listed:
                raise CelebAFormatError(
                    partition_path, lineno, f"image {name} has no entry in {fname}"
                )
    return {"partition": partition, "attributes": attributes, "landmarks": landmarks}


try:  # The builder needs tensorflow_datasets; the parsers above do not.
    import tensorflow_datasets as tfds
    from jaxface.data import tfds_base
except ImportError:  # pragma: no cover - exercised only without tfds installed
    tfds = None

if tfds is not None:

    class CelebAManual(tfds_base.Builder):
        """CelebA (aligned & cropped) with 40 attributes, built from the original files.

        Features:
          image: the aligned JPEG (218 x 178 x 3 in the release), stored as is.
          image/filename: e.g. ``000001.jpg``.
          attributes: bool ``[40]``, order `CELEBA_ATTRIBUTES` (True for +1).
          landmarks: int64 ``[10]``, order `CELEBA_LANDMARKS`; all ``-1`` when the
            optional landmark file is absent (``has_landmarks`` False).
          has_landmarks: bool.

        Splits follow ``list_eval_partition.txt``: train (0), validation (1), test (2),
        examples in file-name order.
        """

        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "Original CelebA layout read from a manual directory."}
        MANUAL_DOWNLOAD_INSTRUCTIONS = (
            "Download CelebA from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html and "
            f"place in the manual directory: {IMAGE_DIR}/ (or {IMAGE_ZIP}), {ATTR_FILE}, "
            f"{PARTITION_FILE} and optionally {LANDMARKS_FILE}."
        )

        def _info(self):
            return self.dataset_info_from_configs(
                description=(
                    "CelebA aligned faces with 40 binary attributes in the order of "
                    f"list_attr_celeba.txt: {', '.join(CELEBA_ATTRIBUTES)}."
                ),
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                        "image/filename": tfds.features.Text(),
                        "attributes": tfds.features.Tensor(
                            shape=(len(CELEBA_ATTRIBUTES),), dtype=np.bool_
                        ),
                        "landmarks": tfds.features.Tensor(
                            shape=(len(CELEBA_LANDMARKS),), dtype=np.int64
                        ),
                        "has_landmarks": tfds.features.Scalar(dtype=np.bool_),
                    }
                ),
                homepage="https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html",
            )

        def _split_generators(self, dl_manager):
            manual_dir = os.fspath(dl_manager.manual_dir)
            ann = load_manual_annotations(manual_dir)
            _ImageSource(manual_dir)  # fails early when neither the folder nor the zip exists
            return {
                split: self._generate_examples(manual_dir, ann, split, split_id)
                for split, split_id in SPLIT_IDS.items()
            }

        def _generate_examples(self, manual_dir, ann, split, split_id):
            """A missing, truncated or undecodable image is skipped and reported
            (`tfds_base.Builder.read_or_skip`, ``skipped.json``); the build goes on."""
            attrs, lms = ann["attributes"], ann["landmarks"]
            attr_row = attrs.index()
            lm_row = lms.index() if lms is not None else None
            names = sorted(n for n, s in ann["partition"].items() if s == split_id)
            source = _ImageSource(manual_dir).open()

            def make(name):
                data = source.read(name)
                tfds_base.check_image(data, what=source.where(name))
                if lms is not None:
                    landmarks = lms.values[lm_row[name]].astype(np.int64)
                else:
                    landmarks = np.full((len(CELEBA_LANDMARKS),), -1, np.int64)
                return {
                    "image": data,
                    "image/filename": name,
                    "attributes": attrs.values[attr_row[name]] > 0,
                    "landmarks": landmarks,
                    "has_landmarks": lms is not None,
                }

            try:
                for name in names:
                    ex = self.read_or_skip(split, name, source.where(name), lambda: make(name))
                    if ex is not None:
                        yield name, ex
            finally:
                source.close()

    __all__ += ["CelebAManual"]
