"""jax.export round trip: serialise with a symbolic batch, reload without model code,
call on batch sizes never traced, compare with the analyzer's own functions."""

import json
import subprocess
import sys

import numpy as np
import pytest

import _tiny_models


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    from jaxface import export
    from jaxface.analyzer import FaceAnalyzer
    from jaxface.detect_input import DetectOptions

    tiny = _tiny_models.workdirs(tmp_path_factory)
    fa = FaceAnalyzer.from_checkpoints(
        detector=tiny["detector"],
        recognizer=tiny["recognizer"],
        attributes=tiny["attributes"],
        score_threshold=0.0,
        detect_options=DetectOptions(max_side=200),
    )
    out = tmp_path_factory.mktemp("export")
    export.export_analyzer(fa, str(out))
    return fa, out, tiny


def test_manifest_and_symbolic_batch(exported):
    _, out, _ = exported
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["functions"]) == {"detect", "align", "yaw", "embed", "attributes"}
    for info in manifest["functions"].values():
        assert (out / info["file"]).stat().st_size > 0
        assert info["inputs"][0]["shape"][0] in ("b", "h")
    assert manifest["functions"]["embed"]["inputs"][0]["shape"][0] == "b"
    # detect: one square input of max_side rounded up to the largest stride (32).
    detect = manifest["functions"]["detect"]
    assert detect["inputs"][0]["shape"] == ["b", 224, 224, 3]
    assert detect["input"] == {"max_side": 200, "face_sizes": [9.0, 95.0], "side": 224}


def test_roundtrip_matches_direct_functions(exported):
    import jax

    from jaxface import export

    fa, out, tiny = exported
    fns = export.load(str(out))
    from jaxface import detect_input

    # detect, batch of 3 (the analyzer runs batches of 1), each scene at the analyzer's
    # scale on the exported square input.
    scenes = [_tiny_models.synthetic_scene(tiny["data_dir"], i)[0] for i in range(3)]
    side = fns.manifest["functions"]["detect"]["input"]["side"]
    prepared = []
    for im in scenes:
        ((scale, _),) = detect_input.levels(*im.shape[:2], fa.detector.config, fa.detect_options)
        prepared.append(detect_input.prepare(im, scale, (side, side)))
    batch = {k: np.stack([p[k] for p in prepared]) for k in prepared[0]}
    got = jax.device_get(fns["detect"](batch["image"], batch["image_hw"], batch["scale"]))
    ref = jax.device_get(
        fa._detect(fa.detector.variables, batch["image"], batch["image_hw"], batch["scale"])
    )
    assert got["boxes"].shape[0] == 3
    for k in ("boxes", "scores", "landmarks"):
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(got["valid"], ref["valid"])
    # align + yaw + embed + attributes, 3 faces (exported with b symbolic).
    det = fa.detect(scenes[0])
    lm = det["landmarks"][:3]
    crops = np.asarray(fns["align"](scenes[0].astype(np.float32), lm))
    k = fns.manifest["functions"]["align"]["settings"]["supersample"]
    np.testing.assert_allclose(crops, fa.align(scenes[0], lm, supersample=k), atol=1e-3)
    yaw = np.asarray(fns["yaw"](lm))
    np.testing.assert_allclose(yaw, fa.yaw(lm), atol=1e-3)
    e, y, g = jax.device_get(fns["embed"](crops, yaw))
    ref = fa.embed(crops, yaw=yaw)
    np.testing.assert_allclose(e, ref["embedding"], atol=1e-5)
    np.testing.assert_allclose(g, ref["gate"], atol=1e-6)
    # attributes at 5 faces: another batch size, same function.
    crops5 = np.concatenate([crops, crops[:2]])
    prob, dec = jax.device_get(fns["attributes"](crops5))
    ref = fa.attributes(crops5)
    np.testing.assert_allclose(prob, ref["probabilities"], atol=1e-5)
    np.testing.assert_array_equal(dec, ref["decisions"])


def test_load_needs_no_model_code(exported):
    """A fresh interpreter loads and runs the embed function with jax alone."""
    fa, out, _ = exported
    s = fa.crop_size
    code = (
        "import sys, numpy as np\n"
        "from jaxface import export\n"
        f"fns = export.load({str(out)!r})\n"
        f"e, y, g = fns['embed'](np.zeros((2, {s}, {s}, 3), np.float32), np.zeros(2, np.float32))\n"
        "assert e.shape[0] == 2, e.shape\n"
        "heavy = [m for m in ('flax', 'jaxface.models', 'jaxface.tasks', 'orbax.checkpoint')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "print('ok', float(np.linalg.norm(np.asarray(e[0]))))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.startswith("ok")
    assert abs(float(res.stdout.split()[1]) - 1.0) < 1e-4
