"""`jaxface.ops.align.align_faces` for one face in NumPy, for the input pipeline.

The recognition task cuts ``config.data.crop = "aligned"`` training crops in the loader
workers; doing it there in NumPy keeps the accelerator free for the train step (the
jitted op would cost a device dispatch and two transfers per example). Same maths as
`jaxface.ops.align`: the Umeyama similarity onto `arcface_template` (computed in
float64 here), then ``out[y, x] = bilinear(image, M^-1 [x, y, 1])`` with ``k x k``
supersampling and a zero or replicated border, in float32. The crops agree with the
jitted op's to float32 rounding (tests/test_align.py bounds it).
"""

from __future__ import annotations

import numpy as np

from jaxface.ops.align import arcface_template

__all__ = ["estimate_similarity", "warp_affine", "align_face"]


def estimate_similarity(src, dst) -> np.ndarray:
    """float32 ``[2, 3]`` least-squares similarity (no reflection) taking ``src`` [K, 2]
    onto ``dst`` [K, 2] (equal point weights); degenerate points give scale 0."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    xs, xd = src - mu_s, dst - mu_d
    var_s = np.mean(np.sum(xs * xs, axis=-1))
    cov = xd.T @ xs / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(u) * np.linalg.det(vt))
    d = 1.0 if d == 0 else d
    corr = np.array([1.0, d])
    rot = (u * corr[None, :]) @ vt
    scale = np.sum(sig * corr) / max(var_s, 1e-12)
    t = mu_d - scale * rot @ mu_s
    return np.concatenate([scale * rot, t[:, None]], axis=1).astype(np.float32)


def _bilinear(image, x, y, border: str):
    """Bilinear samples of ``image`` [H, W, C] at float32 ``x, y``, neighbours outside
    the image 0 (``"constant"``) or the nearest edge pixel (``"edge"``)."""
    h, w = image.shape[:2]
    flat = image.reshape(h * w, -1)
    x0f, y0f = np.floor(x), np.floor(y)
    fx, fy = x - x0f, y - y0f
    x0, y0 = x0f.astype(np.int64), y0f.astype(np.int64)
    out = np.zeros(x.shape + (flat.shape[1],), np.float32)
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        yi = y0 + dy
        row = np.clip(yi, 0, h - 1) * w
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            xi = x0 + dx
            wgt = wx * wy
            if border != "edge":
                wgt = wgt * ((xi >= 0) & (xi < w) & (yi >= 0) & (yi < h))
            v = np.take(flat, row + np.clip(xi, 0, w - 1), axis=0)
            out += wgt[..., None] * v
    return out


def warp_affine(image, M, size: int, *, supersample: int = 1, border: str = "constant"):
    """float32 ``[size, size, C]``: ``image`` [H, W, C] warped by ``M`` [2, 3] (source
    pixels -> output pixels), as `jaxface.ops.align.warp_affine`."""
    if border not in ("constant", "edge"):
        raise ValueError(f"warp_affine: border={border!r}, expected 'constant' or 'edge'")
    k = int(supersample)
    M = np.asarray(M, np.float32)
    a = M[:, :2]
    inv_a = np.linalg.inv(a).astype(np.float32)
    inv_t = -(inv_a @ M[:, 2])
    offs = (np.arange(k, dtype=np.float32) + 0.5) / k - 0.5
    grid = (np.arange(size, dtype=np.float32)[:, None] + offs[None, :]).reshape(-1)
    gx, gy = np.meshgrid(grid, grid)
    sx = inv_a[0, 0] * gx + inv_a[0, 1] * gy + inv_t[0]
    sy = inv_a[1, 0] * gx + inv_a[1, 1] * gy + inv_t[1]
    out = _bilinear(np.asarray(image, np.float32), sx, sy, border)
    if k > 1:
        out = out.reshape(size, k, size, k, out.shape[-1]).mean(axis=(1, 3))
    return out


def align_face(
    image,
    landmarks,
    size: int,
    *,
    supersample: int = 1,
    zoom: float = 1.0,
    border: str = "constant",
    template=None,
) -> tuple[np.ndarray, np.ndarray]:
    """One face's aligned crop: ``(float32 [size, size, C] in the image's range,
    M float32 [2, 3] image -> crop pixels)``; arguments as `jaxface.ops.align.align_faces`
    with ``landmarks`` [5, 2] for the one face."""
    dst = arcface_template(size, zoom) if template is None else template
    M = estimate_similarity(landmarks, dst)
    return warp_affine(image, M, size, supersample=supersample, border=border), M
