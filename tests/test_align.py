"""Alignment ops against NumPy least squares, scikit-image and OpenCV."""

import jax
import numpy as np
import pytest

from jaxface.ops import align


def _lstsq_similarity(src, dst):
    """Reference: linear least squares over (a, b, tx, ty) with M = [[a, -b, tx], [b, a, ty]]."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows.append([x, -y, 1, 0])
        rhs.append(u)
        rows.append([y, x, 0, 1])
        rhs.append(v)
    (a, b, tx, ty), *_ = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]])


def _random_faces(rng, n):
    """Template points under random similarity transforms plus noise."""
    tpl = align.ARCFACE_TEMPLATE_112.astype(np.float64)
    out = []
    for _ in range(n):
        ang = rng.uniform(-np.pi, np.pi)
        s = rng.uniform(0.3, 4.0)
        t = rng.uniform(-200, 400, 2)
        r = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
        out.append(s * tpl @ r.T + t + rng.normal(0, 2.0, tpl.shape))
    return np.stack(out)


def test_similarity_matches_least_squares_under_jit():
    rng = np.random.default_rng(0)
    src = _random_faces(rng, 12)
    dst = align.arcface_template(48)
    M = np.asarray(jax.jit(align.estimate_similarity)(src.astype(np.float32), dst))
    assert M.shape == (12, 2, 3)
    for i in range(12):
        ref = _lstsq_similarity(src[i], dst.astype(np.float64))
        np.testing.assert_allclose(M[i], ref, rtol=2e-3, atol=2e-3 * max(1, np.abs(ref).max()))
    # Noise-free points map exactly onto the template.
    exact = align.arcface_template(112) * 2.5 + np.array([10.0, -4.0], np.float32)
    Me = align.estimate_similarity(exact[None], align.arcface_template(48))
    np.testing.assert_allclose(
        np.asarray(align.apply_affine(Me, exact[None]))[0], align.arcface_template(48), atol=1e-3
    )


def test_similarity_matches_skimage():
    transform = pytest.importorskip("skimage.transform")
    rng = np.random.default_rng(1)
    src = _random_faces(rng, 6)
    dst = align.arcface_template(112)
    M = np.asarray(align.estimate_similarity(src.astype(np.float32), dst))
    for i in range(6):
        if hasattr(transform.SimilarityTransform, "from_estimate"):
            t = transform.SimilarityTransform.from_estimate(src[i], dst.astype(np.float64))
        else:
            t = transform.SimilarityTransform()
            t.estimate(src[i], dst.astype(np.float64))
        np.testing.assert_allclose(M[i], t.params[:2], rtol=2e-3, atol=1e-2)


def test_similarity_weights_and_no_reflection():
    rng = np.random.default_rng(2)
    src = _random_faces(rng, 1)[0]
    dst = align.arcface_template(64)
    # Zero weight on the last point == dropping it.
    w = np.array([1, 1, 1, 1, 0], np.float32)
    Mw = np.asarray(align.estimate_similarity(src.astype(np.float32), dst, weights=w))
    ref = _lstsq_similarity(src[:4], dst[:4].astype(np.float64))
    np.testing.assert_allclose(Mw, ref, rtol=2e-3, atol=2e-2)
    # A mirrored face still gets a proper rotation (det > 0), never a reflection.
    mirrored = src.copy()
    mirrored[:, 0] *= -1
    Mm = np.asarray(align.estimate_similarity(mirrored.astype(np.float32), dst))
    assert np.linalg.det(Mm[:, :2]) > 0


def _numpy_warp(image, M, out_h, out_w):
    """Reference: per-pixel bilinear with zero border, in float64."""
    inv = np.linalg.inv(np.vstack([M, [0, 0, 1]]))[:2]
    h, w = image.shape[:2]
    out = np.zeros((out_h, out_w, image.shape[2]))
    img = image.astype(np.float64)
    for i in range(out_h):
        for j in range(out_w):
            x, y = inv @ np.array([j, i, 1.0])
            x0, y0 = int(np.floor(x)), int(np.floor(y))
            fx, fy = x - x0, y - y0
            for dy, wy in ((0, 1 - fy), (1, fy)):
                for dx, wx in ((0, 1 - fx), (1, fx)):
                    xi, yi = x0 + dx, y0 + dy
                    if 0 <= xi < w and 0 <= yi < h:
                        out[i, j] += wx * wy * img[yi, xi]
    return out


def test_warp_matches_numpy_and_opencv():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (37, 53, 3)).astype(np.uint8)
    ang = 0.3
    M = np.array(
        [[1.3 * np.cos(ang), -1.3 * np.sin(ang), -5.0], [1.3 * np.sin(ang), 1.3 * np.cos(ang), 2.0]]
    )
    out = np.asarray(jax.jit(align.warp_affine, static_argnums=2)(image, M, (24, 30)))
    assert out.shape == (24, 30, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, _numpy_warp(image, M, 24, 30), atol=1e-2)
    cv2 = pytest.importorskip("cv2")
    ref = cv2.warpAffine(
        image.astype(np.float32),
        M.astype(np.float64),
        (30, 24),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    # OpenCV quantises the interpolation weights to 1/32: ~4 levels at worst.
    diff = np.abs(out - ref)
    assert diff.max() < 6.0 and diff.mean() < 1.0, (diff.max(), diff.mean())


def test_warp_batched_and_supersampled():
    rng = np.random.default_rng(4)
    image = rng.uniform(0, 1, (40, 40, 1)).astype(np.float32)
    M = np.stack([np.array([[0.5, 0, 1.0], [0, 0.5, 2.0]]), np.array([[1.0, 0, 0], [0, 1.0, 0]])])
    out = np.asarray(align.warp_affine(image, M, 16, supersample=2))
    assert out.shape == (2, 16, 16, 1)
    # Supersampling 2x at scale 0.5 averages the 2x2 block under each output pixel.
    inv = np.linalg.inv(np.vstack([M[0], [0, 0, 1]]))[:2]
    i, j = 7, 9
    pts = [inv @ np.array([j + d1, i + d2, 1.0]) for d1 in (-0.25, 0.25) for d2 in (-0.25, 0.25)]
    ref = np.mean(
        [_numpy_warp(image, np.array([[1.0, 0, -x], [0, 1.0, -y]]), 1, 1)[0, 0, 0] for x, y in pts]
    )
    np.testing.assert_allclose(out[0, i, j, 0], ref, atol=1e-5)
    # Identity transform (batched with an image batch) reproduces the image.
    same = np.asarray(align.warp_affine(np.stack([image, image]), M, 40))
    np.testing.assert_allclose(same[1], image, atol=1e-6)


def test_align_faces_puts_landmarks_on_template():
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (120, 160, 3)).astype(np.uint8)
    tpl = align.arcface_template(112)
    lm = np.stack([tpl * 0.8 + [20, 10], tpl * 0.5 + [90, 40], tpl * 1.0 + [30, 5]])
    crops, M = jax.jit(align.align_faces, static_argnums=2)(image, lm.astype(np.float32), 48)
    assert crops.shape == (3, 48, 48, 3)
    np.testing.assert_allclose(
        np.asarray(align.apply_affine(M, lm)),
        np.broadcast_to(align.arcface_template(48), (3, 5, 2)),
        atol=1e-3,
    )


def _recognition_task(**data):
    import pathlib

    from jaxface.quickstart import load_config
    from jaxface.tasks.recognition import RecognitionTask

    c = load_config(pathlib.Path(__file__).resolve().parents[1] / "configs" / "dream.py", "tiny")
    c.data.crop = "aligned"
    c.data.align = data
    c.yaw_source = "landmarks"
    return RecognitionTask(c), c


def test_recognition_aligned_crop_is_the_align_op():
    task, c = _recognition_task(supersample=2, zoom=1.1, border="edge")
    rng = np.random.default_rng(6)
    image = rng.integers(0, 256, (40, 40, 3)).astype(np.uint8)
    lm = (align.arcface_template(40) * 0.9 + 2).astype(np.float32)
    out = task.transform({"image": image, "label": 3, "landmarks": lm}, None, train=False)
    crops, M = align.align_faces(image, lm[None], 32, supersample=2, zoom=1.1, border="edge")
    np.testing.assert_allclose(out["image"], np.asarray(crops[0]) * (2 / 255) - 1, atol=1e-5)
    # The landmarks (for the gate's yaw) follow the image into the crop.
    np.testing.assert_allclose(out["landmarks"], align.arcface_template(32, 1.1), atol=1e-3)
    with pytest.raises(ValueError, match="unknown field"):
        _recognition_task(zoom=1.0, colour="red")[0].transform(
            {"image": image, "label": 0, "landmarks": lm}, None, train=False
        )


def test_recognition_aligned_crop_on_cfp_fiducials(real_data):
    from jaxface.data import cfp
    from jaxface.data.cfp_landmarks import five_points
    from jaxface.evaluation import verification

    root = real_data("cfp")
    task, _ = _recognition_task(supersample=2, zoom=1.25, border="edge")
    proto = verification.parse_cfp_protocol(root)
    for path, is_profile in ((proto.frontal_paths[0], False), (proto.profile_paths[0], True)):
        fid = verification.read_cfp_fiducials(proto.fiducial_path(path))
        image, pts = cfp.crop_image(path, fid, 64)  # what the cfp_manual builder stores
        ex = {"image": image, "label": 0, "landmarks": pts, "is_profile": is_profile}
        out = task.transform(ex, None, train=False)
        five = five_points(pts, is_profile)
        crops, _ = align.align_faces(image, five[None], 32, supersample=2, zoom=1.25, border="edge")
        np.testing.assert_allclose(out["image"], np.asarray(crops[0]) * (2 / 255) - 1, atol=1e-5)
        assert out["landmarks"].shape == (30, 2)


def test_numpy_align_matches_jitted_op():
    """The loader's NumPy alignment (jaxface.data.align_np) cuts the jitted op's crops."""
    import functools

    from jaxface.data import align_np

    rng = np.random.default_rng(3)
    tpl = align.arcface_template(64).astype(np.float64)
    for kw in (dict(), dict(supersample=2, zoom=1.25, border="edge")):
        fn = jax.jit(functools.partial(align.align_faces, size=48, **kw))
        for _ in range(4):
            h, w = rng.integers(40, 120, 2)
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            ang, s = rng.uniform(-0.6, 0.6), rng.uniform(0.5, 1.6)
            r = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
            pts = s * tpl @ r.T + rng.uniform(-10, 20, 2) + rng.normal(0, 1.5, tpl.shape)
            pts = pts.astype(np.float32)
            crops, m = fn(img, pts[None])
            crop, m_np = align_np.align_face(img, pts, 48, **kw)
            assert crop.dtype == np.float32 and crop.shape == (48, 48, 3)
            np.testing.assert_allclose(m_np, np.asarray(m[0]), atol=1e-4)
            # float32 rounding of the sample positions: < 0.01 of 255 grey levels.
            np.testing.assert_allclose(crop, np.asarray(crops[0]), atol=1e-2)
