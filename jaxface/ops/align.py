"""Face alignment: 5-point similarity transforms and bilinear warps, in JAX.

* `arcface_template(size)`: the insightface / ArcFace 5-point template of the 112 x 112
  recognition crop (image-left eye, image-right eye, nose tip, image-left and
  image-right mouth corner; the order of `jaxface.ops.pose.MEAN_FACE_5`), scaled
  to a ``size`` x ``size`` crop.
* `estimate_similarity(src, dst)`: the least-squares similarity transform (rotation,
  isotropic scale, translation; no reflection) taking ``src`` points onto ``dst``
  (Umeyama, 1991, closed form), batched over leading axes, optional point weights.
* `warp_affine(image, M, out_size)`: ``out[y, x] = image(M^-1 [x, y, 1])`` with
  bilinear interpolation and a constant-zero border (OpenCV's ``warpAffine`` with
  ``INTER_LINEAR`` / ``BORDER_CONSTANT``) or a replicated edge (``BORDER_REPLICATE``),
  optionally supersampled (``supersample=k``
  renders k x k samples per output pixel and averages them: a box prefilter against
  aliasing when the crop shrinks the face a lot).
* `align_faces(image, landmarks, size)`: both together: every face of one image cut to
  its aligned crop.

Coordinates are pixels with integer values at pixel centres (OpenCV's and the
landmark annotations' convention): pixel ``(row i, col j)`` sits at ``x = j, y = i``.
Everything is pure, fixed-shape and jit-able.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "ARCFACE_TEMPLATE_112",
    "arcface_template",
    "estimate_similarity",
    "apply_affine",
    "invert_affine",
    "warp_affine",
    "align_faces",
]

# insightface's `arcface_dst` (src/common/face_align.py), 112 x 112 crop.
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    np.float32,
)


def arcface_template(size: int, zoom: float = 1.0) -> np.ndarray:
    """The ArcFace 5-point template for a ``size`` x ``size`` crop, float32 [5, 2].

    The 112 px template scaled by ``size / 112``, then by ``zoom`` about the crop centre
    (``zoom > 1`` fills more of the crop with the inner face: less background / hair is
    needed around it, which matters for datasets of tight face crops such as CFP).
    """
    t = ARCFACE_TEMPLATE_112.astype(np.float64) * (size / 112.0)
    c = size / 2.0
    return ((t - c) * float(zoom) + c).astype(np.float32)


def _similarity_one(src, dst, w):
    """Umeyama: argmin_{s, R, t} sum_i w_i ||s R src_i + t - dst_i||^2, det R = +1."""
    w = w / jnp.maximum(jnp.sum(w), 1e-12)
    mu_s = jnp.sum(w[:, None] * src, axis=0)
    mu_d = jnp.sum(w[:, None] * dst, axis=0)
    xs, xd = src - mu_s, dst - mu_d
    var_s = jnp.sum(w * jnp.sum(xs * xs, axis=-1))
    cov = (w[:, None] * xd).T @ xs  # [2, 2] = sum_i w_i xd_i xs_i^T
    u, sig, vt = jnp.linalg.svd(cov)
    d = jnp.sign(jnp.linalg.det(u) * jnp.linalg.det(vt))
    d = jnp.where(d == 0, 1.0, d)
    corr = jnp.array([1.0, 0.0], cov.dtype) + jnp.array([0.0, 1.0], cov.dtype) * d
    rot = (u * corr[None, :]) @ vt
    scale = jnp.sum(sig * corr) / jnp.maximum(var_s, 1e-12)
    t = mu_d - scale * rot @ mu_s
    return jnp.concatenate([scale * rot, t[:, None]], axis=1)


def estimate_similarity(src, dst, *, weights=None) -> jax.Array:
    """Least-squares similarity transform taking ``src`` onto ``dst``.

    Args:
      src: ``[..., K, 2]`` points (x, y), e.g. detected landmarks in image pixels.
      dst: ``[K, 2]`` or ``[..., K, 2]`` target points (e.g. `arcface_template`).
      weights: optional ``[..., K]`` non-negative point weights (0 drops a point).

    Returns:
      ``[..., 2, 3]`` float32 ``M`` with ``dst ~ M @ [x, y, 1]``: ``M[:, :2] = s R``
      (R a proper rotation), ``M[:, 2] = t``. Degenerate inputs (all points equal)
      give scale 0 rather than NaN.
    """
    src = jnp.asarray(src, jnp.float32)
    dst = jnp.broadcast_to(jnp.asarray(dst, jnp.float32), src.shape)
    w = (
        jnp.ones(src.shape[:-1], jnp.float32)
        if weights is None
        else jnp.broadcast_to(jnp.asarray(weights, jnp.float32), src.shape[:-1])
    )
    lead = src.shape[:-2]
    k = src.shape[-2]
    fn = _similarity_one
    flat = jax.vmap(fn)(src.reshape(-1, k, 2), dst.reshape(-1, k, 2), w.reshape(-1, k))
    return flat.reshape(lead + (2, 3))


def apply_affine(M, points) -> jax.Array:
    """``[..., 2, 3]`` transforms applied to ``[..., K, 2]`` points."""
    M = jnp.asarray(M, jnp.float32)
    points = jnp.asarray(points, jnp.float32)
    return jnp.einsum("...ij,...kj->...ki", M[..., :2], points) + M[..., None, :, 2]


def invert_affine(M) -> jax.Array:
    """The inverse of ``[..., 2, 3]`` affine transforms (as ``[..., 2, 3]``)."""
    M = jnp.asarray(M, jnp.float32)
    a = M[..., :2]
    inv = jnp.linalg.inv(a)
    t = -jnp.einsum("...ij,...j->...i", inv, M[..., 2])
    return jnp.concatenate([inv, t[..., None]], axis=-1)


def _bilinear(image, x, y, border: str = "constant"):
    """Bilinear samples of ``image`` [H, W, C] at float coords ``x, y`` (any equal
    shape); neighbours outside the image count as 0 (``border="constant"``) or as the
    nearest edge pixel (``"edge"``, OpenCV's ``BORDER_REPLICATE``)."""
    h, w = image.shape[:2]
    x0 = jnp.floor(x)
    y0 = jnp.floor(y)
    fx, fy = x - x0, y - y0
    x0 = x0.astype(jnp.int32)
    y0 = y0.astype(jnp.int32)
    out = 0.0
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            xi, yi = x0 + dx, y0 + dy
            inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            if border == "edge":
                inside = jnp.ones_like(inside)
            v = image[jnp.clip(yi, 0, h - 1), jnp.clip(xi, 0, w - 1)]
            out = out + jnp.where(inside, wx * wy, 0.0)[..., None] * v
    return out


def _warp_one(image, M, out_h: int, out_w: int, supersample: int, border: str):
    k = int(supersample)
    inv = invert_affine(M)
    # Sample positions of output pixel (i, j): j + (a + 0.5) / k - 0.5, a = 0..k-1.
    offs = (jnp.arange(k, dtype=jnp.float32) + 0.5) / k - 0.5
    xs = (jnp.arange(out_w, dtype=jnp.float32)[:, None] + offs[None, :]).reshape(-1)
    ys = (jnp.arange(out_h, dtype=jnp.float32)[:, None] + offs[None, :]).reshape(-1)
    gx, gy = jnp.meshgrid(xs, ys)  # [out_h * k, out_w * k]
    sx = inv[0, 0] * gx + inv[0, 1] * gy + inv[0, 2]
    sy = inv[1, 0] * gx + inv[1, 1] * gy + inv[1, 2]
    out = _bilinear(image.astype(jnp.float32), sx, sy, border)
    if k > 1:
        c = out.shape[-1]
        out = out.reshape(out_h, k, out_w, k, c).mean(axis=(1, 3))
    return out


def warp_affine(image, M, out_size, *, supersample: int = 1, border: str = "constant") -> jax.Array:
    """Warps ``image`` by the affine ``M`` (source pixels -> output pixels).

    Args:
      image: ``[H, W, C]`` or ``[B, H, W, C]`` (any numeric dtype; computed in float32).
      M: ``[2, 3]`` or ``[B, 2, 3]`` (or ``[N, 2, 3]`` with one ``[H, W, C]`` image: N
        crops of the same image).
      out_size: ``S`` or ``(out_h, out_w)`` (static).
      supersample: ``k >= 1`` samples per output pixel and axis, averaged (static).
      border: ``"constant"`` (zeros outside the image) or ``"edge"`` (replicate).

    Returns:
      float32 ``[out_h, out_w, C]``, or ``[B|N, out_h, out_w, C]`` when ``M`` is batched:
      ``out[y, x] = bilinear(image, M^-1 [x, y, 1])``, zero outside the image.
    """
    out_h, out_w = (out_size, out_size) if np.ndim(out_size) == 0 else tuple(out_size)
    out_h, out_w = int(out_h), int(out_w)
    image = jnp.asarray(image)
    M = jnp.asarray(M, jnp.float32)
    if border not in ("constant", "edge"):
        raise ValueError(f"warp_affine: border={border!r}, expected 'constant' or 'edge'")
    fn = lambda im, m: _warp_one(im, m, out_h, out_w, int(supersample), border)
    if M.ndim == 2:
        if image.ndim == 3:
            return fn(image, M)
        raise ValueError(f"warp_affine: a batch of images {image.shape} needs [B, 2, 3] transforms")
    if image.ndim == 3:
        return jax.vmap(fn, in_axes=(None, 0))(image, M)
    if image.shape[0] != M.shape[0]:
        raise ValueError(f"warp_affine: {image.shape[0]} images but {M.shape[0]} transforms")
    return jax.vmap(fn)(image, M)


def align_faces(
    image,
    landmarks,
    size: int,
    *,
    supersample: int = 1,
    zoom: float = 1.0,
    border: str = "constant",
    template=None,
):
    """Aligned ``size`` x ``size`` crops of every face of one image.

    Args:
      image: ``[H, W, C]``. landmarks: ``[N, 5, 2]`` image pixels (`arcface_template`
        order). size: crop side (static). template: ``[5, 2]`` crop points (default
        `arcface_template(size, zoom)`). supersample, border: as `warp_affine`.

    Returns:
      ``(crops float32 [N, size, size, C], M [N, 2, 3])`` (M maps image -> crop pixels).
    """
    dst = arcface_template(size, zoom) if template is None else template
    M = estimate_similarity(landmarks, dst)
    return warp_affine(image, M, size, supersample=supersample, border=border), M
