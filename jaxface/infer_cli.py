"""Inference commands of the ``jaxface`` command line (`jaxface.main` dispatches here).

  jaxface detect IMAGE_OR_DIR --out DIR --detector WD [--score-threshold 0.5]
  jaxface verify IMG_A IMG_B --detector WD --recognizer WD [--far 1e-3]
  jaxface attributes IMAGE --detector WD --attributes WD
  jaxface identify --gallery DIR QUERY --detector WD --recognizer WD [--top-k 5]
  jaxface calibrate [--recognizer WD] [--attributes WD] [--max-images 2000]
  jaxface export --detector WD --recognizer WD [--attributes WD] --out DIR

``WD`` are training workdirs (`jaxface train`); see `jaxface.analyzer`.

Every command keeps JAX's persistent compilation cache in
``$XDG_CACHE_HOME/jaxface/jax_cache`` (``~/.cache/jaxface/jax_cache``), so a second run
skips compilation; ``--no-compile-cache`` or ``JAXFACE_COMPILE_CACHE=0`` turns it off
(`jaxface.compile_cache`).

``verify``'s threshold is never a constant: it is the score whose false-accept rate is
``--far`` on the recogniser's held-out identities, from ``WD/calibration/`` written by
``jaxface calibrate`` (run on demand by ``verify`` when missing): every pair of frontal
images of different identities of the recogniser's ``config.eval_split`` (for the
``cfp`` configs: the unseen identities of CFP protocol splits 09-10), scored exactly as
the recogniser's ``cfp`` / ``verification`` evaluators score them (the task's own
evaluation crops, flip-fused L2-normalised embeddings). The score is their cosine
similarity; ``same`` iff ``score >= threshold``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import numpy as np

from jaxface import compile_cache
from jaxface.calibration import (  # noqa: F401  (threshold_at_far: public here too)
    CALIBRATION_DIR,
    calibrate,
    load_calibration,
    threshold_at_far,
)
from jaxface.data.images import SkipReport


# ---------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------


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


def _finite_float(lo=None, hi=None):
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


def _positive_int(text):
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


def _dumps(obj, **kw) -> str:
    """JSON that is JSON: NaN or infinity is an error, never ``NaN`` / ``-Infinity``."""
    return json.dumps(obj, allow_nan=False, **kw)


class NonFiniteScoreError(ValueError):
    """A score or embedding is NaN/inf: there is no decision to print."""


def _check_finite(name: str, x, workdir: str) -> None:
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


def _load_analyzer(args, *, recognizer=False, attributes=False):
    from jaxface.analyzer import FaceAnalyzer  # pylint: disable=import-outside-toplevel

    compile_cache.setup(args)
    return FaceAnalyzer.from_checkpoints(
        detector=args.detector,
        recognizer=args.recognizer if recognizer else None,
        attributes=args.attributes if attributes else None,
        score_threshold=args.score_threshold,
    )


def _common(p: argparse.ArgumentParser, *, recognizer=False, attributes=False):
    p.add_argument("--detector", required=True, help="detector training workdir")
    if recognizer:
        p.add_argument("--recognizer", required=True, help="recogniser training workdir")
    if attributes:
        p.add_argument("--attributes", required=True, help="attribute model training workdir")
    p.add_argument(
        "--score-threshold",
        type=_finite_float(0.0, 1.0),
        default=0.5,
        help="detection score threshold, in [0, 1]",
    )
    compile_cache.add_argument(p)


# ---------------------------------------------------------------------------------
# detect
# ---------------------------------------------------------------------------------


def cmd_detect(argv) -> int:
    p = argparse.ArgumentParser(
        prog="jaxface detect",
        description="Detect faces: JSON per image + the image with boxes, landmarks and "
        "scores drawn (PNG), as OUT/<relative input name>.json and .png. Exit status: 0 "
        "every image processed, 3 some skipped (listed), 1 none processed.",
    )
    p.add_argument("input", help="an image or a folder of images (searched recursively)")
    p.add_argument("--out", required=True, help="output folder (outside the input folder)")
    _common(p)
    args = p.parse_args(argv)
    paths = list_images(args.input)
    if not paths:
        print(f"jaxface detect: no images under {args.input}", file=sys.stderr)
        return EXIT_FAILED
    root = pathlib.Path(args.input)
    try:
        check_output_folder(args.out, root)
    except ValueError as err:
        print(f"jaxface detect: {err}", file=sys.stderr)
        return EXIT_USAGE
    analyzer = _load_analyzer(args)
    os.makedirs(args.out, exist_ok=True)
    progress = Progress(len(paths), "detect")
    skipped = SkipReport("images", total=len(paths))
    n_faces, written = 0, 0
    for k, path in enumerate(paths):
        rel = path.name if root.is_file() else path.relative_to(root).as_posix()
        try:
            image = read_image(path)
        except ValueError as err:
            skipped.add(rel, str(err))
            print(f"\njaxface detect: skipped {err}", file=sys.stderr)
            progress.update(k + 1, f"faces {n_faces}, skipped {len(skipped)}")
            continue
        det = analyzer.detect(image)
        out_base = output_base(args.out, rel)
        os.makedirs(os.path.dirname(out_base) or ".", exist_ok=True)
        record = {
            "image": str(path),
            "width": int(image.shape[1]),
            "height": int(image.shape[0]),
            "detector": {
                "workdir": os.path.abspath(args.detector),
                "step": analyzer.detector.step,
                "score_threshold": analyzer.score_threshold,
            },
            "faces": faces_json(det),
        }
        with open(out_base + ".json", "w") as f:
            f.write(_dumps(record, indent=1))
        draw_faces(image, det, out_base + ".png")
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
        return EXIT_FAILED
    return EXIT_SKIPPED if skipped else EXIT_OK


# ---------------------------------------------------------------------------------
# verify (its threshold: `jaxface.calibration`)
# ---------------------------------------------------------------------------------


def _face_embedding_or_report(analyzer, path, command: str):
    """`_largest_face_embedding`, or ``(None, None)`` after printing why (unreadable image,
    no face) for ``jaxface <command>``."""
    try:
        e, face = _largest_face_embedding(analyzer, path)
    except ValueError as err:
        print(f"jaxface {command}: {err}", file=sys.stderr)
        return None, None
    if e is None:
        print(f"jaxface {command}: no face found in {path}", file=sys.stderr)
    return e, face


def _largest_face_embedding(analyzer, path):
    from jaxface.analyzer import largest_face  # pylint: disable=import-outside-toplevel

    image = read_image(path)
    det = analyzer.detect(image)
    i = largest_face(det)
    if i is None:
        return None, None
    lm = det["landmarks"][i : i + 1]
    emb = analyzer.embed(analyzer.align(image, lm), landmarks=lm)
    face = {
        "box": [round(float(v), 1) for v in det["boxes"][i]],
        "score": round(float(det["scores"][i]), 4),
        "yaw": round(float(emb["yaw"][0]), 1),
        "gate": round(float(emb["gate"][0]), 3),
        "faces_detected": int(len(det["scores"])),
    }
    return emb["embedding"][0], face


def _calibration_for(analyzer, rebuild=False):
    cal = None if rebuild else load_calibration(analyzer.recognizer.workdir)
    if cal is None or cal[0].get("checkpoint_step") != analyzer.recognizer.step:
        print(
            f"jaxface: calibrating {analyzer.recognizer.workdir} (held-out impostor scores; "
            "written to its calibration/ folder) ...",
            file=sys.stderr,
        )
        calibrate(analyzer.recognizer)
        cal = load_calibration(analyzer.recognizer.workdir)
    return cal


def cmd_verify(argv) -> int:
    p = argparse.ArgumentParser(
        prog="jaxface verify", description="Same person? The largest face of each image."
    )
    p.add_argument("image_a")
    p.add_argument("image_b")
    p.add_argument(
        "--far",
        type=_finite_float(0.0, 1.0),
        default=1e-3,
        help="false-accept rate of the threshold, in [0, 1]",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _common(p, recognizer=True)
    args = p.parse_args(argv)
    analyzer = _load_analyzer(args, recognizer=True)
    info, impostor, genuine = _calibration_for(analyzer)
    thr = threshold_at_far(impostor, args.far, genuine)
    embs, faces = [], []
    for path in (args.image_a, args.image_b):
        e, face = _face_embedding_or_report(analyzer, path, "verify")
        if e is None:
            return 2
        embs.append(e)
        faces.append(face)
    for path, e in zip((args.image_a, args.image_b), embs):
        _check_finite(f"the embedding of {path}", e, args.recognizer)
    score = float(np.dot(embs[0], embs[1]))
    _check_finite("the score", score, args.recognizer)
    same = score >= thr["threshold"]
    result = {
        "image_a": args.image_a,
        "image_b": args.image_b,
        "face_a": faces[0],
        "face_b": faces[1],
        "score": round(score, 4),
        "threshold": round(thr["threshold"], 4),
        "far_requested": args.far,
        "far_at_threshold": thr["far"],
        "tar_at_threshold": thr.get("tar"),
        "decision": "same" if same else "different",
        "threshold_source": info["source"] + f"; {info['num_impostor']} impostor pairs",
        "recognizer": {
            "workdir": os.path.abspath(args.recognizer),
            "step": analyzer.recognizer.step,
        },
    }
    if args.json:
        print(_dumps(result, indent=1))
    else:
        print(f"A: {args.image_a}  face {faces[0]}")
        print(f"B: {args.image_b}  face {faces[1]}")
        print(f"score (cosine): {score:.4f}")
        print(
            f"threshold: {thr['threshold']:.4f} at FAR {args.far:g} (achieved FAR "
            f"{thr['far']:.2e}, TAR {thr.get('tar', float('nan')):.3f}; resolution "
            f"{thr['far_resolution']:.1e})"
        )
        print(f"  from: {result['threshold_source']}")
        print(f"decision: {result['decision'].upper()}")
    return 0


# ---------------------------------------------------------------------------------
# attributes, identify
# ---------------------------------------------------------------------------------


def cmd_attributes(argv) -> int:
    p = argparse.ArgumentParser(prog="jaxface attributes", description="Attributes of every face.")
    p.add_argument("image")
    p.add_argument("--json", action="store_true")
    _common(p, attributes=True)
    args = p.parse_args(argv)
    analyzer = _load_analyzer(args, attributes=True)
    try:
        image = read_image(args.image)
    except ValueError as err:
        print(f"jaxface attributes: {err}", file=sys.stderr)
        return 2
    faces = analyzer.analyze(image)
    cfg = analyzer.attribute_model.config
    data = f"{cfg.data.builder}/{cfg.data.get('config', '')}".rstrip("/")
    out = {
        "image": args.image,
        "attribute_model": {
            "workdir": os.path.abspath(args.attributes),
            "step": analyzer.attribute_model.step,
            "trained_on": data,
            "loss": cfg.loss,
        },
        "faces": [
            {
                "box": [round(float(v), 1) for v in f["box"]],
                "score": round(f["score"], 4),
                "present": [k for k, v in f["attributes"].items() if v["present"]],
                "probabilities": {
                    k: round(v["probability"], 4) for k, v in f["attributes"].items()
                },
            }
            for f in faces
        ],
    }
    if args.json:
        print(_dumps(out, indent=1))
    else:
        print(f"{args.image}: {len(faces)} face(s); attribute model trained on {data} ({cfg.loss})")
        if data.startswith("synthetic"):
            print("  note: trained on synthetic faces only; not meaningful on real photos")
        for i, f in enumerate(out["faces"]):
            print(f"face {i}: box {f['box']} score {f['score']}")
            print(f"  present: {', '.join(f['present']) or '(none)'}")
    return 0


def _gallery(root) -> list[tuple[str, pathlib.Path]]:
    """(identity, image) pairs: ``<identity>/<image>`` subfolders, or images named
    ``<identity>.<ext>`` at the top level."""
    root = pathlib.Path(root)
    out = []
    for path in list_images(root):
        rel = path.relative_to(root)
        ident = rel.parts[0] if len(rel.parts) > 1 else path.stem
        out.append((ident, path))
    return out


def cmd_identify(argv) -> int:
    p = argparse.ArgumentParser(
        prog="jaxface identify", description="Rank gallery identities for a query face."
    )
    p.add_argument("query")
    p.add_argument("--gallery", required=True, help="folder of <identity>/<image> or images")
    p.add_argument("--top-k", type=_positive_int, default=5)
    p.add_argument("--json", action="store_true")
    _common(p, recognizer=True)
    args = p.parse_args(argv)
    analyzer = _load_analyzer(args, recognizer=True)
    items = _gallery(args.gallery)
    if not items:
        print(f"jaxface identify: no gallery images under {args.gallery}", file=sys.stderr)
        return 2
    progress = Progress(len(items), "gallery")
    embs, idents = [], []
    skipped = SkipReport("gallery images", total=len(items))
    for k, (ident, path) in enumerate(items):
        try:
            e, _ = _largest_face_embedding(analyzer, path)
        except ValueError as err:
            skipped.add(str(path), str(err))
            print(f"\njaxface identify: skipped {err}", file=sys.stderr)
            e = None
        else:
            if e is None:
                skipped.add(str(path), f"{path}: no face found")
        if e is not None:
            _check_finite(f"the embedding of gallery image {path}", e, args.recognizer)
            embs.append(e)
            idents.append(ident)
        progress.update(k + 1, f"skipped {len(skipped)}")
    if skipped:
        print(f"jaxface identify: {skipped.summary()}", file=sys.stderr)
    if not embs:
        print("jaxface identify: no usable gallery face", file=sys.stderr)
        return EXIT_FAILED
    q, qface = _face_embedding_or_report(analyzer, args.query, "identify")
    if q is None:
        return EXIT_USAGE
    _check_finite(f"the embedding of {args.query}", q, args.recognizer)
    sims = np.asarray(embs) @ q
    best: dict[str, float] = {}
    for ident, s in zip(idents, sims):
        best[ident] = max(best.get(ident, -np.inf), float(s))
    ranked = sorted(best.items(), key=lambda kv: -kv[1])[: args.top_k]
    result = {
        "query": args.query,
        "query_face": qface,
        "gallery": {
            "identities": len(best),
            "images": len(embs),
            "skipped": len(skipped),
            "skipped_images": [{"image": n, "reason": r} for n, r in skipped.skipped],
        },
        "top": [{"identity": i, "score": round(s, 4)} for i, s in ranked],
        "score": "cosine similarity, best image of each identity",
    }
    if args.json:
        print(_dumps(result, indent=1))
    else:
        print(
            f"query {args.query}: {len(best)} identities, {len(embs)} gallery faces, "
            f"{len(skipped)} of {len(items)} gallery images skipped"
        )
        for r, (i, s) in enumerate(ranked, 1):
            print(f"  {r}. {i}  {s:.4f}")
    return EXIT_SKIPPED if skipped else EXIT_OK


# ---------------------------------------------------------------------------------
# calibrate, export
# ---------------------------------------------------------------------------------


def cmd_calibrate(argv) -> int:
    p = argparse.ArgumentParser(
        prog="jaxface calibrate",
        description="Held-out impostor / genuine scores of a recogniser (verify's thresholds).",
    )
    p.add_argument("--recognizer", default=None, help="recogniser workdir: verify thresholds")
    p.add_argument(
        "--attributes", default=None, help="LMLE workdir: the evaluator's centroids at its step"
    )
    p.add_argument("--max-images", type=_positive_int, default=2000)
    compile_cache.add_argument(p)
    args = p.parse_args(argv)
    if not args.recognizer and not args.attributes:
        p.error("give --recognizer and/or --attributes")
    compile_cache.setup(args)
    from jaxface import analyzer  # pylint: disable=import-outside-toplevel

    if args.recognizer:
        info = calibrate(analyzer.load_model(args.recognizer), max_images=args.max_images)
        print(_dumps(info, indent=1))
    if args.attributes:
        print(_dumps(analyzer.recluster_attributes(analyzer.load_model(args.attributes))))
    return 0


def cmd_export(argv) -> int:
    p = argparse.ArgumentParser(
        prog="jaxface export",
        description="Serialise the inference functions with jax.export (symbolic batch).",
    )
    p.add_argument("--detector", required=True)
    p.add_argument("--recognizer", required=True)
    p.add_argument("--attributes", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--score-threshold", type=_finite_float(0.0, 1.0), default=0.5)
    compile_cache.add_argument(p)
    args = p.parse_args(argv)
    compile_cache.setup(args)
    from jaxface import export  # pylint: disable=import-outside-toplevel
    from jaxface.analyzer import FaceAnalyzer  # pylint: disable=import-outside-toplevel

    analyzer = FaceAnalyzer.from_checkpoints(
        detector=args.detector,
        recognizer=args.recognizer,
        attributes=args.attributes,
        score_threshold=args.score_threshold,
    )
    manifest = export.export_analyzer(analyzer, args.out)
    for name, info in manifest["functions"].items():
        size = os.path.getsize(os.path.join(args.out, info["file"]))
        shapes = ", ".join(f"{i['name']}{i['shape']}" for i in info["inputs"])
        print(f"{name}: {info['file']} ({size / 1e6:.1f} MB) inputs {shapes}")
    print(f"manifest: {os.path.join(args.out, 'manifest.json')}")
    return 0


def cmd_predict_wider(argv) -> int:
    p = argparse.ArgumentParser(
        prog="jaxface predict-wider",
        description="Write WIDER FACE prediction files for every image under a folder: "
        "OUT/<relative path without extension>.txt (image name, count, then 'x y w h score' "
        "in original pixels), the input of 'jaxface widerface-eval'.",
    )
    p.add_argument("--detector", required=True, help="detector training workdir")
    p.add_argument("--images", required=True, help="image folder (e.g. WIDER_val/images)")
    p.add_argument("--out", required=True, help="prediction folder to write")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--batch-size", type=_positive_int, default=8)
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


COMMANDS = {
    "detect": cmd_detect,
    "verify": cmd_verify,
    "attributes": cmd_attributes,
    "identify": cmd_identify,
    "calibrate": cmd_calibrate,
    "export": cmd_export,
    "predict-wider": cmd_predict_wider,
}
