"""insightface's MXNet RecordIO training sets (``train.rec``, ``train.idx``, ``property``;
e.g. MS1MV2, Glint360K), read with a pure-Python implementation of dmlc's RecordIO
framing and MXNet's ``IRHeader`` -- no ``mxnet`` import.

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

import io
import os
import pathlib
import struct
from typing import BinaryIO, Iterable, Iterator, NamedTuple, Sequence

import numpy as np

__all__ = [
    "RECORDIO_MAGIC",
    "IRHeader",
    "pack_irheader",
    "unpack_irheader",
    "RecordIOReader",
    "write_recordio",
    "InsightFaceRecordDataset",
]

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
