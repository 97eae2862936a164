"""``semantics="python-port"`` against the Python port itself (a NumPy transcription of
wondervictor/WiderFace-Evaluation in tests/widerface_port_reference.py): exact APs on a
synthetic ground-truth folder built here and on the real WIDER FACE val ground truth."""

import numpy as np
import pytest

import widerface_port_reference as port
from jaxface.evaluation import widerface as E

SETTINGS = ("easy", "medium", "hard")


def _cell(items):
    c = np.empty((len(items), 1), dtype=object)
    for i, v in enumerate(items):
        c[i, 0] = v
    return c


def _write_gt_dir(root, rng, num_events=2, images_per_event=12):
    """eval_tools-style .mat files: crowded images with overlapping faces (so the best
    face and the first face with IoU >= 0.5 differ), one image without faces, nested
    easy/medium/hard keep lists (one image keeps nothing)."""
    import scipy.io

    root.mkdir(parents=True)
    events, files, boxes, keeps = [], [], [], {s: [] for s in SETTINGS}
    for e in range(num_events):
        ev_files, ev_boxes, ev_keep = [], [], {s: [] for s in SETTINGS}
        for j in range(images_per_event):
            n = 0 if (e, j) == (0, 3) else int(rng.integers(1, 25))
            xy = rng.integers(0, 400, (n, 2))
            wh = rng.integers(4, 90, (n, 2))
            if n > 4:  # near-duplicates: pairs of faces with IoU around 0.5-0.8
                k = n // 3
                xy[1 : k + 1] = xy[:k] + rng.integers(-6, 7, (k, 2))
                wh[1 : k + 1] = np.maximum(wh[:k] + rng.integers(-8, 9, (k, 2)), 2)
            ev_files.append(np.array([f"{e}_img_{j}"]))
            ev_boxes.append(np.concatenate([xy, wh], 1).astype(np.int32).reshape(-1, 4))
            hard = np.flatnonzero(rng.random(n) < 0.85) + 1
            medium = hard[rng.random(hard.size) < 0.6]
            easy = medium[rng.random(medium.size) < 0.5]
            if (e, j) == (1, 2):
                hard = medium = easy = np.zeros(0, np.int64)
            for s, k in zip(SETTINGS, (easy, medium, hard)):
                ev_keep[s].append(np.asarray(k, np.uint16).reshape(-1, 1))
        events.append(np.array([f"{e}--Event{e}"]))
        files.append(_cell(ev_files))
        boxes.append(_cell(ev_boxes))
        for s in SETTINGS:
            keeps[s].append(_cell(ev_keep[s]))
    base = {
        "event_list": _cell(events),
        "file_list": _cell(files),
        "face_bbx_list": _cell(boxes),
    }
    scipy.io.savemat(root / "wider_face_val.mat", base)
    for s in SETTINGS:
        scipy.io.savemat(root / f"wider_{s}_val.mat", dict(base, gt_list=_cell(keeps[s])))


def _predictions(face, rng, *, images=None, order="shuffled", scores="unit"):
    """Per image of ``face`` (all, or only ``images``; the others get an empty file):
    jittered faces, duplicates, false positives, boxes with .5 and 1-decimal corners;
    scores in (0, 1) with ties on the threshold grid, or logits above 1."""
    chosen = set(range(face.num_images) if images is None else np.asarray(images).tolist())
    boxes, score_list = [], []
    for i in range(face.num_images):
        if i not in chosen:
            boxes.append(np.zeros((0, 4)))
            score_list.append(np.zeros((0,)))
            continue
        g = face.boxes[face.face_offsets[i] : face.face_offsets[i + 1]].astype(np.float64)
        k = rng.random(len(g)) >= 0.15
        b = g[k].copy()
        size = np.maximum(b[:, 2:], 1.0)
        b[:, :2] += rng.normal(0, 0.12, b[:, :2].shape) * size
        b[:, 2:] *= np.exp(rng.normal(0, 0.12, b[:, 2:].shape))
        d = rng.random(len(g)) < 0.15
        b2 = g[d] + rng.normal(0, 1.0, (int(d.sum()), 4))
        m = int(rng.integers(0, 3))
        b3 = np.concatenate([rng.uniform(0, 450, (m, 2)), rng.uniform(3, 80, (m, 2))], 1)
        bb = np.round(np.concatenate([b, b2, b3]) * 2) / 2
        bb[rng.random(len(bb)) < 0.3] += 0.1
        ss = rng.uniform(0.01, 0.99, len(bb))
        coarse = rng.random(len(ss)) < 0.3
        ss[coarse] = np.round(ss[coarse], 3)  # ties and exact thresholds
        if scores == "logits":
            ss = 2.0 + 4.0 * ss
        if order == "sorted":
            o = np.argsort(-ss, kind="stable")
            bb, ss = bb[o], ss[o]
        elif order == "shuffled":
            o = rng.permutation(len(ss))
            bb, ss = bb[o], ss[o]
        boxes.append(bb)
        score_list.append(ss)
    return boxes, score_list


def _compare(gt_dir, face_paths, boxes, scores, pred_dir):
    """Writes the folder; returns (port APs, python-port results, official results)."""
    E.write_predictions(pred_dir, face_paths, boxes, scores)
    gt = E.load_ground_truth(gt_dir)
    ref = port.evaluation(str(pred_dir), str(gt_dir))
    ours = E.evaluate(
        gt, E.read_predictions(pred_dir, gt.face, sort=False), semantics="python-port"
    )
    official = E.evaluate(gt, E.read_predictions(pred_dir, gt.face))
    return ref, ours, official


@pytest.mark.parametrize(
    "seed,order,scores",
    [
        (0, "shuffled", "unit"),
        (1, "sorted", "unit"),
        (2, "shuffled", "logits"),
        (3, "sorted", "logits"),
    ],
)
def test_synthetic_ground_truth_equals_port(tmp_path, seed, order, scores):
    rng = np.random.default_rng(seed)
    gt_dir = tmp_path / "gt"
    _write_gt_dir(gt_dir, rng)
    face = E.load_ground_truth(gt_dir).face
    boxes, sc = _predictions(face, rng, order=order, scores=scores)
    ref, ours, official = _compare(gt_dir, list(face.image_paths), boxes, sc, tmp_path / "pred")
    for s, ap in zip(SETTINGS, ref):
        assert ours[s].ap == float(ap), (s, ours[s].ap, ap)  # bit for bit
        assert 0.05 < ap < 1.0
    assert any(ours[s].ap != official[s].ap for s in SETTINGS)


def test_python_port_picks_the_best_face_official_the_first():
    """Two kept faces; the detection overlaps face 1 with IoU 0.75 and face 2 with
    0.91: the port matches face 2, MATLAB's rounded int32 overlap face 1."""
    from jaxface.data.widerface import LABEL_NAMES, WiderFaceAnnotations

    boxes = np.array([[0, 0, 20, 20], [4, 0, 20, 20]], np.int32)
    ann = WiderFaceAnnotations(
        events=("0--Test",),
        image_event=np.zeros(1, np.int32),
        image_names=("a",),
        image_paths=("0--Test/a.jpg",),
        face_offsets=np.array([0, 2]),
        boxes=boxes,
        labels={k: np.zeros(2, np.int16) for k in LABEL_NAMES},
        keep=np.ones(2, bool),
        keep_list_lengths=np.array([2]),
    )
    preds = E.Predictions.from_lists([(np.array([[3.0, 0.0, 20.0, 20.0]]), np.array([0.9]))])
    assert E.match_detections_python_port(ann, preds).face.tolist() == [1]
    assert E.match_detections(ann, preds).face.tolist() == [0]
    ref = port.bbox_overlaps(
        np.array([[3.0, 0.0, 23.0, 20.0]]), np.array([[0, 0, 20, 20], [4, 0, 24, 20.0]])
    )
    assert ref.argmax() == 1 and 0.5 < ref[0, 0] < ref[0, 1]


def test_python_port_score_normalisation():
    s = np.array([2.0, 3.0, 5.0])  # the port's min starts at 1: (s - 1) / 4
    np.testing.assert_array_equal(E.normalize_scores(s, semantics="python-port"), (s - 1.0) / 4.0)
    s = np.array([0.2, 0.6])  # max starts at 0, min at 1: plain min / max
    np.testing.assert_array_equal(
        E.normalize_scores(s, semantics="python-port"), (s - 0.2) / np.float64(0.6 - 0.2)
    )
    assert np.isnan(E.normalize_scores(np.array([1.0, 1.0]), semantics="python-port")).all()
    with pytest.raises(ValueError, match="semantics"):
        E.normalize_scores(s, semantics="matlab")


def test_cli_semantics_flag(tmp_path, capsys):
    rng = np.random.default_rng(5)
    gt_dir = tmp_path / "gt"
    _write_gt_dir(gt_dir, rng, num_events=1, images_per_event=6)
    face = E.load_ground_truth(gt_dir).face
    boxes, sc = _predictions(face, rng)
    E.write_predictions(tmp_path / "pred", list(face.image_paths), boxes, sc)
    ref = port.evaluation(str(tmp_path / "pred"), str(gt_dir))
    argv = ["--pred", str(tmp_path / "pred"), "--gt", str(gt_dir), "--semantics", "python-port"]
    assert E.main(argv) == 0
    out = capsys.readouterr().out
    for s, ap in zip(SETTINGS, ref):
        assert f"{s.capitalize()} Val AP: {ap:.4f}" in out
    assert "python-port" in out


# ------------------------------------------------------------------ real ground truth


def test_real_ground_truth_equals_port(real_data, tmp_path):
    """The real val ground truth (all 3,226 images and 39,708 faces count); synthetic
    predictions on ~160 images (the port's loop over 1000 thresholds per image is
    slow), in shuffled and in score-sorted file order."""
    gt_dir = real_data("widerface", "ground_truth")
    gt = E.load_ground_truth(gt_dir)
    face = gt.face
    rng = np.random.default_rng(11)
    crowded = np.argsort(-face.faces_per_image)[:8]
    pick = np.unique(np.concatenate([crowded, rng.choice(face.num_images, 150, replace=False)]))
    for order in ("shuffled", "sorted"):
        boxes, sc = _predictions(face, rng, images=pick, order=order)
        ref, ours, official = _compare(
            gt_dir, list(face.image_paths), boxes, sc, tmp_path / f"pred_{order}"
        )
        for s, ap in zip(SETTINGS, ref):
            assert ours[s].ap == float(ap), (order, s, ours[s].ap, ap)
            assert 0.001 < ap < 0.2  # most faces have no prediction
        if order == "sorted":  # same ranking rules: the semantics differ only slightly
            for s in SETTINGS:
                assert abs(ours[s].ap - official[s].ap) < 5e-3
