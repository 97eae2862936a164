"""Face-recognition data in its original layouts, read without TensorFlow or MXNet.

- Identity folders: ``root/<identity>/<image>`` (CASIA-WebFace, VGGFace2, a private set).
- insightface's MXNet RecordIO training sets (``train.rec``, ``train.idx``, ``property``):
  `jaxface.data.recordio`, whose names this module re-exports.
- insightface's verification ``.bin`` files (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``):
  a pickle of ``(list of JPEG bytes, issame list)``, loaded with a restricted unpickler
  that only builds bytes, lists, tuples, booleans and NumPy arrays of plain dtypes.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pathlib
import pickle
from typing import Sequence

import numpy as np

from jaxface.data.recordio import (
    RECORDIO_MAGIC,
    InsightFaceRecordDataset,
    IRHeader,
    RecordIOReader,
    pack_irheader,
    unpack_irheader,
    write_recordio,
)

__all__ = [
    "IdentityFolder",
    "list_identity_folder",
    "RECORDIO_MAGIC",
    "IRHeader",
    "pack_irheader",
    "unpack_irheader",
    "RecordIOReader",
    "write_recordio",
    "InsightFaceRecordDataset",
    "load_verification_bin",
    "IMAGE_EXTENSIONS",
]

# The image files jaxface reads from folders (identity folders, detection inputs), one list.
IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".webp",
    ".ppm",
    ".pgm",
    ".tif",
    ".tiff",
)


# --------------------------------------------------------------------------- identity folders


@dataclasses.dataclass(frozen=True)
class IdentityFolder:
    """``paths[i]`` has identity ``labels[i]``, named ``names[labels[i]]`` (sorted folder names)."""

    root: pathlib.Path
    paths: list[pathlib.Path]
    labels: np.ndarray
    names: list[str]

    def __len__(self) -> int:
        return len(self.paths)


def list_identity_folder(
    root: str | os.PathLike, *, extensions: Sequence[str] = IMAGE_EXTENSIONS, min_images: int = 1
) -> IdentityFolder:
    """List ``root/<identity>/<image>``; identities sorted by name get labels 0, 1, ...

    Files with other extensions (case-insensitive) are ignored; hidden entries too.
    Identities with fewer than ``min_images`` images are dropped (label numbering stays
    dense over the kept ones). Raises if ``root`` is missing or holds no image.
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root}: identity-folder root not found (expected root/<identity>/<image>)"
        )
    exts = tuple(e.lower() for e in extensions)
    names, paths, labels = [], [], []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        imgs = sorted(
            f
            for f in d.iterdir()
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in exts
        )
        if len(imgs) < max(min_images, 1):
            continue
        label = len(names)
        names.append(d.name)
        paths.extend(imgs)
        labels.extend([label] * len(imgs))
    if not paths:
        raise ValueError(f"{root}: no images with extensions {exts} in any identity sub-folder")
    return IdentityFolder(root, paths, np.array(labels, np.int64), names)


# --------------------------------------------------------------------------- verification .bin


def _safe_dtype_factory(path):
    def make_dtype(*args, **kwargs):
        dt = np.dtype(*args, **kwargs)
        if dt.hasobject:
            raise pickle.UnpicklingError(
                f"{path}: refused: NumPy object dtype (could run arbitrary code)"
            )
        return dt

    return make_dtype


def _safe_reconstruct_factory(path, budget, ndarray_global):
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # NumPy < 2
        from numpy.core.multiarray import _reconstruct

    def reconstruct(subtype, shape, typecode):
        # The pickle names the class through the ``numpy.ndarray`` global, which resolves
        # to the checked constructor below.
        if subtype is not np.ndarray and subtype is not ndarray_global:
            raise pickle.UnpicklingError(f"{path}: refused: array subtype {subtype!r}")
        try:
            dt = np.dtype(typecode.decode() if isinstance(typecode, bytes) else typecode)
        except (TypeError, ValueError, UnicodeDecodeError):
            raise pickle.UnpicklingError(f"{path}: refused: array typecode {typecode!r}") from None
        budget.take(shape, dt)
        return _reconstruct(np.ndarray, shape, typecode)

    return reconstruct


def _safe_frombuffer_factory(path):
    def frombuffer(buf, dtype, shape, order):
        dt = np.dtype(dtype)
        if dt.hasobject:
            raise pickle.UnpicklingError(f"{path}: refused: NumPy object dtype")
        return np.frombuffer(buf, dtype=dt).reshape(shape, order=order)

    return frombuffer


def _safe_codecs_encode_factory(path):
    # Python 3 pickles ``bytes`` at protocols 0-2 as ``_codecs.encode(text, "latin1")``.
    import codecs

    def encode(obj, encoding="utf-8", errors="strict"):
        if (
            not isinstance(obj, str)
            or codecs.lookup(encoding).name != "iso8859-1"
            or errors != "strict"
        ):
            raise pickle.UnpicklingError(
                f"{path}: refused: _codecs.encode other than a latin-1 text -> bytes"
            )
        return obj.encode("latin-1")

    return encode


class _Budget:
    """Bytes the arrays of one pickle may allocate: at most the file's size, since every
    byte of a real array comes from the file (a header cannot declare more)."""

    def __init__(self, path, limit: int):
        self.path, self.limit, self.used = path, int(limit), 0

    def take(self, shape, dtype) -> None:
        dt = np.dtype(dtype)
        try:
            dims = [int(d) for d in (shape if isinstance(shape, (tuple, list)) else (shape,))]
        except (TypeError, ValueError):
            raise pickle.UnpicklingError(f"{self.path}: refused: array shape {shape!r}") from None
        if any(d < 0 for d in dims):
            raise pickle.UnpicklingError(f"{self.path}: refused: negative array shape {dims}")
        nbytes = int(np.prod(dims, dtype=object)) * dt.itemsize
        if self.used + nbytes > self.limit:
            raise pickle.UnpicklingError(
                f"{self.path}: refused: an array of shape {tuple(dims)} {dt} ({nbytes} bytes) "
                f"exceeds what a {self.limit}-byte file can hold"
            )
        self.used += nbytes


def _safe_ndarray_factory(path, budget: _Budget):
    def ndarray(shape, dtype=float, *args, **kwargs):
        dt = _safe_dtype_factory(path)(dtype)
        budget.take(shape, dt)
        return np.ndarray(shape, dt, *args, **kwargs)

    return ndarray


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds only bytes/str/lists/tuples/bools/numbers (pickle opcodes, no globals), plain
    NumPy arrays (the globals NumPy's pickles need, wrapped to refuse object dtypes and
    array subclasses) and latin-1 ``_codecs.encode`` (Python 3 bytes at protocol <= 2).
    Every other global -- ``os.system``, ``builtins.eval``, any
    class -- is refused before it is resolved, so nothing runs."""

    def __init__(self, file, path, *, budget: int, **kwargs):
        super().__init__(file, **kwargs)
        self._path = path
        b = _Budget(path, budget)
        ndarray = _safe_ndarray_factory(path, b)
        self._allowed = {
            ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct_factory(path, b, ndarray),
            ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct_factory(path, b, ndarray),
            ("numpy", "ndarray"): ndarray,
            ("numpy", "dtype"): _safe_dtype_factory(path),
            ("numpy.core.numeric", "_frombuffer"): _safe_frombuffer_factory(path),
            ("numpy._core.numeric", "_frombuffer"): _safe_frombuffer_factory(path),
            ("_codecs", "encode"): _safe_codecs_encode_factory(path),
        }

    def find_class(self, module, name):
        fn = self._allowed.get((module, name))
        if fn is None:
            raise pickle.UnpicklingError(
                f"{self._path}: refused to load global '{module}.{name}': a verification .bin may only "
                "hold bytes, lists, tuples, booleans and NumPy arrays"
            )
        return fn

    def persistent_load(self, pid):
        raise pickle.UnpicklingError(f"{self._path}: refused: persistent id {pid!r}")


# The largest verification .bin accepted (insightface's are 50-500 MB).
MAX_BIN_BYTES = 4 << 30


def load_verification_bin(path: str | os.PathLike) -> tuple[list[bytes], np.ndarray]:
    """Load an insightface verification ``.bin``: ``(images, issame)``.

    ``images`` is a list of ``2 * P`` encoded images (pair ``p`` = images ``2p`` and
    ``2p + 1``); ``issame`` a bool array ``[P]``. The files were written by Python 2
    (``pickle.load(f, encoding="bytes")`` is how insightface reads them) or Python 3;
    both load here. Anything but bytes, lists, tuples, booleans and plain NumPy arrays
    is refused with a ``pickle.UnpicklingError`` naming the file; a well-formed pickle of
    the wrong structure raises ``ValueError`` naming the file.
    """
    path = pathlib.Path(path)
    size = os.path.getsize(path)
    if size > MAX_BIN_BYTES:
        raise ValueError(
            f"{path}: {size} bytes, more than a verification .bin may have ({MAX_BIN_BYTES})"
        )
    with open(path, "rb") as f:
        data = f.read()
    try:
        obj = _RestrictedUnpickler(
            io.BytesIO(data), path, budget=len(data), encoding="bytes"
        ).load()
    except pickle.UnpicklingError as e:
        if str(e).startswith(str(path)):
            raise
        raise pickle.UnpicklingError(f"{path}: {e}") from None
    except Exception as e:  # truncated / corrupt pickles
        raise ValueError(
            f"{path}: not a readable verification pickle ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise ValueError(f"{path}: expected a pair (images, issame), got {type(obj).__name__}")
    bins, issame = obj
    if isinstance(bins, np.ndarray) and bins.dtype == np.uint8 and bins.ndim == 2:
        bins = list(bins)
    if not isinstance(bins, (list, tuple)):
        raise ValueError(
            f"{path}: images: expected a list of encoded images, got {type(bins).__name__}"
        )
    # Shared references and sizes are checked before any image is copied: a pickle can
    # name one object many times (a memo reference costs two bytes), and every copy
    # below would be a new allocation.
    first_seen: dict[int, int] = {}
    total = 0
    for k, b in enumerate(bins):
        if id(b) in first_seen:
            raise ValueError(
                f"{path}: images[{k}] is the same object as images[{first_seen[id(b)]}] "
                "(a shared reference); refused"
            )
        first_seen[id(b)] = k
        total += (
            b.nbytes
            if isinstance(b, np.ndarray)
            else len(b)
            if isinstance(b, (bytes, bytearray))
            else 0
        )
    if total > len(data):
        raise ValueError(
            f"{path}: its images hold {total} bytes, more than the file's {len(data)}; refused"
        )
    images = []
    for k, b in enumerate(bins):
        if isinstance(b, (bytes, bytearray)):
            images.append(bytes(b))
        elif isinstance(b, np.ndarray) and b.dtype == np.uint8 and b.ndim == 1:
            images.append(b.tobytes())
        else:
            raise ValueError(
                f"{path}: images[{k}]: expected bytes or a uint8 array, got {type(b).__name__}"
            )
    if isinstance(issame, np.ndarray):
        if issame.dtype != bool and not (
            np.issubdtype(issame.dtype, np.integer) and np.isin(issame, (0, 1)).all()
        ):
            raise ValueError(f"{path}: issame: expected booleans, got dtype {issame.dtype}")
        same = issame.astype(bool).ravel()
    elif isinstance(issame, (list, tuple)):
        if not all(isinstance(v, (bool, np.bool_)) for v in issame):
            bad = next(k for k, v in enumerate(issame) if not isinstance(v, (bool, np.bool_)))
            raise ValueError(
                f"{path}: issame[{bad}]: expected a boolean, got {type(issame[bad]).__name__}"
            )
        same = np.array(issame, bool)
    else:
        raise ValueError(
            f"{path}: issame: expected a list or array of booleans, got {type(issame).__name__}"
        )
    if len(images) != 2 * len(same):
        raise ValueError(
            f"{path}: {len(images)} images for {len(same)} pairs (expected {2 * len(same)})"
        )
    return images, same
