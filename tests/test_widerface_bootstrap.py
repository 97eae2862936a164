"""`jaxface.evaluation.widerface_bootstrap`: the per-image decomposition of the official
WIDER AP equals the plain evaluation of the explicitly resampled images."""

import numpy as np
import pytest

from jaxface.evaluation import stats
from jaxface.evaluation import widerface as wider_eval
from jaxface.evaluation.widerface_bootstrap import ResampledWiderAP, take_images
from jaxface.tasks.detection_evaluators import synthetic_ground_truth


def _scene_set(seed, n_img=24, det_seed=None):
    """Random faces (8-120 px, some invalid / blurred) and detections (from ``det_seed``,
    default ``seed``): jittered faces, duplicates and false boxes with random scores; a
    few images without faces or detections."""
    rng = np.random.default_rng(seed)
    faces, per = [], []
    for i in range(n_img):
        n = 0 if i % 7 == 3 else int(rng.integers(1, 9))
        h = rng.uniform(8, 120, n)
        x, y = rng.uniform(0, 300, n), rng.uniform(0, 300, n)
        boxes = np.stack([x, y, x + 0.8 * h, y + h], 1)
        faces.append(
            dict(
                boxes=boxes,
                blur=rng.integers(0, 3, n),
                occlusion=rng.integers(0, 3, n),
                pose=rng.integers(0, 2, n),
                invalid=(rng.random(n) < 0.1).astype(np.int32),
            )
        )
    rng = rng if det_seed is None else np.random.default_rng(det_seed)
    for i, f in enumerate(faces):
        boxes, n = f["boxes"], len(f["boxes"])
        if i % 5 == 1:
            per.append(None)
            continue
        hit = boxes[rng.random(n) < 0.7]
        hit = hit + rng.normal(0, 2, hit.shape)
        dup = hit[: max(0, len(hit) // 3)] + rng.normal(0, 1, (max(0, len(hit) // 3), 4))
        fx, fy = rng.uniform(0, 300, 5), rng.uniform(0, 300, 5)
        fw = rng.uniform(8, 80, 5)
        false = np.stack([fx, fy, fx + fw, fy + fw], 1)
        b = np.concatenate([hit, dup, false])
        s = rng.normal(0, 3, len(b)) + np.r_[np.full(len(hit), 2.0), np.zeros(len(b) - len(hit))]
        xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], 1)
        per.append((xywh, s))
    gt = synthetic_ground_truth(faces, size_buckets=[(10, 28), (28, 80), (80, 0)])
    return gt, wider_eval.Predictions.from_lists(per)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_resampled_ap_equals_plain_evaluation_of_resampled_images(seed):
    gt, preds = _scene_set(seed)
    ap = ResampledWiderAP(gt, preds)
    n = gt.face.num_images
    rng = np.random.default_rng(100 + seed)
    rows = [np.arange(n), rng.integers(0, n, n), rng.integers(0, n, n), rng.integers(0, 4, n)]
    got = ap(np.stack(rows))
    assert got.shape == (4, len(ap.settings))
    for r, idx in enumerate(rows):
        ref = wider_eval.evaluate(*take_images(gt, preds, idx))
        want = np.array([ref[s].ap for s in ap.settings])
        np.testing.assert_allclose(got[r], want, rtol=0, atol=1e-12, equal_nan=True)
        np.testing.assert_allclose(ap(idx), want, rtol=0, atol=1e-12, equal_nan=True)
    # The full set in order is the plain evaluation itself.
    plain = wider_eval.evaluate(gt, preds)
    np.testing.assert_allclose(
        got[0], [plain[s].ap for s in ap.settings], rtol=0, atol=1e-12, equal_nan=True
    )


def test_normalisation_follows_the_drawn_images():
    """Dropping the image with the extreme scores moves the thresholds: the AP of the
    resample differs from one computed with the full set's normalisation, and matches the
    plain evaluation of the resample."""
    gt, preds = _scene_set(5, n_img=10)
    img = preds.image_index
    top = int(img[np.argmax(preds.scores)])
    idx = np.array([i for i in range(10) if i != top] + [0])
    ap = ResampledWiderAP(gt, preds, settings=["hard"])
    ref = wider_eval.evaluate(*take_images(gt, preds, idx), settings=["hard"])
    assert ap(idx)[0] == pytest.approx(ref["hard"].ap, abs=1e-12)


def test_paired_bootstrap_through_stats_is_the_plain_per_replicate_difference():
    """`stats.paired_bootstrap` with the vectorised AP: replicate b is the plain AP
    difference on the b-th resample of `stats.bootstrap_indices`."""
    gt, preds_a = _scene_set(3)
    gt_b, preds_b = _scene_set(3, det_seed=4)  # the same faces, other detections
    np.testing.assert_array_equal(gt.face.boxes, gt_b.face.boxes)
    a, b = ResampledWiderAP(gt, preds_a), ResampledWiderAP(gt, preds_b)
    j = a.settings.index("hard")
    res = stats.paired_bootstrap(
        metric_fn_a=lambda i: a(i)[:, j],
        metric_fn_b=lambda i: b(i)[:, j],
        n_units=gt.face.num_images,
        vectorized=True,
        n_boot=6,
        seed=7,
    )
    first = next(stats.bootstrap_indices(gt.face.num_images, 6, seed=7))
    for r in range(6):
        ea = wider_eval.evaluate(*take_images(gt, preds_a, first[r]))["hard"].ap
        eb = wider_eval.evaluate(*take_images(gt, preds_b, first[r]))["hard"].ap
        assert res.replicates[r] == pytest.approx(ea - eb, abs=1e-12)
    plain = (
        wider_eval.evaluate(gt, preds_a)["hard"].ap - wider_eval.evaluate(gt, preds_b)["hard"].ap
    )
    assert res.estimate == pytest.approx(plain, abs=1e-12)
