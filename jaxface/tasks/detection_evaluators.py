"""The evaluators of `jaxface.tasks.detection.DetectionTask` (``config.evals``).

Both run the task's ``detect`` predict function (`DetectionTask.predict`: detections in
original image pixels) over ``config.eval_split`` and return their metrics and artefacts
(PR figure, JSON / WIDER result folders, sample detections) for the caller to write:

``wider``
    the exact WIDER FACE protocol (`jaxface.evaluation.widerface.evaluate`) against the
    split's own faces (`synthetic_ground_truth`): easy / medium / hard from the face
    labels (`jaxface.data.synthetic.render.difficulty_subsets`) plus one AP per face-size
    bucket (``config.eval_size_buckets``, original pixels). The detections are written
    too (``wider_detections_step<N>.npz``: the fixed-shape ``boxes``, ``scores`` and
    ``valid`` arrays, in split order), so per-image statistics such as the bootstrap of
    `jaxface.evaluation.widerface_bootstrap` need no second prediction pass.
``wider_official``
    real WIDER FACE validation against the official ground truth in
    ``config.wider_gt_dir``, with the standard prediction folder as an artefact.
"""

from __future__ import annotations

import functools
from typing import Mapping, Sequence

import numpy as np

from jaxface.data.synthetic.render import difficulty_subsets
from jaxface.data.widerface import WiderFaceAnnotations
from jaxface.evaluation import widerface as wider_eval
from jaxface.evaluation.draw import draw_detections
from jaxface.ops.boxes import xyxy_to_xywh
from jaxface.tasks import common
from jaxface.tasks.base import (
    Arrays,
    Artefacts,
    EvalContext,
    Evaluator,
    Figure,
    Folder,
    Images,
    Json,
)
from jaxface.tasks.detection_data import faces_of


def evaluators(task) -> dict[str, Evaluator]:
    """The task's evaluators by ``config.evals`` name, both on its ``detect`` function."""
    return {
        "wider": Evaluator("detect", functools.partial(evaluate_wider, task)),
        "wider_official": Evaluator("detect", functools.partial(evaluate_wider_official, task)),
    }


def predict_eval_split(task, predict_fn, variables, ctx: EvalContext):
    """(source, predictions) over ``config.eval_split`` (``config.eval_limit`` images)."""
    c = task.config
    src, transform = task.data(c.eval_split, train=False)
    out = common.predict_split(
        ctx,
        predict_fn,
        variables,
        src,
        transform,
        int(c.eval_batch_size),
        limit=int(c.eval_limit) or None,
    )
    return src, out


def evaluate_wider(task, predict_fn, variables, ctx: EvalContext):
    c = task.config
    src, out = predict_eval_split(task, predict_fn, variables, ctx)
    n = out["boxes"].shape[0]
    faces = [faces_of(src[i]) for i in range(n)]
    gt = synthetic_ground_truth(faces, size_buckets=[tuple(b) for b in c.eval_size_buckets])
    preds = predictions_from_arrays(out["boxes"], out["scores"], out["valid"])
    results = wider_eval.evaluate(gt, preds)
    summary = {f"ap_{k}": float(v.ap) for k, v in results.items()}
    title = f"{c.data.builder} {c.eval_split}: WIDER protocol, step {ctx.step}"
    artefacts = {
        "wider_pr_step{step}.png": Figure(
            functools.partial(wider_eval.plot_pr, results, title=title)
        ),
        "wider_eval_step{step}.json": Json(
            {
                **summary,
                "num_faces": {k: int(v.num_faces) for k, v in results.items()},
                "num_images": n,
            }
        ),
        "wider_detections_step{step}.npz": Arrays(
            {k: np.asarray(out[k]) for k in ("boxes", "scores", "valid")}
        ),
        **sample_detections(task, src, out, faces),
    }
    return summary, artefacts


def evaluate_wider_official(task, predict_fn, variables, ctx: EvalContext):
    """Real WIDER FACE validation: predictions over ``config.eval_split`` of the
    ``wider_face_original`` builder, aligned by file name with the official ground truth
    in ``config.wider_gt_dir`` (the four eval_tools ``.mat`` files), returned as the
    standard prediction folder and evaluated with ``config.wider_semantics``
    (``"official"`` or ``"python-port"``)."""
    c = task.config
    gt_dir = c.get("wider_gt_dir", "")
    if not gt_dir:
        raise ValueError(
            "evaluator 'wider_official' needs config.wider_gt_dir: the folder holding "
            "wider_face_val.mat and wider_{easy,medium,hard}_val.mat"
        )
    gt = wider_eval.load_ground_truth(gt_dir)
    src, out = predict_eval_split(task, predict_fn, variables, ctx)
    index = {
        f"{gt.face.events[int(gt.face.image_event[k])]}/{gt.face.image_names[k]}": k
        for k in range(gt.face.num_images)
    }
    per = [None] * gt.face.num_images
    rels, boxes, scores = [], [], []
    for i in range(out["boxes"].shape[0]):
        name = src[i]["image/filename"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        v = np.asarray(out["valid"][i], bool)
        b = xyxy_to_xywh(np.asarray(out["boxes"][i], np.float64)[v])
        sc = np.asarray(out["scores"][i], np.float64)[v]
        rels.append(name)
        boxes.append(b)
        scores.append(sc)
        k = index.get(name.rsplit(".", 1)[0])
        if k is not None:
            per[k] = (b, sc)
    # File order kept: "python-port" evaluates the detections in the order of the folder.
    results = wider_eval.evaluate(
        gt,
        wider_eval.Predictions.from_lists(per, sort=False),
        semantics=c.wider_semantics,
    )
    title = f"WIDER FACE {c.eval_split}, step {ctx.step}"
    artefacts = {
        "wider_pred_step{step}": Folder(
            functools.partial(
                wider_eval.write_predictions, image_paths=rels, boxes=boxes, scores=scores
            )
        ),
        **sample_detections(task, src, out),
        "wider_pred_step{step}_eval": Folder(functools.partial(wider_eval.save_results, results)),
        "wider_pr_step{step}.png": Figure(
            functools.partial(wider_eval.plot_pr, results, title=title)
        ),
    }
    return {f"ap_{k}": float(v.ap) for k, v in results.items()}, artefacts


def sample_detections(task, src, out, faces=None) -> Artefacts:
    """The first ``config.eval_sample_images`` eval images with their detections drawn
    (`draw_detections`; ground truth in green when the example has faces), as
    ``sample_detections_step<N>.png`` (one row) and TensorBoard's
    ``eval/sample_detections``; no artefact when the option is 0."""
    k = min(int(task.config.get("eval_sample_images", 0)), int(out["boxes"].shape[0]))
    if k <= 0:
        return {}
    thr = float(task.config.get("eval_sample_threshold", 0.5))
    drawn = []
    for i in range(k):
        v = np.asarray(out["valid"][i], bool)
        lm = out.get("landmarks")
        ex = src[i]
        gt = faces[i] if faces is not None else (faces_of(ex) if "faces" in ex else None)
        drawn.append(
            draw_detections(
                np.asarray(ex["image"]),
                np.asarray(out["boxes"][i])[v],
                np.asarray(out["scores"][i])[v],
                landmarks=None if lm is None else np.asarray(lm[i])[v],
                gt_boxes=None if gt is None else gt["boxes"],
                threshold=thr,
            )
        )
    hh = max(d.shape[0] for d in drawn)
    ww = max(d.shape[1] for d in drawn)
    grid = np.zeros((k, hh, ww, 3), np.uint8)
    for i, d in enumerate(drawn):
        grid[i, : d.shape[0], : d.shape[1]] = d
    return {"sample_detections_step{step}.png": Images(grid, tag="eval/sample_detections")}


# ---------------------------------------------------------------------------------
# Ground truth and predictions for the WIDER evaluation module
# ---------------------------------------------------------------------------------


def _bucket_name(lo, hi) -> str:
    return f"size_{int(lo)}_{int(hi)}" if hi > 0 else f"size_{int(lo)}_up"


def synthetic_ground_truth(
    faces: Sequence[Mapping], *, size_buckets=()
) -> wider_eval.WiderGroundTruth:
    """WIDER ground truth (one ``WiderFaceAnnotations`` per setting) for a list of images'
    faces (`faces_of`). Boxes are rounded to integer ``x y w h`` (int32, like the
    official .mat files, so the exact MATLAB arithmetic applies). Settings: easy /
    medium / hard (`difficulty_subsets` on box height, blur, occlusion, pose, invalid)
    and one per ``(lo, hi)`` size bucket (valid faces with ``lo <= height < hi``;
    every other face is an ignore face, as in WIDER's settings)."""
    boxes, sizes, labels = [], [], {k: [] for k in ("blur", "occlusion", "pose", "invalid")}
    counts = []
    for f in faces:
        b = np.asarray(f["boxes"], np.float64).reshape(-1, 4)
        xywh = np.round(xyxy_to_xywh(b)).astype(np.int32)
        boxes.append(xywh)
        sizes.append(b[:, 3] - b[:, 1])
        for k in labels:
            labels[k].append(np.asarray(f[k], np.int32))
        counts.append(len(b))
    n_img = len(faces)
    boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.int32)
    sizes = np.concatenate(sizes) if sizes else np.zeros((0,))
    labels = {k: (np.concatenate(v) if v else np.zeros((0,), np.int32)) for k, v in labels.items()}
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    subsets = difficulty_subsets(
        sizes, labels["blur"], labels["occlusion"], labels["pose"], labels["invalid"]
    )
    valid = labels["invalid"] == 0
    for lo, hi in size_buckets:
        subsets[_bucket_name(lo, hi)] = valid & (sizes >= lo) & ((sizes < hi) if hi > 0 else True)
    img_of_face = np.repeat(np.arange(n_img), counts)
    names = tuple(f"{i:06d}" for i in range(n_img))
    base = dict(
        events=("0--synthetic",),
        image_event=np.zeros((n_img,), np.int32),
        image_names=names,
        image_paths=tuple(f"0--synthetic/{nm}.jpg" for nm in names),
        face_offsets=offsets,
        boxes=boxes,
        labels=labels,
        source="synthetic",
    )
    face = WiderFaceAnnotations(**base)
    settings = {
        k: WiderFaceAnnotations(
            **base,
            keep=m,
            keep_list_lengths=np.bincount(img_of_face[m], minlength=n_img).astype(np.int64),
        )
        for k, m in subsets.items()
    }
    return wider_eval.WiderGroundTruth(face=face, settings=settings)


def predictions_from_arrays(boxes, scores, valid) -> wider_eval.Predictions:
    """Fixed-shape ``[I, K, 4]`` corner boxes, ``[I, K]`` scores and validity -> `Predictions`."""
    per = []
    for b, s, v in zip(
        np.asarray(boxes, np.float64), np.asarray(scores, np.float64), np.asarray(valid, bool)
    ):
        per.append((xyxy_to_xywh(b[v]), s[v]) if v.any() else None)
    return wider_eval.Predictions.from_lists(per)
