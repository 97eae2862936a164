"""Identification at scale: all-pairs TAR@FAR streamed on device, and 1:N search.

All-pairs TAR@FAR
    `all_pairs_histograms` scores every pair ``i < j`` of ``N`` embeddings without an
    ``N x N`` matrix: the set is cut into row blocks of ``block`` embeddings; one jitted
    call scores a row block against every column block at or after it (a
    ``lax.fori_loop`` of ``block x block`` tiles) and scatters the scores into a
    genuine and an impostor histogram of ``n_bins`` equal bins over ``[-1, 1]``.
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
    gallery larger than device memory only ever has one chunk on device): per chunk
    ``scores = Q @ G_chunk^T``, ``lax.top_k``, then a merge with the running top-k
    (one compiled step serves every chunk; the last chunk is padded and masked).
    With a ``mesh`` each chunk is split over the devices: per-device top-k, an
    ``all_gather`` of the ``P * k`` candidates and the merge. Ties keep the lower
    gallery index first, like a stable ``argsort`` of ``-scores``.
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
# other on this project's CPU, 2048 x 2048 tiles best (benchmarks/README.md).
_SCATTER_ROWS = 16


def _row_block_hist(emb, lab, valid, bi, *, block: int, n_blocks: int, n_bins: int):
    """Histogram (int32 ``[2 * n_bins]``: impostor then genuine) of pairs (i, j), i in row block
    ``bi``, j > i. emb ``[n_blocks * block, D]``."""
    r0 = bi * block
    rows = jax.lax.dynamic_slice_in_dim(emb, r0, block)
    rl = jax.lax.dynamic_slice_in_dim(lab, r0, block)
    rv = jax.lax.dynamic_slice_in_dim(valid, r0, block)
    gi = r0 + jnp.arange(block)
    sub = math.gcd(block, _SCATTER_ROWS)

    def body(bj, hist):
        c0 = bj * block
        cols = jax.lax.dynamic_slice_in_dim(emb, c0, block)
        cl = jax.lax.dynamic_slice_in_dim(lab, c0, block)
        cv = jax.lax.dynamic_slice_in_dim(valid, c0, block)
        gj = c0 + jnp.arange(block)
        s = jnp.dot(rows, cols.T, preferred_element_type=jnp.float32)

        def scatter(h, xs):
            s_, rl_, rv_, gi_ = xs
            keep = rv_[:, None] & cv[None, :] & (gi_[:, None] < gj[None, :])
            idx = score_bins(s_, n_bins) + n_bins * (rl_[:, None] == cl[None, :]).astype(jnp.int32)
            # Dropped pairs (j <= i, padding) go to a spare bin: a constant +1 scatter is
            # cheaper than a weighted one.
            idx = jnp.where(keep, idx, 2 * n_bins)
            return h.at[idx.ravel()].add(1, mode="promise_in_bounds"), None

        xs = tuple(x.reshape((block // sub, sub) + x.shape[1:]) for x in (s, rl, rv, gi))
        return jax.lax.scan(scatter, hist, xs)[0]

    hist = jax.lax.fori_loop(bi, n_blocks, body, jnp.zeros((2 * n_bins + 1,), jnp.int32))
    return hist[: 2 * n_bins]


@functools.lru_cache(maxsize=16)
def _compiled_hist(block: int, n_blocks: int, n_bins: int, mesh: Mesh | None):
    fn = functools.partial(_row_block_hist, block=block, n_blocks=n_blocks, n_bins=n_bins)
    if mesh is None:
        return jax.jit(fn)
    axis = mesh.axis_names[0]

    def per_device(emb, lab, valid, bis):
        # bis: [1] row-block index of this device this round (-1 = idle).
        bi = bis[0]
        h = fn(emb, lab, valid, jnp.maximum(bi, 0))
        return jnp.where(bi >= 0, h, 0)[None]

    sm = jax.shard_map(
        per_device, mesh=mesh, in_specs=(P(), P(), P(), P(axis)), out_specs=P(axis), check_vma=False
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
      labels: ``[N]`` integer identities; a pair is genuine when its labels match.
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
    finite = np.asarray(jnp.all(jnp.isfinite(emb), axis=1))
    if not finite.all():
        raise ValueError(
            f"embeddings: non-finite value(s) (NaN/inf) in {int((~finite).sum())} row(s), first {int(np.argmax(~finite))}"
        )
    if block * max(n, 1) >= 2**31:
        raise ValueError(
            f"block * N = {block * n} would overflow the per-call int32 counts; lower block"
        )
    n_blocks = max(1, math.ceil(n / block))
    pad = n_blocks * block - n
    emb = jnp.pad(emb, ((0, pad), (0, 0)))
    lab_d = jnp.asarray(np.pad(lab.astype(np.int32), (0, pad)))
    valid = jnp.asarray(np.arange(n_blocks * block) < n)
    total = np.zeros(2 * n_bins, np.int64)
    if mesh is None:
        fn = _compiled_hist(block, n_blocks, n_bins, None)
        for bi in range(n_blocks):
            total += np.asarray(fn(emb, lab_d, valid, jnp.int32(bi)), np.int64)
    else:
        if len(mesh.axis_names) != 1:
            raise ValueError(f"mesh: expected one axis, got {mesh.axis_names}")
        n_dev = mesh.devices.size
        rep = NamedSharding(mesh, P())
        emb, lab_d, valid = (jax.device_put(x, rep) for x in (emb, lab_d, valid))
        fn = _compiled_hist(block, n_blocks, n_bins, mesh)
        # Pair heavy (early) row blocks with light (late) ones across rounds.
        order = np.arange(n_blocks)
        for r0 in range(0, n_blocks, n_dev):
            bis = np.full(n_dev, -1, np.int32)
            chunk = order[r0 : r0 + n_dev]
            bis[: len(chunk)] = chunk
            out = fn(
                emb, lab_d, valid, jax.device_put(bis, NamedSharding(mesh, P(mesh.axis_names[0])))
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


def _top_k(s: jax.Array, k: int, group: int = 64) -> tuple[jax.Array, jax.Array]:
    """Exact top-k along the last axis, cheaper than one ``lax.top_k`` over a wide row.

    The row is cut into groups of ``group`` columns; the k groups with the largest
    maxima hold every top-k element (an element among the top k has a group max at
    least its value, and at most k groups can have such a max), so a top-k over the
    group maxima, a gather of those k groups and a top-k over ``k * group`` candidates
    give the exact values. Among exactly tied scores the chosen index may differ from
    a stable sort's. Falls back to ``lax.top_k`` when the row is short.
    """
    n = s.shape[-1]
    if n % group or n // group <= k or n < 4 * k * group:
        return jax.lax.top_k(s, k)
    g = s.reshape(s.shape[:-1] + (n // group, group))
    _, gidx = jax.lax.top_k(jnp.max(g, axis=-1), k)  # [..., k]
    gidx = jnp.sort(gidx, axis=-1)  # keep gallery order: lower index first on ties
    cand = jnp.take_along_axis(g, gidx[..., None], axis=-2).reshape(s.shape[:-1] + (k * group,))
    cidx = (gidx[..., None] * group + jnp.arange(group)).reshape(cand.shape)
    vals, pos = jax.lax.top_k(cand, k)
    return vals, jnp.take_along_axis(cidx, pos, axis=-1)


def _merge(best_s, best_i, s, i, k):
    cat_s = jnp.concatenate([best_s, s], axis=1)
    cat_i = jnp.concatenate([best_i, i], axis=1)
    top_s, pos = jax.lax.top_k(cat_s, k)
    return top_s, jnp.take_along_axis(cat_i, pos, axis=1)


def _rows_bad(g):
    """True if any row of ``g`` holds NaN/inf: its sum is then non-finite (NaN propagates,
    inf - inf = NaN). One fused pass over the chunk; zero padding rows are finite. (A row
    of finite values whose sum overflows float32, |x| ~ 1e35, is reported too.)"""
    return ~jnp.all(jnp.isfinite(jnp.sum(g, axis=1)))


def _chunk_step(best_s, best_i, bad, q, g, n_valid, offset, *, k: int, masked: bool):
    s = jnp.dot(q, g.T, preferred_element_type=jnp.float32)
    if masked:  # only the last, padded chunk pays for the mask
        col = jnp.arange(g.shape[0])
        s = jnp.where(col[None, :] < n_valid, s, -jnp.inf)
    # NaN/inf in the gallery would otherwise silently win or lose the top-k (a -inf score
    # would pass for padding): check the rows themselves, O(G D) next to the O(Q G D) matmul.
    bad = bad | _rows_bad(g)
    cs, ci = _top_k(s, min(k, g.shape[0]))
    return (*_merge(best_s, best_i, cs, ci.astype(jnp.int32) + offset, k), bad)


@functools.lru_cache(maxsize=16)
def _compiled_search(k: int, mesh: Mesh | None, masked: bool = True):
    if mesh is None:
        return jax.jit(functools.partial(_chunk_step, k=k, masked=masked), donate_argnums=(0, 1))
    axis = mesh.axis_names[0]

    def per_device(best_s, best_i, bad, q, g, n_valid, offset):
        local = g.shape[0]
        start = jax.lax.axis_index(axis) * local
        s = jnp.dot(q, g.T, preferred_element_type=jnp.float32)
        if masked:
            col = start + jnp.arange(local)
            s = jnp.where(col[None, :] < n_valid, s, -jnp.inf)
        local_bad = _rows_bad(g).astype(jnp.int32)
        bad = bad | (jax.lax.pmax(local_bad, axis) > 0)
        cs, ci = _top_k(s, min(k, local))
        ci = ci.astype(jnp.int32) + start + offset
        # [Q, k'] per device -> [Q, P * k'] in device order (lower gallery index first on ties).
        all_s = jax.lax.all_gather(cs, axis, axis=1, tiled=True)
        all_i = jax.lax.all_gather(ci, axis, axis=1, tiled=True)
        return (*_merge(best_s, best_i, all_s, all_i, k), bad)

    sm = jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(P(), P(), P(), P(), P(axis), P(), P()),
        out_specs=(P(), P(), P()),
        check_vma=False,
    )
    return jax.jit(sm, donate_argnums=(0, 1))


def _aligned_empty(shape, dtype=np.float32, align: int = 64) -> np.ndarray:
    """An uninitialised host array whose data starts on an ``align``-byte boundary."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(n + align, np.uint8)
    off = (-raw.ctypes.data) % align
    return raw[off : off + n].view(dtype).reshape(shape)


class _HostStager:
    """Host gallery chunks onto a CPU device without jax's host->device copy: each chunk is
    copied (and cast to float32) by NumPy into one of two 64-byte-aligned staging buffers,
    which XLA:CPU then reads in place (``jnp.from_dlpack``, zero copy). A buffer is reused
    only after the step that read it has finished, so memory stays two chunks."""

    def __init__(self, chunk: int, dim: int):
        self.bufs = [_aligned_empty((chunk, dim)) for _ in range(2)]
        self.pending = [None, None]
        self.turn = 0

    def put(self, rows: np.ndarray):
        i, self.turn = self.turn, 1 - self.turn
        if self.pending[i] is not None:
            jax.block_until_ready(self.pending[i])
        buf = self.bufs[i]
        n = rows.shape[0]
        np.copyto(buf[:n], rows, casting="same_kind")
        if n < buf.shape[0]:
            buf[n:] = 0.0
        return i, jnp.from_dlpack(buf)

    def used_by(self, i: int, result):
        self.pending[i] = result


def search_top_k(
    queries,
    gallery,
    *,
    k: int,
    chunk: int = 65536,
    mesh: Mesh | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner-product search of each query over a streamed gallery.

    Args:
      queries: ``[Q, D]``. gallery: ``[G, D]`` (NumPy, memory-mapped or device array;
        only one ``chunk`` of it is on device at a time).
      k: neighbours per query (``k <= G``).
      chunk: gallery rows per step (fixed: one compilation); with a mesh, rounded up to
        a multiple of the device count and split across devices. Capped at the
        (rounded-up) gallery size.
      mesh: optional 1-axis mesh to shard each chunk over.

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
    chunk = min(chunk, g_n)
    chunk = int(math.ceil(chunk / n_dev) * n_dev)
    best_s = jnp.full((q.shape[0], k), -jnp.inf, jnp.float32)
    best_i = jnp.full((q.shape[0], k), -1, jnp.int32)
    bad = jnp.zeros((), bool)
    stager = None
    if mesh is not None:
        rep = NamedSharding(mesh, P())
        row = NamedSharding(mesh, P(mesh.axis_names[0]))
        q, best_s, best_i, bad = (jax.device_put(x, rep) for x in (q, best_s, best_i, bad))
    elif not isinstance(gallery, jax.Array) and jax.devices()[0].platform == "cpu":
        stager = _HostStager(chunk, gallery.shape[1])
    for off in range(0, g_n, chunk):
        g = gallery[off : off + chunk]
        n_valid = g.shape[0]
        step = _compiled_search(k, mesh, n_valid < chunk)
        if stager is not None:
            slot, g = stager.put(np.asarray(g))
        elif n_valid < chunk:
            g = jnp.pad(jnp.asarray(g, jnp.float32), ((0, chunk - n_valid), (0, 0)))
        if stager is None:
            g = jnp.asarray(g, jnp.float32) if mesh is None else jax.device_put(g, row)
        best_s, best_i, bad = step(best_s, best_i, bad, q, g, jnp.int32(n_valid), jnp.int32(off))
        if stager is not None:
            stager.used_by(slot, bad)  # not donated: alive until the step is done
    if bool(bad):
        raise ValueError("gallery: non-finite value(s) (NaN/inf) -- scores would be meaningless")
    return np.array(best_s), np.array(best_i)


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
