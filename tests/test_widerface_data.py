"""WIDER FACE annotation parser: official text and .mat layouts, errors, path safety."""

import numpy as np
import pytest

from jaxface.data import widerface as W

TXT = """0--Parade/0_Parade_marchingband_1_465.jpg
2
345 211 4 4 2 0 0 0 2 0 
331 126 3 3 0 0 0 1 0 0 
0--Parade/0_Parade_Parade_0_275.jpg
0
0 0 0 0 0 0 0 0 0 0 
1--Handshaking/1_Handshaking_x_1.jpg
1
26 299 10 16 1 1 0 0 1 1
"""


def test_txt_small_file(tmp_path):
    p = tmp_path / "gt.txt"
    p.write_text(TXT)
    a = W.read_bbx_gt_txt(p)
    assert a.num_images == 3 and a.num_faces == 3
    assert a.events == ("0--Parade", "1--Handshaking")
    assert a.image_event.tolist() == [0, 0, 1]
    assert a.image_names[1] == "0_Parade_Parade_0_275"
    assert a.faces_per_image.tolist() == [2, 0, 1]
    assert a.boxes.tolist() == [[345, 211, 4, 4], [331, 126, 3, 3], [26, 299, 10, 16]]
    assert a.labels["blur"].tolist() == [2, 0, 1]
    assert a.labels["invalid"].tolist() == [0, 1, 0]
    assert a.labels["pose"].tolist() == [0, 0, 1]
    rec = a.image(2)
    assert rec["event"] == "1--Handshaking" and rec["occlusion"].tolist() == [1]


@pytest.mark.parametrize(
    "text,line,msg",
    [
        ("0--Parade/a.jpg\nx\n", 2, "number of faces"),
        ("0--Parade/a.jpg\n2\n1 2 3 4 0 0 0 0 0 0\n1 2 3 4 0 0\n", 4, "10 integers"),
        ("0--Parade/a.jpg\n1\n1 2 3 4.5 0 0 0 0 0 0\n", 3, "10 integers"),
        ("0--Parade/a.jpg\n0\n0 0 0 0 0 0 0 0 0 1\n", 3, "line of zeros"),
        ("0--Parade/a.jpg\n3\n1 2 3 4 0 0 0 0 0 0\n", 4, "ends inside"),
        ("a.jpg\n1\n1 2 3 4 0 0 0 0 0 0\n", 1, "<event>/<image>"),
    ],
)
def test_txt_malformed_names_file_and_line(tmp_path, text, line, msg):
    p = tmp_path / "bad.txt"
    p.write_text(text)
    with pytest.raises(W.WiderFaceFormatError, match=msg) as e:
        W.read_bbx_gt_txt(p)
    assert f"{p}:{line}:" in str(e.value)


@pytest.mark.parametrize(
    "bad", ["../etc/passwd.jpg", "/abs/x.jpg", "0--Parade/../../x.jpg", "a\\b.jpg", "C:x/y.jpg"]
)
def test_paths_cannot_escape_root(tmp_path, bad):
    p = tmp_path / "gt.txt"
    p.write_text(f"{bad}\n1\n1 2 3 4 0 0 0 0 0 0\n")
    with pytest.raises(W.UnsafePathError, match=":1:"):
        W.read_bbx_gt_txt(p)
    with pytest.raises(W.UnsafePathError):
        W.resolve_in_root(tmp_path, bad)


def test_resolve_in_root_rejects_symlink_escape(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path)
    with pytest.raises(W.UnsafePathError, match="outside"):
        W.resolve_in_root(tmp_path / "root", "link/secret.txt")
    assert (
        W.resolve_in_root(tmp_path / "root", "a/b.jpg")
        == (tmp_path / "root" / "a" / "b.jpg").resolve()
    )


def test_mat_round_trip_and_errors(tmp_path):
    import scipy.io

    def cell(items):
        c = np.empty((len(items), 1), dtype=object)
        for i, v in enumerate(items):
            c[i, 0] = v
        return c

    mat = {
        "event_list": cell([np.array(["0--Parade"])]),
        "file_list": cell([cell([np.array(["img_a"]), np.array(["img_b"])])]),
        "face_bbx_list": cell(
            [
                cell(
                    [
                        np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.int32),
                        np.array([[9, 9, 2, 2]], np.int32),
                    ]
                )
            ]
        ),
        "gt_list": cell([cell([np.array([[2]], np.uint8), np.zeros((0, 1), np.uint8)])]),
        "blur_label_list": cell(
            [cell([np.array([[1], [2]], np.uint8), np.array([[0]], np.uint8)])]
        ),
    }
    p = tmp_path / "wider_easy_val.mat"
    scipy.io.savemat(p, mat)
    a = W.read_mat(p)
    assert a.image_names == ("img_a", "img_b")
    assert a.image_paths == ("0--Parade/img_a.jpg", "0--Parade/img_b.jpg")
    assert a.boxes.dtype == np.int32 and a.boxes.tolist() == [
        [1, 2, 3, 4],
        [5, 6, 7, 8],
        [9, 9, 2, 2],
    ]
    assert a.keep.tolist() == [False, True, False]
    assert a.keep_list_lengths.tolist() == [1, 0]
    assert a.labels["blur"].tolist() == [1, 2, 0] and "pose" not in a.labels
    # gt_list index out of range names the field, event and image.
    mat["gt_list"] = cell([cell([np.array([[3]], np.uint8), np.zeros((0, 1), np.uint8)])])
    scipy.io.savemat(p, mat)
    with pytest.raises(W.WiderFaceFormatError, match=r"event 1 \(0--Parade\), image 1, gt_list"):
        W.read_mat(p)
    # An image name that escapes the root.
    mat["gt_list"] = cell([cell([np.array([[2]], np.uint8), np.zeros((0, 1), np.uint8)])])
    mat["file_list"] = cell([cell([np.array([".."]), np.array(["img_b"])])])
    scipy.io.savemat(p, mat)
    with pytest.raises(W.UnsafePathError):
        W.read_mat(p)


def test_real_val_txt_and_mat_agree(real_data):
    root = real_data("widerface")
    split = real_data("widerface", "wider_face_split")
    txt = W.read_split(root, "val")
    mat = W.read_mat(split / "wider_face_val.mat")
    assert txt.num_images == mat.num_images == 3226
    assert txt.num_faces == mat.num_faces == 39708
    assert len(txt.events) == 61 and txt.events == mat.events
    assert txt.image_names == mat.image_names
    np.testing.assert_array_equal(txt.boxes, mat.boxes)
    np.testing.assert_array_equal(txt.face_offsets, mat.face_offsets)
    for k in W.LABEL_NAMES:
        np.testing.assert_array_equal(txt.labels[k], mat.labels[k])
    # Label ranges from readme.txt.
    assert set(np.unique(txt.labels["blur"])) <= {0, 1, 2}
    assert set(np.unique(txt.labels["occlusion"])) <= {0, 1, 2}
    for k in ("expression", "illumination", "invalid", "pose"):
        assert set(np.unique(txt.labels[k])) <= {0, 1}


def test_real_eval_ground_truth_counts(real_data):
    gt_dir = real_data("widerface", "ground_truth")
    face = W.read_mat(gt_dir / "wider_face_val.mat")
    assert (face.num_images, face.num_faces) == (3226, 39708)
    kept = {}
    for s in ("easy", "medium", "hard"):
        a = W.read_mat(gt_dir / f"wider_{s}_val.mat")
        np.testing.assert_array_equal(a.boxes, face.boxes)
        kept[s] = int(a.keep.sum())
        assert int(a.keep_list_lengths.sum()) == kept[s]
    assert kept == {"easy": 7211, "medium": 13319, "hard": 31958}
    # Easy keeps no face in 622 images.
    easy = W.read_mat(gt_dir / "wider_easy_val.mat")
    assert int((easy.keep_list_lengths == 0).sum()) == 622


def test_real_train_mat(real_data):
    a = W.read_mat(real_data("widerface", "wider_face_split", "wider_face_train.mat"))
    assert a.num_images == 12880 and len(a.events) == 61
    assert a.num_faces == int(a.faces_per_image.sum()) and a.num_faces > 150000
    assert set(a.labels) == set(W.LABEL_NAMES)
