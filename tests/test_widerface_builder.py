"""The ``wider_face_original`` tfds builder: a full build from a fixture in the original layout."""

import numpy as np
import pytest
from PIL import Image

from jaxface.data import sources, widerface_builder

# Two train images (one without faces), one val image; faces with every label column.
TRAIN_TXT = """0--Parade/0_Parade_marchingband_1_5.jpg
2
4 6 20 24 1 0 0 0 1 0
30 2 10 12 2 1 1 1 2 1
0--Parade/0_Parade_Parade_0_7.jpg
0
0 0 0 0 0 0 0 0 0 0
"""
VAL_TXT = """1--Handshaking/1_Handshaking_1_1.jpg
1
50 10 30 50 0 0 1 0 0 1
"""


def _write_fixture(root):
    rng = np.random.default_rng(0)
    images = {
        "WIDER_train/images/0--Parade/0_Parade_marchingband_1_5.jpg": (48, 64),
        "WIDER_train/images/0--Parade/0_Parade_Parade_0_7.jpg": (40, 40),
        "WIDER_val/images/1--Handshaking/1_Handshaking_1_1.jpg": (80, 100),
        "WIDER_test/images/2--Demonstration/2_Demonstration_1_1.jpg": (30, 20),
    }
    for rel, (h, w) in images.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p, quality=95)
    split = root / "wider_face_split"
    split.mkdir()
    (split / "wider_face_train_bbx_gt.txt").write_text(TRAIN_TXT)
    (split / "wider_face_val_bbx_gt.txt").write_text(VAL_TXT)
    (split / "wider_face_test_filelist.txt").write_text(
        "2--Demonstration/2_Demonstration_1_1.jpg\n"
    )
    return images


def _by_name(src):
    return {
        ex["image/filename"].decode()
        if isinstance(ex["image/filename"], bytes)
        else ex["image/filename"]: ex
        for ex in (src[i] for i in range(len(src)))
    }


def test_full_build_from_original_layout(tmp_path):
    manual = tmp_path / "widerface"
    images = _write_fixture(manual)
    builder = sources.get_builder(
        "wider_face_original", data_dir=str(tmp_path / "tfds"), manual_dir=str(manual)
    )
    assert set(builder.info.splits) == {"train", "validation", "test"}
    train = _by_name(builder.as_data_source("train"))
    assert set(train) == {
        "0--Parade/0_Parade_marchingband_1_5.jpg",
        "0--Parade/0_Parade_Parade_0_7.jpg",
    }
    ex = train["0--Parade/0_Parade_marchingband_1_5.jpg"]
    assert ex["image"].shape == (48, 64, 3)
    f = ex["faces"]
    np.testing.assert_array_equal(np.asarray(f["bbox_xywh"]), [[4, 6, 20, 24], [30, 2, 10, 12]])
    # Normalised (ymin, xmin, ymax, xmax), clipped to the image: the first box ends at y = 30.
    np.testing.assert_allclose(
        np.asarray(f["bbox"]),
        [[6 / 48, 4 / 64, 30 / 48, 24 / 64], [2 / 48, 30 / 64, 14 / 48, 40 / 64]],
        atol=1e-6,
    )
    for k, want in {
        "blur": [1, 2],
        "expression": [0, 1],
        "illumination": [0, 1],
        "invalid": [0, 1],
        "occlusion": [1, 2],
        "pose": [0, 1],
    }.items():
        np.testing.assert_array_equal(np.asarray(f[k]), want, err_msg=k)
    assert len(train["0--Parade/0_Parade_Parade_0_7.jpg"]["faces"]["blur"]) == 0
    # The JPEG is stored as is: decoding gives the file's pixels.
    ref = np.asarray(
        Image.open(manual / "WIDER_train/images/0--Parade/0_Parade_marchingband_1_5.jpg")
    )
    assert np.abs(ex["image"].astype(int) - ref.astype(int)).mean() < 1.0
    val = _by_name(builder.as_data_source("validation"))
    v = val["1--Handshaking/1_Handshaking_1_1.jpg"]
    assert v["image"].shape == (80, 100, 3)
    np.testing.assert_array_equal(np.asarray(v["faces"]["bbox_xywh"]), [[50, 10, 30, 50]])
    np.testing.assert_array_equal(np.asarray(v["faces"]["pose"]), [1])
    test = builder.as_data_source("test")
    assert len(test) == 1 and test[0]["image"].shape == (30, 20, 3)
    assert len(images) == 4


def test_missing_image_is_an_error_naming_it(tmp_path):
    manual = tmp_path / "widerface"
    _write_fixture(manual)
    (manual / "WIDER_val/images/1--Handshaking/1_Handshaking_1_1.jpg").unlink()
    ann = widerface_builder.annotations(manual, "validation")
    with pytest.raises(FileNotFoundError, match="1_Handshaking_1_1.jpg"):
        widerface_builder.example_of(manual, "validation", ann, 0)


def test_real_validation_annotations(real_data):
    root = real_data("widerface")
    ann = widerface_builder.annotations(root, "validation")
    assert ann.num_images == 3226 and ann.num_faces == 39708
    assert set(ann.labels) >= {"blur", "expression", "illumination", "invalid", "occlusion", "pose"}
