"""Identification at scale: all-pairs TAR@FAR streamed on device, and 1:N search.

All-pairs TAR@FAR
    `all_pairs_histograms` scores every pair ``i < j`` of ``N`` embeddings without an
    ``N x N`` matrix: the set is ordered by label and cut into row blocks of ``block``
    embeddings; one jitted call scores a row block against every column block at or
    after it (``lax.fori_loop``s of ``block x block`` tiles) and scatters the scores into
    a genuine and an impostor histogram of ``n_bins`` equal bins over ``[-1, 1]``. Only
    the tiles near the diagonal can hold genuine pairs (and the diagonal one the pairs
    j <= i); they pay for the label compare and the pair mask, every other tile is
    binned straight into the impostor histogram.
    The host adds the per-call int32 histograms into int64 totals, so counts never
    overflow (one call sees at most ``block * N`` pairs, checked). With a ``mesh``
    the row blocks of one round are spread over the mesh's devices with
    ``jax.shard_map`` (one row block per device per round).
    `histogram_roc` turns the histograms into the ROC at the bin edges (exact ROC
    points for thresholds on the bin grid) and `histogram_tar_at_far` reads TAR at
    a FAR as in `jaxface.evaluation.verification.tar_at_far` ("closest" / "interpolated").
    With 2^16 bins the threshold grid step is 3.05e-5 in cosine; with 5e9 impostor
    pairs FAR resolution reaches 2e-10.

1:N search
    `search_top_k` streams the gallery in fixed-size chunks (host or device arrays; a
    gallery larger than device memory only ever has one chunk on device; a 64-byte
    aligned host gallery such as a memory-mapped ``.npy`` is read in place). Each chunk is
    scored a cache-sized block at a time and reduced on the fly to the best score of each
    group of 8 consecutive gallery rows; a running top-k of groups is kept. The k best rows
    lie in the k best groups, so a final pass gathers those rows and scores them exactly.
    With a ``mesh`` each chunk is split over the devices: per-device top-k groups, an
    ``all_gather`` of the ``P * k`` candidates and the merge. Ties keep the lower gallery
    index first, like a stable ``argsort`` of ``-scores``.
    `cmc` / `rank_k_accuracy` (closed set) and `dir_at_fpir` (open set) read the result.

Embeddings are expected L2-normalised (scores are inner products = cosines).
"""

from __future__ import annotations

import functools
import math
import mmap
import os
import pathlib
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxface.evaluation.verification import check_finite


__all__ = [
    "all_pairs_histograms",
    "histogram_roc",
    "histogram_tar_at_far",
    "search_top_k",
    "cmc",
    "rank_k_accuracy",
    "dir_at_fpir",
    "plot_cmc",
    "score_bins",
]


def score_bins(scores: jax.Array, n_bins: int) -> jax.Array:
    """Bin index of each score on ``n_bins`` equal bins over ``[-1, 1]`` (clipped);
    bin ``b`` holds ``[-1 + 2b/n, -1 + 2(b+1)/n)``, the last one also 1.0."""
    b = jnp.floor((scores.astype(jnp.float32) + 1.0) * (n_bins / 2.0)).astype(jnp.int32)
    return jnp.clip(b, 0, n_bins - 1)


# --------------------------------------------------------------------------- all pairs


# Rows of a tile scattered per inner step: XLA:CPU runs one scatter of a whole
# block x block tile (4M updates) several times slower per update than a scan of small
# scatters (16 rows x 2048 = 32k updates each); 8-128 rows measured within noise of each
# other on a 2-core x86 CPU, 2048 x 2048 tiles best (benchmarks/README.md).
_SCATTER_ROWS = 16


def _scan_scatter(hist, idx_of, xs, block: int):
    """Add 1 at ``idx_of(*rows)`` for each ``_SCATTER_ROWS``-row slice of the ``xs`` tiles."""
    sub = math.gcd(block, _SCATTER_ROWS)

    def step(h, x):
        return h.at[idx_of(*x).ravel()].add(1, mode="promise_in_bounds"), None

    xs = tuple(x.reshape((block // sub, sub) + x.shape[1:]) for x in xs)
    return jax.lax.scan(step, hist, xs)[0]


def _row_block_hist(emb, lab, valid, mend, bi, *, block: int, n_blocks: int, n_bins: int):
    """Histogram (int32 ``[2 * n_bins]``: impostor then genuine) of pairs (i, j), i in row block
    ``bi``, j > i. emb ``[n_blocks * block, D]`` sorted by label (``lab``).

    Column blocks ``bi <= bj < mend[bi]`` may share labels with the row block (the diagonal one
    also holds j <= i), and a padded last block holds invalid rows: their tiles take the masked
    path (label compare, pair mask). Every other tile holds only valid impostor pairs with
    j > i, so it is binned straight into the impostor half.
    """
    r0 = bi * block
    rows = jax.lax.dynamic_slice_in_dim(emb, r0, block)
    rl = jax.lax.dynamic_slice_in_dim(lab, r0, block)
    rv = jax.lax.dynamic_slice_in_dim(valid, r0, block)
    gi = r0 + jnp.arange(block)

    def tile(bj):
        c0 = bj * block
        return c0, jax.lax.dynamic_slice_in_dim(emb, c0, block)

    def masked(bj, hist):
        c0, cols = tile(bj)
        cl = jax.lax.dynamic_slice_in_dim(lab, c0, block)
        cv = jax.lax.dynamic_slice_in_dim(valid, c0, block)
        gj = c0 + jnp.arange(block)
        s = jnp.dot(rows, cols.T, preferred_element_type=jnp.float32)

        def idx_of(s_, rl_, rv_, gi_):
            keep = rv_[:, None] & cv[None, :] & (gi_[:, None] < gj[None, :])
            idx = score_bins(s_, n_bins) + n_bins * (rl_[:, None] == cl[None, :]).astype(jnp.int32)
            # Dropped pairs (j <= i, padding) go to a spare bin: a constant +1 scatter is
            # cheaper than a weighted one.
            return jnp.where(keep, idx, 2 * n_bins)

        return _scan_scatter(hist, idx_of, (s, rl, rv, gi), block)

    def plain(bj, hist):
        s = jnp.dot(rows, tile(bj)[1].T, preferred_element_type=jnp.float32)
        return _scan_scatter(hist, lambda s_: score_bins(s_, n_bins), (s,), block)

    masked_end = mend[bi]
    plain_end = n_blocks - 1  # the last block is always masked (it may hold padding)
    hist = jnp.zeros((2 * n_bins + 1,), jnp.int32)
    hist = jax.lax.fori_loop(bi, masked_end, masked, hist)
    hist = jax.lax.fori_loop(masked_end, plain_end, plain, hist)
    hist = jax.lax.fori_loop(jnp.maximum(masked_end, n_blocks - 1), n_blocks, masked, hist)
    return hist[: 2 * n_bins]


@functools.lru_cache(maxsize=16)
def _compiled_hist(block: int, n_blocks: int, n_bins: int, mesh: Mesh | None):
    fn = functools.partial(_row_block_hist, block=block, n_blocks=n_blocks, n_bins=n_bins)
    if mesh is None:
        return jax.jit(fn)
    axis = mesh.axis_names[0]

    def per_device(emb, lab, valid, mend, bis):
        # bis: [1] row-block index of this device this round (-1 = idle).
        bi = bis[0]
        h = fn(emb, lab, valid, mend, jnp.maximum(bi, 0))
        return jnp.where(bi >= 0, h, 0)[None]

    sm = jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(P(), P(), P(), P(), P(axis)),
        out_specs=P(axis),
        check_vma=False,
    )
    return jax.jit(sm)


def all_pairs_histograms(
    embeddings,
    labels,
    *,
    n_bins: int = 2**16,
    block: int = 2048,
    mesh: Mesh | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Genuine and impostor score histograms over all pairs ``i < j``.

    Args:
      embeddings: ``[N, D]`` L2-normalised (host or device array; moved to device once,
        replicated over ``mesh`` if given).
      labels: ``[N]`` identities (any sortable NumPy values); a pair is genuine when its
        labels match.
      n_bins: histogram bins over ``[-1, 1]`` (see `score_bins`).
      block: tile side; one device call handles ``block x N`` pairs at most.
      mesh: optional 1-axis `jax.sharding.Mesh`; row blocks are spread over its devices.

    Returns:
      ``(genuine, impostor)``, int64 ``[n_bins]`` each; their sums are the numbers of
      genuine and impostor pairs.
    """
    emb = jnp.asarray(embeddings, jnp.float32)
    if emb.ndim != 2:
        raise ValueError(f"embeddings: expected [N, D], got shape {emb.shape}")
    lab = np.asarray(labels)
    n = emb.shape[0]
    if lab.shape != (n,):
        raise ValueError(f"labels: expected shape ({n},), got {lab.shape}")
    if n < 2:
        raise ValueError(f"need at least 2 embeddings to form a pair, got {n}")
    finite = np.asarray(jnp.all(jnp.isfinite(emb), axis=1))
    if not finite.all():
        raise ValueError(
            f"embeddings: non-finite value(s) (NaN/inf) in {int((~finite).sum())} row(s), first {int(np.argmax(~finite))}"
        )
    if block * max(n, 1) >= 2**31:
        raise ValueError(
            f"block * N = {block * n} would overflow the per-call int32 counts; lower block"
        )
    # Order by label: genuine pairs then sit in the few tiles near the diagonal and every
    # other tile skips the label compare and the pair mask (the histograms do not depend on
    # the order of the set).
    _, dense = np.unique(lab, return_inverse=True)
    dense = dense.reshape(-1).astype(np.int32)
    order = np.argsort(dense, kind="stable")
    dense = dense[order]
    emb = jnp.take(emb, jnp.asarray(order), axis=0)
    n_blocks = max(1, math.ceil(n / block))
    pad = n_blocks * block - n
    emb = jnp.pad(emb, ((0, pad), (0, 0)))
    lab_d = jnp.asarray(np.pad(dense, (0, pad)))
    valid = jnp.asarray(np.arange(n_blocks * block) < n)
    # mend[bi]: column blocks before it may hold a label of row block bi (sorted labels:
    # those up to the block's largest label).
    last = np.minimum((np.arange(n_blocks) + 1) * block, n) - 1
    reach = np.searchsorted(dense, dense[last], side="right")
    mend_np = np.maximum(np.arange(n_blocks) + 1, -(-reach // block)).astype(np.int32)
    mend = jnp.asarray(mend_np)
    total = np.zeros(2 * n_bins, np.int64)
    if mesh is None:
        fn = _compiled_hist(block, n_blocks, n_bins, None)
        for bi in range(n_blocks):
            total += np.asarray(fn(emb, lab_d, valid, mend, jnp.int32(bi)), np.int64)
    else:
        if len(mesh.axis_names) != 1:
            raise ValueError(f"mesh: expected one axis, got {mesh.axis_names}")
        n_dev = mesh.devices.size
        rep = NamedSharding(mesh, P())
        emb, lab_d, valid, mend = (jax.device_put(x, rep) for x in (emb, lab_d, valid, mend))
        fn = _compiled_hist(block, n_blocks, n_bins, mesh)
        for r0 in range(0, n_blocks, n_dev):
            bis = np.full(n_dev, -1, np.int32)
            chunk = np.arange(r0, min(r0 + n_dev, n_blocks))
            bis[: len(chunk)] = chunk
            out = fn(
                emb,
                lab_d,
                valid,
                mend,
                jax.device_put(bis, NamedSharding(mesh, P(mesh.axis_names[0]))),
            )
            total += np.asarray(out, np.int64).sum(0)
    impostor, genuine = total[:n_bins], total[n_bins:]
    return genuine, impostor


def histogram_roc(
    genuine: np.ndarray, impostor: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC at the bin edges: accept a pair when its score is in bin ``>= k``.

    Returns ``(far, tar, thresholds)`` with thresholds decreasing from +inf (accept
    nothing: (0, 0)) to -1 (accept everything: (1, 1)); ``thresholds[m]`` is the
    lower edge ``-1 + 2k/n_bins`` of the lowest accepted bin.
    """
    genuine = np.asarray(genuine, np.int64)
    impostor = np.asarray(impostor, np.int64)
    n_bins = len(genuine)
    ng, ni = genuine.sum(), impostor.sum()
    if ng == 0 or ni == 0:
        raise ValueError(f"need genuine and impostor pairs, got {ng} and {ni}")
    tar = np.r_[0, np.cumsum(genuine[::-1])] / ng
    far = np.r_[0, np.cumsum(impostor[::-1])] / ni
    edges = -1.0 + 2.0 * np.arange(n_bins) / n_bins
    thr = np.r_[np.inf, edges[::-1]]
    return far, tar, thr


def histogram_tar_at_far(
    genuine: np.ndarray,
    impostor: np.ndarray,
    far_targets: float | Sequence[float],
    *,
    method: str = "closest",
) -> dict[str, np.ndarray]:
    """TAR at target FARs from score histograms.

    ``method="closest"``: the bin-edge threshold whose FAR is closest to the target (the
    highest such threshold on ties, i.e. insightface's IJB rule on this ROC);
    ``"interpolated"``: linear in FAR between bin edges.

    Returns dict with ``tar``, ``far`` (achieved; = target for "interpolated") and
    ``threshold`` (cosine), shaped like ``far_targets``.
    """
    far, tar, thr = histogram_roc(genuine, impostor)
    t = np.asarray(far_targets, np.float64)
    flat = t.ravel()
    if method == "closest":
        idx = np.array([int(np.argmin(np.abs(far - x))) for x in flat])
        out = {"tar": tar[idx], "far": far[idx], "threshold": thr[idx]}
    elif method == "interpolated":
        finite = np.isfinite(thr)
        thr_i = np.where(finite, thr, 1.0)
        out = {
            "tar": np.interp(flat, far, tar),
            "far": flat.copy(),
            "threshold": np.interp(flat, far, thr_i),
        }
    else:
        raise ValueError(f"method: expected 'closest' or 'interpolated', got {method!r}")
    return {k: v.reshape(t.shape) for k, v in out.items()}


# --------------------------------------------------------------------------- 1:N search


def _merge(best_s, best_i, s, i, k):
    cat_s = jnp.concatenate([best_s, s], axis=1)
    cat_i = jnp.concatenate([best_i, i], axis=1)
    top_s, pos = jax.lax.top_k(cat_s, k)
    return top_s, jnp.take_along_axis(cat_i, pos, axis=1)


# The search selects *groups* of `_GROUP` consecutive gallery rows by their best score, then
# rescores the rows of the k best groups (see `search_top_k`). Scores are made a sub-block of
# gallery rows at a time (`_sub_rows`), so each [Q, sub] block is reduced to group maxima while
# it is in cache; the maxima of `_SUPER` consecutive groups narrow the top-k of groups down
# cheaply.
_GROUP = 8
_SUPER = 16
_SUB = 8192  # most gallery rows per sub-block
# Float32 scores per sub-block: 16 MiB stays under glibc's largest mmap threshold (32 MiB), so
# XLA's temporary buffer is reused from the heap instead of being mapped and page-faulted anew
# by every step (measured on 1,000 x 1M x 512: 250k -> 40k page faults and ~0.5 s per search).
_SUB_VALUES = 2**22
# Group maxima kept on device between two selections (float32 values): selecting once per
# window of chunks rather than per chunk amortises the top-k's cost.
_WINDOW_VALUES = 2**25


def _accumulate(gm, sm, bad, q, g, n_valid, first, *, sub: int, masked: bool):
    """Group maxima of the chunk ``g`` ``[C, D]`` written into ``gm [S, Q, sub / _GROUP]`` and
    their `_SUPER`-group maxima into ``sm [S, Q, sub / (_GROUP * _SUPER)]``, sub-block ``j`` at
    slot ``first + j`` (in place when the buffers are donated). Rows past ``n_valid`` score
    ``-inf``; sub-blocks wholly past it are skipped (their slots keep stale values).

    ``bad``: whether a score was non-finite. A gallery row holding NaN/inf gives a non-finite
    score with *every* query (inf * 0 is NaN, and a non-finite term keeps an IEEE sum
    non-finite), so the first query's scores suffice."""
    nq, c = q.shape[0], g.shape[0]
    n_sub = c // sub
    tiles = g.reshape(n_sub, sub, g.shape[1])

    def body(j, carry):
        gm, sm, bad = carry
        s = jnp.dot(q, tiles[j].T, preferred_element_type=jnp.float32)
        bad = bad | ~jnp.all(jnp.isfinite(s[0]))
        if masked:  # only a padded chunk pays for the mask
            col = j * sub + jnp.arange(sub)
            s = jnp.where(col[None, :] < n_valid, s, -jnp.inf)
        m = jnp.max(s.reshape(nq, sub // _GROUP, _GROUP), axis=-1)
        m2 = jnp.max(m.reshape(nq, -1, _SUPER), axis=-1)
        gm = jax.lax.dynamic_update_index_in_dim(gm, m, first + j, 0)
        sm = jax.lax.dynamic_update_index_in_dim(sm, m2, first + j, 0)
        return gm, sm, bad

    n_run = jnp.clip((n_valid + sub - 1) // sub, 0, n_sub) if masked else n_sub
    return jax.lax.fori_loop(0, n_run, body, (gm, sm, bad))


def _select(gm, sm, best_s, best_i, n_rows, group_offset, *, k: int):
    """Merge the exact top-k groups of a window (`_accumulate`'s buffers, its first
    ``n_rows`` rows valid) into the running ``(best_s, best_i)`` (group maxima, group ids).

    The k best groups lie in the k best runs of `_SUPER` groups: each of those runs holds a
    group at least as good as the rank-k group, so a group in any other run has k groups
    ranked above it. Runs are ranked by (maximum, then lower index), the same order as a
    stable sort, so ties keep the lower group."""
    n_slots, nq, per_slot = gm.shape
    runs_per_slot = sm.shape[2]
    smf = jnp.moveaxis(sm, 0, 1).reshape(nq, n_slots * runs_per_slot)
    n_runs = (n_rows + _GROUP * _SUPER - 1) // (_GROUP * _SUPER)
    run_ok = jnp.arange(smf.shape[1]) < n_runs  # stale slots past the window's rows
    smf = jnp.where(run_ok[None, :], smf, -jnp.inf)
    kk = min(k, smf.shape[1])
    _, runs = jax.lax.top_k(smf, kk)
    runs = jnp.sort(runs, axis=1)  # group order: lower group first on ties
    gid = (runs[..., None] * _SUPER + jnp.arange(_SUPER)).reshape(nq, kk * _SUPER)
    vals = gm[gid // per_slot, jnp.arange(nq)[:, None], gid % per_slot]
    vals = jnp.where(run_ok[gid // _SUPER], vals, -jnp.inf)
    top, pos = jax.lax.top_k(vals, min(k, kk * _SUPER))
    ids = jnp.take_along_axis(gid, pos, axis=1) + group_offset
    ids = jnp.where(top > -jnp.inf, ids, -1)  # no group (padding): nothing to rescore
    return _merge(best_s, best_i, top, ids.astype(jnp.int32), k)


def _window_buffers(n_slots: int, nq: int, sub: int):
    return (
        jnp.full((n_slots, nq, sub // _GROUP), -jnp.inf, jnp.float32),
        jnp.full((n_slots, nq, sub // (_GROUP * _SUPER)), -jnp.inf, jnp.float32),
    )


@functools.lru_cache(maxsize=16)
def _compiled_search(k: int, sub: int, mesh: Mesh | None):
    """``(accumulate, select)`` jitted for one device (window buffers donated), or one
    sharded per-chunk step for a mesh."""
    if mesh is None:
        acc = {
            masked: jax.jit(
                functools.partial(_accumulate, sub=sub, masked=masked), donate_argnums=(0, 1)
            )
            for masked in (False, True)
        }
        sel = jax.jit(functools.partial(_select, k=k), donate_argnums=(2, 3))
        return acc, sel
    axis = mesh.axis_names[0]

    def per_device(best_s, best_i, bad, q, g, n_valid, group_offset):
        local = g.shape[0]
        start = jax.lax.axis_index(axis) * local
        n_local = jnp.clip(n_valid - start, 0, local)
        gm, sm = _window_buffers(local // sub, q.shape[0], sub)
        gm, sm, local_bad = _accumulate(
            gm, sm, jnp.zeros((), bool), q, g, n_local, 0, sub=sub, masked=True
        )
        bad = bad | (jax.lax.pmax(local_bad.astype(jnp.int32), axis) > 0)
        neg = jnp.full_like(best_s, -jnp.inf)
        cs, ci = _select(gm, sm, neg, jnp.full_like(best_i, -1), n_local, 0, k=k)
        ci = jnp.where(ci >= 0, ci + start // _GROUP + group_offset, -1)
        # [Q, k] per device -> [Q, P * k] in device order (lower gallery index first on ties).
        all_s = jax.lax.all_gather(cs, axis, axis=1, tiled=True)
        all_i = jax.lax.all_gather(ci, axis, axis=1, tiled=True)
        return (*_merge(best_s, best_i, all_s, all_i, k), bad)

    sm_ = jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(P(), P(), P(), P(), P(axis), P(), P()),
        out_specs=(P(), P(), P()),
        check_vma=False,
    )
    return jax.jit(sm_, donate_argnums=(0, 1))


@functools.partial(jax.jit, static_argnames="k")
def _rescore(q, rows, ids, valid, *, k: int):
    """Exact top-k of each query over its own candidate rows ``[Q, M, D]`` (``ids`` ascending)."""
    s = jnp.einsum("qd,qmd->qm", q, rows, preferred_element_type=jnp.float32)
    s = jnp.where(valid, s, -jnp.inf)
    top, pos = jax.lax.top_k(s, k)
    return top, jnp.take_along_axis(ids, pos, axis=1)


def _aligned_empty(shape, dtype=np.float32, align: int = 64) -> np.ndarray:
    """An uninitialised host array whose data starts on an ``align``-byte boundary."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(n + align, np.uint8)
    off = (-raw.ctypes.data) % align
    return raw[off : off + n].view(dtype).reshape(shape)


class _HostStager:
    """Host arrays onto a CPU device without jax's host->device copy (60-110 ms for 128 MB on
    a 2-core x86 CPU, against ~11 ms for NumPy): NumPy fills (and casts to float32) one of
    two 64-byte-aligned staging buffers, which XLA:CPU then reads in place
    (``jnp.from_dlpack``, zero copy). A buffer is refilled only after the step that read it
    has finished, so memory stays two buffers."""

    def __init__(self, shape: tuple[int, ...]):
        self.bufs = [_aligned_empty(shape) for _ in range(2)]
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


def _in_place_source(gallery) -> np.ndarray | None:
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


def _fill_rows(buf: np.ndarray, rows: np.ndarray, upto: int) -> None:
    """Copy ``rows`` into the head of ``buf`` and zero it up to row ``upto`` (finite padding;
    a step reads no sub-block past the last valid row)."""
    n = rows.shape[0]
    np.copyto(buf[:n], rows, casting="same_kind")
    buf[n:upto] = 0.0


def _take_rows(buf: np.ndarray, gallery, ids: np.ndarray) -> None:
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


def search_top_k(
    queries,
    gallery,
    *,
    k: int,
    chunk: int = 65536,
    mesh: Mesh | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner-product search of each query over a streamed gallery.

    Two passes. The stream: each chunk is scored a sub-block at a time and reduced, in
    cache, to the best score of every group of `_GROUP` consecutive rows (the [Q, G] score
    matrix is never written); the group maxima of a window of chunks stay on device and
    the k best groups per query are merged into a running top-k once per window. The k
    best rows lie in the k best groups: each of those groups holds a row at least as good
    as its rank-k row, so a row in any other group has at least k rows ranked above it.
    The rescoring: the ``k * _GROUP`` rows of each query's k groups are gathered from
    ``gallery`` and scored exactly. Ties keep the lower gallery index first, like a stable
    ``argsort`` of ``-scores``.

    On a CPU device a host gallery is read in place, without a copy, when it is float32,
    C-contiguous and 64-byte aligned: e.g. ``np.load(path, mmap_mode="r")`` of a ``.npy``
    (see `_in_place_source`); otherwise each chunk is copied into a staging buffer.

    Args:
      queries: ``[Q, D]``. gallery: ``[G, D]`` (NumPy, memory-mapped or device array;
        only one ``chunk`` of it is on device at a time, then the rescoring reads
        ``Q * k * _GROUP`` rows of it).
      k: neighbours per query (``k <= G``).
      chunk: gallery rows per step; per device rounded up to a multiple of 128 rows, and
        above a sub-block (`_sub_rows`: 4,096 rows for 1,000 queries) to whole sub-blocks;
        capped at the (rounded-up) gallery size.
        Memory: two staging chunks (unless read in place), the window's group maxima
        (``2^25`` float32 values, 128 MiB, or one chunk's ``Q * chunk / 8`` if more) and
        two rescoring batches of at most 64 MiB each.
      mesh: optional 1-axis mesh to shard each chunk over (per-device top-k groups, then an
        ``all_gather`` of the candidates and the merge, once per chunk).

    Returns:
      ``(scores [Q, k] float32, indices [Q, k] int32)`` sorted by decreasing score.

    Raises:
      ValueError if the queries or any gallery row hold NaN/inf (checked on device, per chunk).
    """
    q = jnp.asarray(queries, jnp.float32)
    if q.ndim != 2 or len(gallery.shape) != 2 or q.shape[1] != gallery.shape[1]:
        raise ValueError(f"queries {q.shape} and gallery {gallery.shape} must be [Q, D] and [G, D]")
    if not bool(jnp.all(jnp.isfinite(q))):
        raise ValueError(
            f"queries: non-finite value(s) (NaN/inf) in row {int(np.argmax(~np.isfinite(np.asarray(q)).all(1)))}"
        )
    g_n = gallery.shape[0]
    if not 1 <= k <= g_n:
        raise ValueError(f"k={k} must be in 1..{g_n} (gallery size)")
    if g_n >= 2**31:
        raise ValueError("gallery larger than 2^31 rows: int32 indices would overflow")
    n_dev = 1 if mesh is None else mesh.devices.size
    if mesh is not None and len(mesh.axis_names) != 1:
        raise ValueError(f"mesh: expected one axis, got {mesh.axis_names}")
    local = _round_up(-(-min(chunk, g_n) // n_dev), _GROUP * _SUPER)
    sub = _sub_rows(q.shape[0])
    if local > sub:
        local = _round_up(local, sub)
    sub = min(sub, local)
    chunk = local * n_dev
    best_s = jnp.full((q.shape[0], k), -jnp.inf, jnp.float32)
    best_i = jnp.full((q.shape[0], k), -1, jnp.int32)
    bad = jnp.zeros((), bool)
    if mesh is not None:
        rep = NamedSharding(mesh, P())
        row = NamedSharding(mesh, P(mesh.axis_names[0]))
        best_s, best_i, bad = (jax.device_put(x, rep) for x in (best_s, best_i, bad))
        q_rep = jax.device_put(q, rep)
        step = _compiled_search(k, sub, mesh)
        for off, n_valid, size in _pieces(g_n, chunk, sub, False):
            g = jnp.asarray(gallery[off : off + n_valid], jnp.float32)
            g = jnp.pad(g, ((0, size - n_valid), (0, 0)))
            args = (q_rep, jax.device_put(g, row), jnp.int32(n_valid), jnp.int32(off // _GROUP))
            best_s, best_i, bad = step(best_s, best_i, bad, *args)
    else:
        best_s, best_i, bad = _stream_windows(q, gallery, best_s, best_i, bad, k, chunk, sub)
    if bool(bad):
        raise ValueError("gallery: non-finite value(s) (NaN/inf) -- scores would be meaningless")
    return _rescore_groups(q, gallery, np.asarray(best_i), k)


def _stream_windows(q, gallery, best_s, best_i, bad, k: int, chunk: int, sub: int):
    """The one-device stream: each piece's group maxima go into window buffers kept on device
    (donated, so written in place), and the window's top-k groups are merged into the
    running best whenever it is full, and at the end."""
    g_n = gallery.shape[0]
    nq = q.shape[0]
    acc, sel = _compiled_search(k, sub, None)
    n_slots = max(chunk // sub, min(-(-g_n // sub), _WINDOW_VALUES // (nq * (sub // _GROUP))))
    gm, sm = _window_buffers(n_slots, nq, sub)
    host_cpu = not isinstance(gallery, jax.Array) and jax.devices()[0].platform == "cpu"
    in_place = _in_place_source(gallery) if host_cpu else None
    stagers: dict[int, _HostStager] = {}
    filled, row0 = 0, 0  # window slots in use; gallery row of slot 0
    for off, n_valid, size in _pieces(g_n, chunk, sub, in_place is not None):
        if filled + size // sub > n_slots:
            best_s, best_i = sel(
                gm, sm, best_s, best_i, jnp.int32(off - row0), jnp.int32(row0 // _GROUP)
            )
            filled, row0 = 0, off
        slot = None
        if in_place is not None and n_valid == size:
            # Zero copy: the view keeps the gallery alive as long as the device array lives.
            g = jnp.from_dlpack(in_place[off : off + size])
        elif host_cpu:
            stager = stagers.setdefault(size, _HostStager((size, gallery.shape[1])))
            rows = np.asarray(gallery[off : off + n_valid])
            fill = functools.partial(_fill_rows, rows=rows, upto=_round_up(n_valid, sub))
            slot, g = stager.put(fill)
        else:
            g = jnp.asarray(gallery[off : off + n_valid], jnp.float32)
            g = jnp.pad(g, ((0, size - n_valid), (0, 0)))
        args = (q, g, jnp.int32(n_valid), jnp.int32(filled))
        gm, sm, bad = acc[n_valid < size](gm, sm, bad, *args)
        if slot is not None:
            stager.used_by(slot, bad)  # not donated: alive until the step is done
        filled += size // sub
    best_s, best_i = sel(gm, sm, best_s, best_i, jnp.int32(g_n - row0), jnp.int32(row0 // _GROUP))
    return best_s, best_i, bad


def _sub_rows(n_queries: int) -> int:
    """Gallery rows per sub-block: a multiple of 128 (whole runs of groups), at most `_SUB`,
    with at most `_SUB_VALUES` scores when the queries allow it."""
    unit = _GROUP * _SUPER
    return int(np.clip(_SUB_VALUES // max(n_queries, 1) // unit * unit, unit, _SUB))


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _pieces(g_n: int, chunk: int, sub: int, in_place: bool):
    """``(offset, rows, size)`` of each search step: whole chunks, then the tail padded to a
    chunk -- or, when chunks are read in place, the tail's whole ``sub``-row blocks as one
    unpadded step of their own size and only the rest padded (to ``sub`` rows)."""
    full = g_n - g_n % chunk
    for off in range(0, full, chunk):
        yield off, chunk, chunk
    tail = g_n - full
    if not tail:
        return
    if not in_place:
        yield full, tail, chunk
        return
    whole = tail - tail % sub
    if whole:
        yield full, whole, whole
    if tail % sub:
        yield full + whole, tail % sub, sub


def _rescore_groups(q, gallery, groups: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of each query over the rows of its groups ``[Q, k]`` (-1: none)."""
    g_n, dim = gallery.shape
    groups = np.sort(groups, axis=1)  # ascending rows: lower index first on ties
    ids = (groups[:, :, None] * _GROUP + np.arange(_GROUP)).reshape(len(groups), -1)
    valid = (ids >= 0) & (ids < g_n)
    ids = np.where(valid, ids, 0).astype(np.int32)
    n_q, m = ids.shape
    batch = max(1, min(n_q, 2**24 // (m * dim)))  # <= 64 MiB of rows at a time
    pad = _round_up(n_q, batch) - n_q
    q = jnp.pad(q, ((0, pad), (0, 0)))
    ids = np.pad(ids, ((0, pad), (0, 0)))
    valid = np.pad(valid, ((0, pad), (0, 0)))
    stager = None
    if not isinstance(gallery, jax.Array) and jax.devices()[0].platform == "cpu":
        stager = _HostStager((batch, m, dim))
    out_s, out_i = [], []
    for b in range(0, n_q + pad, batch):
        sl = slice(b, b + batch)
        if isinstance(gallery, jax.Array):
            rows = jnp.take(gallery, jnp.asarray(ids[sl]), axis=0).astype(jnp.float32)
        elif stager is not None:
            slot, rows = stager.put(functools.partial(_take_rows, gallery=gallery, ids=ids[sl]))
        else:
            rows = jnp.asarray(np.take(gallery, ids[sl], axis=0), jnp.float32)
        s, i = _rescore(q[sl], rows, jnp.asarray(ids[sl]), jnp.asarray(valid[sl]), k=k)
        if stager is not None:
            stager.used_by(slot, s)
        out_s.append(s)
        out_i.append(i)
    return np.concatenate(out_s)[:n_q], np.concatenate(out_i)[:n_q]


# --------------------------------------------------------------------------- metrics


def _first_hit_rank(indices, query_labels, gallery_labels) -> np.ndarray:
    idx = np.asarray(indices)
    gl = np.asarray(gallery_labels)
    ql = np.asarray(query_labels)
    if idx.shape[0] != ql.shape[0]:
        raise ValueError(f"indices ({idx.shape}) and query_labels ({ql.shape}) disagree on Q")
    hit = gl[idx] == ql[:, None]
    return np.where(hit.any(1), np.argmax(hit, axis=1), idx.shape[1])  # k = miss


def cmc(indices, query_labels, gallery_labels) -> np.ndarray:
    """Closed-set CMC: ``cmc[r - 1]`` = fraction of queries whose first same-identity gallery
    entry is within the top ``r`` (``r = 1..k``) of ``indices`` ``[Q, k]``."""
    first = _first_hit_rank(indices, query_labels, gallery_labels)
    k = np.asarray(indices).shape[1]
    return np.array([(first < r).mean() for r in range(1, k + 1)])


def plot_cmc(
    curves: Mapping[str, np.ndarray], path: str | os.PathLike, *, title: str = "CMC"
) -> pathlib.Path:
    """Write CMC curves (identification rate vs rank, ``curves``: name -> `cmc` output) as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = pathlib.Path(path)
    fig = Figure(figsize=(6, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, curve in curves.items():
        c = check_finite(f"{name} cmc", curve).astype(np.float64)
        if c.ndim != 1 or not len(c):
            raise ValueError(f"{name}: expected a 1-D CMC curve, got shape {c.shape}")
        ax.plot(np.arange(1, len(c) + 1), c, marker="o", label=f"{name} (rank-1 {c[0]:.3f})")
    ax.set_xlabel("rank")
    ax.set_ylabel("identification rate")
    ax.set_ylim(0.0, 1.01)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def rank_k_accuracy(indices, query_labels, gallery_labels, k: int = 1) -> float:
    """Rank-k identification rate (``cmc[k - 1]``)."""
    return float(cmc(np.asarray(indices)[:, :k], query_labels, gallery_labels)[-1])


def dir_at_fpir(
    scores,
    indices,
    query_labels,
    gallery_labels,
    *,
    fpir: float | Sequence[float],
    rank: int = 1,
    mated: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Open-set detection-and-identification rate at a false-positive identification rate.

    Non-mated probes (identity absent from the gallery) set the threshold: with their
    top-1 scores sorted in decreasing order ``s_(0) >= s_(1) >= ...`` and
    ``m = floor(fpir * N_nonmated)``, the threshold is ``t = s_(m)`` and a candidate is
    returned when its score is ``> t``, so at most ``m`` non-mated probes raise an alarm
    (achieved FPIR <= target). DIR = fraction of mated probes whose mate appears within
    the top ``rank`` with a score ``> t``.

    Args:
      scores, indices: ``[Q, k]`` from `search_top_k` (``k >= rank``).
      query_labels: ``[Q]``; gallery_labels: ``[G]``.
      fpir: target FPIR(s). mated: optional ``[Q]`` bool (default: label present in the gallery).

    Returns dict with ``dir``, ``fpir`` (achieved) and ``threshold``, shaped like ``fpir``.
    """
    s = check_finite("scores", scores)
    idx = np.asarray(indices)
    ql = np.asarray(query_labels)
    gl = np.asarray(gallery_labels)
    if rank > idx.shape[1]:
        raise ValueError(f"rank={rank} exceeds the k={idx.shape[1]} returned by the search")
    if mated is None:
        mated = np.isin(ql, gl)
    mated = np.asarray(mated, bool)
    if mated.all() or not mated.any():
        raise ValueError(
            f"need mated and non-mated probes (got {int(mated.sum())} mated of {len(mated)})"
        )
    non = np.sort(s[~mated, 0])[::-1]
    hit = gl[idx[:, :rank]] == ql[:, None]
    targets = np.asarray(fpir, np.float64)
    dirs, fps, ths = [], [], []
    for f in targets.ravel():
        m = int(math.floor(f * len(non) + 1e-9))
        t = non[m] if m < len(non) else -np.inf
        ok = (hit & (s[:, :rank] > t)).any(1)
        dirs.append(ok[mated].mean())
        fps.append((non > t).mean())
        ths.append(t)
    sh = targets.shape
    return {
        "dir": np.array(dirs).reshape(sh),
        "fpir": np.array(fps).reshape(sh),
        "threshold": np.array(ths).reshape(sh),
    }
