"""Inference commands of the ``jaxface`` command line (`jaxface.main` dispatches here).

  jaxface detect IMAGE_OR_DIR --out DIR --detector WD [--score-threshold 0.5]
      [--max-side 1024 | --canvas N] [--scales 0.5,1,2] [--face-sizes MIN,MAX]
  jaxface verify IMG_A IMG_B --detector WD --recognizer WD [--far 1e-3]
  jaxface attributes IMAGE --detector WD --attributes WD
  jaxface identify --gallery DIR QUERY --detector WD --recognizer WD [--top-k 5]
  jaxface calibrate [--recognizer WD] [--attributes WD] [--max-images 2000]
  jaxface export --detector WD --recognizer WD [--attributes WD] --out DIR
  jaxface predict-wider --detector WD --images DIR --out DIR

One module per kind of command: `detect` (detect, predict-wider), `recognition`
(verify, identify, calibrate), `attributes`, `export`; `common` holds what they share.
``WD`` are training workdirs (`jaxface train`); see `jaxface.analyzer`. Every command
that detects takes the detector-input options of `jaxface.cli.common.add_detect_options`
(`jaxface.detect_input`).

Every command keeps JAX's persistent compilation cache in
``$XDG_CACHE_HOME/jaxface/jax_cache`` (``~/.cache/jaxface/jax_cache``), so a second run
skips compilation; ``--no-compile-cache`` or ``JAXFACE_COMPILE_CACHE=0`` turns it off
(`jaxface.compile_cache`).
"""

from __future__ import annotations

from jaxface.cli import attributes, detect, export, recognition

COMMANDS = {
    "detect": detect.cmd_detect,
    "verify": recognition.cmd_verify,
    "attributes": attributes.cmd_attributes,
    "identify": recognition.cmd_identify,
    "calibrate": recognition.cmd_calibrate,
    "export": export.cmd_export,
    "predict-wider": detect.cmd_predict_wider,
}
