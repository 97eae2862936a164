"""All-pairs TAR@FAR over a labelled embedding set, streamed on device.

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

Embeddings are expected L2-normalised (scores are inner products = cosines).
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxface.evaluation.verification import read_roc


__all__ = ["all_pairs_histograms", "histogram_roc", "histogram_tar_at_far", "score_bins"]


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
    ``"interpolated"``: linear in FAR between bin edges (`verification.read_roc`, as
    `verification.tar_at_far` reads an exact ROC).

    Returns dict with ``tar``, ``far`` (achieved; = target for "interpolated") and
    ``threshold`` (cosine), shaped like ``far_targets``.
    """
    far, tar, thr = histogram_roc(genuine, impostor)
    return read_roc(far, tar, thr, far_targets, method=method)
