"""CelebA: parsing the real annotation files; a full tfds build on a small original layout."""

import io
import os
import zipfile

import numpy as np
import pytest

from jaxface.data.celeba import (
    CELEBA_ATTRIBUTES,
    CELEBA_LANDMARKS,
    CelebAFormatError,
    parse_attributes,
    parse_eval_partition,
    parse_landmarks,
)

# ------------------------------------------------------------------ real annotation files


def test_real_partition_counts(real_data):
    path = real_data("celeba", "list_eval_partition.txt")
    part = parse_eval_partition(path)
    counts = np.bincount(np.fromiter(part.values(), int), minlength=3)
    assert counts.tolist() == [162_770, 19_867, 19_962]
    names = list(part)
    assert names[0] == "000001.jpg" and names[-1] == "202599.jpg"
    assert names == sorted(names)


def test_real_attribute_header_and_values(real_data):
    path = real_data("celeba", "list_attr_celeba_first20000.txt")
    table = parse_attributes(path, check_count=False)
    assert table.declared_count == 202_599
    assert table.names == CELEBA_ATTRIBUTES and len(CELEBA_ATTRIBUTES) == 40
    assert table.values.shape == (20_000, 40)
    assert set(np.unique(table.values).tolist()) == {-1, 1}
    assert table.images[0] == "000001.jpg" and table.images[-1] == "020000.jpg"
    # Row 1 against the raw text of the file's line 3.
    with open(path) as f:
        raw = f.read().splitlines()
    assert raw[1].split() == list(CELEBA_ATTRIBUTES)
    assert table.values[0].tolist() == [int(v) for v in raw[2].split()[1:]]
    # Every attribute has both values in the first 20k images; positive rates are plausible.
    rates = (table.values > 0).mean(0)
    assert ((rates > 0) & (rates < 1)).all()
    assert rates[CELEBA_ATTRIBUTES.index("Male")] == pytest.approx(0.42, abs=0.05)
    # The truncated file disagrees with its declared count: strict parsing says so.
    with pytest.raises(
        CelebAFormatError,
        match=r"list_attr_celeba_first20000\.txt:1: "
        r"declares 202599 images but lists 20000",
    ):
        parse_attributes(path)


def test_parsers_do_not_need_tensorflow(real_data):
    import subprocess
    import sys

    path = real_data("celeba", "list_eval_partition.txt")
    code = (
        "import sys; from jaxface.data import celeba; "
        f"assert len(celeba.parse_eval_partition({str(path)!r})) == 202599; "
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert res.returncode == 0, res.stderr


# ------------------------------------------------------------------ malformed annotation


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


ATTR_HEADER = "2\n" + " ".join(CELEBA_ATTRIBUTES) + "\n"
ROW = " ".join(["1", "-1"] * 20)


@pytest.mark.parametrize(
    "body,line,msg",
    [
        (f"000001.jpg {ROW}\n000002.jpg {ROW} 1\n", 4, "40 values, got 42 fields"),
        (f"000001.jpg {ROW}\n000002.jpg {ROW[:-2]} 0\n", 4, "Young of 000002.jpg must be one of"),
        (
            f"000001.jpg {ROW}\n000002.jpg {ROW[:-2]} x\n",
            4,
            "Young of 000002.jpg must be an integer",
        ),
        (f"../000001.jpg {ROW}\n000002.jpg {ROW}\n", 3, "not a plain file name"),
        (f"000001.jpg {ROW}\n/etc/passwd {ROW}\n", 4, "not a plain file name"),
        (f"000001.jpg {ROW}\n000001.jpg {ROW}\n", 4, "listed twice"),
        (f"000001.jpg {ROW}\n\n000002.jpg {ROW}\n", 4, "0 fields"),
    ],
)
def test_malformed_attribute_lines_name_file_and_line(tmp_path, body, line, msg):
    p = _write(tmp_path, "list_attr_celeba.txt", ATTR_HEADER + body)
    with pytest.raises(CelebAFormatError, match=msg) as e:
        parse_attributes(p)
    assert str(e.value).startswith(f"{p}:{line}: ")
    assert e.value.line == line


def test_malformed_headers(tmp_path):
    p = _write(tmp_path, "a.txt", "two\n" + " ".join(CELEBA_ATTRIBUTES) + "\n")
    with pytest.raises(CelebAFormatError, match=r"a\.txt:1: expected the image count"):
        parse_attributes(p)
    p = _write(tmp_path, "b.txt", "1\n" + " ".join(CELEBA_ATTRIBUTES[:-1]) + "\n")
    with pytest.raises(CelebAFormatError, match=r"b\.txt:2: expected the 40 names"):
        parse_attributes(p)


@pytest.mark.parametrize(
    "text,line,msg",
    [
        ("000001.jpg 0\n000002.jpg 3\n", 2, "must be 0, 1 or 2"),
        ("000001.jpg 0\n000002.jpg\n", 2, "2 fields"),
        ("000001.jpg 0\nsub\\000002.jpg 1\n", 2, "not a plain file name"),
        ("000001.jpg 0\n.. 1\n", 2, "not a plain file name"),
        ("000001.jpg 0\r\n000001.jpg 1\r\n", 2, "listed twice"),
    ],
)
def test_malformed_partition_lines(tmp_path, text, line, msg):
    p = _write(tmp_path, "list_eval_partition.txt", text)
    with pytest.raises(CelebAFormatError, match=msg) as e:
        parse_eval_partition(p)
    assert str(e.value).startswith(f"{p}:{line}: ")


def test_crlf_and_landmarks(tmp_path):
    p = tmp_path / "lm.txt"
    p.write_bytes(
        b"1\r\n"
        + " ".join(CELEBA_LANDMARKS).encode()
        + b"\r\n000001.jpg 69 109 106 113 77 142 73 152 108 154\r\n\r\n"
    )
    table = parse_landmarks(p)
    assert table.values.tolist() == [[69, 109, 106, 113, 77, 142, 73, 152, 108, 154]]
    assert table.values.dtype == np.int32


# ------------------------------------------------------------------ tfds build on a fixture

# name -> (partition, seed); 4 train, 1 validation, 2 test, listed out of order on purpose.
FIXTURE = {
    "000003.jpg": 0,
    "000001.jpg": 0,
    "000002.jpg": 0,
    "000004.jpg": 0,
    "000005.jpg": 1,
    "000006.jpg": 2,
    "000007.jpg": 2,
}


def _make_layout(root, *, zipped: bool, landmarks: bool, skip_image=None):
    from PIL import Image

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    names = sorted(FIXTURE)
    attrs = rng.choice([-1, 1], size=(len(names), 40))
    images = {}
    for i, name in enumerate(names):
        arr = np.full((22, 18, 3), 30 * i, np.uint8)  # flat colour: survives JPEG
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=95)
        images[name] = buf.getvalue()
    images = {n: b for n, b in images.items() if n != skip_image}
    if zipped:
        with zipfile.ZipFile(root / "img_align_celeba.zip", "w") as z:
            z.writestr("img_align_celeba/", "")
            for n, b in images.items():
                z.writestr(f"img_align_celeba/{n}", b)
    else:
        (root / "img_align_celeba").mkdir()
        for n, b in images.items():
            (root / "img_align_celeba" / n).write_bytes(b)
    lines = [str(len(names)), " ".join(CELEBA_ATTRIBUTES)]
    lines += [f"{n} " + " ".join(f"{v:2d}" for v in row) for n, row in zip(names, attrs)]
    (root / "list_attr_celeba.txt").write_bytes(("\r\n".join(lines) + "\r\n").encode())
    (root / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, p in FIXTURE.items()))
    lms = rng.integers(0, 200, size=(len(names), 10))
    if landmarks:
        lines = [str(len(names)), " ".join(CELEBA_LANDMARKS)]
        lines += [f"{n} " + " ".join(map(str, row)) for n, row in zip(names, lms)]
        (root / "list_landmarks_align_celeba.txt").write_text("\n".join(lines) + "\n")
    return dict(zip(names, attrs)), dict(zip(names, lms))


def _build(tmp_path, manual):
    """Through `sources.get_builder`, the path the trainer takes (a config-less builder)."""
    from jaxface.data import sources

    return sources.get_builder(
        "celeb_a_manual", None, data_dir=os.fspath(tmp_path / "tfds"), manual_dir=os.fspath(manual)
    )


@pytest.mark.parametrize("zipped,landmarks", [(False, True), (True, False)])
def test_full_tfds_build_on_original_layout(tmp_path, zipped, landmarks):
    tf = pytest.importorskip("tensorflow")

    tf.config.set_visible_devices([], "GPU")
    manual = tmp_path / "manual"
    attrs, lms = _make_layout(manual, zipped=zipped, landmarks=landmarks)
    builder = _build(tmp_path, manual)
    assert builder.name == "celeb_a_manual"
    splits = builder.info.splits
    assert {s: splits[s].num_examples for s in ("train", "validation", "test")} == {
        "train": 4,
        "validation": 1,
        "test": 2,
    }
    seen = []
    for split in ("train", "validation", "test"):
        src = builder.as_data_source(split)
        for ex in (src[k] for k in range(len(src))):
            name = ex["image/filename"].decode()
            seen.append((split, name))
            assert ex["image"].shape == (22, 18, 3) and ex["image"].dtype == np.uint8
            i = sorted(FIXTURE).index(name)
            assert abs(int(ex["image"].astype(int).mean()) - 30 * i) <= 2
            np.testing.assert_array_equal(ex["attributes"], attrs[name] > 0)
            assert bool(ex["has_landmarks"]) == landmarks
            expect = lms[name] if landmarks else np.full(10, -1)
            np.testing.assert_array_equal(ex["landmarks"], expect)
    split_of = {0: "train", 1: "validation", 2: "test"}
    assert sorted(seen) == sorted((split_of[p], n) for n, p in FIXTURE.items())


def test_build_errors_name_the_missing_image(tmp_path):
    # A missing image is skipped and reported (tests/test_reliability.py); when that
    # leaves a split empty the build fails, naming the image.
    manual = tmp_path / "manual"
    _make_layout(manual, zipped=True, landmarks=False, skip_image="000005.jpg")
    with pytest.raises(OSError, match=r"validation.*skipped.*validation/000005\.jpg"):
        _build(tmp_path, manual)
    os.remove(manual / "list_attr_celeba.txt")
    with pytest.raises(FileNotFoundError, match="list_attr_celeba.txt"):
        _build(tmp_path, manual)
