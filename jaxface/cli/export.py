"""``jaxface export``: the inference functions serialised with `jax.export`
(`jaxface.export`)."""

from __future__ import annotations

import argparse
import os

from jaxface import compile_cache
from jaxface.cli import common


def cmd_export(argv) -> int:
    p = argparse.ArgumentParser(
        prog="jaxface export",
        description="Serialise the inference functions with jax.export (symbolic batch). "
        "The detect function takes one square input: --max-side (rounded up to the "
        "detector's largest stride) holding the photo at the analyzer's scale, or --canvas.",
    )
    p.add_argument("--detector", required=True)
    p.add_argument("--recognizer", required=True)
    p.add_argument("--attributes", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--score-threshold", type=common.finite_float(0.0, 1.0), default=0.5)
    common.add_detect_options(p, pyramid=False)
    compile_cache.add_argument(p)
    args = p.parse_args(argv)
    options = common.detect_options(p, args)
    compile_cache.setup(args)
    from jaxface import export  # pylint: disable=import-outside-toplevel
    from jaxface.analyzer import FaceAnalyzer  # pylint: disable=import-outside-toplevel

    analyzer = FaceAnalyzer.from_checkpoints(
        detector=args.detector,
        recognizer=args.recognizer,
        attributes=args.attributes,
        score_threshold=args.score_threshold,
        detect_options=options,
    )
    manifest = export.export_analyzer(analyzer, args.out)
    for name, info in manifest["functions"].items():
        size = os.path.getsize(os.path.join(args.out, info["file"]))
        shapes = ", ".join(f"{i['name']}{i['shape']}" for i in info["inputs"])
        print(f"{name}: {info['file']} ({size / 1e6:.1f} MB) inputs {shapes}")
    print(f"manifest: {os.path.join(args.out, 'manifest.json')}")
    return 0
