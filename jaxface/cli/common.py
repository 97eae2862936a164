"""What the inference commands share: exit status, argument types, the detector's input
options, image listing, output files, loading the analyzer, a progress bar."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import numpy as np

from jaxface import compile_cache
from jaxface.detect_input import DEFAULT_MAX_SIDE, DetectOptions


class Progress:
    """A one-line progress bar on stderr (``\\r`` updates; plain lines when not a tty)."""

    def __init__(self, total: int, label: str, stream=None):
        self.total, self.label = total, label
        self.stream = stream or sys.stderr
        self.t0 = time.time()
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def update(self, done: int, note: str = ""):
        frac = done / max(self.total, 1)
        bar = "#" * int(24 * frac) + "-" * (24 - int(24 * frac))
        el = time.time() - self.t0
        eta = el / done * (self.total - done) if done else 0.0
        line = f"[{self.label}] |{bar}| {done}/{self.total} {el:.0f}s eta {eta:.0f}s {note}"
        if self.tty:
            self.stream.write("\r" + line.ljust(100))
            if done == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


# Exit status of the inference commands (`jaxface.main` documents it for every command).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SKIPPED = 0, 1, 2, 3


def read_image(path) -> np.ndarray:
    """uint8 RGB [H, W, 3] (`jaxface.data.images.read_image`); raises
    `jaxface.data.images.UnreadableImageError` (a ValueError) naming the file."""
    from jaxface.data.images import read_image as read  # pylint: disable=import-outside-toplevel

    return read(path, name=os.fspath(path))


def finite_float(lo=None, hi=None):
    """argparse type: a finite float in ``[lo, hi]``; the error names the allowed range."""

    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not np.isfinite(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f"in [{lo:g}, {hi:g}]" if lo is not None and hi is not None else "finite"
            raise argparse.ArgumentTypeError(f"must be a number {rng}, got {text!r}")
        return v

    return parse


def positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return v


def check_output_folder(out, input_root) -> None:
    """Refuses an output folder that is, lies inside or contains the input folder:
    outputs are written there by relative name, so an input image could be overwritten.
    (For a single input file the outputs ``<name>.json`` / ``<name>.png`` never equal it.)
    Raises ValueError naming both."""
    root = pathlib.Path(input_root).resolve()
    if not root.is_dir():
        return
    o = pathlib.Path(out).resolve()
    if o == root or root in o.parents or o in root.parents:
        raise ValueError(
            f"--out {out} overlaps the input folder {input_root} (equal, inside or containing "
            "it): outputs written there could overwrite input images; choose an output "
            "folder outside the input folder"
        )


def output_base(out_dir, rel: str) -> str:
    """``out_dir/<rel>``: the outputs of input ``rel`` are ``<base>.json`` and ``<base>.png``.
    The input's full relative name (extension included) keeps them unique per input
    (``photo.jpg`` and ``photo.png`` do not collide)."""
    return os.path.join(out_dir, rel)


def dumps(obj, **kw) -> str:
    """JSON that is JSON: NaN or infinity is an error, never ``NaN`` / ``-Infinity``."""
    return json.dumps(obj, allow_nan=False, **kw)


class NonFiniteScoreError(ValueError):
    """A score or embedding is NaN/inf: there is no decision to print."""


def check_finite(name: str, x, workdir: str) -> None:
    if not np.all(np.isfinite(np.asarray(x, np.float64))):
        raise NonFiniteScoreError(
            f"{name} is not finite (NaN/inf); the recogniser {workdir} produces non-finite "
            "embeddings, no decision can be made"
        )


def list_images(root) -> list[pathlib.Path]:
    """``root`` itself if it is a file, else every image below it (sorted)."""
    from jaxface.data.images import list_images as relative_images  # pylint: disable=import-outside-toplevel

    root = pathlib.Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such file or folder")
    return [root / rel for rel in relative_images(root)]


def draw_faces(image: np.ndarray, det: dict, path) -> None:
    """PNG of the image with every face of ``det`` drawn: box, score and 5 landmarks
    (`jaxface.evaluation.draw.draw_detections`, the picture the evaluators log)."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    from jaxface.evaluation.draw import draw_detections  # pylint: disable=import-outside-toplevel

    drawn = draw_detections(
        image, det["boxes"], det["scores"], landmarks=det["landmarks"], threshold=-np.inf
    )
    Image.fromarray(drawn).save(path, format="png")


def faces_json(det: dict) -> list[dict]:
    return [
        {
            "box": [round(float(v), 2) for v in b],
            "score": round(float(s), 4),
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in lm],
        }
        for b, s, lm in zip(det["boxes"], det["scores"], det["landmarks"])
    ]


def _scales(text):
    """argparse type: comma-separated positive pyramid factors, e.g. ``0.5,1,2``."""
    try:
        v = tuple(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0.5,1,2, got {text!r}") from None
    if not all(np.isfinite(f) and f > 0 for f in v):
        raise argparse.ArgumentTypeError(f"every scale must be a number > 0, got {text!r}")
    return v


def _face_sizes(text):
    """argparse type: ``MIN,MAX`` face heights in pixels, 0 < MIN < MAX."""
    parts = text.split(",")
    try:
        lo, hi = (float(t) for t in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX pixels, got {text!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo < hi):
        raise argparse.ArgumentTypeError(f"expected 0 < MIN < MAX, got {text!r}")
    return lo, hi


def add_detect_options(p: argparse.ArgumentParser, *, pyramid: bool = True) -> None:
    """The detector's input (`jaxface.detect_input.DetectOptions`)."""
    g = p.add_argument_group(
        "detector input",
        "By default the photo is used at its own resolution, shrunk only so that its "
        "plausible faces (up to 0.9 x its shorter side) fall into the face sizes the "
        "detector was trained for (its config's face_sizes) and its longer side is at "
        "most --max-side, then padded to a multiple of 128 px.",
    )
    g.add_argument(
        "--max-side",
        type=positive_int,
        default=DEFAULT_MAX_SIDE,
        help=f"longest side the photo is scaled to at most (default {DEFAULT_MAX_SIDE})",
    )
    g.add_argument(
        "--canvas",
        type=positive_int,
        default=None,
        metavar="N",
        help="instead: the longer side scaled to N on an N x N canvas (the training-time "
        "evaluation input of a detector that fits images to its config.image_size = N)",
    )
    if pyramid:
        g.add_argument(
            "--scales",
            type=_scales,
            default=(1.0,),
            help="an image pyramid: factors of the default scale, e.g. 0.5,1,2; the "
            "detections of every level are merged by NMS in original pixels",
        )
    g.add_argument(
        "--face-sizes",
        type=_face_sizes,
        default=None,
        metavar="MIN,MAX",
        help="face heights (px) the detector was trained for, replacing its config's "
        "face_sizes (needed when its config.json has none)",
    )


def detect_options(p: argparse.ArgumentParser, args) -> DetectOptions:
    scales = tuple(getattr(args, "scales", (1.0,)))
    if args.canvas is not None and scales != (1.0,):
        p.error("--canvas runs one scale: give --canvas or --scales, not both")
    return DetectOptions(
        max_side=args.max_side, canvas=args.canvas, scales=scales, face_sizes=args.face_sizes
    )


def load_analyzer(args, options: DetectOptions, *, recognizer=False, attributes=False):
    from jaxface.analyzer import FaceAnalyzer  # pylint: disable=import-outside-toplevel

    compile_cache.setup(args)
    return FaceAnalyzer.from_checkpoints(
        detector=args.detector,
        recognizer=args.recognizer if recognizer else None,
        attributes=args.attributes if attributes else None,
        score_threshold=args.score_threshold,
        detect_options=options,
    )


def add_common(p: argparse.ArgumentParser, *, recognizer=False, attributes=False):
    p.add_argument("--detector", required=True, help="detector training workdir")
    if recognizer:
        p.add_argument("--recognizer", required=True, help="recogniser training workdir")
    if attributes:
        p.add_argument("--attributes", required=True, help="attribute model training workdir")
    p.add_argument(
        "--score-threshold",
        type=finite_float(0.0, 1.0),
        default=0.5,
        help="detection score threshold, in [0, 1]",
    )
    add_detect_options(p)
    compile_cache.add_argument(p)
