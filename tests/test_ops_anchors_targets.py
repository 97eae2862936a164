"""Anchors, RPN / RoI target assignment (size ranges, ignore regions) and OHEM, on hand-made cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.ops import anchors as A
from jaxface.ops import boxes as B
from jaxface.ops import targets as T


def test_grid_anchors_layout_and_centres():
    a = A.grid_anchors((2, 3), 8, (8, 16))
    assert a.shape == (2 * 3 * 2, 4)
    # Cell (0, 0), both sizes, centred at (4, 4).
    np.testing.assert_allclose(a[0], [0, 0, 8, 8])
    np.testing.assert_allclose(a[1], [-4, -4, 12, 12])
    # Cell (y=1, x=2) is flat location 1 * 3 + 2 = 5 -> anchors 10, 11; centre (20, 12).
    np.testing.assert_allclose(a[10], [16, 8, 24, 16])
    np.testing.assert_allclose(a[11], [12, 4, 28, 20])
    assert A.feature_map_size((320, 250), 16) == (20, 16)
    shapes = A.anchor_shapes((10,), (0.5, 2.0))
    np.testing.assert_allclose(shapes[:, 0] * shapes[:, 1], [100, 100])
    np.testing.assert_allclose(shapes[:, 1] / shapes[:, 0], [0.5, 2.0])
    with pytest.raises(ValueError):
        A.anchor_shapes((0,))


def test_in_size_range_uses_height_and_open_upper_bound():
    boxes = jnp.array(
        [[0, 0, 100, 9.9], [0, 0, 1, 10], [0, 0, 1, 39.9], [0, 0, 1, 40], [0, 0, 1, 5000]]
    )
    np.testing.assert_array_equal(
        T.in_size_range(boxes, (10, 40)), [False, True, True, False, False]
    )
    np.testing.assert_array_equal(
        T.in_size_range(boxes, (40, 0)), [False, False, False, True, True]
    )


# Faces of one image (G = 5 slots): an in-range face, an out-of-range (large) face,
# an ignore region (a crowd / invalid face), a second in-range face, one padding slot.
GT = jnp.array(
    [
        [10, 10, 30, 30],  # 0: 20 px, in range
        [100, 0, 200, 100],  # 1: 100 px, out of range (range is 10..40)
        [0, 100, 60, 160],  # 2: ignore region
        [250, 250, 270, 282],  # 3: 32 px, in range
        [300, 300, 320, 320],
    ],
    jnp.float32,
)  # 4: padding (looks like a face!)
GT_VALID = jnp.array([True, True, True, True, False])
GT_IGNORE = jnp.array([False, False, True, False, False])
IN_RANGE = T.in_size_range(GT, (10, 40))


def test_assign_hand_made_cases():
    boxes = jnp.array(
        [
            [10, 10, 30, 30],  # 0 exactly face 0 -> positive, matched 0
            [100, 0, 200, 100],  # 1 exactly the out-of-range face -> ignored, NOT negative
            [10, 110, 30, 130],  # 2 inside the ignore region (IoA 1) -> ignored
            [400, 400, 420, 420],  # 3 far from everything -> negative
            [15, 10, 35, 30],  # 4 IoU 0.6 with face 0: between thresholds -> ignored
            [300, 300, 320, 320],  # 5 on the padding slot only -> negative
            [250, 250, 270, 282],  # 6 exactly face 3 -> positive, matched 3
            [110, 10, 130, 30],  # 7 small box inside the large face: IoU 0.04 -> negative
        ],
        jnp.float32,
    )
    a = jax.jit(
        lambda b: T.assign_boxes(
            b, GT, GT_VALID, gt_in_range=IN_RANGE, gt_ignore=GT_IGNORE, pos_iou=0.7, neg_iou=0.3
        )
    )(boxes)
    np.testing.assert_array_equal(a.labels, [1, -1, -1, 0, -1, 0, 1, 0])
    assert int(a.matched[0]) == 0 and int(a.matched[6]) == 3
    np.testing.assert_allclose(a.max_iou[4], 300 / 500, rtol=1e-6)
    # Without the size range the large face is a target: box 1 becomes positive.
    b = T.assign_boxes(boxes, GT, GT_VALID, gt_ignore=GT_IGNORE, pos_iou=0.7, neg_iou=0.3)
    assert int(b.labels[1]) == 1 and int(b.matched[1]) == 1
    # Without the ignore flag the region is a (small-range-out) face; with it in range,
    # box 2 has IoU 400/3600 < 0.3 with it -> negative.
    c = T.assign_boxes(boxes, GT, GT_VALID, gt_in_range=jnp.ones(5, bool), pos_iou=0.7, neg_iou=0.3)
    assert int(c.labels[2]) == 0
    # box_valid masks boxes out.
    d = T.assign_boxes(
        boxes,
        GT,
        GT_VALID,
        gt_in_range=IN_RANGE,
        gt_ignore=GT_IGNORE,
        pos_iou=0.7,
        neg_iou=0.3,
        box_valid=jnp.arange(8) != 0,
    )
    assert int(d.labels[0]) == -1


def test_rpn_targets_low_quality_match_and_deltas_round_trip():
    anchors = jnp.array(A.grid_anchors((8, 8), 8, (16,)))  # 16 px anchors every 8 px
    # A 12 px face placed between anchors: best IoU well below 0.7, still gets a positive.
    gt = jnp.array([[21, 23, 33, 35], [0, 0, 0, 0]], jnp.float32)
    valid = jnp.array([True, False])
    labels, deltas = jax.jit(lambda a, g, v: T.rpn_targets(a, g, v, pos_iou=0.7, neg_iou=0.3))(
        anchors, gt, valid
    )
    ious = np.asarray(B.iou_matrix(np.asarray(anchors), np.asarray(gt[:1])))[:, 0]
    assert ious.max() < 0.7
    pos = np.flatnonzero(np.asarray(labels) == 1)
    np.testing.assert_array_equal(pos, np.flatnonzero(ious == ious.max()))
    dec = B.decode_boxes(np.asarray(deltas)[pos], np.asarray(anchors)[pos])
    np.testing.assert_allclose(dec, np.repeat(np.asarray(gt[:1]), len(pos), 0), atol=1e-4)
    assert np.all(np.asarray(deltas)[np.asarray(labels) != 1] == 0)
    # Out of range: the same face gives no positive, and its best anchors are ignored.
    labels2, _ = T.rpn_targets(anchors, gt, valid, gt_in_range=jnp.array([False, False]))
    assert not np.any(np.asarray(labels2) == 1)
    assert np.all(np.asarray(labels2)[ious >= 0.3] == -1)


def test_roi_targets_labels_deltas_and_landmarks():
    rois = jnp.array(
        [[10, 10, 30, 30], [12, 10, 32, 30], [100, 0, 200, 100], [400, 400, 440, 440]], jnp.float32
    )
    lm = (
        jnp.zeros((5, 5, 2))
        .at[0]
        .set(jnp.array([[15, 15], [25, 15], [20, 20], [16, 25], [24, 25]]))
    )
    lm_valid = jnp.array([True, False, False, False, False])
    out = T.roi_targets(
        rois,
        jnp.ones(4, bool),
        GT,
        GT_VALID,
        gt_in_range=IN_RANGE,
        gt_ignore=GT_IGNORE,
        gt_landmarks=lm,
        gt_landmarks_valid=lm_valid,
    )
    np.testing.assert_array_equal(out["labels"], [1, 1, -1, 0])
    np.testing.assert_allclose(
        B.decode_boxes(
            np.asarray(out["deltas"][1]), np.asarray(rois[1]), weights=T.RCNN_BOX_WEIGHTS
        ),
        GT[0],
        atol=1e-4,
    )
    np.testing.assert_array_equal(out["landmarks_valid"], [True, True, False, False])
    np.testing.assert_allclose(
        B.decode_landmarks(np.asarray(out["landmarks"][1]), np.asarray(rois[1])), lm[0], atol=1e-4
    )


def _ohem_ref(losses, cand, k):
    out = np.zeros_like(cand)
    for r in range(losses.shape[0]):
        key = np.where(cand[r], losses[r], -np.inf)
        top = np.argsort(-key, kind="stable")[:k]
        out[r, top] = cand[r, top]
    return out


@pytest.mark.parametrize("k", [1, 5, 40])
def test_ohem_matches_numpy_top_k(k):
    rng = np.random.default_rng(k)
    losses = rng.exponential(size=(4, 30)).astype(np.float32)
    losses[0, :6] = 1.0  # ties: lower index first
    cand = rng.random((4, 30)) < 0.7
    cand[3] = False  # no candidate at all
    got = jax.jit(lambda l, c: T.ohem_select(l, c, k))(losses, cand)
    np.testing.assert_array_equal(np.asarray(got), _ohem_ref(losses, cand, k))
    assert np.all(np.asarray(got).sum(1) == np.minimum(cand.sum(1), k))


def test_ohem_gradient_flows_only_through_kept():
    losses = jnp.array([[0.1, 3.0, 2.0, 5.0, 0.5]])
    cand = jnp.array([[True, True, True, False, True]])
    g = jax.grad(lambda l: jnp.sum(l * T.ohem_select(l, cand, 2)))(losses)
    np.testing.assert_array_equal(g, [[0, 1, 1, 0, 0]])


def _iou_np(a, b):
    x1, y1 = np.maximum(a[0], b[0]), np.maximum(a[1], b[1])
    x2, y2 = np.minimum(a[2], b[2]), np.minimum(a[3], b[3])
    inter = max(x2 - x1, 0.0) * max(y2 - y1, 0.0)
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def _ohem_nms_ref(losses, cand, boxes, k, iou):
    """OHEM with NMS (Shrivastava et al.), a plain loop: visit the candidates by descending
    loss (ties: lower index), drop one overlapping a kept RoI by IoU > iou, stop at k."""
    out = np.zeros_like(cand)
    for r in range(losses.shape[0]):
        kept = []
        for i in np.argsort(-np.where(cand[r], losses[r], -np.inf), kind="stable"):
            if not cand[r, i] or len(kept) == k:
                break
            if all(_iou_np(boxes[r, i], boxes[r, j]) <= iou for j in kept):
                kept.append(i)
        out[r, kept] = True
    return out


@pytest.mark.parametrize("k,iou", [(3, 0.7), (8, 0.7), (50, 0.5), (8, 0.0)])
def test_ohem_nms_matches_numpy_reference(k, iou):
    rng = np.random.default_rng(k + int(10 * iou))
    n = 40
    xy = rng.uniform(0, 60, size=(3, n, 2))
    # Clusters of near-duplicates (jittered copies of a few boxes), the case NMS is for.
    xy[:, n // 2 :] = xy[:, : n // 2] + rng.normal(scale=2.0, size=(3, n // 2, 2))
    wh = rng.uniform(8, 30, size=(3, n, 2))
    wh[:, n // 2 :] = wh[:, : n // 2]
    boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    losses = rng.exponential(size=(3, n)).astype(np.float32)
    cand = rng.random((3, n)) < 0.8
    cand[2] = False  # no candidate at all
    fn = jax.jit(lambda l, c, b: T.ohem_select(l, c, k, boxes=b, nms_iou=iou))
    got = np.asarray(fn(losses, cand, boxes))
    ref = _ohem_nms_ref(losses, cand, boxes, k, iou) if iou > 0 else _ohem_ref(losses, cand, k)
    np.testing.assert_array_equal(got, ref)
    if iou > 0:
        # NMS changes the selection on these duplicates: not the plain top-k.
        assert not np.array_equal(ref, _ohem_ref(losses, cand, k)) or k >= n


def test_ohem_nms_keeps_leading_axes_and_gradient_mask():
    boxes = jnp.array([[[0, 0, 10, 10], [0, 0, 10, 11], [20, 20, 30, 30]]], jnp.float32)
    losses = jnp.array([[1.0, 2.0, 0.5]])
    cand = jnp.ones((1, 3), bool)
    g = jax.grad(lambda l: jnp.sum(l * T.ohem_select(l, cand, 2, boxes=boxes, nms_iou=0.7)))(losses)
    np.testing.assert_array_equal(g, [[0, 1, 1]])  # box 0 is a duplicate of harder box 1
    with pytest.raises(ValueError):
        T.ohem_select(losses, cand, 2, nms_iou=0.7)


def test_sample_balanced_counts():
    labels = jnp.array([1] * 10 + [0] * 50 + [-1] * 20)
    pos, neg = jax.jit(
        lambda l, k: T.sample_balanced(l, k, num_samples=16, positive_fraction=0.25)
    )(labels, jax.random.key(0))
    assert int(pos.sum()) == 4 and int(neg.sum()) == 12
    assert not np.any(np.asarray(pos) & (np.asarray(labels) != 1))
    assert not np.any(np.asarray(neg) & (np.asarray(labels) != 0))
    pos, neg = T.sample_balanced(jnp.array([1, 0, 0, -1]), jax.random.key(1), num_samples=16)
    assert int(pos.sum()) == 1 and int(neg.sum()) == 2


def test_ioa_and_landmark_codec_against_numpy():
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 50, (6, 2))
    a = np.concatenate([xy, xy + rng.uniform(1, 30, (6, 2))], 1)
    b = a[::-1] + 3.0
    ref = np.zeros((6, 6))
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            ref[i, j] = iw * ih / ((p[2] - p[0]) * (p[3] - p[1]))
    np.testing.assert_allclose(B.ioa_matrix(a, b), ref, rtol=1e-12)
    np.testing.assert_allclose(
        jax.jit(B.ioa_matrix)(a.astype(np.float32), b.astype(np.float32)), ref, rtol=1e-5
    )
    pts = rng.uniform(0, 80, (6, 5, 2))
    enc = B.encode_landmarks(pts, a)
    np.testing.assert_allclose(
        enc[0, 0, 0], (pts[0, 0, 0] - (a[0, 0] + a[0, 2]) / 2) / (a[0, 2] - a[0, 0])
    )
    np.testing.assert_allclose(B.decode_landmarks(enc, a), pts, atol=1e-9)
