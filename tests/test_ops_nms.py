"""Batched NMS against a greedy NumPy NMS, under jax.jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface import ops


def greedy_nms_reference(boxes, scores, thr, valid=None, cats=None):
    """Textbook greedy NMS: visit by descending score (stable), drop IoU > thr with a kept box."""
    n = len(scores)
    valid = np.ones(n, bool) if valid is None else valid
    order = [i for i in np.argsort(-scores, kind="stable") if valid[i]]
    kept = []
    for i in order:
        ok = True
        for j in kept:
            if cats is not None and cats[i] != cats[j]:
                continue
            p, q = boxes[i], boxes[j]
            iw = min(p[2], q[2]) - max(p[0], q[0])
            ih = min(p[3], q[3]) - max(p[1], q[1])
            inter = max(iw, 0) * max(ih, 0)
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
            if union > 0 and inter / union > thr:
                ok = False
                break
        if ok:
            kept.append(i)
    return kept


def _clustered_boxes(rng, b, n):
    centers = rng.uniform(20, 80, (b, 6, 2))
    pick = rng.integers(0, 6, (b, n))
    c = np.take_along_axis(centers, pick[..., None], axis=1) + rng.normal(0, 3, (b, n, 2))
    wh = rng.uniform(8, 20, (b, n, 2))
    return np.concatenate([c - wh / 2, c + wh / 2], -1).astype(np.float32)


@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_nms_matches_greedy_reference(thr):
    rng = np.random.default_rng(0)
    b, n, k = 3, 64, 20
    boxes = _clustered_boxes(rng, b, n)
    scores = rng.random((b, n)).astype(np.float32)
    scores[0, :8] = 0.5  # ties resolved by input order
    valid = rng.random((b, n)) > 0.1
    f = jax.jit(lambda bx, s, v: ops.batched_nms(bx, s, iou_threshold=thr, max_output=k, valid=v))
    out = f(boxes, scores, valid)
    assert (
        out.indices.shape == (b, k) and out.boxes.shape == (b, k, 4) and out.valid.shape == (b, k)
    )
    for i in range(b):
        ref = greedy_nms_reference(boxes[i].astype(np.float64), scores[i], thr, valid[i])[:k]
        got = np.asarray(out.indices[i])[np.asarray(out.valid[i])].tolist()
        assert got == ref
        nv = len(ref)
        assert not np.asarray(out.valid[i, nv:]).any()
        assert np.all(np.asarray(out.indices[i, nv:]) == -1)
        np.testing.assert_array_equal(np.asarray(out.boxes[i, :nv]), boxes[i][ref])
        np.testing.assert_array_equal(np.asarray(out.scores[i, :nv]), scores[i][ref])


def test_nms_categories_score_threshold_and_padding():
    rng = np.random.default_rng(1)
    b, n = 2, 30
    boxes = _clustered_boxes(rng, b, n)
    scores = rng.random((b, n)).astype(np.float32)
    cats = rng.integers(0, 3, (b, n))
    out = jax.jit(
        lambda bx, s, c: ops.batched_nms(
            bx, s, iou_threshold=0.4, max_output=40, categories=c, score_threshold=0.2
        )
    )(boxes, scores, cats)
    assert out.indices.shape == (b, 40)  # more slots than boxes: padded
    for i in range(b):
        ref = greedy_nms_reference(
            boxes[i].astype(np.float64), scores[i], 0.4, scores[i] >= 0.2, cats[i]
        )
        got = np.asarray(out.indices[i])[np.asarray(out.valid[i])].tolist()
        assert got == ref


def test_nms_suppresses_duplicates_and_ignores_nan():
    boxes = jnp.array([[[0.0, 0, 10, 10], [0.5, 0, 10.5, 10], [20, 20, 30, 30], [0, 0, 10, 10]]])
    scores = jnp.array([[0.9, 0.8, 0.7, jnp.nan]])
    out = ops.batched_nms(boxes, scores, iou_threshold=0.5, max_output=3)
    assert np.asarray(out.indices).tolist() == [[0, 2, -1]]
    assert np.asarray(out.valid).tolist() == [[True, True, False]]
