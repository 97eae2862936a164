"""Face-recognition data in its original layouts, read without TensorFlow or MXNet.

- Identity folders: ``root/<identity>/<image>`` (CASIA-WebFace, VGGFace2, a private set).
- insightface's MXNet RecordIO training sets (``train.rec``, ``train.idx``, ``property``),
  read with a pure-Python implementation of dmlc's RecordIO framing and MXNet's
  ``IRHeader`` -- no ``mxnet`` import.
- insightface's verification ``.bin`` files (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``):
  a pickle of ``(list of JPEG bytes, issame list)``, loaded with a restricted unpickler
  that only builds bytes, lists, tuples, booleans and NumPy arrays of plain dtypes.

Formats
    RecordIO (dmlc-core ``recordio.h``): each record is ``uint32 magic = 0xced7230a``,
    ``uint32 lrecord`` (upper 3 bits ``cflag``, lower 29 bits the length), the payload,
    zero padding to a multiple of 4. A payload containing the magic word at a 4-aligned
    offset is split there into parts (``cflag`` 1 = first, 2 = middle, 3 = last; 0 = whole
    record) and the reader re-inserts the magic between parts.
    ``.idx``: text lines ``<key>\\t<byte offset>``.
    IRHeader (MXNet ``recordio.py``): ``struct "IfQQ"`` = ``flag`` (uint32), ``label``
    (float32), ``id``, ``id2`` (uint64), 24 bytes, little-endian; when ``flag > 0``,
    ``flag`` float32 labels follow and ``label`` is ignored; then the image bytes.
    insightface: record 0 is a header whose ``label[0]`` is one past the last image key
    (images are keys ``1 .. label[0] - 1``) and ``label[1]`` the first identity-record key;
    ``property`` holds ``num_classes,height,width``.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pathlib
import pickle
import struct
from typing import BinaryIO, Iterable, Iterator, NamedTuple, Sequence

import numpy as np

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


# --------------------------------------------------------------------------- RecordIO

MAX_IMAGE_SIDE = 65535  # pixels per side a ``property`` file may declare

RECORDIO_MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", RECORDIO_MAGIC)
_IR_FORMAT = "<IfQQ"
_IR_SIZE = struct.calcsize(_IR_FORMAT)  # 24


class IRHeader(NamedTuple):
    flag: int
    label: float | np.ndarray
    id: int
    id2: int


def pack_irheader(
    label: float | Sequence[float] | np.ndarray, payload: bytes, *, id: int = 0, id2: int = 0
) -> bytes:
    """MXNet ``recordio.pack``: a scalar label -> ``flag = 0``; an array label -> ``flag = len``
    and the float32 labels after the header."""
    if np.ndim(label) == 0:
        return struct.pack(_IR_FORMAT, 0, float(label), id, id2) + bytes(payload)
    lab = np.asarray(label, np.float32).ravel()
    return (
        struct.pack(_IR_FORMAT, lab.size, 0.0, id, id2)
        + lab.astype("<f4").tobytes()
        + bytes(payload)
    )


def unpack_irheader(record: bytes, *, where: str = "record") -> tuple[IRHeader, bytes]:
    """MXNet ``recordio.unpack``: ``(IRHeader, payload)``; with ``flag > 0`` the header's label
    is the float32 array of ``flag`` values."""
    if len(record) < _IR_SIZE:
        raise ValueError(f"{where}: {len(record)} bytes, shorter than the 24-byte IRHeader")
    flag, label, id_, id2 = struct.unpack_from(_IR_FORMAT, record)
    rest = record[_IR_SIZE:]
    if flag > 0:
        if len(rest) < 4 * flag:
            raise ValueError(
                f"{where}: IRHeader flag={flag} announces {flag} labels, only {len(rest)} bytes follow"
            )
        label = np.frombuffer(rest, "<f4", flag).astype(np.float32)
        rest = rest[4 * flag :]
    return IRHeader(flag, label, id_, id2), rest


class RecordIOReader:
    """Read a dmlc/MXNet RecordIO file, sequentially or by key through its ``.idx``.

    ``RecordIOReader(rec_path, idx_path=None)``; ``keys``; ``read_idx(key) -> bytes``;
    iteration yields every record's bytes in file order. Use as a context manager or
    call `close`.
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None):
        self.path = pathlib.Path(rec_path)
        self._f: BinaryIO = open(self.path, "rb")
        self._size = os.fstat(self._f.fileno()).st_size
        self.index: dict[int, int] = {}
        if idx_path is not None:
            idx_path = pathlib.Path(idx_path)
            with open(idx_path, encoding="ascii") as f:
                for lineno, ln in enumerate(f, 1):
                    if not ln.strip():
                        continue
                    tok = ln.split()
                    if len(tok) != 2:
                        raise ValueError(
                            f"{idx_path}:{lineno}: expected '<key>\\t<offset>', got {ln.rstrip()!r}"
                        )
                    try:
                        key, off = int(tok[0]), int(tok[1])
                    except ValueError:
                        raise ValueError(
                            f"{idx_path}:{lineno}: key and offset must be integers, got {ln.rstrip()!r}"
                        ) from None
                    if not 0 <= off < self._size:
                        raise ValueError(
                            f"{idx_path}:{lineno}: offset {off} outside {self.path} ({self._size} bytes)"
                        )
                    self.index[key] = off

    @property
    def keys(self) -> list[int]:
        return list(self.index)

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _read_at(self, offset: int) -> tuple[bytes, int]:
        """Record starting at ``offset``; returns (payload, next offset)."""
        f = self._f
        f.seek(offset)
        parts: list[bytes] = []
        pos = offset
        while True:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError(f"{self.path}: offset {pos}: truncated record header")
            magic, lrec = struct.unpack("<II", head)
            if magic != RECORDIO_MAGIC:
                raise ValueError(
                    f"{self.path}: offset {pos}: bad magic 0x{magic:08x}, expected 0x{RECORDIO_MAGIC:08x}"
                )
            cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
            if parts and cflag not in (2, 3):
                raise ValueError(
                    f"{self.path}: offset {pos}: continuation part expected (cflag 2/3), got {cflag}"
                )
            if not parts and cflag not in (0, 1):
                raise ValueError(
                    f"{self.path}: offset {pos}: record start expected (cflag 0/1), got {cflag}"
                )
            if pos + 8 + length > self._size:  # checked before the read allocates
                raise ValueError(
                    f"{self.path}: offset {pos}: record of {length} bytes truncated at end of file "
                    f"({self._size} bytes)"
                )
            data = f.read(length)
            if len(data) < length:
                raise ValueError(
                    f"{self.path}: offset {pos}: record of {length} bytes truncated at end of file"
                )
            f.seek((-length) % 4, os.SEEK_CUR)
            parts.append(data)
            pos = pos + 8 + length + ((-length) % 4)
            if cflag in (0, 3):
                return _MAGIC_BYTES.join(parts), pos

    def read_idx(self, key: int) -> bytes:
        if key not in self.index:
            raise KeyError(f"{self.path}: key {key} not in the index")
        return self._read_at(self.index[key])[0]

    def __iter__(self) -> Iterator[bytes]:
        pos = 0
        while pos < self._size:
            rec, pos = self._read_at(pos)
            yield rec


def _frame(payload: bytes) -> bytes:
    """dmlc ``RecordIOWriter::WriteRecord``: split at 4-aligned magic words."""
    out = io.BytesIO()
    n = len(payload)
    dptr = 0
    for i in range(0, n - n % 4, 4):
        if payload[i : i + 4] == _MAGIC_BYTES:
            part = payload[dptr:i]
            out.write(
                struct.pack("<II", RECORDIO_MAGIC, ((1 if dptr == 0 else 2) << 29) | len(part))
            )
            out.write(part + b"\0" * ((-len(part)) % 4))
            dptr = i + 4
    part = payload[dptr:]
    out.write(struct.pack("<II", RECORDIO_MAGIC, ((3 if dptr else 0) << 29) | len(part)))
    out.write(part + b"\0" * ((-len(part)) % 4))
    return out.getvalue()


def write_recordio(
    rec_path: str | os.PathLike,
    idx_path: str | os.PathLike | None,
    records: Iterable[tuple[int, bytes]],
) -> None:
    """Write ``(key, payload)`` records as MXNet's ``MXIndexedRecordIO`` does (for tests and
    small exports). Payloads are framed by dmlc's rules, including magic-word splitting."""
    index_lines = []
    with open(rec_path, "wb") as f:
        for key, payload in records:
            if len(payload) >= 1 << 29:
                raise ValueError(
                    f"record {key}: {len(payload)} bytes exceeds RecordIO's 2^29 limit"
                )
            index_lines.append(f"{int(key)}\t{f.tell()}\n")
            f.write(_frame(bytes(payload)))
    if idx_path is not None:
        with open(idx_path, "w", encoding="ascii") as f:
            f.writelines(index_lines)


class InsightFaceRecordDataset:
    """insightface's ``train.rec`` / ``train.idx`` / ``property`` (e.g. MS1MV2, Glint360K).

    ``len(ds)``; ``ds[i] -> (image_bytes, label)`` for the i-th image (encoded JPEG, decode
    with PIL); ``ds.num_classes``, ``ds.image_size`` (H, W) from ``property``; ``ds.labels()``
    reads every header (one pass over the file).
    """

    def __init__(self, root: str | os.PathLike, *, name: str = "train"):
        self.root = pathlib.Path(root)
        rec, idx = self.root / f"{name}.rec", self.root / f"{name}.idx"
        for p in (rec, idx):
            if not p.is_file():
                raise FileNotFoundError(f"{p}: insightface RecordIO file not found")
        self.num_classes, self.image_size = None, None
        prop = self.root / "property"
        if prop.is_file():
            text = prop.read_text().strip()
            tok = text.split(",")
            if len(tok) != 3:
                raise ValueError(f"{prop}:1: expected 'num_classes,height,width', got {text!r}")
            try:
                self.num_classes, h, w = (int(t) for t in tok)
            except ValueError:
                raise ValueError(f"{prop}:1: expected three integers, got {text!r}") from None
            if not (0 < h <= MAX_IMAGE_SIDE and 0 < w <= MAX_IMAGE_SIDE):
                raise ValueError(
                    f"{prop}:1: image size {h}x{w} outside 1..{MAX_IMAGE_SIDE} pixels per side"
                )
            self.image_size = (h, w)
        self.reader = RecordIOReader(rec, idx)
        if 0 not in self.reader.index:
            raise ValueError(f"{idx}: no key 0 (the insightface header record)")
        header, _ = unpack_irheader(self.reader.read_idx(0), where=f"{rec} key 0")
        if header.flag > 0:
            # Bounded by the index before anything is sized from it: every image key must
            # be indexed, so there are at most len(index) - 1 of them.
            end = float(header.label[0])
            if not (np.isfinite(end) and end == int(end) and 1 <= end <= len(self.reader.index)):
                raise ValueError(
                    f"{rec} key 0: the header announces images 1..{end:g} - 1, but {idx} indexes "
                    f"{len(self.reader.index)} records"
                )
            second = float(header.label[1]) if header.flag > 1 else None
            if second is not None and not np.isfinite(second):
                raise ValueError(f"{rec} key 0: non-finite identity-record key {second}")
            self.header0 = (int(end), int(second) if second is not None else None)
            self.image_keys = np.arange(1, int(end))
        else:  # a plain indexed RecordIO: every key is an image
            self.header0 = None
            self.image_keys = np.array(sorted(self.reader.index))
        missing = [
            int(k)
            for k in self.image_keys[:1].tolist() + self.image_keys[-1:].tolist()
            if k not in self.reader.index
        ]
        if missing:
            raise ValueError(
                f"{idx}: image keys {missing} announced by the header record are not indexed"
            )
        if self.num_classes is not None and not 0 < self.num_classes <= max(len(self), 1):
            raise ValueError(
                f"{prop}:1: {self.num_classes} classes for {len(self)} images (expected "
                f"1..{len(self)}: every class has an image)"
            )

    def __len__(self) -> int:
        return len(self.image_keys)

    def __getitem__(self, i: int) -> tuple[bytes, int]:
        key = int(self.image_keys[i])
        header, img = unpack_irheader(
            self.reader.read_idx(key), where=f"{self.reader.path} key {key}"
        )
        label = header.label if np.ndim(header.label) == 0 else header.label[0]
        return img, int(label)

    def labels(self) -> np.ndarray:
        return np.array([self[i][1] for i in range(len(self))], np.int64)

    def close(self) -> None:
        self.reader.close()


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
