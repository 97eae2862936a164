"""Rendering and encoding of synthetic examples in worker processes (NumPy and PIL only).

`render_chunk` is what the generation workers run. This module imports neither
TensorFlow, tfds nor JAX, so a worker started by a ``forkserver`` context loads only
NumPy, PIL and `jaxface.data.synthetic.render`; the tfds-specific part of a feature
dict (the ``BBox`` tuples of detection faces) is made in the writing process by
`jaxface.data.synthetic.builder`.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from jaxface.data.synthetic import render


def render_chunk(args):
    """Examples ``start..stop-1`` of a split: renderer dicts, or (``features=True``) the
    feature dicts of `to_features`."""
    kind, seed, split, spec, start, stop, features = args
    make = getattr(render, f"{kind}_example")
    out = [make(seed, split, i, spec) for i in range(start, stop)]
    return [to_features(kind, ex) for ex in out] if features else out


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="png", compress_level=1)
    return buf.getvalue()


def to_features(kind: str, ex: dict) -> dict:
    """A renderer's NumPy example -> its feature dict (PNG bytes; detection boxes
    normalised, as ``(ymin, xmin, ymax, xmax)`` tuples that the builder wraps in tfds'
    ``BBox``)."""
    if kind != "detection":
        return {**ex, "image": png(ex["image"])}
    h, w = ex["image"].shape[:2]
    boxes = ex["faces"]["boxes"]  # [N, 4] pixels x0, y0, x1, y1
    n = len(boxes)
    bbox = [(float(b[1]) / h, float(b[0]) / w, float(b[3]) / h, float(b[2]) / w) for b in boxes]
    return {
        "image": png(ex["image"]),
        "image/id": ex["image/id"],
        "faces": {
            "bbox": bbox,
            "landmarks": np.asarray(ex["faces"]["landmarks"], np.float32).reshape(n, 5, 2),
            "blur": np.asarray(ex["faces"]["blur"], np.int32).reshape(n),
            "occlusion": np.asarray(ex["faces"]["occlusion"], np.int32).reshape(n),
            "pose": np.asarray(ex["faces"]["pose"], np.int32).reshape(n),
            "invalid": np.asarray(ex["faces"]["invalid"], np.int32).reshape(n),
        },
    }
