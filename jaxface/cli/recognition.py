"""``jaxface verify`` (same person?), ``jaxface identify`` (rank a gallery's identities)
and ``jaxface calibrate`` (verify's thresholds; LMLE centroids).

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
import os
import pathlib
import sys

import numpy as np

from jaxface import compile_cache
from jaxface.calibration import calibrate, load_calibration, threshold_at_far
from jaxface.cli import common
from jaxface.data.images import SkipReport


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

    image = common.read_image(path)
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
        type=common.finite_float(0.0, 1.0),
        default=1e-3,
        help="false-accept rate of the threshold, in [0, 1]",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    common.add_common(p, recognizer=True)
    args = p.parse_args(argv)
    analyzer = common.load_analyzer(args, common.detect_options(p, args), recognizer=True)
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
        common.check_finite(f"the embedding of {path}", e, args.recognizer)
    score = float(np.dot(embs[0], embs[1]))
    common.check_finite("the score", score, args.recognizer)
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
        print(common.dumps(result, indent=1))
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


def _gallery(root) -> list[tuple[str, pathlib.Path]]:
    """(identity, image) pairs: ``<identity>/<image>`` subfolders, or images named
    ``<identity>.<ext>`` at the top level."""
    root = pathlib.Path(root)
    out = []
    for path in common.list_images(root):
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
    p.add_argument("--top-k", type=common.positive_int, default=5)
    p.add_argument("--json", action="store_true")
    common.add_common(p, recognizer=True)
    args = p.parse_args(argv)
    analyzer = common.load_analyzer(args, common.detect_options(p, args), recognizer=True)
    items = _gallery(args.gallery)
    if not items:
        print(f"jaxface identify: no gallery images under {args.gallery}", file=sys.stderr)
        return 2
    progress = common.Progress(len(items), "gallery")
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
            common.check_finite(f"the embedding of gallery image {path}", e, args.recognizer)
            embs.append(e)
            idents.append(ident)
        progress.update(k + 1, f"skipped {len(skipped)}")
    if skipped:
        print(f"jaxface identify: {skipped.summary()}", file=sys.stderr)
    if not embs:
        print("jaxface identify: no usable gallery face", file=sys.stderr)
        return common.EXIT_FAILED
    q, qface = _face_embedding_or_report(analyzer, args.query, "identify")
    if q is None:
        return common.EXIT_USAGE
    common.check_finite(f"the embedding of {args.query}", q, args.recognizer)
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
        print(common.dumps(result, indent=1))
    else:
        print(
            f"query {args.query}: {len(best)} identities, {len(embs)} gallery faces, "
            f"{len(skipped)} of {len(items)} gallery images skipped"
        )
        for r, (i, s) in enumerate(ranked, 1):
            print(f"  {r}. {i}  {s:.4f}")
    return common.EXIT_SKIPPED if skipped else common.EXIT_OK


def cmd_calibrate(argv) -> int:
    p = argparse.ArgumentParser(
        prog="jaxface calibrate",
        description="Held-out impostor / genuine scores of a recogniser (verify's thresholds).",
    )
    p.add_argument("--recognizer", default=None, help="recogniser workdir: verify thresholds")
    p.add_argument(
        "--attributes", default=None, help="LMLE workdir: the evaluator's centroids at its step"
    )
    p.add_argument("--max-images", type=common.positive_int, default=2000)
    compile_cache.add_argument(p)
    args = p.parse_args(argv)
    if not args.recognizer and not args.attributes:
        p.error("give --recognizer and/or --attributes")
    compile_cache.setup(args)
    from jaxface import analyzer  # pylint: disable=import-outside-toplevel

    if args.recognizer:
        info = calibrate(analyzer.load_model(args.recognizer), max_images=args.max_images)
        print(common.dumps(info, indent=1))
    if args.attributes:
        print(common.dumps(analyzer.recluster_attributes(analyzer.load_model(args.attributes))))
    return 0
