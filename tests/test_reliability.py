"""Fault injection: each test breaks one thing on purpose and checks what jaxface does.

The table in docs/reliability.md points at these tests (and at the older ones in the
per-module test files). Every fixture is built here, in tmp_path, from scratch.
"""

import io
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import zipfile

import jax
import orbax.checkpoint as ocp

import numpy as np
import pytest
from PIL import Image

from jaxface.data import sources, tfds_base
from test_train import tiny_config  # the trainer tests' tiny LMLE run config

REPO = pathlib.Path(__file__).resolve().parents[1]


def _jpeg(h, w, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
        buf, format="JPEG", quality=90
    )
    return buf.getvalue()


def _truncated_jpeg(h, w) -> bytes:
    data = _jpeg(h, w, seed=1)
    return data[: len(data) // 2]  # header intact (PIL opens it), scan data cut


def _names(src) -> set:
    out = set()
    for i in range(len(src)):
        v = src[i]["image/filename"]
        out.add(v.decode() if isinstance(v, bytes) else v)
    return out


def _build_celeba(tmp_path, manual):
    import tensorflow_datasets as tfds

    from jaxface.data import celeba

    builder = celeba.CelebAManual(data_dir=os.fspath(tmp_path / "tfds"))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual)),
        file_format="array_record",
    )
    return celeba.CelebAManual(data_dir=os.fspath(tmp_path / "tfds"))


def _skips(report) -> dict:
    return {(e["split"], e["key"]): e for e in report["skipped"]}


# ------------------------------------------------------------------ check_image


def test_check_image_rejects_truncated_empty_and_missing(tmp_path):
    good = _jpeg(16, 16)
    assert tfds_base.check_image(good) == (16, 16)
    # A header-only open accepts the truncated file; the full decode does not.
    with Image.open(io.BytesIO(_truncated_jpeg(64, 64))) as im:
        assert im.size == (64, 64)
    for bad in (_truncated_jpeg(64, 64), b"", b"not an image"):
        with pytest.raises(tfds_base.UnreadableFileError, match="x.jpg"):
            tfds_base.check_image(bad, what="x.jpg")
    with pytest.raises(tfds_base.UnreadableFileError, match="nope.jpg"):
        tfds_base.check_image(tmp_path / "nope.jpg")


# ------------------------------------------------------------------ CelebA builder

_CELEBA = {"000001.jpg": 0, "000002.jpg": 0, "000003.jpg": 0, "000004.jpg": 1, "000005.jpg": 2}


def _celeba_layout(root, *, zipped):
    from jaxface.data.celeba import CELEBA_ATTRIBUTES

    root.mkdir(parents=True)
    names = sorted(_CELEBA)
    images = {n: _jpeg(22, 18, seed=i) for i, n in enumerate(names)}
    images["000002.jpg"] = _truncated_jpeg(64, 48)  # corrupt
    del images["000003.jpg"]  # listed but missing
    if zipped:
        with zipfile.ZipFile(root / "img_align_celeba.zip", "w") as z:
            for n, b in images.items():
                z.writestr(f"img_align_celeba/{n}", b)
    else:
        (root / "img_align_celeba").mkdir()
        for n, b in images.items():
            (root / "img_align_celeba" / n).write_bytes(b)
    rows = [f"{n} " + " ".join(["1", "-1"] * 20) for n in names]
    (root / "list_attr_celeba.txt").write_text(
        "\n".join([str(len(names)), " ".join(CELEBA_ATTRIBUTES)] + rows) + "\n"
    )
    (root / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, p in _CELEBA.items()))


@pytest.mark.parametrize("zipped", [False, True])
def test_celeba_build_skips_and_reports_bad_images(tmp_path, zipped):
    manual = tmp_path / "celeba"
    _celeba_layout(manual, zipped=zipped)
    b = _build_celeba(tmp_path, manual)
    assert _names(b.as_data_source("train")) == {"000001.jpg"}
    assert b.info.splits["train"].num_examples == 1
    assert len(b.as_data_source("validation")) == len(b.as_data_source("test")) == 1
    report = tfds_base.skip_report(b.data_dir)
    assert report["counts"] == {"train": 2}
    skips = _skips(report)
    assert set(skips) == {("train", "000002.jpg"), ("train", "000003.jpg")}
    assert "truncated" in skips[("train", "000002.jpg")]["reason"]
    assert skips[("train", "000003.jpg")]["reason"].startswith(
        "FileNotFoundError" if not zipped else "FileNotFoundError: "
    )
    assert skips[("train", "000003.jpg")]["path"].endswith("000003.jpg")
    assert b.skipped == report["skipped"]  # readable from a re-opened builder


def test_celeba_malformed_annotation_line_is_still_an_error(tmp_path):
    from jaxface.data.celeba import CelebAFormatError

    manual = tmp_path / "celeba"
    _celeba_layout(manual, zipped=False)
    p = manual / "list_eval_partition.txt"
    p.write_text(p.read_text().replace("000004.jpg 1", "000004.jpg one"))
    with pytest.raises(CelebAFormatError, match=r"list_eval_partition\.txt:4: partition"):
        _build_celeba(tmp_path, manual)


# ------------------------------------------------------------------ WIDER builder

_WIDER_TRAIN = """0--Parade/a.jpg
1
4 6 20 24 0 0 0 0 0 0
0--Parade/b.jpg
1
1 1 5 5 0 0 0 0 0 0
0--Parade/c.jpg
0
0 0 0 0 0 0 0 0 0 0
"""
_WIDER_VAL = """1--Handshaking/d.jpg
4
-10 -5 30 20 0 0 0 0 0 0
50 30 0 10 0 0 0 0 0 0
200 200 10 10 0 0 0 0 0 0
10 10 -4 8 0 0 0 0 0 0
1--Handshaking/e.jpg
1
2 2 8 8 0 0 0 0 0 0
"""


def _wider_layout(root):
    files = {
        "WIDER_train/images/0--Parade/a.jpg": _jpeg(48, 64),
        # b.jpg is listed but missing
        "WIDER_train/images/0--Parade/c.jpg": _jpeg(40, 40),
        "WIDER_val/images/1--Handshaking/d.jpg": _jpeg(60, 80),
        "WIDER_val/images/1--Handshaking/e.jpg": _truncated_jpeg(64, 64),
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "wider_face_split").mkdir()
    (root / "wider_face_split" / "wider_face_train_bbx_gt.txt").write_text(_WIDER_TRAIN)
    (root / "wider_face_split" / "wider_face_val_bbx_gt.txt").write_text(_WIDER_VAL)


@pytest.fixture(scope="module")
def wider_built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wider")
    _wider_layout(tmp / "manual")
    return sources.get_builder(
        "wider_face_original", data_dir=str(tmp / "tfds"), manual_dir=str(tmp / "manual")
    )


def test_wider_build_skips_and_reports_bad_images(wider_built):
    b = wider_built
    assert _names(b.as_data_source("train")) == {"0--Parade/a.jpg", "0--Parade/c.jpg"}
    assert _names(b.as_data_source("validation")) == {"1--Handshaking/d.jpg"}
    report = tfds_base.skip_report(b.data_dir)
    assert report["counts"] == {"train": 1, "validation": 1}
    skips = _skips(report)
    assert "is missing" in skips[("train", "0--Parade/b.jpg")]["reason"]
    assert "truncated" in skips[("validation", "1--Handshaking/e.jpg")]["reason"]


def test_wider_boxes_outside_zero_size_and_no_faces(wider_built):
    """Builder: every annotated box is kept as stored (``bbox_xywh``); ``bbox`` is clipped
    to the image. Detection input: boxes of zero area after clipping (zero or negative
    size, entirely outside) are dropped, a partly outside box is its in-image part, an
    image without faces gives no target."""
    from jaxface.data import detection_aug
    from jaxface.tasks import detection_data

    b = wider_built
    ex = b.as_data_source("validation")[0]  # d.jpg, 80 x 60 (e.jpg was skipped)
    np.testing.assert_array_equal(
        np.asarray(ex["faces"]["bbox_xywh"]),
        [[-10, -5, 30, 20], [50, 30, 0, 10], [200, 200, 10, 10], [10, 10, -4, 8]],
    )
    # (ymin, xmin, ymax, xmax), clipped: partly outside -> cut at the border; zero width
    # -> xmax == xmin; entirely outside -> collapsed onto the border; negative width ->
    # zero width at x1.
    np.testing.assert_allclose(
        np.asarray(ex["faces"]["bbox"]),
        [
            [0, 0, 15 / 60, 20 / 80],
            [30 / 60, 50 / 80, 40 / 60, 50 / 80],
            [1, 1, 1, 1],
            [10 / 60, 10 / 80, 18 / 60, 10 / 80],
        ],
        atol=1e-6,
    )
    faces = detection_data.faces_of(ex)
    placed = detection_aug.place(
        ex["image"], faces["boxes"], detection_aug.fit_placement(60, 80, 80), min_visible=0.5
    )
    np.testing.assert_array_equal(placed["keep"], [True, False, False, False])
    # The partly outside box enters training as its in-image part (clipped at build time).
    np.testing.assert_allclose(placed["boxes"][0], [0, 0, 20, 15], atol=1e-4)
    assert not placed["ignore"][0]
    train = b.as_data_source("train")
    no_face = [train[i] for i in range(len(train)) if len(train[i]["faces"]["bbox"]) == 0]
    assert len(no_face) == 1 and no_face[0]["image"].shape == (40, 40, 3)
    assert detection_data.faces_of(no_face[0])["boxes"].shape == (0, 4)


# ------------------------------------------------------------------ CFP builder


def _cfp_layout(root):
    """10 identities (one per protocol split), 2 frontal + 1 profile image each."""
    rng = np.random.default_rng(0)
    fl, pl = [], []
    for ident in range(1, 11):
        for kind, n in (("frontal", 2), ("profile", 1)):
            for k in range(1, n + 1):
                rel = f"Data/Images/{ident:03d}/{kind}/{k:02d}.jpg"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(_jpeg(40, 36, seed=ident * 10 + k))
                fid = root / rel.replace("Images", "Fiducials").replace(".jpg", ".txt")
                fid.parent.mkdir(parents=True, exist_ok=True)
                pts = rng.uniform(5, 30, size=(30, 2))
                fid.write_text("".join(f"{x:.2f},{y:.2f}\n" for x, y in pts))
                (fl if kind == "frontal" else pl).append(f"../{rel}")
    proto = root / "Protocol"
    proto.mkdir()
    (proto / "Pair_list_F.txt").write_text("".join(f"{i + 1} {p}\n" for i, p in enumerate(fl)))
    (proto / "Pair_list_P.txt").write_text("".join(f"{i + 1} {p}\n" for i, p in enumerate(pl)))
    for k in range(1, 11):
        f1, f2, p1 = 2 * k - 1, 2 * k, k  # identity k's frontal and profile numbers
        for name, same in (("FF", f"{f1},{f2}\n"), ("FP", f"{f1},{p1}\n")):
            d = proto / "Split" / name / f"{k:02d}"
            d.mkdir(parents=True)
            (d / "same.txt").write_text(same)
            (d / "diff.txt").write_text("")


def test_cfp_build_skips_and_reports_bad_images_and_fiducials(tmp_path):
    import tensorflow_datasets as tfds

    from jaxface.data import cfp

    root = tmp_path / "cfp"
    _cfp_layout(root)
    (root / "Data/Images/001/frontal/02.jpg").write_bytes(_truncated_jpeg(80, 80))
    (root / "Data/Images/002/profile/01.jpg").unlink()
    (root / "Data/Fiducials/003/frontal/01.txt").unlink()
    builder = cfp.CfpManual(data_dir=os.fspath(tmp_path / "tfds"))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(root)),
        file_format="array_record",
    )
    b = cfp.CfpManual(data_dir=os.fspath(tmp_path / "tfds"))
    train = b.as_data_source("train")
    assert len(train) == 8 * 3 - 3 and len(b.as_data_source("test")) == 2 * 3
    # F0001 = identity 1's 2nd frontal, P0001 = identity 2's profile, F0004 = identity 3's 1st.
    skips = _skips({"skipped": b.skipped})
    assert set(skips) == {("train", "F0001"), ("train", "P0001"), ("train", "F0004")}
    assert "truncated" in skips[("train", "F0001")]["reason"]
    assert skips[("train", "P0001")]["path"].endswith("Images/002/profile/01.jpg")
    assert skips[("train", "F0004")]["path"].endswith("Fiducials/003/frontal/01.txt")
    # Labels are numbered over the protocol's identities: a skip renumbers nothing.
    labels = {int(train[i]["identity"]): int(train[i]["label"]) for i in range(len(train))}
    assert labels == {i: i for i in range(8)}


def test_cfp_malformed_fiducial_line_is_an_error(tmp_path):
    import tensorflow_datasets as tfds

    from jaxface.data import cfp

    root = tmp_path / "cfp"
    _cfp_layout(root)
    p = root / "Data/Fiducials/004/frontal/01.txt"
    lines = p.read_text().splitlines()
    lines[6] = "12.5;3"
    p.write_text("\n".join(lines) + "\n")
    builder = cfp.CfpManual(data_dir=os.fspath(tmp_path / "tfds"))
    with pytest.raises(ValueError, match=r"Fiducials/004/frontal/01\.txt:7: expected 'x,y'"):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(root)),
            file_format="array_record",
        )


# ------------------------------------------------------------------ training faults


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def test_sigkill_during_checkpoint_write_keeps_previous(tfds_dir, tmp_path):
    """A real training process is SIGKILLed while orbax writes checkpoint 4 (every array
    written, not yet committed; JAXFACE_FAULT_SLEEP_IN_SAVE holds it there). Checkpoint 2
    stays the latest and loads with finite parameters; a resumed run finishes. (That a
    resumed run reproduces an uninterrupted one exactly: tests/test_train.py.)"""
    from jaxface import train

    workdir = tmp_path / "killed"
    # One device in the child: the fault is about files, and it compiles faster.
    env = dict(os.environ, JAXFACE_FAULT_SLEEP_IN_SAVE="4", JAX_PLATFORMS="cpu", XLA_FLAGS="")
    cmd = [sys.executable, "-m", "jaxface.main", "train"]
    cmd += ["--config", f"{REPO / 'configs' / 'lmle.py'}:tiny", "--workdir", str(workdir)]
    cmd += [f"--config.data.data_dir={tfds_dir}", "--config.async_checkpointing=False"]
    cmd += ["--config.num_train_steps=4", "--config.checkpoint_every=2"]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    marker = workdir / train.FAULT_MARKER
    try:
        while proc.poll() is None and not marker.exists():
            time.sleep(0.2)
        assert marker.exists(), proc.communicate()[0][-3000:]  # the process sleeps in save
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    ckpt = workdir / "checkpoints"
    tmp_dirs = [p.name for p in ckpt.iterdir() if "tmp" in p.name]
    assert tmp_dirs and all(p.startswith("4") for p in tmp_dirs), sorted(os.listdir(ckpt))
    assert not (ckpt / "4").exists() and not (workdir / "result.json").exists()
    cfg = tiny_config(tfds_dir, num_train_steps=4, checkpoint_every=2, evals=[])
    mngr = train.make_checkpoint_manager(str(workdir), cfg)
    assert mngr.latest_step() == 2 and mngr.all_steps() == [2]
    saved = ocp.StandardCheckpointer().restore(ckpt / "2" / "state")  # from its own metadata
    assert int(saved["step"]) == 2 and train.tree_all_finite(saved["params"])
    mngr.close()
    r = train.train_and_evaluate(cfg, str(workdir))  # resumes from 2 past the debris
    assert r.status == "finished" and r.step == 4
    assert (ckpt / "4").is_dir()


def _small_state(params, model_state):
    import jax.numpy as jnp

    from jaxface import train

    return train.TrainState(
        step=jnp.int32(0),
        params=params,
        model_state=model_state,
        opt_state={"mu": jax.tree.map(jnp.zeros_like, params)},
        task_state={},
        nonfinite_consecutive=jnp.int32(0),
        nonfinite_total=jnp.int32(0),
    )


def test_checkpoint_with_nonfinite_params_is_never_written(tmp_path):
    import jax.numpy as jnp

    from jaxface import train

    cfg = tiny_config(str(tmp_path / "unused"))
    mngr = train.make_checkpoint_manager(str(tmp_path), cfg)
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.zeros(3)}
    stats = {"mean": jnp.ones(3), "count": jnp.int32(4)}
    assert train.save_checkpoint(mngr, _small_state(params, stats), 1)
    nan_params = dict(params, w=params["w"].at[1, 2].set(jnp.nan))
    assert not train.save_checkpoint(mngr, _small_state(nan_params, stats), 2, force=True)
    inf_stats = dict(stats, mean=stats["mean"].at[0].set(jnp.inf))
    assert not train.save_checkpoint(mngr, _small_state(params, inf_stats), 3, force=True)
    mngr.wait_until_finished()
    assert mngr.all_steps() == [1]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]
    mngr.close()


# ------------------------------------------------------------------ untrusted files

_ALLOWED_UNPICKLERS = {
    ("jaxface/data/recognition_formats.py", "_RestrictedUnpickler"),
    ("jaxface/models/pretrained.py", "_RestrictedUnpickler"),
}


def _unsafe_loads(source: str, filename: str) -> list:
    """Calls/classes through which a file's bytes could run code: pickle/dill/cloudpickle/
    marshal/shelve/joblib/torch loads, ``pickle.Unpickler`` subclasses (other than the
    allow-listed restricted ones), ``np.load(allow_pickle=True)``, ``yaml.load`` /
    ``unsafe_load`` without a safe loader, ``eval``/``exec``."""
    import ast

    tree = ast.parse(source, filename)
    bad = []

    def dotted(node):
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name):
            parts.append(node.id)
        return ".".join(reversed(parts))

    risky_modules = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve"}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            for m in mods:
                if m and m.split(".")[0] in risky_modules - {"pickle"}:
                    bad.append(f"{filename}:{node.lineno}: imports {m}")
        elif isinstance(node, ast.ClassDef):
            for base in node.bases:
                if dotted(base).endswith("Unpickler") and (filename, node.name) not in (
                    _ALLOWED_UNPICKLERS
                ):
                    bad.append(f"{filename}:{node.lineno}: unpickler {node.name}")
        elif isinstance(node, ast.Call):
            name = dotted(node.func)
            kw = {k.arg: k.value for k in node.keywords}
            head, _, last = name.rpartition(".")
            if head.split(".")[0] in risky_modules and last in (
                "load",
                "loads",
                "Unpickler",
                "open",
            ):
                bad.append(f"{filename}:{node.lineno}: {name}")
            elif name in ("eval", "exec", "builtins.eval", "builtins.exec"):
                bad.append(f"{filename}:{node.lineno}: {name}")
            elif last == "load" and head in ("np", "numpy", "jnp", "jax.numpy"):
                v = kw.get("allow_pickle")
                if v is not None and not (isinstance(v, ast.Constant) and v.value is False):
                    bad.append(f"{filename}:{node.lineno}: {name}(allow_pickle=...)")
            elif name in ("yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.full_load"):
                loader = kw.get("Loader")
                if name == "yaml.unsafe_load" or "Safe" not in dotted(loader or ast.Name("")):
                    bad.append(f"{filename}:{node.lineno}: {name}")
            elif name in ("torch.load", "joblib.load", "pandas.read_pickle", "pd.read_pickle"):
                bad.append(f"{filename}:{node.lineno}: {name}")
    return bad


def test_no_unrestricted_deserialisation_in_the_package():
    files = sorted((REPO / "jaxface").rglob("*.py"))
    assert len(files) > 20
    found = []
    for f in files:
        rel = f.relative_to(REPO).as_posix()
        found += _unsafe_loads(f.read_text(encoding="utf-8"), rel)
    assert found == []
    # The checker itself sees what it must (else the test above would pass vacuously).
    evil = (
        "import pickle, yaml, numpy as np\n"
        "class U(pickle.Unpickler): pass\n"
        "pickle.load(f); pickle.loads(b); np.load(p, allow_pickle=True)\n"
        "yaml.load(s); yaml.load(s, Loader=yaml.SafeLoader); eval('1')\n"
        "np.load(p); np.load(p, allow_pickle=False)\n"
    )
    hits = _unsafe_loads(evil, "evil.py")
    assert [re.sub(r"^evil.py:\d+: ", "", h) for h in hits] == [
        "unpickler U",
        "pickle.load",
        "pickle.loads",
        "np.load(allow_pickle=...)",
        "yaml.load",
        "eval",
    ], hits


# ------------------------------------------------------------------ small guarantees


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_preemption_flag_catches_sigint_and_sigterm(signum):
    """The trainer's flag (the end-to-end SIGTERM run is in tests/test_train.py) turns
    both signals into "save and exit", and puts the previous handlers back."""
    from jaxface import train

    before = signal.getsignal(signum)
    with train.PreemptionFlag() as flag:
        assert not flag.is_set(0)
        os.kill(os.getpid(), signum)  # a real signal, delivered to this (main) thread
        for _ in range(100):
            if flag.is_set(0):
                break
            time.sleep(0.01)
        assert flag.is_set(0) and flag.received == signal.Signals(signum).name
    assert signal.getsignal(signum) is before


def test_celeba_landmark_lines_name_file_and_line(tmp_path):
    from jaxface.data.celeba import CELEBA_LANDMARKS, CelebAFormatError, parse_landmarks

    rows = ["000001.jpg " + " ".join(["10"] * 10), "000002.jpg " + " ".join(["10"] * 9 + ["x"])]
    p = tmp_path / "list_landmarks_align_celeba.txt"
    p.write_text("\n".join(["2", " ".join(CELEBA_LANDMARKS)] + rows) + "\n")
    with pytest.raises(CelebAFormatError, match=r"landmarks_align_celeba\.txt:4: rightmouth_y"):
        parse_landmarks(p)
    p.write_text("\n".join(["2", " ".join(CELEBA_LANDMARKS), rows[0], "000002.jpg 1 2"]) + "\n")
    with pytest.raises(CelebAFormatError, match=r"landmarks_align_celeba\.txt:4: expected"):
        parse_landmarks(p)


# ------------------------------------------------------------------ WIDER evaluation inputs


def _cell(items):
    c = np.empty((len(items), 1), dtype=object)
    for i, v in enumerate(items):
        c[i, 0] = v
    return c


def _wider_gt_dir(root):
    """Two images: img_a with faces (10,10,20,20) and (50,10,20,20), img_b with one."""
    import scipy.io

    root.mkdir()
    boxes = [
        np.array([[10, 10, 20, 20], [50, 10, 20, 20]], np.int32),
        np.array([[5, 5, 30, 30]], np.int32),
    ]
    base = {
        "event_list": _cell([np.array(["0--Parade"])]),
        "file_list": _cell([_cell([np.array(["img_a"]), np.array(["img_b"])])]),
        "face_bbx_list": _cell([_cell(boxes)]),
    }
    scipy.io.savemat(root / "wider_face_val.mat", base)
    keep = _cell([_cell([np.array([[1], [2]], np.uint8), np.array([[1]], np.uint8)])])
    for s in ("easy", "medium", "hard"):
        scipy.io.savemat(root / f"wider_{s}_val.mat", dict(base, gt_list=keep))


def test_widerface_eval_cli_missing_file_negative_size_and_nan(tmp_path, capsys):
    """Hand-computed APs through `jaxface widerface-eval`: a missing prediction file is
    "no detections" (its face still counts), a negative-width box is kept as a false
    positive, a NaN score is an error naming file and line (exit 2)."""
    from jaxface.evaluation import widerface as E

    gt = tmp_path / "gt"
    _wider_gt_dir(gt)
    pred = tmp_path / "pred" / "0--Parade"
    pred.mkdir(parents=True)
    # img_b.txt missing. Both faces of img_a found: precision 1; recall 1/3 then 2/3.
    (pred / "img_a.txt").write_text("img_a\n2\n10 10 20 20 0.9\n50 10 20 20 0.8\n")
    args = ["--pred", str(tmp_path / "pred"), "--gt", str(gt)]
    assert E.main(args) == 0
    out = capsys.readouterr().out
    ap = 2 / 3  # (1/3 - 0) * 1 + (2/3 - 1/3) * 1
    assert f"Easy Val AP: {ap:.4f}" in out and f"Hard Val AP: {ap:.4f}" in out
    # A negative width at score 0.85 is a false positive between the two hits:
    # precision 1 at recall 1/3, 2/3 at recall 2/3 -> AP = 1/3 + 1/3 * 2/3 = 5/9.
    (pred / "img_a.txt").write_text(
        "img_a\n3\n10 10 20 20 0.9\n30 10 -5 20 0.85\n50 10 20 20 0.8\n"
    )
    assert E.main(args) == 0
    assert f"Easy Val AP: {5 / 9:.4f}" in capsys.readouterr().out
    (pred / "img_a.txt").write_text("img_a\n2\n10 10 20 20 0.9\n50 10 20 20 nan\n")
    assert E.main(args) == 2
    err = capsys.readouterr().err
    assert re.search(r"img_a\.txt:4: non-finite value", err), err


# ------------------------------------------------------------------ hostile and careless inputs


def _png_header_only(w, h) -> bytes:
    """A valid PNG whose header declares w x h 8-bit grey pixels; a few bytes of data."""
    import struct
    import zlib

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 8))
        + chunk(b"IEND", b"")
    )


def test_image_reader_skips_bombs_and_junk_and_converts_16bit_and_palette(tmp_path):
    from jaxface.data import images

    # Decompression bombs: PIL's own limit (20000^2) and ours (between 100 M and PIL's 179 M).
    for w, h in ((20000, 20000), (12000, 12500)):
        bomb = _png_header_only(w, h)
        assert len(bomb) < 80
        with pytest.raises(images.UnreadableImageError, match="bomb.png"):
            images.read_image(bomb, name="bomb.png")
    with pytest.raises(images.UnreadableImageError, match="more than the 100000000"):
        images.read_image(_png_header_only(12000, 12500), name="b")
    for bad in (_truncated_jpeg(64, 64), b"", b"not an image"):
        with pytest.raises(images.UnreadableImageError, match="x.jpg"):
            images.read_image(bad, name="x.jpg")
    f = tmp_path / "float.tif"
    Image.fromarray(np.ones((4, 4), np.float32)).save(f)
    with pytest.raises(images.UnreadableImageError, match="float.tif.*unsupported"):
        images.read_image(f)
    # 16-bit greyscale: scaled like NumPy's round(v * 255 / 65535), not clipped at 255.
    ramp = (np.arange(256, dtype=np.uint32)[None] * 257 + np.arange(3)[:, None]).astype(np.uint16)
    p16 = tmp_path / "g16.png"
    Image.fromarray(ramp).save(p16)
    with Image.open(p16) as im:
        assert im.mode.startswith("I;16")
    got = images.read_image(p16)
    ref = np.round(ramp.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert got.shape == (3, 256, 3) and np.array_equal(got[..., 0], ref)
    assert np.array_equal(got[..., 0], got[..., 2])
    # Palette: every pixel is its palette entry.
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    idx = rng.integers(0, 256, (8, 9), dtype=np.uint8)
    pim = Image.fromarray(idx, mode="P")
    pim.putpalette(palette.ravel().tolist())
    pp = tmp_path / "p.png"
    pim.save(pp)
    assert np.array_equal(images.read_image(pp), palette[idx])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import _tiny_models

    return _tiny_models.workdirs(tmp_path_factory)


def test_detect_folder_finishes_past_a_bomb_and_never_overwrites_its_input(tiny, tmp_path, capsys):
    import hashlib

    import _tiny_models
    from jaxface import main as cli
    from jaxface.cli import common as cli_common

    src = tmp_path / "in"
    src.mkdir()
    scene, _ = _tiny_models.synthetic_scene(tiny["data_dir"], 0)
    Image.fromarray(scene).save(src / "photo.png")
    Image.fromarray(scene[::-1]).save(src / "photo.jpg")
    (src / "a_bomb.png").write_bytes(_png_header_only(20000, 20000))  # first in order
    digest = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in src.iterdir()}
    args = ["--detector", tiny["detector"], "--score-threshold", "0.0"]
    for out in (src, src / "sub", tmp_path):  # equal to, inside, containing the input
        assert cli.main(["detect", str(src), "--out", str(out), *args]) == cli_common.EXIT_USAGE
        assert "overlaps the input folder" in capsys.readouterr().err
    assert sorted(p.name for p in src.iterdir()) == sorted(digest)
    out = tmp_path / "out"
    assert cli.main(["detect", str(src), "--out", str(out), *args]) == cli_common.EXIT_SKIPPED
    printed = capsys.readouterr().out
    assert "2 of 3 images processed" in printed and "1 of 3 images skipped" in printed
    assert "a_bomb.png" in printed and "DecompressionBomb" in printed
    # One output pair per input: photo.jpg and photo.png do not collide.
    recs = {n: json.loads((out / f"{n}.json").read_text()) for n in ("photo.png", "photo.jpg")}
    assert recs["photo.png"]["image"].endswith("photo.png")
    assert recs["photo.jpg"]["image"].endswith("photo.jpg")
    assert (out / "photo.png.png").is_file() and (out / "photo.jpg.png").is_file()
    assert {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in src.iterdir()} == digest


def test_identify_and_verify_never_print_nan_or_invalid_json(tiny, tmp_path, capsys, monkeypatch):
    import _tiny_models
    from jaxface import main as cli
    from jaxface.cli import common as cli_common
    from jaxface.cli import recognition as cli_recognition

    faces, labels = _tiny_models.identity_images(tiny["data_dir"], 4)
    gallery = tmp_path / "gallery"
    for i, (im, lab) in enumerate(zip(faces, labels)):
        (gallery / f"id{lab}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).resize((96, 96)).save(gallery / f"id{lab}" / f"{i}.png")
    (gallery / f"id{labels[0]}" / "bomb.png").write_bytes(_png_header_only(20000, 20000))
    query = sorted(gallery.rglob("0.png"))[0]
    args = ["--detector", tiny["detector"], "--recognizer", tiny["recognizer"]]
    args += ["--score-threshold", "0.0"]
    capsys.readouterr()  # tfds' messages from preparing the images above
    rc = cli.main(["identify", str(query), "--gallery", str(gallery), "--json", *args])
    out = json.loads(capsys.readouterr().out)  # valid JSON
    assert rc == cli_common.EXIT_SKIPPED and out["gallery"]["skipped"] == 1
    assert out["gallery"]["skipped_images"][0]["image"].endswith("bomb.png")
    # A recogniser that yields NaN (damaged weights slip past nothing else): an error,
    # never "score: nan", a decision or "-Infinity".
    real = cli_recognition._largest_face_embedding

    def nan_embedding(analyzer, path):
        e, face = real(analyzer, path)
        return (None if e is None else np.full_like(e, np.nan)), face

    monkeypatch.setattr(cli_recognition, "_largest_face_embedding", nan_embedding)
    for cmd in (
        ["identify", str(query), "--gallery", str(gallery), "--json", *args],
        ["verify", str(query), str(query), *args],
        ["verify", str(query), str(query), "--json", *args],
    ):
        assert cli.main(cmd) == 1
        captured = capsys.readouterr()
        assert "nan" not in captured.out.lower() and "infinity" not in captured.out.lower()
        assert "not finite" in captured.err and "Traceback" not in captured.err
    with pytest.raises(ValueError):
        cli_common.dumps({"score": float("-inf")})


def _checkpoint_with(tmp_path, values):
    """A checkpoint (step 1) of params {"w": values}; returns (workdir, abstract)."""
    import jax.numpy as jnp

    from jaxface import train

    cfg = tiny_config(str(tmp_path / "unused"))
    cfg.async_checkpointing = False
    mngr = train.make_checkpoint_manager(str(tmp_path), cfg)
    params = {"w": jnp.asarray(values)}
    assert train.save_checkpoint(mngr, _small_state(params, {}), 1)
    mngr.wait_until_finished()
    mngr.close()
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = {
        "params": {"w": jax.ShapeDtypeStruct(values.shape, values.dtype, sharding=sharding)},
        "model_state": {},
    }
    return tmp_path, abstract


def test_restored_checkpoint_with_flipped_or_missing_bytes_is_an_error_naming_it(tmp_path):
    from jaxface import checkpoint_checks, train

    # Random finite bit patterns: incompressible, so the checkpoint stores them verbatim.
    bits = np.random.default_rng(0).integers(0, 2**32, 4096, dtype=np.uint64).astype(np.uint32)
    values = bits.view(np.float32)
    values = np.where(np.isfinite(values), values, np.float32(1.5))
    for fault in ("flip", "truncate"):
        workdir, abstract = _checkpoint_with(tmp_path / fault, values)
        raw = values.tobytes()[1024:1088]
        hits = [
            p
            for p in (workdir / "checkpoints" / "1").rglob("*")
            if p.is_file() and raw in p.read_bytes()
        ]
        assert len(hits) == 1, hits  # the data file that holds "w"
        data = bytearray(hits[0].read_bytes())
        at = bytes(data).index(raw)
        if fault == "flip":
            data[at : at + 64] = b"\xff" * 64  # NaN bit patterns
            hits[0].write_bytes(bytes(data))
            match = r"checkpoint step 1 in .*checkpoints/1: 1 array\(s\) hold NaN/inf, first \['params'\]\['w'\]"
        else:
            hits[0].write_bytes(bytes(data[: at + 16]))
            match = r"checkpoint step 1 in .*checkpoints/1 is corrupt or unreadable; array params.w"
        with pytest.raises(checkpoint_checks.CorruptCheckpointError, match=match) as err:
            train.restore_partial(str(workdir), abstract)
        assert "\n" not in str(err.value) and len(str(err.value)) < 700


def test_bin_and_recordio_sizes_counts_and_shared_references_bounded_before_allocation(
    tmp_path,
):
    import pickle
    import struct
    import tracemalloc

    from jaxface.data import recognition_formats as rf

    # 46 bytes: numpy.ndarray((2**40,), "u1") -- 1 TiB, lazily allocated -- named 3 times.
    lazy = tmp_path / "lazy.bin"
    lazy.write_bytes(
        b"\x80\x02cnumpy\nndarray\n\x8a\x06" + (1 << 40).to_bytes(6, "little") + b"\x85"
        b"X\x02\x00\x00\x00u1\x86Rq\x00](h\x00h\x00h\x00e]\x86."
    )
    with pytest.raises(pickle.UnpicklingError, match=r"lazy.bin: refused: an array .* exceeds"):
        rf.load_verification_bin(lazy)
    # One real JPEG referenced twice (a memo reference costs 2 bytes per extra copy).
    jpg = _jpeg(8, 8)
    shared = tmp_path / "shared.bin"
    shared.write_bytes(pickle.dumps(([jpg, jpg], [True]), protocol=2))
    with pytest.raises(ValueError, match=r"images\[1\] is the same object as images\[0\]"):
        rf.load_verification_bin(shared)
    # The legit form of the same content loads.
    ok = tmp_path / "ok.bin"
    ok.write_bytes(pickle.dumps(([jpg, bytes(bytearray(jpg))], [True]), protocol=2))
    assert len(rf.load_verification_bin(ok)[0]) == 2
    # RecordIO: a header announcing 4e11 images; a record longer than its file.
    rf.write_recordio(
        tmp_path / "train.rec",
        tmp_path / "train.idx",
        [(0, rf.pack_irheader([4e11, 2.0], b"")), (1, rf.pack_irheader(0.0, jpg))],
    )
    tracemalloc.start()
    with pytest.raises(ValueError, match=r"train.rec key 0: the header announces images 1..4e\+11"):
        rf.InsightFaceRecordDataset(tmp_path)
    assert tracemalloc.get_traced_memory()[1] < 10_000_000
    (tmp_path / "big.rec").write_bytes(struct.pack("<II", rf.RECORDIO_MAGIC, (1 << 29) - 1))
    with pytest.raises(ValueError, match=r"record of 536870911 bytes truncated .*\(8 bytes\)"):
        next(iter(rf.RecordIOReader(tmp_path / "big.rec")))
    assert tracemalloc.get_traced_memory()[1] < 10_000_000
    tracemalloc.stop()
    (tmp_path / "property").write_text("1000000,112,112")
    rf.write_recordio(
        tmp_path / "train.rec",
        tmp_path / "train.idx",
        [(0, rf.pack_irheader([2.0, 2.0], b"")), (1, rf.pack_irheader(0.0, jpg))],
    )
    with pytest.raises(ValueError, match=r"property:1: 1000000 classes for 1 images"):
        rf.InsightFaceRecordDataset(tmp_path)


_LOCK_HOLDER = """
import sys, time
from jaxface.workdir_lock import WorkdirLock
WorkdirLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_workdir_lock_refuses_a_second_run_and_takes_over_a_stale_lock(tmp_path):
    import socket

    from jaxface import train, workdir_lock

    workdir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", _LOCK_HOLDER, str(workdir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        # A second run into the live workdir: refused before it builds anything.
        with pytest.raises(workdir_lock.WorkdirLockedError) as err:
            train.train_and_evaluate(tiny_config(str(tmp_path / "tfds")), str(workdir))
        msg = str(err.value)
        assert f"pid {holder.pid} on host {socket.gethostname()}" in msg
        assert not (workdir / "checkpoints").exists()
        holder.send_signal(signal.SIGKILL)  # dies holding it: the lock is stale
        holder.wait(timeout=60)
    finally:
        if holder.poll() is None:
            holder.kill()
    lock = workdir_lock.WorkdirLock(str(workdir))
    note = lock.acquire()
    assert note and "took over the stale lock" in note and f"pid {holder.pid}" in note
    # While held, another acquirer (another open file description) is refused.
    with pytest.raises(workdir_lock.WorkdirLockedError, match=f"pid {os.getpid()}"):
        workdir_lock.WorkdirLock(str(workdir)).acquire()
    lock.release()
    assert (workdir / "LOCK").read_text() == ""  # released cleanly: nothing stale
    assert workdir_lock.WorkdirLock(str(workdir)).acquire() is None


def test_evaluation_skips_and_names_unreadable_images_and_drops_their_pairs(tmp_path):
    from jaxface.data import pipeline
    from jaxface.data.recognition_sources import ImageListSource
    from jaxface.evaluation.face_pairs import drop_skipped_pairs

    rng = np.random.default_rng(0)
    imgs = [_jpeg(12, 12, seed=k) for k in range(24)]
    imgs[5] = _truncated_jpeg(40, 40)
    src = ImageListSource(imgs, names=[f"set.bin[{k}]" for k in range(24)])

    def transform(ex, rng_):
        return {"x": ex["image"].astype(np.float32).mean(axis=(0, 1))}

    # Without a skip log: an error naming the record and its file.
    with pytest.raises(pipeline.BadRecordError, match=r"record 5 \(set.bin\[5\]\)"):
        list(pipeline.eval_batches(src, 8, transform))
    skips = pipeline.EvalSkips("set", max_bad_fraction=0.1)
    batches = list(pipeline.eval_batches(src, 8, transform, skips=skips))
    valid = np.concatenate([b["_valid"] for b in batches])
    index = np.concatenate([b["_global_index"][b["_valid"]] for b in batches])
    assert list(np.flatnonzero(~valid)) == [5] and 5 not in index and len(index) == 23
    assert list(skips.bad) == [5] and "set.bin[5]" in skips.report()
    # Pairs using the skipped image are dropped; the others point at the right rows.
    i, j = np.arange(0, 24, 2), np.arange(1, 24, 2)
    same, fold = rng.integers(0, 2, 12).astype(bool), np.arange(12) % 4
    ri, rj, s2, f2, dropped = drop_skipped_pairs(index, 24, i, j, same, fold)
    assert dropped == 1 and len(ri) == 11
    np.testing.assert_array_equal(index[ri], np.delete(i, 2))
    np.testing.assert_array_equal(index[rj], np.delete(j, 2))
    np.testing.assert_array_equal(s2, np.delete(same, 2))
    # More than max_bad_fraction unreadable: no result, the records named.
    with pytest.raises(pipeline.BadRecordError, match="set.bin"):
        list(
            pipeline.eval_batches(
                ImageListSource(
                    [b"junk"] * 6 + imgs[:2], names=[f"set.bin[{k}]" for k in range(8)]
                ),
                4,
                transform,
                skips=pipeline.EvalSkips("set"),
            )
        )


def test_widerface_eval_no_matching_prediction_and_float32_overflow(tmp_path, capsys):
    from jaxface.evaluation import widerface as E

    gt = tmp_path / "gt"
    _wider_gt_dir(gt)
    empty, flat = tmp_path / "empty", tmp_path / "flat"
    empty.mkdir()
    flat.mkdir()
    (flat / "img_a.txt").write_text("img_a\n1\n10 10 20 20 0.9\n")  # no event sub-folder
    for pred in (empty, flat):
        assert E.main(["--pred", str(pred), "--gt", str(gt)]) == 1
        captured = capsys.readouterr()
        assert "no prediction file" in captured.err and "0--Parade/img_a.txt" in captured.err
        assert "Val AP" not in captured.out
    ev = tmp_path / "big" / "0--Parade"
    ev.mkdir(parents=True)
    (ev / "img_a.txt").write_text("img_a\n2\n10 10 20 20 0.9\n50 10 20 20 1e39\n")
    assert E.main(["--pred", str(tmp_path / "big"), "--gt", str(gt)]) == 2
    assert re.search(
        r"img_a\.txt:4: score 1e39 overflows single precision", capsys.readouterr().err
    )
    (ev / "img_a.txt").write_text("img_a\n2\n10 10 20 20 3e38\n50 10 20 20 -3e38\n")
    assert E.main(["--pred", str(tmp_path / "big"), "--gt", str(gt)]) == 2
    assert re.search(
        r"img_a\.txt:3: score 3e\+38 and .*img_a\.txt:4: score -3e\+38 span",
        capsys.readouterr().err,
    )
    (ev / "img_a.txt").write_text("img_a\n1\n10 10 20 20 0.9\n")  # img_b missing: a warning
    assert E.main(["--pred", str(tmp_path / "big"), "--gt", str(gt)]) == 0
    assert "1 of 2 images have no prediction file" in capsys.readouterr().err


@pytest.mark.parametrize(
    "override, message",
    [
        ("num_train_steps=0", "config.num_train_steps=0: must be an integer >= 1"),
        ("model_parallel=0", "config.model_parallel=0: must be an integer >= 1"),
        ("eval_every=0", "config.eval_every=0: must be an integer >= 1"),
        (
            "optimizer.learning_rate=nan",
            "config.optimizer.learning_rate=nan: must be a finite number > 0",
        ),
        (
            "optimizer.momentum=1.5",
            r"config.optimizer.momentum=1.5: must be a finite number in \[0, 1\)",
        ),
        (
            "grad_accum_steps=3",
            "config.batch_size=16: must be divisible by config.grad_accum_steps=3",
        ),
        ("optimizer.schedule=linear", "config.optimizer.schedule='linear': must be one of"),
    ],
)
def test_config_values_are_checked_at_parse_time(tmp_path, override, message):
    from jaxface import config as config_lib
    from jaxface import main as cli
    from jaxface import train

    argv = ["train", "--config", f"{REPO / 'configs' / 'lmle.py'}:tiny"]
    argv += ["--workdir", str(tmp_path / "w"), f"--config.{override}"]
    with pytest.raises(SystemExit, match=message):
        cli.main(argv)
    assert not (tmp_path / "w").exists()  # nothing was built or written
    cfg = tiny_config(str(tmp_path / "tfds"))
    key, value = override.split("=")
    node = cfg
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = type(node[leaf])(value) if not isinstance(node[leaf], str) else value
    with pytest.raises(config_lib.ConfigError, match=message):
        train.train_and_evaluate(cfg, str(tmp_path / "w"))  # the Python API checks too


def test_every_command_has_help_and_argument_ranges(capsys):
    from jaxface import main as cli

    for cmd in cli.COMMANDS:
        with pytest.raises(SystemExit) as exit_:
            cli.main([cmd, "--help"])
        assert exit_.value.code in (0, None), cmd
        assert f"jaxface {cmd}" in capsys.readouterr().out
    for bad in ("2", "-0.1", "nan", "inf"):
        with pytest.raises(SystemExit) as exit_:
            cli.main(["verify", "a", "b", "--detector", "d", "--recognizer", "r", "--far", bad])
        assert exit_.value.code == 2
        assert "--far: must be a number in [0, 1]" in capsys.readouterr().err
