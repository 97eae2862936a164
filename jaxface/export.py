"""Serialised inference functions (`jax.export`) that run without the model code.

``jaxface export --detector WD --recognizer WD [--attributes WD] --out DIR`` (or
`export_analyzer`) writes, for each inference function of a `jaxface.analyzer.FaceAnalyzer`:

* ``DIR/<name>.jaxexport``: ``jax.export.export(jax.jit(fn))(...).serialize()`` -- StableHLO
  with a **symbolic batch dimension** ``b`` (any batch size runs without re-tracing);
* ``DIR/manifest.json``: per function the input names, shapes (``"b"`` for the batch),
  dtypes and meaning, output names, and the preprocessing each input expects; plus the
  checkpoints (workdir, step) the weights came from.

Functions (all batched over ``b``):
  ``detect``      image ``[b, S, S, 3]`` float32 normalised (``uint8 * 2 / 255 - 1``): the
                  photo at the analyzer's scale (`jaxface.detect_input`: its own
                  resolution, shrunk by the detector's face-size rule and to at most
                  ``max_side``; or, with a fixed canvas, its longer side scaled to S)
                  placed top-left on a zero ``S x S`` canvas, image_hw ``[b, 2]`` (valid
                  height, width on the canvas), scale ``[b]`` (canvas pixels per original
                  pixel) -> boxes ``[b, K, 4]``, scores ``[b, K]``, valid ``[b, K]``,
                  landmarks ``[b, K, 5, 2]`` in original image pixels (after the model's
                  NMS; apply a score threshold yourself). The manifest's ``input`` holds
                  the rule's numbers; `jaxface.detect_input.levels` and ``prepare``
                  compute the input.
  ``align``       image ``[h, w, 3]`` float32 (0..255; symbolic h, w), landmarks
                  ``[b, 5, 2]`` -> crops ``[b, S', S', 3]`` (0..255): the recogniser's crop
                  (box prefilter at `jaxface.analyzer.MAX_SUPERSAMPLE` samples per axis).
  ``embed``       crops ``[b, S', S', 3]`` float32 0..255, yaw ``[b]`` degrees ->
                  embedding ``[b, D]`` (L2-normalised, flip fused), yaw, gate.
  ``yaw``         landmarks ``[b, 5, 2]`` -> yaw ``[b]`` degrees (3D mean-face fit).
  ``attributes``  crops ``[b, S', S', 3]`` float32 0..255 -> probabilities ``[b, A]``,
                  decisions ``[b, A]`` int32.

**Parameters are baked in** as constants of each module (a closure over the restored
weights, and the LMLE centroids), so a file is self-contained: ``jaxface.export.load``
needs only ``jax`` and ``numpy`` -- no flax, no model code, no checkpoint. The price is
one copy of the weights per function and no weight swapping; for these models (a few
MB) self-containment is worth more.

Loading::

    from jaxface import export
    fns = export.load("DIR")            # dict-like: name -> callable
    out = fns["embed"](crops, yaw)      # NumPy / jax arrays in, jax arrays out
    fns.manifest                        # the JSON manifest
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp

__all__ = ["export_analyzer", "load", "ExportedFunctions", "EXTENSION"]

EXTENSION = ".jaxexport"
MANIFEST = "manifest.json"


def _spec(shape, dtype, scope):
    """A ShapeDtypeStruct from a shape of ints and dimension-variable names."""
    names = [str(d) for d in shape]
    sym = jax.export.symbolic_shape(", ".join(names), scope=scope)
    return jax.ShapeDtypeStruct(sym, jnp.dtype(dtype))


def _export_one(fn, inputs: list[dict], out_dir: str, name: str) -> dict:
    scope = jax.export.SymbolicScope()
    specs = [_spec(i["shape"], i["dtype"], scope) for i in inputs]
    exp = jax.export.export(jax.jit(fn))(*specs)
    path = os.path.join(out_dir, name + EXTENSION)
    with open(path, "wb") as f:
        f.write(exp.serialize())
    return {
        "file": name + EXTENSION,
        "inputs": inputs,
        "outputs": [
            {"shape": [str(d) for d in a.shape], "dtype": str(a.dtype)} for a in exp.out_avals
        ],
        "platforms": list(exp.platforms),
    }


def export_analyzer(analyzer, out_dir: str, *, functions=None) -> dict:
    """Exports the analyzer's inference functions to ``out_dir``; returns the manifest.

    ``functions``: a subset of ``("detect", "align", "yaw", "embed", "attributes")``
    (default: all that apply).
    """
    from jaxface import analyzer as analyzer_lib  # pylint: disable=import-outside-toplevel
    from jaxface import detect_input  # pylint: disable=import-outside-toplevel
    from jaxface.ops.detect_scale import LARGEST_FACE_FRACTION  # pylint: disable=import-outside-toplevel

    det, rec, att = analyzer.detector, analyzer.recognizer, analyzer.attribute_model
    options = analyzer.detect_options
    if tuple(options.scales) != (1.0,):
        raise ValueError(
            "the exported detect function runs one scale; export without a pyramid (scales)"
        )
    os.makedirs(out_dir, exist_ok=True)
    s_det = detect_input.export_side(det.config, options)
    s = analyzer.crop_size
    wanted = set(functions or ("detect", "align", "yaw", "embed", "attributes"))
    manifest: dict[str, Any] = {
        "format": "jax.export serialized StableHLO; parameters baked in as constants",
        "jax_version": jax.__version__,
        "batch_dim": "b",
        "checkpoints": {
            "detector": {"workdir": os.path.abspath(det.workdir), "step": det.step},
            "recognizer": {"workdir": os.path.abspath(rec.workdir), "step": rec.step},
        },
        "functions": {},
    }
    if att is not None:
        manifest["checkpoints"]["attributes"] = {
            "workdir": os.path.abspath(att.workdir),
            "step": att.step,
        }
    fns = manifest["functions"]

    if "detect" in wanted:
        core = analyzer_lib.detect_core(det)
        variables = det.variables
        fns["detect"] = _export_one(
            lambda image, image_hw, scale: core(variables, image, image_hw, scale),
            [
                {"name": "image", "shape": ["b", s_det, s_det, 3], "dtype": "float32"},
                {"name": "image_hw", "shape": ["b", 2], "dtype": "float32"},
                {"name": "scale", "shape": ["b"], "dtype": "float32"},
            ],
            out_dir,
            "detect",
        )
        if options.canvas is not None:
            rule = f"scale = {s_det} / max(h, w) (the longer side scaled to the canvas)"
            fns["detect"]["input"] = {"canvas": s_det}
        else:
            lo, hi = detect_input.face_sizes_of(det.config, options)
            big = f"{LARGEST_FACE_FRACTION:g} * min(h, w)"  # the largest plausible face
            rule = (
                f"scale = min(f, {options.max_side} / max(h, w)), f = 1 if {big} <= {hi:g} "
                f"else sqrt({hi:g} / ({big})) (jaxface.ops.detect_scale.face_size_scale)"
            )
            fns["detect"]["input"] = {
                "max_side": int(options.max_side),
                "face_sizes": [lo, hi],
                "side": s_det,
            }
        fns["detect"]["preprocessing"] = (
            f"uint8 RGB [h, w] scaled by {rule} (PIL bilinear affine), placed top-left on "
            f"a zero {s_det}x{s_det} canvas, then x * 2 / 255 - 1; image_hw = (h, w) * scale; "
            "scale = canvas pixels per original pixel"
        )
        fns["detect"]["output_names"] = ["boxes", "landmarks", "scores", "valid"]
        fns["detect"]["score_threshold"] = analyzer.score_threshold
    if "align" in wanted:
        # The analyzer picks the box prefilter's k per call (the faces' shrink factor); a
        # serialised function is static, so it takes the largest.
        settings = {**analyzer.align_settings, "supersample": analyzer_lib.MAX_SUPERSAMPLE}
        fns["align"] = _export_one(
            lambda image, landmarks: analyzer_lib._align_padded(  # pylint: disable=protected-access
                image, landmarks, size=s, **settings
            ),
            [
                {"name": "image", "shape": ["h", "w", 3], "dtype": "float32"},
                {"name": "landmarks", "shape": ["b", 5, 2], "dtype": "float32"},
            ],
            out_dir,
            "align",
        )
        fns["align"]["settings"] = settings
        fns["align"]["preprocessing"] = "image: RGB 0..255 as float32; landmarks in image pixels"
        fns["align"]["output_names"] = ["crops"]
    if "yaw" in wanted:
        fns["yaw"] = _export_one(
            analyzer_lib._yaw_from_landmarks,  # pylint: disable=protected-access
            [{"name": "landmarks", "shape": ["b", 5, 2], "dtype": "float32"}],
            out_dir,
            "yaw",
        )
        fns["yaw"]["output_names"] = ["yaw"]
    if "embed" in wanted:
        core = analyzer_lib.embed_core(rec)
        variables = rec.variables
        fns["embed"] = _export_one(
            lambda crops, yaw: core(variables, crops, yaw),
            [
                {"name": "crops", "shape": ["b", s, s, 3], "dtype": "float32"},
                {"name": "yaw", "shape": ["b"], "dtype": "float32"},
            ],
            out_dir,
            "embed",
        )
        fns["embed"]["preprocessing"] = "aligned crops (the align function), RGB 0..255"
        fns["embed"]["output_names"] = ["embedding", "yaw", "gate"]
    if "attributes" in wanted and att is not None:
        core = analyzer_lib.attributes_core(att)
        variables, task_state = att.variables, att.task_state
        fns["attributes"] = _export_one(
            lambda crops: core(variables, task_state, crops),
            [{"name": "crops", "shape": ["b", s, s, 3], "dtype": "float32"}],
            out_dir,
            "attributes",
        )
        fns["attributes"]["preprocessing"] = (
            "the align function's crops (RGB 0..255), resized inside (antialiased) to the "
            f"attribute model's {int(att.config.image_size)} px input"
        )
        fns["attributes"]["names"] = list(analyzer.attribute_names)
        fns["attributes"]["output_names"] = ["probabilities", "decisions"]
    with open(os.path.join(out_dir, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


class ExportedFunctions(Mapping):
    """name -> callable over the deserialised functions of an export directory."""

    def __init__(self, manifest: dict, exported: dict):
        self.manifest = manifest
        self._exported = exported

    def __getitem__(self, name):
        exp = self._exported[name]
        return exp.call

    def __iter__(self):
        return iter(self._exported)

    def __len__(self):
        return len(self._exported)

    def exported(self, name):
        """The `jax.export.Exported` object of a function."""
        return self._exported[name]


def load(path: str) -> ExportedFunctions:
    """Deserialises every function of an export directory (or one ``.jaxexport`` file).

    Needs only jax: neither the model code nor the checkpoints.
    """
    if os.path.isfile(path):
        with open(path, "rb") as f:
            exp = jax.export.deserialize(bytearray(f.read()))
        name = os.path.basename(path).removesuffix(EXTENSION)
        return ExportedFunctions(
            {"functions": {name: {"file": os.path.basename(path)}}}, {name: exp}
        )
    mpath = os.path.join(path, MANIFEST)
    if not os.path.isfile(mpath):
        raise FileNotFoundError(f"{mpath}: not an export directory (jaxface export writes it)")
    with open(mpath) as f:
        manifest = json.load(f)
    exported = {}
    for name, info in manifest["functions"].items():
        with open(os.path.join(path, info["file"]), "rb") as f:
            exported[name] = jax.export.deserialize(bytearray(f.read()))
    return ExportedFunctions(manifest, exported)
