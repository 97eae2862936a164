"""The official WIDER FACE AP of resampled images, exactly and fast, for the bootstrap.

`jaxface.evaluation.stats` resamples test *images*; the WIDER AP is not a mean of
per-image values, so every replicate needs the evaluation of `jaxface.evaluation.widerface`
on the resampled image list (an image drawn twice counting twice). That evaluation
decomposes per image:

* the matching of a detection (``[m, idx] = max(boxoverlap)``, the first detection of an
  image to reach a face, a detection dropped on an ignored face) only involves its own
  image, so the per-detection flags TP / non-dropped are the same in every replicate;
* a kept face counts once per copy of its image in ``count_face``;
* only the score normalisation ``(s - min) / (max - min)`` couples the images: its
  ``min`` / ``max`` run over the detections of the images drawn.

So `ResampledWiderAP` matches once (`match_detections`) and, per replicate, weights each
detection and face by its image's multiplicity, re-normalises the scores over the drawn
images (float32, as ``norm_score.m``), and sums TPs and proposals per threshold with one
weighted ``bincount``; the AP is `voc_ap` of the resulting curve. The result equals
`jaxface.evaluation.widerface.evaluate` on the explicitly resampled ground truth and
predictions (`take_images`); the tests check it. Official semantics only.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from jaxface.data.widerface import WiderFaceAnnotations
from jaxface.data.widerface_eval_files import Predictions, WiderGroundTruth
from jaxface.evaluation.widerface_official import (
    _F32_REALMAX,
    _F32_REALMIN,
    _score_sorted,
    match_detections,
    voc_ap,
)

__all__ = ["ResampledWiderAP", "take_images"]


class ResampledWiderAP:
    """``ap(indices)``: the official AP of each setting on resampled images.

    Args:
      gt: the ground truth (`WiderGroundTruth`, one annotation per setting).
      preds: the predictions, aligned with ``gt.face``.
      settings: the settings to evaluate (default: all of ``gt``).
      iou_threshold, num_thresholds: as `jaxface.evaluation.widerface.evaluate`.
    """

    def __init__(
        self,
        gt: WiderGroundTruth,
        preds: Predictions,
        *,
        settings: Optional[Sequence[str]] = None,
        iou_threshold: float = 0.5,
        num_thresholds: int = 1000,
    ):
        if preds.num_images != gt.face.num_images:
            raise ValueError(
                f"predictions cover {preds.num_images} images, ground truth {gt.face.num_images}"
            )
        self.settings = tuple(gt.settings) if settings is None else tuple(settings)
        self.num_images = gt.face.num_images
        self.num_thresholds = int(num_thresholds)
        preds = _score_sorted(preds)
        self._det_img = preds.image_index
        self._scores32 = preds.scores.astype(np.float32)
        self._tau_asc = (1.0 - np.arange(1, num_thresholds + 1) / num_thresholds)[::-1]
        # Per setting: [D] TP and non-dropped flags, [I] kept faces per image.
        self._tp, self._prop, self._faces = [], [], []
        cache: list[tuple[WiderFaceAnnotations, object]] = []
        for s in self.settings:
            ann = gt.settings[s]
            m = next((mm for a, mm in cache if _same_boxes(a, ann)), None)
            if m is None:
                m = match_detections(ann, preds, iou_threshold=iou_threshold)
                cache.append((ann, m))
            kept_face = np.zeros(m.face.shape, bool)
            kept_face[m.matched] = ann.keep[m.face[m.matched]]
            evaluated = ann.faces_per_image[self._det_img] > 0
            self._tp.append(m.first & kept_face & evaluated)
            self._prop.append(evaluated & ~(m.matched & ~kept_face))
            self._faces.append(np.asarray(ann.keep_list_lengths, np.float64))

    def __call__(self, indices) -> np.ndarray:
        """``[rows, n]`` (or ``[n]``) image indices -> ``[rows, settings]`` (or
        ``[settings]``) APs, in the order of ``self.settings``."""
        idx = np.asarray(indices, np.int64)
        flat = idx.ndim == 1
        idx = np.atleast_2d(idx)
        rows, T = idx.shape[0], self.num_thresholds
        counts = np.zeros((rows, self.num_images), np.float64)
        np.add.at(counts, (np.repeat(np.arange(rows), idx.shape[1]), idx.ravel()), 1.0)
        w = counts[:, self._det_img]  # [rows, D] multiplicity of each detection
        t_first = self._first_threshold(w > 0)  # [rows, D]
        base = (np.arange(rows) * (T + 2))[:, None]
        out = np.empty((rows, len(self.settings)))
        for j in range(len(self.settings)):
            tp = _threshold_sums(base + t_first, w * self._tp[j], rows, T)
            prop = _threshold_sums(base + t_first, w * self._prop[j], rows, T)
            count_face = counts @ self._faces[j]
            with np.errstate(invalid="ignore", divide="ignore"):
                precision = tp / prop
                recall = tp / count_face[:, None]
            for r in range(rows):
                if count_face[r] == 0:
                    recall[r] = np.nan
                out[r, j] = voc_ap(recall[r], precision[r])
        return out[0] if flat else out

    def _first_threshold(self, drawn: np.ndarray) -> np.ndarray:
        """Per row and detection the first threshold index its normalised score passes,
        the normalisation running over the drawn detections (``norm_score.m``)."""
        s = self._scores32[None, :]
        hi = np.where(drawn, s, -np.inf).max(axis=1)
        lo = np.where(drawn, s, np.inf).min(axis=1)
        hi = np.maximum(np.float32(_F32_REALMIN), hi.astype(np.float32))
        lo = np.minimum(np.float32(_F32_REALMAX), lo.astype(np.float32))
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            norm = ((s - lo[:, None]) / (hi - lo)[:, None]).astype(np.float64)
        k = np.searchsorted(self._tau_asc, norm.ravel(), side="right").reshape(norm.shape)
        k = np.where(np.isnan(norm), 0, k)
        return self.num_thresholds + 1 - k


def _threshold_sums(bins: np.ndarray, weights: np.ndarray, rows: int, T: int) -> np.ndarray:
    """``[rows, T]`` cumulative weighted counts of detections passing each threshold."""
    h = np.bincount(bins.ravel(), weights=weights.ravel(), minlength=rows * (T + 2))
    return np.cumsum(h.reshape(rows, T + 2), axis=1)[:, 1 : T + 1]


def _same_boxes(a: WiderFaceAnnotations, b: WiderFaceAnnotations) -> bool:
    return (
        a.boxes.dtype == b.boxes.dtype
        and np.array_equal(a.face_offsets, b.face_offsets)
        and np.array_equal(a.boxes, b.boxes)
    )


def take_images(
    gt: WiderGroundTruth, preds: Predictions, indices
) -> tuple[WiderGroundTruth, Predictions]:
    """The ground truth and predictions of the images ``indices`` (repeats allowed), in
    that order: the explicit resample `ResampledWiderAP` is equal to."""
    idx = np.asarray(indices, np.int64)

    def ann_take(ann: WiderFaceAnnotations) -> WiderFaceAnnotations:
        off = ann.face_offsets
        faces = np.concatenate([np.arange(off[i], off[i + 1]) for i in idx] + [[]]).astype(np.int64)
        counts = off[idx + 1] - off[idx]
        names = tuple(f"{k:06d}" for k in range(idx.size))
        kw = dict(
            events=ann.events,
            image_event=np.asarray(ann.image_event)[idx],
            image_names=names,
            image_paths=tuple(f"{ann.events[0]}/{n}.jpg" for n in names),
            face_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            boxes=ann.boxes[faces],
            labels={k: np.asarray(v)[faces] for k, v in ann.labels.items()},
            source=ann.source,
        )
        if ann.keep is not None:
            kw.update(keep=ann.keep[faces], keep_list_lengths=ann.keep_list_lengths[idx])
        return WiderFaceAnnotations(**kw)

    new_gt = WiderGroundTruth(
        face=ann_take(gt.face), settings={k: ann_take(v) for k, v in gt.settings.items()}
    )
    off = preds.offsets
    dets = np.concatenate([np.arange(off[i], off[i + 1]) for i in idx] + [[]]).astype(np.int64)
    counts = off[idx + 1] - off[idx]
    new_preds = Predictions(
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        boxes=preds.boxes[dets],
        scores=preds.scores[dets],
    )
    return new_gt, new_preds
