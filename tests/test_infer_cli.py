"""The inference commands: detect (folder, corrupt file), verify, attributes, identify,
calibrate, export -- on tiny trained checkpoints and synthetic images."""

import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import _tiny_models
from jaxface.calibration import threshold_at_far
from jaxface.cli import common as cli_common
from jaxface import main as cli


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return _tiny_models.workdirs(tmp_path_factory)


@pytest.fixture(scope="session")
def images(tiny, tmp_path_factory):
    """A folder with two synthetic scenes (one in a subfolder) and one corrupt file."""
    root = tmp_path_factory.mktemp("images")
    (root / "sub").mkdir()
    a, _ = _tiny_models.synthetic_scene(tiny["data_dir"], 0)
    b, _ = _tiny_models.synthetic_scene(tiny["data_dir"], 1)
    Image.fromarray(a).save(root / "a.png")
    Image.fromarray(b).save(root / "sub" / "b.jpg")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    faces, labels = _tiny_models.identity_images(tiny["data_dir"], 6)
    gallery = tmp_path_factory.mktemp("gallery")
    for i, (im, lab) in enumerate(zip(faces, labels)):
        d = gallery / f"id{lab:03d}"
        d.mkdir(exist_ok=True)
        # Faces upscaled onto a larger canvas: something for the detector to find.
        Image.fromarray(im).resize((96, 96)).save(d / f"{i}.png")
    return root, gallery


def test_detect_folder_with_corrupt_file(tiny, images, tmp_path, capsys):
    root, _ = images
    out = tmp_path / "det"
    args = ["--detector", tiny["detector"], "--score-threshold", "0.0"]
    rc = cli.main(["detect", str(root), "--out", str(out), *args])
    captured = capsys.readouterr()
    assert rc == cli_common.EXIT_SKIPPED  # finished, but one image was skipped
    assert "2 of 3 images processed" in captured.out and "1 skipped" in captured.out
    assert "broken.jpg" in captured.out and "broken.jpg" in captured.err
    assert "[detect] |" in captured.err  # the progress bar
    for stem in ("a.png", "sub/b.jpg"):  # outputs are named after the whole input name
        rec = json.loads((out / f"{stem}.json").read_text())
        with Image.open(root / stem) as im:
            assert (rec["width"], rec["height"]) == im.size
        assert rec["faces"] and set(rec["faces"][0]) == {"box", "score", "landmarks"}
        assert len(rec["faces"][0]["landmarks"]) == 5
        scores = [f["score"] for f in rec["faces"]]
        assert scores == sorted(scores, reverse=True) and min(scores) >= 0.0
        with Image.open(out / f"{stem}.png") as drawn:
            assert drawn.format == "PNG" and drawn.size == (rec["width"], rec["height"])
    assert not (out / "broken.jpg.json").exists()
    # Every image unreadable: a non-zero exit.
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"nope")
    assert cli.main(["detect", str(bad), "--out", str(tmp_path / "o2"), *args]) == 1


def test_detect_non_square_photo_at_its_own_scale(tiny, tmp_path, capsys):
    """``jaxface detect`` with the default options on a 200 x 300 photo: the scale of the
    face-size rule and its padded bucket are recorded, and the faces are the analyzer's
    (same options) in photo pixels; ``--canvas`` records the old fit-to-canvas scale."""
    from jaxface.analyzer import FaceAnalyzer

    scene, _ = _tiny_models.synthetic_scene(tiny["data_dir"], 0)
    photo = np.asarray(Image.fromarray(scene).resize((300, 200), Image.BILINEAR))
    Image.fromarray(photo).save(tmp_path / "wide.png")
    args = ["--detector", tiny["detector"], "--score-threshold", "0.0"]
    rc = cli.main(["detect", str(tmp_path / "wide.png"), "--out", str(tmp_path / "o"), *args])
    assert rc == 0
    rec = json.loads((tmp_path / "o" / "wide.png.json").read_text())
    assert (rec["width"], rec["height"]) == (300, 200)
    lo, hi = json.loads((pathlib.Path(tiny["detector"]) / "config.json").read_text())["face_sizes"]
    s = np.sqrt(hi / (0.9 * 200))  # 0.9 x 200 px faces may exceed the trained 95 px
    (level,) = rec["detector"]["input"]
    assert level["scale"] == pytest.approx(s, abs=1e-6) and level["input_hw"] == [256, 256]
    det = FaceAnalyzer.from_checkpoints(detector=tiny["detector"], score_threshold=0.0).detect(
        photo
    )
    assert rec["faces"] and len(rec["faces"]) == len(det["scores"])
    np.testing.assert_allclose(
        [f["box"] for f in rec["faces"]], det["boxes"], atol=0.006
    )  # JSON rounds to 2 decimals
    boxes = np.array([f["box"] for f in rec["faces"]])
    assert boxes[:, 2].max() <= 300.01 and boxes[:, 3].max() <= 200.01
    rc = cli.main(
        ["detect", str(tmp_path / "wide.png"), "--out", str(tmp_path / "c"), "--canvas", "128"]
        + args
    )
    assert rc == 0
    rec = json.loads((tmp_path / "c" / "wide.png.json").read_text())
    assert rec["detector"]["input"] == [{"scale": round(128 / 300, 6), "input_hw": [128, 128]}]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli.main(["detect", str(tmp_path / "wide.png"), "--out", "x", "--canvas", "128"]
                 + ["--scales", "1,2", *args])  # fmt: skip
    assert exc.value.code == 2 and "not both" in capsys.readouterr().err


def test_threshold_at_far_against_numpy():
    rng = np.random.default_rng(0)
    imp = rng.normal(0, 1, 10_000)
    gen = rng.normal(2, 1, 1_000)
    for far in (1e-1, 1e-2, 1e-3):
        t = threshold_at_far(imp, far, gen)
        assert np.mean(imp >= t["threshold"]) <= far  # never above the requested FAR
        # and the next lower impostor score would exceed it (the lowest such threshold)
        below = np.max(imp[imp < t["threshold"]])
        assert np.mean(imp >= below) > far
        np.testing.assert_allclose(t["tar"], np.mean(gen >= t["threshold"]))


def test_verify_calibrates_then_decides(tiny, images, capsys):
    _, gallery = images
    files = sorted(gallery.rglob("*.png"))
    args = [
        "--detector",
        tiny["detector"],
        "--recognizer",
        tiny["recognizer"],
        "--score-threshold",
        "0.0",
    ]
    rc = cli.main(["verify", str(files[0]), str(files[1]), "--far", "0.01", "--json", *args])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert out["decision"] in ("same", "different")
    assert (out["score"] >= out["threshold"]) == (out["decision"] == "same")
    assert out["far_at_threshold"] <= 0.01
    cal = json.loads(
        (
            __import__("pathlib").Path(tiny["recognizer"]) / "calibration" / "verification.json"
        ).read_text()
    )
    assert cal["num_impostor"] > 0 and "split 'test'" in cal["source"]
    # The threshold is the one the held-out impostor scores give at that FAR.
    imp = np.load(
        __import__("pathlib").Path(tiny["recognizer"]) / "calibration" / "impostor_scores.npy"
    )
    assert abs(out["threshold"] - threshold_at_far(imp, 0.01)["threshold"]) < 1e-4
    # Same image twice: score 1.
    rc = cli.main(["verify", str(files[0]), str(files[0]), "--json", *args])
    assert rc == 0 and json.loads(capsys.readouterr().out)["score"] == pytest.approx(1.0, abs=1e-4)


def test_attributes_and_identify(tiny, images, capsys):
    root, gallery = images
    det = ["--detector", tiny["detector"], "--score-threshold", "0.0"]
    rc = cli.main(
        ["attributes", str(root / "a.png"), "--attributes", tiny["attributes"], "--json", *det]
    )
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["faces"]
    assert len(out["faces"][0]["probabilities"]) == 40
    assert out["attribute_model"]["trained_on"].startswith("synthetic_faces")
    query = sorted(gallery.rglob("*.png"))[0]
    rc = cli.main(
        [
            "identify",
            str(query),
            "--gallery",
            str(gallery),
            "--recognizer",
            tiny["recognizer"],
            "--top-k",
            "3",
            "--json",
            *det,
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert len(out["top"]) <= 3 and out["gallery"]["images"] == 6
    # The query is itself in the gallery: its identity ranks first with score ~1.
    assert out["top"][0]["identity"] == query.parent.name
    assert out["top"][0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_export_command(tiny, tmp_path, capsys):
    out = tmp_path / "exp"
    rc = cli.main(
        [
            "export",
            "--detector",
            tiny["detector"],
            "--recognizer",
            tiny["recognizer"],
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "embed: embed.jaxexport" in printed and (out / "manifest.json").exists()


def test_compile_cache_switches(monkeypatch, tmp_path):
    from jaxface import compile_cache

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache.default_dir() == tmp_path / "jaxface" / "jax_cache"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert compile_cache.default_dir() == tmp_path / "home" / ".cache" / "jaxface" / "jax_cache"
    monkeypatch.setenv("JAXFACE_COMPILE_CACHE", "1")
    assert compile_cache.enabled() and not compile_cache.enabled(no_compile_cache=True)
    for off in ("0", "false", "OFF", "no"):
        monkeypatch.setenv("JAXFACE_COMPILE_CACHE", off)
        assert not compile_cache.enabled()
    monkeypatch.delenv("JAXFACE_COMPILE_CACHE")
    assert compile_cache.enabled()


def test_detect_second_process_reads_the_compile_cache(tiny, images, tmp_path):
    """Two `jaxface detect` processes on one image: the first fills the cache folder,
    the second loads its executables from it (JAX logs each persistent-cache hit when
    JAX_LOG_COMPILES is set) and adds nothing."""
    root, _ = images
    cache = tmp_path / "xdg" / "jaxface" / "jax_cache"
    env = dict(
        os.environ,
        XDG_CACHE_HOME=str(tmp_path / "xdg"),
        JAXFACE_COMPILE_CACHE="1",
        JAX_LOG_COMPILES="1",
    )

    def run(out):
        cmd = [sys.executable, "-m", "jaxface.main", "detect", str(root / "a.png")]
        cmd += ["--out", str(tmp_path / out), "--detector", tiny["detector"]]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        return r.stderr, time.perf_counter() - t0

    err1, t1 = run("first")
    entries = sorted(p.name for p in cache.iterdir())
    assert entries, "the first run wrote no cache entry"
    assert "Persistent compilation cache hit" not in err1
    err2, t2 = run("second")
    assert "Persistent compilation cache hit" in err2
    assert sorted(p.name for p in cache.iterdir()) == entries
    first = json.loads((tmp_path / "first" / "a.png.json").read_text())
    second = json.loads((tmp_path / "second" / "a.png.json").read_text())
    assert first["faces"] == second["faces"]
    print(f"jaxface detect wall time: first {t1:.1f} s, second {t2:.1f} s")


def test_predict_wider_writes_wider_prediction_files(tiny, images, tmp_path, capsys):
    from jaxface.evaluation import widerface as wider_eval

    root, _ = images
    clean = tmp_path / "imgs"
    (clean / "sub").mkdir(parents=True)
    for rel in ("a.png", "sub/b.jpg"):
        (clean / rel).write_bytes((root / rel).read_bytes())
    out = tmp_path / "pred"
    rc = cli.main(
        ["predict-wider", "--detector", tiny["detector"], "--images", str(clean), "--out", str(out)]
    )
    assert rc == 0
    assert "wrote predictions for 2 images (checkpoint step" in capsys.readouterr().out
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.txt")) == [
        "a.txt",
        "sub/b.txt",
    ]
    lines = (out / "sub" / "b.txt").read_text().splitlines()
    assert lines[0] == "b" and int(lines[1]) == len(lines) - 2
    boxes, scores = wider_eval.read_prediction_file(out / "sub" / "b.txt")
    assert boxes.shape == (len(scores), 4) and np.all(np.diff(scores) <= 0)
    # A workdir of another task is refused with one line.
    rc = cli.main(
        [
            "predict-wider",
            "--detector",
            tiny["recognizer"],
            "--images",
            str(clean),
            "--out",
            str(out),
        ]
    )
    assert rc == 1 and "not a detector" in capsys.readouterr().err
