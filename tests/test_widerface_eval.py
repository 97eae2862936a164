"""WIDER FACE evaluation: hand-computed cases, file I/O, and the real ground truth
against a slow straight-line transcription of the official MATLAB code."""

import json
import math
from fractions import Fraction

import numpy as np
import pytest

from jaxface.data.widerface import LABEL_NAMES, WiderFaceAnnotations
from jaxface.evaluation import widerface as E


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
def make_gt(images, dtype=np.int32):
    """images: list of (boxes [[x, y, w, h], ...], kept 1-based indices). One setting 'easy'."""
    counts = [len(b) for b, _ in images]
    boxes = np.array([bx for b, _ in images for bx in b], dtype).reshape(-1, 4)
    keep = np.zeros(len(boxes), bool)
    off = np.concatenate([[0], np.cumsum(counts)])
    for i, (_, k) in enumerate(images):
        for j in k:
            keep[off[i] + j - 1] = True
    common = dict(
        events=("0--Test",),
        image_event=np.zeros(len(images), np.int32),
        image_names=tuple(f"img_{i}" for i in range(len(images))),
        image_paths=tuple(f"0--Test/img_{i}.jpg" for i in range(len(images))),
        face_offsets=off.astype(np.int64),
        boxes=boxes,
        labels={k: np.zeros(len(boxes), np.int16) for k in LABEL_NAMES},
    )
    face = WiderFaceAnnotations(**common, source="face")
    easy = WiderFaceAnnotations(
        **common, keep=keep, keep_list_lengths=np.array([len(k) for _, k in images]), source="easy"
    )
    return E.WiderGroundTruth(face=face, settings={"easy": easy})


def subset_annotations(a, idx):
    idx = np.asarray(idx)
    rows = np.concatenate([np.arange(a.face_offsets[i], a.face_offsets[i + 1]) for i in idx])
    counts = a.faces_per_image[idx]
    return WiderFaceAnnotations(
        events=a.events,
        image_event=a.image_event[idx],
        image_names=tuple(a.image_names[i] for i in idx),
        image_paths=tuple(a.image_paths[i] for i in idx),
        face_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        boxes=a.boxes[rows],
        labels={k: v[rows] for k, v in a.labels.items()},
        keep=None if a.keep is None else a.keep[rows],
        keep_list_lengths=None if a.keep_list_lengths is None else a.keep_list_lengths[idx],
        source=a.source,
    )


# ---------------------------------------------------------------------------
# Hand-computed tiny case
# ---------------------------------------------------------------------------
def test_hand_computed_case():
    # img0: kept face A, ignored face B.  img1: kept face C.  img2: kept face D, no detections.
    # img3: no face at all but one detection (skipped entirely, as the official tool does).
    gt = make_gt(
        [
            ([[0, 0, 10, 10], [50, 50, 10, 10]], [1]),
            ([[0, 0, 20, 20]], [1]),
            ([[5, 5, 8, 8]], [1]),
            ([], []),
        ]
    )
    preds = E.Predictions.from_lists(
        [
            (
                [[0, 0, 10, 10], [0.4, 0, 10, 10], [50, 50, 10, 10], [200, 200, 5, 5]],
                [1.0, 0.75, 0.6, 0.0],  # TP on A, duplicate of A (FP), on ignored B (dropped), FP
            ),
            ([[1, 1, 19, 19]], [0.5]),  # TP on C
            None,
            ([[0, 0, 10, 10]], [0.9]),
        ]
    )
    r = E.evaluate(gt, preds)["easy"]
    t = np.arange(1, 1001)
    # s' = s (min 0, max 1); s' >= 1 - t/1000 <=> t >= 1000 (1 - s').
    np.testing.assert_array_equal(r.tp, np.where(t >= 500, 2, 1))
    np.testing.assert_array_equal(r.proposals, 1 + (t >= 250) + (t >= 500) + (t >= 1000))
    assert r.num_faces == 3
    np.testing.assert_allclose(r.recall, np.where(t >= 500, 2 / 3, 1 / 3))
    # VOCap: 1/3 * 1 + 1/3 * max(prec at recall 2/3) = 1/3 + 1/3 * 2/3.
    assert r.ap == pytest.approx(5 / 9, abs=1e-12)


def test_first_face_with_iou_half_wins_not_the_best():
    # Faces A (first) and B overlap with IoU 0.83. A detection exactly on B is given
    # to A by MATLAB's integer overlap (max over {0, 1} -> first index), so B stays
    # unmatched and a second detection exactly on A is a false positive.
    gt = make_gt([([[0, 0, 10, 10], [1, 0, 10, 10]], [1, 2])])
    preds = E.Predictions.from_lists([([[1, 0, 10, 10], [0, 0, 10, 10]], [1.0, 0.0])])
    m = E.match_detections(gt.settings["easy"], preds)
    assert m.matched.tolist() == [True, True]
    assert m.face.tolist() == [0, 0]
    assert m.first.tolist() == [True, False]
    r = E.evaluate(gt, preds)["easy"]
    assert r.tp[-1] == 1 and r.proposals[-1] == 2
    # Float ground truth: MATLAB computes double IoU and takes the best face.
    gtf = make_gt([([[0, 0, 10, 10], [1, 0, 10, 10]], [1, 2])], dtype=np.float64)
    m = E.match_detections(gtf.settings["easy"], preds)
    assert m.face.tolist() == [1, 0] and m.first.tolist() == [True, True]


def test_score_normalisation_rules():
    gt = make_gt([([[0, 0, 10, 10], [30, 0, 10, 10]], [1, 2])])
    boxes = [[0, 0, 10, 10], [30, 0, 10, 10], [60, 60, 4, 4]]
    base = E.evaluate(gt, E.Predictions.from_lists([(boxes, [0.9, 0.3, 0.1])]))["easy"]
    # Only the order and the normalised spacing matter: an affine map of the scores
    # that keeps them exact in float32 gives the same curves.
    aff = E.evaluate(
        gt, E.Predictions.from_lists([(boxes, [0.9 * 4 - 2, 0.3 * 4 - 2, 0.1 * 4 - 2])])
    )["easy"]
    np.testing.assert_array_equal(base.tp, aff.tp)
    np.testing.assert_array_equal(base.proposals, aff.proposals)
    # Equal scores: (s - min) / 0 = NaN in MATLAB: nothing passes any threshold.
    flat = E.evaluate(gt, E.Predictions.from_lists([(boxes, [0.5, 0.5, 0.5])]))["easy"]
    assert flat.tp.sum() == 0 and np.isnan(flat.precision).all() and flat.ap == 0.0
    # single-precision normalisation, compared to the double thresholds.
    s = np.array([0.0, 0.7, 1.0])
    n = E.normalize_scores(s)
    assert n.dtype == np.float64 and n[1] == float(np.float32(0.7))
    assert E._first_threshold(n, 1000).tolist() == [1000, 301, 1]  # f32(0.7) < 0.7 = tau_300
    # max starts at realmin('single'): all-negative scores normalise against ~0.
    neg = E.normalize_scores(np.array([-2.0, -1.0]))
    assert neg[1] == pytest.approx(0.5)


def test_voc_ap_handles_nan_precision():
    rec = np.array([0.0, 0.5, 0.5, 1.0])
    prec = np.array([np.nan, 1.0, 0.5, 0.25])
    assert E.voc_ap(rec, prec) == pytest.approx(0.5 * 1.0 + 0.5 * 0.25)


# ---------------------------------------------------------------------------
# Prediction files
# ---------------------------------------------------------------------------
def test_prediction_files_round_trip_and_missing(tmp_path):
    gt = make_gt([([[0, 0, 10, 10]], [1]), ([[5, 5, 8, 8]], [1]), ([[1, 1, 3, 3]], [1])])
    b0 = np.array([[0.1, 0.2, 10.3, 9.7], [3.0, 4.0, -1.0, 2.0]])  # negative width kept
    s0 = np.array([0.123456789012345, 0.9])
    E.write_predictions(
        tmp_path,
        ["0--Test/img_0.jpg", "0--Test/img_1.jpg"],
        [b0, np.zeros((0, 4))],
        [s0, np.zeros(0)],
    )
    text = (tmp_path / "0--Test" / "img_0.txt").read_text().splitlines()
    assert text[0] == "img_0" and text[1] == "2"
    p = E.read_predictions(tmp_path, gt.face)  # img_2.txt is missing: no detections
    assert p.offsets.tolist() == [0, 2, 2, 2]
    np.testing.assert_array_equal(p.scores, s0[::-1])  # sorted by descending score
    np.testing.assert_array_equal(p.boxes, b0[::-1])


@pytest.mark.parametrize(
    "content,line,msg",
    [
        ("img\n", 2, "detection count"),
        ("img\nabc\n", 2, "non-negative integer"),
        ("img\n-1\n", 2, "non-negative integer"),
        ("img\n2\n1 2 3 4 0.5\n", 4, "count says 2"),
        ("img\n1\n1 2 3 4\n", 3, "expected 5 numbers"),
        ("img\n1\n1 2 3 x 0.5\n", 3, "expected 5 numbers"),
        ("img\n2\n1 2 3 4 0.5\n1 2 3 4 nan\n", 4, "non-finite"),
        ("img\n1\n1 2 3 4 inf\n", 3, "non-finite"),
        ("img\n1\n1 2 3 4 0.5\n9 9 9 9 0.1\n", 4, "unexpected content"),
    ],
)
def test_malformed_prediction_file(tmp_path, content, line, msg):
    p = tmp_path / "x.txt"
    p.write_text(content)
    with pytest.raises(E.PredictionFormatError, match=msg) as e:
        E.read_prediction_file(p)
    assert f"{p}:{line}:" in str(e.value)


def test_prediction_file_lenient_forms(tmp_path):
    p = tmp_path / "x.txt"
    p.write_text("img\n2.0\n1,2,3,4,0.5\n 5 6 7 8 1e-3 \n\n\n")
    b, s = E.read_prediction_file(p)
    assert b.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]] and s.tolist() == [0.5, 0.001]


# ---------------------------------------------------------------------------
# Straight-line transcription of the official MATLAB code (slow, independent).
# ---------------------------------------------------------------------------
I32_MIN, I32_MAX = -(2**31), 2**31 - 1


def m_int32(v):
    """MATLAB double -> int32: round half away from zero (exact, via Fraction), saturate, NaN -> 0."""
    if isinstance(v, float) and math.isnan(v):
        return 0
    if isinstance(v, float) and math.isinf(v):
        return I32_MAX if v > 0 else I32_MIN
    q = Fraction(v)
    r = math.floor(abs(q) + Fraction(1, 2))
    r = r if q >= 0 else -r
    return max(I32_MIN, min(I32_MAX, r))


def m_boxoverlap(a_rows, b):
    """boxoverlap.m with `a` int32 (rows of python ints) and `b` double."""
    out = []
    for a in a_rows:
        x1 = m_int32(max(a[0], b[0]))
        y1 = m_int32(max(a[1], b[1]))
        x2 = m_int32(min(a[2], b[2]))
        y2 = m_int32(min(a[3], b[3]))
        w = m_int32(m_int32(x2 - x1) + 1)
        h = m_int32(m_int32(y2 - y1) + 1)
        inter = m_int32(w * h)
        aarea = m_int32(m_int32(m_int32(a[2] - a[0]) + 1) * m_int32(m_int32(a[3] - a[1]) + 1))
        barea = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
        union = m_int32(m_int32(float(aarea) + barea) - inter)
        if union == 0:
            o = I32_MAX if inter > 0 else (I32_MIN if inter < 0 else 0)
        else:
            o = m_int32(inter / union)
        if w <= 0 or h <= 0:
            o = 0
        out.append(o)
    return out


def m_max(a, b):
    if math.isnan(a):
        return b
    if math.isnan(b):
        return a
    return max(a, b)


def official_reference(gt_boxes, keep_index, preds, thresh_num=1000, iou_thresh=0.5):
    """gt_boxes[j]: list of [x y w h] ints; keep_index[j]: 1-based list; preds[j]: list of [x y w h s] or None."""
    # read_pred: sort each image, descending, stable.
    pred_list = []
    for p in preds:
        if not p:
            pred_list.append(None)
            continue
        order = sorted(range(len(p)), key=lambda k: -p[k][4])
        pred_list.append([list(p[k]) for k in order])
    # norm_score in single precision.
    max_score = np.float32(np.finfo(np.float32).tiny)
    min_score = np.float32(np.finfo(np.float32).max)
    for p in pred_list:
        if p is None:
            continue
        max_score = np.float32(max(float(max_score), max(r[4] for r in p)))
        min_score = np.float32(min(float(min_score), min(r[4] for r in p)))
    for p in pred_list:
        if p is None:
            continue
        for r in p:
            with np.errstate(invalid="ignore", divide="ignore"):
                r[4] = float((np.float32(r[4]) - min_score) / (max_score - min_score))
    # evaluation.m
    org = [[0, 0] for _ in range(thresh_num)]
    count_face = 0
    for j in range(len(gt_boxes)):
        gt = gt_boxes[j]
        pred_info = pred_list[j]
        count_face += len(keep_index[j])
        if len(gt) == 0 or pred_info is None:
            continue
        ignore = [0] * len(gt)
        for k in keep_index[j]:
            ignore[k - 1] = 1
        # image_evaluation
        g = [[b[0], b[1], m_int32(b[0] + b[2]), m_int32(b[1] + b[3])] for b in gt]
        pi = [[r[0], r[1], r[0] + r[2], r[1] + r[3], r[4]] for r in pred_info]
        recall_list = [0] * len(gt)
        proposal_list = [1] * len(pi)
        pred_recall = [0] * len(pi)
        for h in range(len(pi)):
            overlap = m_boxoverlap(g, pi[h][:4])
            mx = max(overlap)
            idx = overlap.index(mx)
            if mx >= iou_thresh:
                if ignore[idx] == 0:
                    recall_list[idx] = -1
                    proposal_list[h] = -1
                elif recall_list[idx] == 0:
                    recall_list[idx] = 1
            pred_recall[h] = sum(1 for v in recall_list if v == 1)
        # image_pr_info
        for t in range(1, thresh_num + 1):
            thresh = 1 - t / thresh_num
            r_index = None
            for k in range(len(pi)):
                if pi[k][4] >= thresh:
                    r_index = k
            if r_index is None:
                continue
            org[t - 1][0] += sum(1 for v in proposal_list[: r_index + 1] if v == 1)
            org[t - 1][1] += pred_recall[r_index]
    prec, rec = [], []
    for t in range(thresh_num):
        prec.append(org[t][1] / org[t][0] if org[t][0] else float("nan"))
        rec.append(org[t][1] / count_face)
    # VOCap
    mrec = [0.0] + rec + [1.0]
    mpre = [0.0] + prec + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = m_max(mpre[i], mpre[i + 1])
    ap = 0.0
    for i in range(1, len(mrec)):
        if mrec[i] != mrec[i - 1]:
            ap += (mrec[i] - mrec[i - 1]) * mpre[i]
    return ap, [o[1] for o in org], [o[0] for o in org]


def jittered_predictions(face, rng, *, drop=0.15, dup=0.1, fp_per_image=2):
    """Predictions built from the ground truth: jittered, dropped, duplicated boxes,
    random false positives, some scores on a coarse grid (ties and exact thresholds),
    and a few degenerate boxes (negative/zero size, .5 corners)."""
    per = []
    for i in range(face.num_images):
        g = face.boxes[face.face_offsets[i] : face.face_offsets[i + 1]].astype(np.float64)
        n = len(g)
        k = rng.random(n) >= drop
        size = np.maximum(g[:, 2:], 1.0)
        b = g[k].copy()
        b[:, :2] += rng.normal(0, 0.12, (k.sum(), 2)) * size[k]
        b[:, 2:] *= np.exp(rng.normal(0, 0.12, (k.sum(), 2)))
        s = rng.uniform(0.3, 1.0, k.sum())
        d = rng.random(n) < dup
        b2 = g[d] + rng.normal(0, 0.5, (d.sum(), 4))
        s2 = rng.uniform(0.0, 0.8, d.sum())
        m = rng.integers(0, fp_per_image + 1)
        b3 = np.concatenate([rng.uniform(0, 900, (m, 2)), rng.uniform(3, 80, (m, 2))], 1)
        s3 = rng.uniform(0.0, 0.6, m)
        bb = np.concatenate([b, b2, b3])
        ss = np.concatenate([s, s2, s3])
        coarse = rng.random(len(ss)) < 0.3
        ss[coarse] = np.round(ss[coarse], 2)
        if len(bb) and rng.random() < 0.2:  # degenerate corners
            bb[0, 0] = np.floor(bb[0, 0]) + 0.5
            bb[-1, 2] = -rng.uniform(0.2, 3.0)
        if len(bb) == 0 and rng.random() < 0.5:
            per.append(None)
            continue
        per.append((bb, ss))
    return E.Predictions.from_lists(per)


def _load_real(real_data):
    return E.load_ground_truth(real_data("widerface", "ground_truth"))


def test_real_gt_perfect_predictions(real_data, tmp_path, capsys):
    gt = _load_real(real_data)
    face = gt.face
    assert (face.num_images, face.num_faces) == (3226, 39708)
    assert {s: int(a.keep.sum()) for s, a in gt.settings.items()} == {
        "easy": 7211,
        "medium": 13319,
        "hard": 31958,
    }
    rng = np.random.default_rng(0)
    scores = rng.random(face.num_faces)
    per = [
        (
            face.boxes[face.face_offsets[i] : face.face_offsets[i + 1]],
            scores[face.face_offsets[i] : face.face_offsets[i + 1]],
        )
        for i in range(face.num_images)
    ]
    preds = E.Predictions.from_lists(per)
    res = E.evaluate(gt, preds)
    for s, r in res.items():
        assert r.num_faces == int(gt.settings[s].keep.sum())
        assert 0.998 < r.ap <= 1.0, (s, r.ap)
        # Every kept face is found except the few the official rules cannot match
        # (inverted boxes, faces given to an earlier overlapping face).
        assert r.num_faces - 20 <= r.tp[-1] < r.num_faces + 1
    # Through the folder format and the CLI: same numbers.
    pred_dir, out_dir = tmp_path / "pred", tmp_path / "out"
    E.write_predictions(pred_dir, list(face.image_paths), [p[0] for p in per], [p[1] for p in per])
    assert (
        E.main(
            [
                "--pred",
                str(pred_dir),
                "--gt",
                str(real_data("widerface", "ground_truth")),
                "--out",
                str(out_dir),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    for s in ("Easy", "Medium", "Hard"):
        assert f"{s} Val AP: {res[s.lower()].ap:.4f}" in printed
    payload = json.loads((out_dir / "widerface_results.json").read_text())
    assert payload["hard"]["ap"] == pytest.approx(res["hard"].ap, abs=1e-12)
    for s in ("easy", "medium", "hard"):
        assert (out_dir / f"pr_{s}.png").stat().st_size > 1000
    from PIL import Image

    one = E.plot_pr(res, tmp_path / "pr_all.png")  # the evaluators' one-picture form
    with Image.open(one) as im:
        assert im.format == "PNG" and im.size == (500, 400)


def test_real_gt_jittered_matches_official_transcription(real_data):
    gt = _load_real(real_data)
    face = gt.face
    rng = np.random.default_rng(1)
    # Images where the official first-face rule or degenerate ground truth matters,
    # plus random small images.
    special = [29, 75, 813, 1060, 1828, 1885, 2501, 2751, 3086]
    small = np.flatnonzero(face.faces_per_image <= 30)
    pick = np.unique(np.concatenate([special, rng.choice(small, 110, replace=False)]))
    sub_face = subset_annotations(face, pick)
    sub = E.WiderGroundTruth(
        face=sub_face, settings={s: subset_annotations(a, pick) for s, a in gt.settings.items()}
    )
    preds = jittered_predictions(sub_face, rng)
    assert preds.num_detections > 800
    res = E.evaluate(sub, preds)
    gt_boxes = [
        sub_face.boxes[sub_face.face_offsets[i] : sub_face.face_offsets[i + 1]].tolist()
        for i in range(sub_face.num_images)
    ]
    raw = []
    for i in range(preds.num_images):
        a, b = preds.offsets[i], preds.offsets[i + 1]
        raw.append(
            None
            if a == b
            else np.concatenate([preds.boxes[a:b], preds.scores[a:b, None]], 1).tolist()
        )
    for s in ("easy", "hard"):
        a = sub.settings[s]
        keep_index = [
            (np.flatnonzero(a.keep[a.face_offsets[i] : a.face_offsets[i + 1]]) + 1).tolist()
            for i in range(a.num_images)
        ]
        ap, tp, prop = official_reference(gt_boxes, keep_index, raw)
        np.testing.assert_array_equal(res[s].tp, tp)
        np.testing.assert_array_equal(res[s].proposals, prop)
        assert res[s].ap == pytest.approx(ap, abs=1e-12)
        assert 0.2 < ap < 0.98  # jitter/drops/duplicates cost AP


def test_real_gt_jittered_full_set_lower_than_perfect(real_data):
    gt = _load_real(real_data)
    preds = jittered_predictions(gt.face, np.random.default_rng(2))
    res = E.evaluate(gt, preds)
    for s, r in res.items():
        assert 0.3 < r.ap < 0.97, (s, r.ap)
        assert np.all(np.diff(r.recall) >= 0)


@pytest.mark.parametrize("dtype", [np.int32, np.float64])
def test_candidate_pruning_is_exact_against_all_pairs(dtype):
    """match_detections (pruned pairs) equals the official max/arg-max over *all* faces,
    on adversarial boxes: sizes from 1 to 400 px, fractional and .5 corners,
    widths in (-1, 0], zero-size faces, crowded images."""
    from jaxface.ops.boxes import iou, matlab_int32_boxoverlap, xywh_to_xyxy

    rng = np.random.default_rng(3)
    images = []
    for _ in range(12):
        n = int(rng.integers(0, 40))
        wh = np.exp(rng.uniform(0, np.log(400), (n, 2)))
        xy = rng.uniform(0, 300, (n, 2))
        g = np.round(np.concatenate([xy, wh], 1)).astype(int)
        if n:
            g[0, 2] = 0  # zero width
        images.append((g.tolist(), list(range(1, n + 1))))
    gt = make_gt(images, dtype=dtype)
    ann = gt.settings["easy"]
    per = []
    for i in range(len(images)):
        g = np.asarray(images[i][0], np.float64).reshape(-1, 4)
        m = 150
        src = g[rng.integers(0, len(g), m)] if len(g) else np.zeros((m, 4))
        d = src.copy()
        d[:, :2] += rng.normal(0, 0.2, (m, 2)) * np.maximum(src[:, 2:], 1)
        d[:, 2:] *= np.exp(rng.normal(0, 0.3, (m, 2)))
        d[-20:] = np.concatenate([rng.uniform(0, 300, (20, 2)), rng.uniform(1, 600, (20, 2))], 1)
        d[: m // 5, :2] = np.floor(d[: m // 5, :2]) + 0.5
        d[m // 5 : m // 4, 2] = -rng.uniform(0, 1, m // 4 - m // 5)
        per.append((d, rng.random(m)))
    preds = E.Predictions.from_lists(per)
    got = E.match_detections(ann, preds)
    for i in range(len(images)):
        s, e = preds.offsets[i], preds.offsets[i + 1]
        fs, fe = ann.face_offsets[i], ann.face_offsets[i + 1]
        a = xywh_to_xyxy(ann.boxes[fs:fe].astype(np.float64))
        b = xywh_to_xyxy(preds.boxes[s:e])
        if fe == fs:
            assert not got.matched[s:e].any()
            continue
        if dtype == np.int32:
            o = matlab_int32_boxoverlap(a[:, None, :], b[None, :, :])
        else:
            o = iou(a[:, None, :], b[None, :, :], plus_one=True)
        mx, idx = o.max(0), o.argmax(0)
        np.testing.assert_array_equal(got.matched[s:e], mx >= 0.5)
        np.testing.assert_array_equal(got.face[s:e][mx >= 0.5], fs + idx[mx >= 0.5])
    assert got.matched.sum() > 100
