"""Yaw from landmarks: synthetic projections of the mean face and CFP's real fiducials."""

import jax
import numpy as np
import pytest

from jaxface.evaluation.verification import read_cfp_fiducials
from jaxface.ops import pose as PZ

RNG = np.random.default_rng(0)


def _synthetic(model, n, noise_frac):
    yaw = np.r_[-90.0, 90.0, 0.0, RNG.uniform(-90, 90, n - 3)]
    pitch = RNG.uniform(-15, 15, n)
    roll = RNG.uniform(-20, 20, n)
    scale = RNG.uniform(0.5, 3.0, n)
    trans = RNG.uniform(40, 160, (n, 2))
    pts = np.asarray(PZ.project(model, PZ.rotation_from_angles(yaw, pitch, roll), scale, trans))
    iod = 63.0 * scale  # inter-ocular distance of the mean face, in pixels
    pts = pts + RNG.normal(size=pts.shape) * noise_frac * iod[:, None, None]
    return pts, yaw, pitch, roll


def test_five_point_yaw_recovered_exactly_without_noise():
    pts, yaw, pitch, roll = _synthetic(PZ.MEAN_FACE_5, 200, 0.0)
    fit = jax.jit(PZ.fit_pose)(pts, PZ.MEAN_FACE_5)
    np.testing.assert_allclose(fit.yaw, yaw, atol=0.01)
    np.testing.assert_allclose(fit.pitch, pitch, atol=0.01)
    np.testing.assert_allclose(fit.roll, roll, atol=0.01)
    assert float(np.max(fit.rms)) < 1e-2


def test_five_point_yaw_with_noise_and_batching():
    pts, yaw, _, _ = _synthetic(PZ.MEAN_FACE_5, 300, 0.02)  # 2% of the inter-ocular distance
    got = np.asarray(PZ.yaw_from_landmarks(pts))
    err = np.abs(got - yaw)
    assert err.mean() < 2.5 and err.max() < 10.0, (err.mean(), err.max())
    # Batched over two leading axes, same answers.
    got2 = np.asarray(PZ.yaw_from_landmarks(pts.reshape(3, 100, 5, 2)))
    np.testing.assert_allclose(got2.ravel(), got, atol=1e-3)
    # Sign convention: positive yaw moves the nose tip to the image right of the eyes' midpoint.
    turned = np.asarray(
        PZ.project(
            PZ.MEAN_FACE_5, PZ.rotation_from_angles([30.0, -30.0], 0.0, 0.0), 1.0, [0.0, 0.0]
        )
    )
    assert turned[0, 2, 0] > turned[0, :2, 0].mean() and turned[1, 2, 0] < turned[1, :2, 0].mean()
    np.testing.assert_allclose(PZ.yaw_from_landmarks(turned), [30.0, -30.0], atol=1e-3)


def test_thirty_point_model_and_weights():
    pts, yaw, _, _ = _synthetic(PZ.MEAN_FACE_CFP30, 100, 0.01)
    w = np.ones((100, 30))
    w[:, :5] = 0.0
    pts_bad = pts.copy()
    pts_bad[:, :5] += 500.0  # outliers on zero-weight points are ignored
    fit = PZ.fit_pose(pts_bad, PZ.MEAN_FACE_CFP30, weights=w)
    assert np.abs(np.asarray(fit.yaw) - yaw).max() < 6.0


def test_cfp_real_fiducials_profile_vs_frontal(real_data):
    root = real_data("cfp", "Data", "Fiducials")
    ids = [f"{k:03d}" for k in range(1, 501, 10)]  # 50 identities
    frontal = np.stack([read_cfp_fiducials(root / i / "frontal" / "01.txt") for i in ids])
    profile = np.stack([read_cfp_fiducials(root / i / "profile" / "01.txt") for i in ids])
    yf = np.abs(np.asarray(PZ.yaw_from_cfp_fiducials(frontal)))
    yp_signed = np.asarray(PZ.yaw_from_cfp_fiducials(profile))
    yp = np.abs(yp_signed)
    assert np.median(yf) < 10.0 and np.percentile(yf, 90) < 20.0
    assert np.median(yp) > 45.0 and np.percentile(yp, 10) > 30.0
    # Nearly every profile comes out at a larger |yaw| than every frontal face.
    assert np.mean(yp[:, None] > yf[None, :]) > 0.98
    # The sign follows the side the nose points to.
    facing = np.sign(profile[:, 21, 0] - profile[:, 0, 0])
    np.testing.assert_array_equal(np.sign(yp_signed), facing)


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        PZ.fit_pose(np.zeros((4, 5, 2)), PZ.MEAN_FACE_CFP30)
    with pytest.raises(ValueError, match="30, 2"):
        PZ.yaw_from_cfp_fiducials(np.zeros((4, 5, 2)))
