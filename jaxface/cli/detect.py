"""``jaxface detect`` (faces of images: JSON + a drawn PNG each) and ``jaxface
predict-wider`` (WIDER FACE prediction files of an image folder)."""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

from jaxface.cli import common
from jaxface.data.images import SkipReport


def cmd_detect(argv) -> int:
    p = argparse.ArgumentParser(
        prog="jaxface detect",
        description="Detect faces: JSON per image + the image with boxes, landmarks and "
        "scores drawn (PNG), as OUT/<relative input name>.json and .png. Exit status: 0 "
        "every image processed, 3 some skipped (listed), 1 none processed.",
    )
    p.add_argument("input", help="an image or a folder of images (searched recursively)")
    p.add_argument("--out", required=True, help="output folder (outside the input folder)")
    common.add_common(p)
    args = p.parse_args(argv)
    options = common.detect_options(p, args)
    paths = common.list_images(args.input)
    if not paths:
        print(f"jaxface detect: no images under {args.input}", file=sys.stderr)
        return common.EXIT_FAILED
    root = pathlib.Path(args.input)
    try:
        common.check_output_folder(args.out, root)
    except ValueError as err:
        print(f"jaxface detect: {err}", file=sys.stderr)
        return common.EXIT_USAGE
    analyzer = common.load_analyzer(args, options)
    os.makedirs(args.out, exist_ok=True)
    progress = common.Progress(len(paths), "detect")
    skipped = SkipReport("images", total=len(paths))
    n_faces, written = 0, 0
    for k, path in enumerate(paths):
        rel = path.name if root.is_file() else path.relative_to(root).as_posix()
        try:
            image = common.read_image(path)
        except ValueError as err:
            skipped.add(rel, str(err))
            print(f"\njaxface detect: skipped {err}", file=sys.stderr)
            progress.update(k + 1, f"faces {n_faces}, skipped {len(skipped)}")
            continue
        det = analyzer.detect(image)
        out_base = common.output_base(args.out, rel)
        os.makedirs(os.path.dirname(out_base) or ".", exist_ok=True)
        record = {
            "image": str(path),
            "width": int(image.shape[1]),
            "height": int(image.shape[0]),
            "detector": {
                "workdir": os.path.abspath(args.detector),
                "step": analyzer.detector.step,
                "score_threshold": analyzer.score_threshold,
                "input": _input_record(analyzer, image),
            },
            "faces": common.faces_json(det),
        }
        with open(out_base + ".json", "w") as f:
            f.write(common.dumps(record, indent=1))
        common.draw_faces(image, det, out_base + ".png")
        n_faces += len(det["scores"])
        written += 1
        progress.update(k + 1, f"faces {n_faces}, skipped {len(skipped)}")
    el = time.time() - progress.t0
    print(
        f"jaxface detect: {written} of {len(paths)} images processed, {n_faces} faces, "
        f"{len(skipped)} skipped (unreadable), {el:.1f}s; results in {args.out}"
    )
    if skipped:
        print(skipped.summary())
    if written == 0:
        return common.EXIT_FAILED
    return common.EXIT_SKIPPED if skipped else common.EXIT_OK


def _input_record(analyzer, image) -> list[dict]:
    """Per pyramid level: the scale (detector pixels per photo pixel) and the padded
    input shape the detector ran on."""
    from jaxface import detect_input  # pylint: disable=import-outside-toplevel

    h, w = image.shape[:2]
    return [
        {"scale": round(float(s), 6), "input_hw": [int(v) for v in hw]}
        for s, hw in detect_input.levels(h, w, analyzer.detector.config, analyzer.detect_options)
    ]


def cmd_predict_wider(argv) -> int:
    p = argparse.ArgumentParser(
        prog="jaxface predict-wider",
        description="Write WIDER FACE prediction files for every image under a folder: "
        "OUT/<relative path without extension>.txt (image name, count, then 'x y w h score' "
        "in original pixels), the input of 'jaxface widerface-eval'. Each image is fitted "
        "into the detector's training canvas, as its WIDER evaluator does.",
    )
    p.add_argument("--detector", required=True, help="detector training workdir")
    p.add_argument("--images", required=True, help="image folder (e.g. WIDER_val/images)")
    p.add_argument("--out", required=True, help="prediction folder to write")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--batch-size", type=common.positive_int, default=8)
    args = p.parse_args(argv)
    from jaxface import analyzer  # pylint: disable=import-outside-toplevel
    from jaxface.tasks import detection  # pylint: disable=import-outside-toplevel

    model = analyzer.load_model(args.detector, args.step)
    if model.config.task != "detection":
        raise ValueError(f"{args.detector}: a {model.config.task!r} run, not a detector")
    n = detection.write_folder_predictions(
        model.task, model.variables, args.images, args.out, batch_size=args.batch_size
    )
    print(f"wrote predictions for {n} images (checkpoint step {model.step}) to {args.out}")
    return 0
