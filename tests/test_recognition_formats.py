"""Identity folders, MXNet RecordIO without mxnet, and the restricted .bin unpickler."""

import io
import os
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from jaxface.data import recognition_formats as R

RNG = np.random.default_rng(0)


def _fake_jpeg(k: int, size: int = 50) -> bytes:
    return (
        b"\xff\xd8\xff\xe0"
        + bytes(RNG.integers(0, 256, size, dtype=np.uint8))
        + bytes([k % 256])
        + b"\xff\xd9"
    )


def test_identity_folder(tmp_path):
    for name, files in {
        "bob": ["2.jpg", "1.PNG", "notes.txt"],
        "alice": ["a.jpeg"],
        "empty": [],
        ".hidden": ["x.jpg"],
    }.items():
        d = tmp_path / name
        d.mkdir()
        for f in files:
            (d / f).write_bytes(b"x")
    ds = R.list_identity_folder(tmp_path)
    assert ds.names == ["alice", "bob"]
    assert [p.name for p in ds.paths] == ["a.jpeg", "1.PNG", "2.jpg"]
    assert ds.labels.tolist() == [0, 1, 1]
    assert R.list_identity_folder(tmp_path, min_images=2).names == ["bob"]
    with pytest.raises(FileNotFoundError, match="not found"):
        R.list_identity_folder(tmp_path / "nope")
    with pytest.raises(ValueError, match="no images"):
        R.list_identity_folder(tmp_path / "empty")


def _write_insightface_rec(root, images, labels):
    """A train.rec/idx/property set written byte by byte in MXNet's format (independent of
    the module's writer): header record 0 with label = (n + 1, n + 1), then images 1..n."""
    recs = []
    head = (
        struct.pack("<IfQQ", 2, 0.0, 0, 0)
        + np.array([len(images) + 1, len(images) + 1], "<f4").tobytes()
    )
    recs.append((0, head))
    for k, (img, lab) in enumerate(zip(images, labels), 1):
        if k % 2:
            payload = struct.pack("<IfQQ", 0, float(lab), k, 0) + img  # scalar label
        else:
            payload = (
                struct.pack("<IfQQ", 2, 0.0, k, 0) + np.array([lab, 7.0], "<f4").tobytes() + img
            )
        recs.append((k, payload))
    offsets = []
    with open(root / "train.rec", "wb") as f:
        for key, payload in recs:
            offsets.append((key, f.tell()))
            f.write(struct.pack("<II", 0xCED7230A, len(payload)))
            f.write(payload + b"\0" * ((-len(payload)) % 4))
    (root / "train.idx").write_text("".join(f"{k}\t{o}\n" for k, o in offsets))
    (root / "property").write_text(f"{max(labels) + 1},112,112\n")


def test_insightface_recordio_round_trip(tmp_path):
    images = [_fake_jpeg(k, 40 + k) for k in range(9)]
    labels = [3, 0, 1, 1, 2, 3, 0, 4, 4]
    _write_insightface_rec(tmp_path, images, labels)
    ds = R.InsightFaceRecordDataset(tmp_path)
    assert len(ds) == 9 and ds.num_classes == 5 and ds.image_size == (112, 112)
    assert ds.header0 == (10, 10)
    for k in range(9):
        img, lab = ds[k]
        assert img == images[k] and lab == labels[k]
    assert ds.labels().tolist() == labels
    # Sequential iteration sees the header record plus the 9 images.
    with R.RecordIOReader(tmp_path / "train.rec") as r:
        assert len(list(r)) == 10
    ds.close()


def test_recordio_magic_splitting_round_trip(tmp_path):
    magic = struct.pack("<I", R.RECORDIO_MAGIC)
    payloads = [
        b"abc",  # padding
        magic + b"xxxx" + magic,  # magic at aligned offsets 0 and 8 -> 3 parts
        b"12" + magic + b"34",  # unaligned magic: not split
        b"",  # empty
        b"zz" * 3 + b"yy" + magic,  # aligned at the end
    ]
    R.write_recordio(tmp_path / "a.rec", tmp_path / "a.idx", enumerate(payloads))
    raw = (tmp_path / "a.rec").read_bytes()
    # The second record was written as parts with cflag 1, 2, 3.
    off = int((tmp_path / "a.idx").read_text().splitlines()[1].split("\t")[1])
    assert struct.unpack_from("<II", raw, off)[1] >> 29 == 1
    with R.RecordIOReader(tmp_path / "a.rec", tmp_path / "a.idx") as r:
        assert list(r) == payloads
        assert [r.read_idx(k) for k in (4, 0, 2)] == [payloads[4], payloads[0], payloads[2]]
        with pytest.raises(KeyError, match="key 9"):
            r.read_idx(9)
    bad = bytearray(raw)
    bad[0] ^= 0xFF
    (tmp_path / "b.rec").write_bytes(bytes(bad))
    with pytest.raises(ValueError, match=r"b.rec: offset 0: bad magic"):
        list(R.RecordIOReader(tmp_path / "b.rec"))
    (tmp_path / "c.idx").write_text("0\t0\n1\tzz\n")
    with pytest.raises(ValueError, match=r"c.idx:2"):
        R.RecordIOReader(tmp_path / "a.rec", tmp_path / "c.idx")


def test_irheader_pack_unpack():
    h, p = R.unpack_irheader(R.pack_irheader(3.0, b"img", id=5))
    assert (h.flag, h.label, h.id, p) == (0, 3.0, 5, b"img")
    h, p = R.unpack_irheader(R.pack_irheader([1, 2, 3], b"img"))
    assert h.flag == 3 and h.label.tolist() == [1, 2, 3] and p == b"img"
    with pytest.raises(ValueError, match="announces 9 labels"):
        R.unpack_irheader(struct.pack("<IfQQ", 9, 0, 0, 0) + b"1234")


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_verification_bin_legit(tmp_path, protocol):
    bins = [_fake_jpeg(k) for k in range(6)]
    issame = np.array([True, False, True])
    p = tmp_path / "lfw.bin"
    p.write_bytes(pickle.dumps((bins, issame), protocol=protocol))
    images, same = R.load_verification_bin(p)
    assert images == bins and same.dtype == bool and same.tolist() == [True, False, True]
    # insightface's own files: a list of Python bools.
    p.write_bytes(pickle.dumps((bins, [True, False, False]), protocol=protocol))
    assert R.load_verification_bin(p)[1].tolist() == [True, False, False]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_verification_bin_refuses_malicious_pickles(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.bin"
    p.write_bytes(pickle.dumps(([b"a", b"b"], [_Evil(marker)])))
    assert b"system" in p.read_bytes()
    with pytest.raises(
        pickle.UnpicklingError, match=r"evil.bin: refused to load global '(posix|os|nt)\.system'"
    ):
        R.load_verification_bin(p)
    assert not marker.exists()
    # builtins.eval through a hand-written protocol-0 pickle.
    p.write_bytes(
        b'cbuiltins\neval\n(S\'__import__("os").system("touch '
        + str(marker).encode()
        + b"\")'\ntR."
    )
    with pytest.raises(pickle.UnpicklingError, match="builtins.eval"):
        R.load_verification_bin(p)
    assert not marker.exists()
    # An object array would let its elements be arbitrary objects: refused.
    p.write_bytes(pickle.dumps(([b"a", b"b"], np.array([True], dtype=object)), protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="object dtype"):
        R.load_verification_bin(p)
    # Structurally wrong, but harmless content: ValueError naming the file.
    p.write_bytes(pickle.dumps(([b"a", b"b", b"c"], [True])))
    with pytest.raises(ValueError, match=r"evil.bin: 3 images for 1 pairs"):
        R.load_verification_bin(p)
    p.write_bytes(pickle.dumps(([b"a", b"b"], [1])))
    with pytest.raises(ValueError, match=r"issame\[0\]: expected a boolean"):
        R.load_verification_bin(p)
    p.write_bytes(b"\x80\x04garbage")
    with pytest.raises((ValueError, pickle.UnpicklingError), match="evil.bin"):
        R.load_verification_bin(p)


def test_msceleb_config_trains_on_an_insightface_recordio(tmp_path):
    """configs/dream.py:msceleb end to end on a small RecordIO in insightface's layout
    (the model shrunk for CPU): the property's class count is checked, the per-image yaw
    file feeds the DREAM gate, and two training steps run through the trainer."""
    import pathlib

    from jaxface import train
    from jaxface.quickstart import load_config
    from jaxface.tasks import recognition as rec

    rng = np.random.default_rng(0)
    labels = [k % 4 for k in range(16)]
    images = []
    for k in range(16):
        buf = io.BytesIO()
        pix = rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)
        Image.fromarray(pix).save(buf, format="JPEG")
        images.append(buf.getvalue())
    root = tmp_path / "faces_emore"
    root.mkdir()
    _write_insightface_rec(root, images, labels)
    yaw = rng.uniform(-90, 90, 16).astype(np.float32)
    np.save(tmp_path / "yaw.npy", yaw)
    c = load_config(pathlib.Path(__file__).resolve().parents[1] / "configs" / "dream.py", "msceleb")
    c.data.manual_dir = str(root)
    c.data.yaw_file = str(tmp_path / "yaw.npy")
    with pytest.raises(ValueError, match="property says 4 identities"):
        rec.RecognitionTask(c).source("train")
    c.num_classes = 4
    c.model.backbone.name = "resnet18"
    c.model.update(width=0.125)
    c.batch_size, c.num_train_steps, c.data_workers = 8, 2, 0
    c.evals, c.async_checkpointing = (), False
    task = rec.RecognitionTask(c)
    ex = task.source("train")[5]
    assert ex["image"].shape == (112, 112, 3) and int(ex["label"]) == labels[5]
    np.testing.assert_allclose(task.metadata("train")["abs_yaw"], np.abs(yaw))
    result = train.train_and_evaluate(c, str(tmp_path / "wd"))
    assert result.status == "finished" and result.step == 2
    assert np.isfinite(result.train_metrics["train/loss"])
