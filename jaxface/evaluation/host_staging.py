"""Host galleries onto a CPU device without jax's copy: the staging layer of
`jaxface.evaluation.identification.search_top_k`.

`HostStager` double-buffers 64-byte-aligned host arrays that XLA:CPU reads in place
(``jnp.from_dlpack``); `in_place_source` says whether a gallery can be read in place as
it is (a float32, C-contiguous, aligned array such as a ``.npy`` mapping);
`fill_rows` / `take_rows` fill a staging buffer (a chunk of rows; a gather, threaded).

What it buys, from the two ``search`` rows of ``benchmarks/run.py`` (1,000 queries over a
1,000,000 x 512 gallery, top-30, 2-core AMD EPYC, four alternated runs): the gallery
read in place from a ``.npy`` memory map took 5.77-5.99 s, the same gallery copied chunk
by chunk into the staging buffers 5.92-6.13 s, i.e. about 3 % (median ratio to faiss
1.025x vs 0.995x); the search reads the chunks on the matmul's critical path, so every
copy it avoids is time off the search.
"""

from __future__ import annotations

import functools
import mmap
import os

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["aligned_empty", "HostStager", "in_place_source", "fill_rows", "take_rows"]


def aligned_empty(shape, dtype=np.float32, align: int = 64) -> np.ndarray:
    """An uninitialised host array whose data starts on an ``align``-byte boundary."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(n + align, np.uint8)
    off = (-raw.ctypes.data) % align
    return raw[off : off + n].view(dtype).reshape(shape)


class HostStager:
    """Host arrays onto a CPU device without jax's host->device copy (60-110 ms for 128 MB on
    a 2-core x86 CPU, against ~11 ms for NumPy): NumPy fills (and casts to float32) one of
    two 64-byte-aligned staging buffers, which XLA:CPU then reads in place
    (``jnp.from_dlpack``, zero copy). A buffer is refilled only after the step that read it
    has finished, so memory stays two buffers."""

    def __init__(self, shape: tuple[int, ...]):
        self.bufs = [aligned_empty(shape) for _ in range(2)]
        self.pending = [None, None]
        self.turn = 0

    def put(self, fill) -> tuple[int, jax.Array]:
        """``fill(buffer)`` writes the next input; returns its slot and the device view."""
        i, self.turn = self.turn, 1 - self.turn
        if self.pending[i] is not None:
            jax.block_until_ready(self.pending[i])
        fill(self.bufs[i])
        return i, jnp.from_dlpack(self.bufs[i])

    def used_by(self, i: int, result):
        self.pending[i] = result


def in_place_source(gallery) -> np.ndarray | None:
    """``gallery`` as a host array XLA:CPU can read chunks of in place, or None (then chunks
    are staged). It must be float32, C-contiguous and 64-byte aligned (chunks start at
    multiples of 128 rows, so they stay aligned), and writable: jax's DLPack import refuses
    read-only arrays, so a read-only ``np.load(path, mmap_mode="r")`` mapping is mapped again
    copy-on-write -- the same page cache, nothing copied (XLA never writes its inputs).
    ``.npy`` files put their data at a multiple of 64 bytes, so their mappings qualify;
    NumPy's own allocations usually sit 16 bytes off and are staged."""
    if not isinstance(gallery, np.ndarray) or gallery.dtype != np.float32:
        return None
    if not gallery.flags.c_contiguous:
        return None
    if not gallery.flags.writeable:
        # Only a whole-file mapping (not a view of one) has a trustworthy offset.
        if not (isinstance(gallery, np.memmap) and isinstance(gallery.base, mmap.mmap)):
            return None
        gallery = np.memmap(
            gallery.filename,
            dtype=gallery.dtype,
            mode="c",
            offset=gallery.offset,
            shape=gallery.shape,
        )
    return gallery if gallery.ctypes.data % 64 == 0 else None


def fill_rows(buf: np.ndarray, rows: np.ndarray, upto: int) -> None:
    """Copy ``rows`` into the head of ``buf`` and zero it up to row ``upto`` (finite padding;
    a step reads no sub-block past the last valid row)."""
    n = rows.shape[0]
    np.copyto(buf[:n], rows, casting="same_kind")
    buf[n:upto] = 0.0


def take_rows(buf: np.ndarray, gallery, ids: np.ndarray) -> None:
    """``buf[...] = gallery[ids]`` (ids in range). A float32 ndarray is gathered without a
    temporary, split over up to `_GATHER_THREADS` threads (NumPy's take releases the GIL;
    one thread reaches ~3.5 GB/s here, two ~6 GB/s)."""
    if not (isinstance(gallery, np.ndarray) and gallery.dtype == buf.dtype):
        np.copyto(buf, np.take(gallery, ids, axis=0), casting="same_kind")
        return
    cuts = np.linspace(0, len(ids), min(_GATHER_THREADS, len(ids)) + 1).astype(int)

    def take(sl):
        np.take(gallery, ids[sl], axis=0, out=buf[sl], mode="clip")  # "clip": unbuffered

    list(_gather_pool().map(take, [slice(a, b) for a, b in zip(cuts[:-1], cuts[1:])]))


_GATHER_THREADS = min(4, os.cpu_count() or 1)


@functools.lru_cache(maxsize=1)
def _gather_pool():
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(_GATHER_THREADS, thread_name_prefix="jaxface-gather")
