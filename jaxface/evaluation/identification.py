"""Identification at scale: 1:N search and its metrics.

All-pairs TAR@FAR (`all_pairs_histograms`, `histogram_roc`, `histogram_tar_at_far`,
`score_bins`) lives in `jaxface.evaluation.all_pairs` and is re-exported here; the
zero-copy host staging the search streams through lives in
`jaxface.evaluation.host_staging`.

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
import os
import pathlib
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxface.evaluation import host_staging
from jaxface.evaluation.all_pairs import (
    all_pairs_histograms,
    histogram_roc,
    histogram_tar_at_far,
    score_bins,
)
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
    (see `host_staging.in_place_source`); otherwise each chunk is copied into a staging buffer.

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
    in_place = host_staging.in_place_source(gallery) if host_cpu else None
    stagers: dict[int, host_staging.HostStager] = {}
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
            stager = stagers.setdefault(size, host_staging.HostStager((size, gallery.shape[1])))
            rows = np.asarray(gallery[off : off + n_valid])
            fill = functools.partial(
                host_staging.fill_rows, rows=rows, upto=_round_up(n_valid, sub)
            )
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
        stager = host_staging.HostStager((batch, m, dim))
    out_s, out_i = [], []
    for b in range(0, n_q + pad, batch):
        sl = slice(b, b + batch)
        if isinstance(gallery, jax.Array):
            rows = jnp.take(gallery, jnp.asarray(ids[sl]), axis=0).astype(jnp.float32)
        elif stager is not None:
            slot, rows = stager.put(
                functools.partial(host_staging.take_rows, gallery=gallery, ids=ids[sl])
            )
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
