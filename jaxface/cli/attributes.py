"""``jaxface attributes``: the attributes of every face of an image."""

from __future__ import annotations

import argparse
import os
import sys

from jaxface.cli import common


def cmd_attributes(argv) -> int:
    p = argparse.ArgumentParser(prog="jaxface attributes", description="Attributes of every face.")
    p.add_argument("image")
    p.add_argument("--json", action="store_true")
    common.add_common(p, attributes=True)
    args = p.parse_args(argv)
    analyzer = common.load_analyzer(args, common.detect_options(p, args), attributes=True)
    try:
        image = common.read_image(args.image)
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
        print(common.dumps(out, indent=1))
    else:
        print(f"{args.image}: {len(faces)} face(s); attribute model trained on {data} ({cfg.loss})")
        if data.startswith("synthetic"):
            print("  note: trained on synthetic faces only; not meaningful on real photos")
        for i, f in enumerate(out["faces"]):
            print(f"face {i}: box {f['box']} score {f['score']}")
            print(f"  present: {', '.join(f['present']) or '(none)'}")
    return 0
