"""Timing of the vectorised WIDER FACE evaluation on the full validation ground truth.

Run:  python benchmarks/widerface_eval.py [--gt /data/widerface/ground_truth] [--heavy]
(default: $JAXFACE_DATA/widerface/ground_truth)

Predictions are synthesised from the ground truth (jittered, dropped and
duplicated faces plus random false positives), so the timing covers realistic
match patterns. Prints, per prediction set: detections, the time of the three
settings once the files are read (target <= 0.3 s), and the file read time.
The reference point is the public Python port of the official tool, which takes
27-46 s for the three settings on a 2-core x86 CPU (issue 5); it is not a
dependency, so the ratio is against that quoted figure. Not a test.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jaxface.evaluation import widerface as E  # noqa: E402

PORT_SECONDS = 27.0  # fastest figure quoted for the public Python port


def synth(face, rng, *, fp_per_image: int, drop: float = 0.15, dup: float = 0.1) -> E.Predictions:
    per = []
    for i in range(face.num_images):
        g = face.boxes[face.face_offsets[i] : face.face_offsets[i + 1]].astype(np.float64)
        k = rng.random(len(g)) >= drop
        b = g[k].copy()
        size = np.maximum(b[:, 2:], 1.0)
        b[:, :2] += rng.normal(0, 0.1, (len(b), 2)) * size
        b[:, 2:] *= np.exp(rng.normal(0, 0.1, (len(b), 2)))
        d = rng.random(len(g)) < dup
        b2 = g[d] + rng.normal(0, 1.0, (d.sum(), 4))
        m = fp_per_image
        b3 = np.concatenate([rng.uniform(0, 1000, (m, 2)), rng.uniform(4, 150, (m, 2))], 1)
        bb = np.concatenate([b, b2, b3])
        ss = np.concatenate(
            [rng.uniform(0.3, 1, len(b)), rng.uniform(0, 0.8, len(b2)), rng.uniform(0, 0.6, m)]
        )
        per.append((bb, ss))
    return E.Predictions.from_lists(per)


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    data = os.environ.get("JAXFACE_DATA", "")
    ap.add_argument(
        "--gt",
        default=os.path.join(data, "widerface", "ground_truth") if data else None,
        required=not data,
        help="eval_tools/ground_truth (default: $JAXFACE_DATA/widerface/ground_truth)",
    )
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--heavy", action="store_true", help="also 300 false positives per image (~1M detections)"
    )
    args = ap.parse_args()
    t = time.perf_counter()
    gt = E.load_ground_truth(args.gt)
    print(
        f"ground truth: {gt.face.num_images} images, {gt.face.num_faces} faces, read in {time.perf_counter() - t:.2f} s"
    )
    rng = np.random.default_rng(0)
    face = gt.face
    sets = {
        "perfect": E.Predictions.from_lists(
            [
                (
                    face.boxes[face.face_offsets[i] : face.face_offsets[i + 1]],
                    rng.random(face.faces_per_image[i]),
                )
                for i in range(face.num_images)
            ]
        ),
        "jittered+20fp/img": synth(face, rng, fp_per_image=20),
        "jittered+100fp/img": synth(face, rng, fp_per_image=100),
    }
    if args.heavy:
        sets["jittered+300fp/img"] = synth(face, rng, fp_per_image=300)
    print(
        f"{'predictions':>20} {'detections':>11} {'3 settings [s]':>15} {'vs port':>8}  AP easy/medium/hard"
    )
    for name, preds in sets.items():
        res = E.evaluate(gt, preds)  # warm-up
        sec = best_of(lambda: E.evaluate(gt, preds), args.repeats)
        aps = " / ".join(f"{res[s].ap:.4f}" for s in E.SETTINGS)
        print(
            f"{name:>20} {preds.num_detections:>11,d} {sec:>15.3f} {PORT_SECONDS / sec:>7.0f}x  {aps}"
        )
    # End to end through the standard folder for the 20-FP set.
    preds = sets["jittered+20fp/img"]
    with tempfile.TemporaryDirectory() as tmp:
        boxes = [
            preds.boxes[preds.offsets[i] : preds.offsets[i + 1]] for i in range(preds.num_images)
        ]
        scores = [
            preds.scores[preds.offsets[i] : preds.offsets[i + 1]] for i in range(preds.num_images)
        ]
        E.write_predictions(tmp, list(face.image_paths), boxes, scores)
        t = time.perf_counter()
        gt2 = E.load_ground_truth(args.gt)
        read = E.read_predictions(tmp, gt2.face)
        t_read = time.perf_counter() - t
        E.evaluate(gt2, read)
        t_all = time.perf_counter() - t
    print(
        f"end to end (read 4 .mat + {read.num_detections:,d} detections in 3,226 files, evaluate): "
        f"{t_all:.2f} s (reading {t_read:.2f} s)"
    )


if __name__ == "__main__":
    main()
