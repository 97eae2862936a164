"""Hard negatives, tinted backgrounds and tilted faces of the pasted-face scenes."""

import math
import os
import pathlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from jaxface.data import detection_aug
from jaxface.data import scene_distractors as sd
from jaxface.data import scene_paste


@pytest.mark.parametrize("kind", sd.KINDS)
def test_distractor_kinds(kind):
    rng = np.random.default_rng(0)
    for height in (12.0, 80.0, 250.0):
        rgb, alpha, got = sd.distractor(rng, height, kind)
        n = int(round(height))
        assert got == kind and rgb.shape == (n, n, 3) and alpha.shape == (n, n)
        assert rgb.dtype == np.uint8 and 0.0 <= alpha.min() and alpha.max() <= 1.0
        cover = (alpha > 0.5).mean()
        assert 0.05 < cover < 0.95, (kind, height, cover)
        if kind != "badge" and n >= 80:
            # Skin: red > green > blue where the object is opaque, as in human skin.
            m = rgb[alpha > 0.9].astype(float).mean(0)
            assert m[0] > m[1] > m[2], m
    with pytest.raises(ValueError, match="unknown distractor kind"):
        sd.distractor(rng, 20.0, "face")


def test_tint_colours_a_grey_photo_by_its_luminance():
    rng = np.random.default_rng(1)
    grey = np.repeat(np.linspace(0, 255, 64 * 64).reshape(64, 64, 1), 3, -1).astype(np.uint8)
    assert sd.is_greyscale(grey)
    out = sd.tint(rng, grey)
    assert not sd.is_greyscale(out)
    # Monotone in luminance: brighter input, brighter output.
    lum = out.astype(float) @ np.array([0.299, 0.587, 0.114])
    assert np.corrcoef(lum.ravel(), grey[..., 0].ravel())[0, 1] > 0.99


def test_rotate_moves_pixels_where_the_point_map_says():
    """PIL's resampling against the closed-form point map: a bright dot lands at
    ``map(dot)``; the box of a rotated ellipse is that of the drawn ellipse."""
    h, w = 61, 47
    for deg in (-30.0, 12.5, 29.0):
        rgb = np.zeros((h, w, 3), np.uint8)
        dot = np.array([13.5, 40.5])  # pixel (13, 40)'s centre
        rgb[40, 13] = 255
        out, alpha, to_new, rot = scene_paste.rotate(rgb, np.ones((h, w), np.float32), deg)
        got = np.unravel_index(np.argmax(out[..., 0]), out.shape[:2])
        want = to_new(dot)
        assert abs(got[1] + 0.5 - want[0]) <= 1.0 and abs(got[0] + 0.5 - want[1]) <= 1.0
        assert alpha.max() > 0.99
        # An ellipse inscribed in box (8, 10, 38, 54), drawn and rotated by PIL.
        box = np.array([8.0, 10.0, 38.0, 54.0])
        im = Image.new("L", (w, h), 0)
        # PIL fills the pixels x0..x1 inclusive: the continuous box ends one later.
        ImageDraw.Draw(im).ellipse(list(box - [0, 0, 1, 1]), fill=255)
        ell, _, to_new2, rot2 = scene_paste.rotate(
            np.repeat(np.asarray(im)[..., None], 3, -1), alpha[:h, :w] * 0 + 1, deg
        )
        ys, xs = np.nonzero(ell[..., 0] > 127)
        drawn = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)
        np.testing.assert_allclose(scene_paste.rotated_box(box, to_new2, rot2), drawn, atol=1.5)


def test_native_placement_keeps_the_image_scale():
    rng = np.random.default_rng(0)
    p = detection_aug.fit_placement(300, 500, 1024, reference="native")
    assert p.scale == 1.0
    p = detection_aug.fit_placement(2000, 1000, 1024, reference="native")
    assert p.scale == pytest.approx(1024 / 2000)
    assert detection_aug.fit_placement(300, 500, 1024).scale == pytest.approx(1024 / 500)
    scales = [
        detection_aug.random_placement(
            rng, 900, 700, 384, scale_range=(0.5, 2.0), reference="native"
        ).scale
        for _ in range(200)
    ]
    assert 0.5 <= min(scales) < 0.6 and 1.8 < max(scales) <= 2.0
    with pytest.raises(ValueError, match="scale reference"):
        detection_aug.fit_placement(10, 10, 10, reference="fitted")


@pytest.fixture(scope="module")
def test_pool():
    root = (
        pathlib.Path(
            os.environ.get(
                "JAXFACE_SHARED_DATA",
                pathlib.Path(__file__).resolve().parents[2] / "shared" / "data",
            )
        )
        / "cfp"
    )
    if not root.exists():
        pytest.skip(f"real data not present: {root}")
    from jaxface.data import cfp_scenes as cs

    return cs.face_pool(root, (9, 10))


def test_distractors_never_cover_a_face_and_tilted_faces_keep_their_landmarks(test_pool):
    """The distractors are drawn after every face, so a scene with them differs from the
    same scene without them only outside the faces' patches; tilted faces have their
    landmarks inside their boxes and eye lines tilted over the whole range."""
    from jaxface.data import cfp_scenes as cs

    base = dict(seed=5, min_side=384, max_side=640, max_face=300, max_rotation=30.0, tint=0.7)
    plain = cs.ScenesSpec(**base)
    busy = cs.ScenesSpec(**base, max_distractors=4)
    changed = 0
    tilts = []
    for i in range(8):
        a = cs.scene_example(plain, "test", i, test_pool)
        b = cs.scene_example(busy, "test", i, test_pool)
        np.testing.assert_array_equal(a["faces"]["boxes"], b["faces"]["boxes"])
        diff = np.any(a["image"] != b["image"], axis=-1)
        changed += int(diff.any())
        for box, lm, prof in zip(
            b["faces"]["boxes"], b["faces"]["landmarks"], b["faces"]["is_profile"]
        ):
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            assert not diff[y0:y1, x0:x1].any(), (i, box)
            assert np.all(lm >= box[:2] - 1.0) and np.all(lm <= box[2:] + 1.0), (i, box, lm)
            if not prof:
                d = lm[1] - lm[0]
                tilts.append(math.degrees(math.atan2(d[1], d[0])))
    assert changed >= 4
    assert min(tilts) < -10 and max(tilts) > 10 and max(abs(t) for t in tilts) < 45
