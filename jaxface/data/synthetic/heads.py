"""Parametric 3-D heads ray-cast with NumPy: the faces of ``identity`` and ``detection``.

Identity parameters (face shape, skin, hair, feature geometry) come from their own
stream ``default_rng([seed, KIND_IDENTITY_PARAMS, 0, global_identity])`` and do not
depend on the split or image index, so an identity looks the same in every image.
A profile view genuinely differs from a frontal one: the far eye is hidden by the
head, the nose leaves the silhouette, ears and the back of the hair appear.

Landmark order everywhere: left eye, right eye, nose tip, left mouth corner,
right mouth corner, as (x, y) in image pixels; "left" is the image left.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from jaxface.data.synthetic.common import KIND_IDS, _HAIR_RGB, _mix, _skin_tone

# --------------------------------------------------------------------------------------
# 3-D parametric heads, ray-cast with NumPy (identity crops and detection faces).
# --------------------------------------------------------------------------------------
#
# Head frame: x to the head's left-right (image right at yaw 0), y down, z out of the
# face toward the camera; the head half-width is ~0.85 units. The camera is
# orthographic, looking along -z; a head-frame point p lands at camera point R p with
# R = Rz(roll) Ry(yaw) Rx(pitch), then at pixel centre + scale * (X, Y). Positive yaw
# turns the nose toward the image right. Every pixel's ray is intersected with all
# primitives (ellipsoids: cranium, jaw, nose, two ears, hair shell, torso; a vertical
# cylinder: neck) and the nearest hit wins, so hidden parts are genuinely hidden.

_P_CRANIUM, _P_JAW, _P_NOSE, _P_EAR_L, _P_EAR_R, _P_HAIR, _P_NECK, _P_TORSO = range(8)


@dataclasses.dataclass(frozen=True)
class HeadParams:
    """Everything that makes an identity look like itself (all from its own seed)."""

    skin: np.ndarray  # rgb 0..255
    hair: np.ndarray
    lip: np.ndarray
    iris: np.ndarray
    shirt: np.ndarray
    cranium: tuple  # (centre xyz, radii xyz)
    jaw: tuple
    nose: tuple
    ear_radii: np.ndarray
    hair_shell: tuple
    hair_front_y: float  # hairline height at the front (y, head frame)
    hair_side_y: float  # ... beside the head (above the ears unless the hair is long)
    hair_back_y: float  # how far down the hair reaches at the back
    bald: bool
    eye_x: float
    eye_y: float
    eye_r: tuple  # (rx, ry)
    brow_dy: float
    brow_t: float
    mouth_y: float
    mouth_w: float
    lip_t: float
    beard: float  # 0: none; else darkness of the beard shadow
    freckles: float


@functools.lru_cache(maxsize=1024)
def head_params(seed: int, identity: int) -> HeadParams:
    """The stable look of global identity ``identity`` under data seed ``seed``."""
    rng = np.random.default_rng([int(seed), KIND_IDS["identity_params"], 0, int(identity)])
    v = iter(rng.random(64).tolist())  # one draw, handed out in a fixed order (fast)

    def u(lo=0.0, hi=1.0):
        return lo + (hi - lo) * next(v)

    skin = _skin_tone(u() ** 1.3) * np.array([u(0.92, 1.06), u(0.92, 1.06), u(0.92, 1.06)])
    names = ("Black_Hair", "Brown_Hair", "Blond_Hair", "Gray_Hair", "other")
    hair_name = names[
        int(np.searchsorted(np.cumsum([0.35, 0.3, 0.15, 0.08, 0.12]), u() * 0.99999, side="right"))
    ]
    lo, hi = _HAIR_RGB[hair_name]
    hair = _mix(lo, hi, u())
    a, b, c = u(0.74, 0.92), u(0.98, 1.18), u(0.9, 1.05)
    cranium = (np.array([0.0, -0.12, 0.0]), np.array([a, b, c]))
    jw, jh, jd = u(0.55, 0.82), u(0.5, 0.7), u(0.6, 0.82)
    jaw = (np.array([0.0, u(0.3, 0.45), u(0.05, 0.16)]), np.array([jw, jh, jd]))
    ny = u(0.12, 0.24)
    front = c * math.sqrt(max(0.0, 1 - ((ny + 0.12) / b) ** 2))
    nrx, nry, nrz = u(0.08, 0.15), u(0.16, 0.27), u(0.12, 0.26)
    nose = (np.array([0.0, ny, front - 0.06]), np.array([nrx, nry, nrz]))
    long_hair = u() < 0.45
    bald = u() < 0.07
    vol = u(1.03, 1.14)
    shell = (
        np.array([0.0, -0.12 + (0.25 if long_hair else 0.0), -0.04]),
        np.array([a * vol, b * (1.3 if long_hair else vol), c * vol]),
    )
    male = u() < 0.5
    side_long, side_short, back_long, back_short = (
        u(0.3, 0.8),
        u(-0.45, -0.25),
        u(0.75, 1.2),
        u(0.0, 0.25),
    )
    has_beard, beard, has_freckles, freckles = u() < 0.35, u(0.15, 0.45), u() < 0.15, u()
    hp = HeadParams(
        skin=skin,
        hair=hair,
        lip=_mix(skin, (170, 60, 70), u(0.25, 0.6)),
        iris=np.array([u(20, 150), u(20, 150), u(20, 150)]),
        shirt=np.array([u(10, 240), u(10, 240), u(10, 240)]),
        cranium=cranium,
        jaw=jaw,
        nose=nose,
        ear_radii=np.array([u(0.06, 0.1), u(0.16, 0.24), u(0.1, 0.16)]),
        hair_shell=shell,
        hair_front_y=u(-0.75, -0.5),
        hair_side_y=side_long if long_hair else side_short,
        hair_back_y=back_long if long_hair else back_short,
        bald=bald,
        eye_x=u(0.27, 0.37),
        eye_y=u(-0.08, 0.04),
        eye_r=(u(0.1, 0.14), u(0.045, 0.07)),
        brow_dy=u(0.14, 0.2),
        brow_t=u(0.025, 0.05),
        mouth_y=u(0.52, 0.62),
        mouth_w=u(0.17, 0.26),
        lip_t=u(0.025, 0.05),
        beard=beard if (male and has_beard) else 0.0,
        freckles=freckles if has_freckles else 0.0,
    )
    for f in dataclasses.fields(hp):  # cached and shared: make the arrays read-only
        val = getattr(hp, f.name)
        for arr in val if isinstance(val, tuple) else (val,):
            if isinstance(arr, np.ndarray):
                arr.flags.writeable = False
    return hp


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy_, sy_ = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
    cp, sp = math.cos(math.radians(pitch)), math.sin(math.radians(pitch))
    cr, sr = math.cos(math.radians(roll)), math.sin(math.radians(roll))
    ry = np.array([[cy_, 0, sy_], [0, 1, 0], [-sy_, 0, cy_]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _ellipsoid_t(X, Y, R, d, centre, radii):
    """Ray depth t on an ellipsoid for the orthographic pixel grid; inf on a miss.

    The ray of camera pixel (X, Y) is o + t d in the head frame with
    o = X R[0] + Y R[1] + 6 R[2] (rows of R), so after scaling by the radii the
    quadratic's coefficients are polynomials in X [1, W] and Y [H, 1]: evaluated by
    broadcasting, a handful of full-image operations per primitive.
    """
    r = np.asarray(radii, np.float64)
    ax, by, g = R[0] / r, R[1] / r, (6.0 * R[2] - np.asarray(centre, np.float64)) / r
    dc = d / r
    qa = float(dc @ dc)
    hb = (X * float(ax @ dc) + float(g @ dc)) + Y * float(by @ dc)  # half of b
    qc = (
        (X * (float(ax @ ax) * X + float(2 * ax @ g)))
        + (Y * (float(by @ by) * Y + float(2 * by @ g)) + float(g @ g - 1.0))
    ) + (X * float(2 * ax @ by)) * Y
    disc = hb * hb - qa * qc
    t = (-hb - np.sqrt(np.maximum(disc, 0.0))) / qa
    return np.where(disc > 0, t, np.float32(np.inf))


def _smoothstep(e0, e1, x):
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def landmarks_3d(hp: HeadParams, smile: float = 0.0) -> np.ndarray:
    """Head-frame 3-D landmarks [5, 3]: left eye, right eye, nose tip, left/right mouth corner."""
    (cc, cr), (jc, jr) = hp.cranium, hp.jaw

    def surface_z(x, y):
        zc = cc[2] + cr[2] * math.sqrt(
            max(0.0, 1 - ((x - cc[0]) / cr[0]) ** 2 - ((y - cc[1]) / cr[1]) ** 2)
        )
        zj = jc[2] + jr[2] * math.sqrt(
            max(0.0, 1 - ((x - jc[0]) / jr[0]) ** 2 - ((y - jc[1]) / jr[1]) ** 2)
        )
        return max(zc, zj)

    my = hp.mouth_y - 0.06 * smile
    pts = [(-hp.eye_x, hp.eye_y), (hp.eye_x, hp.eye_y)]
    out = [(x, y, surface_z(x, y)) for x, y in pts]
    nc, nr = hp.nose
    out.append((nc[0], nc[1] + 0.25 * nr[1], nc[2] + nr[2] * 0.96))
    for x in (-hp.mouth_w, hp.mouth_w):
        out.append((x, my, surface_z(x, my)))
    return np.array(out)


def render_head(
    hp: HeadParams,
    *,
    yaw: float,
    pitch: float = 0.0,
    roll: float = 0.0,
    size: tuple = (112, 112),
    scale: float = 55.0,
    centre: tuple = (56.0, 56.0),
    centre_y: float = 0.1,
    light: np.ndarray | None = None,
    ambient: float = 0.45,
    smile: float = 0.0,
    mouth_open: float = 0.0,
    eye_close: float = 0.0,
    brow_raise: float = 0.0,
    background: np.ndarray | None = None,
    with_body: bool = True,
    with_neck: bool | None = None,
) -> dict[str, np.ndarray]:
    """Ray-casts one head.

    Args:
      hp: identity parameters.
      yaw, pitch, roll: degrees.
      size: (H, W) of the output.
      scale: pixels per head unit; the head-frame point (0, centre_y, 0) lands at ``centre``
        (x, y pixels).
      light: unit vector toward the light in camera space (x right, y down, z to camera).
      smile, mouth_open, eye_close, brow_raise: expression in [0, 1].
      background: float [H, W, 3] to composite over (else black).
      with_body: draw the torso (identity crops) or not (detection faces).
      with_neck: draw the neck (default: ``with_body``).

    Returns:
      ``image`` float32 [H, W, 3] in 0..255, ``mask`` bool [H, W] (head pixels),
      ``face`` bool [H, W] (face skin pixels: the region a face box covers),
      ``landmarks`` float32 [5, 2] pixels, ``visible`` bool [5] (not hidden by the head).
    """
    H, W = size
    R = _rotation(yaw, pitch, roll).astype(np.float32)
    Rt = R.T
    if light is None:
        light = np.array([0.3, -0.4, 0.87])
    light = np.asarray(light, np.float32)
    X = ((np.arange(W, dtype=np.float32) + 0.5 - centre[0]) / scale)[None, :]
    Y = ((np.arange(H, dtype=np.float32) + 0.5 - centre[1]) / scale + centre_y)[:, None]
    dvec = Rt @ np.array([0.0, 0.0, -1.0], np.float32)
    N = H * W

    best = np.full((H, W), np.inf, np.float32)  # z-buffer (ray depth)
    prim_img = np.full((H, W), -1, np.int8)

    def window(centre_h, radii):
        """Rows/cols slices of the pixels an ellipsoid (head frame) can cover, or None.

        The projection of an ellipsoid with radii r rotated by R spans
        sqrt(sum_j (R[i, j] r_j)^2) around its projected centre along camera axis i.
        """
        radii = np.broadcast_to(np.asarray(radii, np.float32), (3,))
        cx_, cy_ = float(R[0] @ centre_h), float(R[1] @ centre_h)
        hx, hy = (
            float(np.sqrt(((R[0] * radii) ** 2).sum())),
            float(np.sqrt(((R[1] * radii) ** 2).sum())),
        )
        c0 = max(0, int(math.floor((cx_ - hx - X[0, 0]) * scale)))
        c1 = min(W, int(math.ceil((cx_ + hx - X[0, 0]) * scale)) + 1)
        r0 = max(0, int(math.floor((cy_ - hy - Y[0, 0]) * scale)))
        r1 = min(H, int(math.ceil((cy_ + hy - Y[0, 0]) * scale)) + 1)
        if c0 >= c1 or r0 >= r1:
            return None
        return slice(r0, r1), slice(c0, c1)

    def add(k, t, win):
        rows, cols = win
        b_, p_ = best[rows, cols], prim_img[rows, cols]  # views
        m = t < b_
        b_[m] = t[m]
        p_[m] = k

    def ellipsoid(k, centre_h, radii, cond=None):
        centre_h = np.asarray(centre_h, np.float32)
        win = window(centre_h, radii)
        if win is None:
            return
        xs, ys = X[:, win[1]], Y[win[0], :]
        t = _ellipsoid_t(xs, ys, R, dvec, centre_h, radii)
        if cond is not None:
            t = np.where(cond(xs, ys, t), t, np.float32(np.inf))
        add(k, t, win)

    def head_point(xs, ys, t):  # head-frame point of the rays at depth t -> 3 x [h, w]
        return [xs * R[0, j] + ys * R[1, j] + (6.0 * R[2, j] + t * dvec[j]) for j in range(3)]

    ellipsoid(_P_CRANIUM, *hp.cranium)
    ellipsoid(_P_JAW, *hp.jaw)
    ellipsoid(_P_NOSE, *hp.nose)
    (cc, cr) = hp.cranium
    ear_c = np.array([cr[0] * 0.97, 0.02, -0.12], np.float32)
    ellipsoid(_P_EAR_L, ear_c * np.array([-1, 1, 1], np.float32), hp.ear_radii)
    ellipsoid(_P_EAR_R, ear_c, hp.ear_radii)
    if not hp.bald:

        def hair_cond(xs, ys, t):
            with np.errstate(invalid="ignore"):  # inf * 0 on missed rays: NaN fails the test
                _, py, pz = head_point(xs, ys, t)
            # Hair where y is above a hairline running from hair_front_y on the face,
            # through hair_side_y beside the head (above the ears), to hair_back_y at the back.
            zr = pz / hp.hair_shell[1][2]
            front = _smoothstep(-0.05, 0.3, zr)
            back = _smoothstep(-0.15, -0.5, zr)
            limit = (
                hp.hair_side_y
                + (hp.hair_front_y - hp.hair_side_y) * front
                + (hp.hair_back_y - hp.hair_side_y) * back
            )
            return py < limit

        ellipsoid(_P_HAIR, *hp.hair_shell, cond=hair_cond)
    if with_neck is None:
        with_neck = with_body
    if with_neck:
        # Neck: vertical cylinder x^2 + (z + 0.1)^2 = r^2 (head frame), below the jaw.
        r_neck = 0.42
        qa = float(dvec[0] ** 2 + dvec[2] ** 2)
        win = window(np.array([0.0, 1.3, -0.1], np.float32), np.array([0.45, 0.8, 0.45]))
        if qa > 1e-9 and win is not None:
            xs, ys = X[:, win[1]], Y[win[0], :]
            ox = xs * R[0, 0] + ys * R[1, 0] + 6.0 * R[2, 0]
            oz = xs * R[0, 2] + ys * R[1, 2] + (6.0 * R[2, 2] + 0.1)
            hb = ox * dvec[0] + oz * dvec[2]
            disc = hb * hb - qa * (ox * ox + oz * oz - r_neck**2)
            tn = np.where(disc > 0, (-hb - np.sqrt(np.maximum(disc, 0))) / qa, np.float32(np.inf))
            with np.errstate(invalid="ignore"):
                yn = head_point(xs, ys, tn)[1]
            add(_P_NECK, np.where(yn > 0.55, tn, np.float32(np.inf)), win)
    if with_body:
        ellipsoid(_P_TORSO, np.array([0.0, 2.05, -0.2]), np.array([1.9, 0.75, 0.9]))
    prim = prim_img.ravel()
    hi = np.flatnonzero(prim >= 0)
    prim = prim[hi].astype(np.intp)
    t = best.ravel()[hi]
    xf = X[0][hi % W]
    yf = Y[:, 0][hi // W]
    p = xf[:, None] * R[0] + yf[:, None] * R[1] + (6.0 * R[2] + t[:, None] * dvec)
    # Normals (head frame): ellipsoids (p - c) / r^2; the neck cylinder radially.
    centres = np.zeros((8, 3), np.float32)
    radii = np.ones((8, 3), np.float32)
    centres[_P_CRANIUM], radii[_P_CRANIUM] = hp.cranium
    centres[_P_JAW], radii[_P_JAW] = hp.jaw
    centres[_P_NOSE], radii[_P_NOSE] = hp.nose
    centres[_P_EAR_L], radii[_P_EAR_L] = ear_c * np.array([-1, 1, 1]), hp.ear_radii
    centres[_P_EAR_R], radii[_P_EAR_R] = ear_c, hp.ear_radii
    centres[_P_HAIR], radii[_P_HAIR] = hp.hair_shell
    centres[_P_NECK], radii[_P_NECK] = (0.0, 0.0, -0.1), (1.0, 1e6, 1.0)
    centres[_P_TORSO], radii[_P_TORSO] = (0.0, 2.05, -0.2), (1.9, 0.75, 0.9)
    n = (p - centres[prim]) * (1.0 / radii**2)[prim]
    # Lambert: (R n) . light = n . (R^T light), normalised by |n|.
    lam = (n @ (Rt @ light)) / (np.sqrt(np.einsum("ij,ij->i", n, n)) + 1e-9)
    shade = ambient + (1 - ambient) * np.clip(lam, 0, 1)

    # Albedo.
    skin = hp.skin.astype(np.float32)
    # One base colour per primitive (cranium, jaw, nose, ears, hair, neck, torso).
    palette = np.stack([skin, skin, skin, skin * 0.92, skin * 0.92, hp.hair, skin * 0.9, hp.shirt])
    palette = palette.astype(np.float32)
    col = palette[prim]
    is_hair = prim == _P_HAIR
    if is_hair.any():
        ph = p[is_hair]
        streak = 0.85 + 0.15 * np.sin(40 * ph[:, 0] + 9 * ph[:, 1])
        col[is_hair] = hp.hair[None, :] * streak[:, None]
    face = (prim == _P_CRANIUM) | (prim == _P_JAW)
    fi = np.flatnonzero(face & (p[:, 2] > -0.2))
    if len(fi):
        x, y = p[fi, 0], p[fi, 1]
        ax = np.abs(x)
        fc = col[fi]
        if hp.beard > 0:
            bw = _smoothstep(hp.mouth_y - 0.25, hp.mouth_y - 0.05, y) * (ax < hp.mouth_w * 2.6)
            fc *= (1 - hp.beard * bw)[:, None]
        if hp.freckles > 0:
            fr = (np.sin(60 * x) * np.sin(55 * y) > 0.93) & (np.abs(y - hp.eye_y - 0.2) < 0.12)
            fc[fr] *= 0.8
        col[fi] = fc
        # Eye sockets, eyes, brows: evaluated on the band of face pixels around the eyes only.
        erx, ery = hp.eye_r
        band = (y > hp.eye_y - hp.brow_dy - 0.16) & (y < hp.eye_y + 0.2) & (ax < hp.eye_x + 0.3)
        ei = fi[band]
        ax_e, y_e = ax[band], y[band]
        fc = col[ei]
        dx, dy = ax_e - hp.eye_x, y_e - hp.eye_y
        ey = dy / (ery * (1 - 0.85 * eye_close) + 1e-3)
        socket = (dx / (erx * 1.7)) ** 2 + (dy / (ery * 2.6)) ** 2 < 1
        fc[socket] *= 0.9
        eye = (dx / erx) ** 2 + ey * ey < 1
        fc[eye] = (235, 235, 230)
        ir = ery * 0.95
        r2 = dx * dx + dy * dy
        fc[eye & (r2 < ir * ir)] = hp.iris
        fc[eye & (r2 < (ir * 0.45) ** 2)] = (10, 10, 10)
        by = hp.eye_y - hp.brow_dy - 0.06 * brow_raise + 0.25 * dx * dx
        fc[(np.abs(y_e - by) < hp.brow_t) & (np.abs(dx) < erx * 1.35)] = hp.hair * 0.55
        col[ei] = fc
        # Mouth: centre line dips in the middle when smiling (corners up).
        mw = hp.mouth_w * (1 + 0.15 * smile)
        band = (np.abs(y - hp.mouth_y) < 0.2) & (ax < mw)
        mi = fi[band]
        x_m, y_m = x[band], y[band]
        fc = col[mi]
        xm = x_m / mw
        yc = hp.mouth_y - 0.06 * smile + 0.08 * smile * (1 - xm * xm)
        prof = np.sqrt(np.maximum(0, 1 - xm * xm))
        gap = 0.07 * mouth_open * prof
        fc[(y_m > yc - hp.lip_t * prof) & (y_m < yc + gap + 1.3 * hp.lip_t * prof)] = hp.lip
        fc[(y_m > yc) & (y_m < yc + gap)] = (50, 15, 20)
        col[mi] = fc
    nose = np.flatnonzero(prim == _P_NOSE)
    if len(nose):
        nc, nr = hp.nose
        q = (p[nose] - nc) / nr
        nostril = (q[:, 1] > 0.55) & (np.abs(np.abs(q[:, 0]) - 0.45) < 0.25) & (q[:, 2] > 0.0)
        col[nose[nostril]] *= 0.35

    rgb = (
        np.zeros((N, 3), np.float32)
        if background is None
        else background.reshape(N, 3).astype(np.float32)
    )
    rgb[hi] = col * shade[:, None]
    mask = np.zeros(N, bool)
    mask[hi] = True
    face_m = np.zeros(N, bool)
    head_face = (prim <= _P_NOSE) & (
        p[:, 1] > hp.hair_front_y + 0.1
    )  # cranium, jaw, nose below the hairline
    face_m[hi[head_face]] = True

    lm = landmarks_3d(hp, smile) @ R.T
    lm_px = np.stack([centre[0] + scale * lm[:, 0], centre[1] + scale * (lm[:, 1] - centre_y)], 1)
    # A landmark is visible when nothing in the z-buffer lies in front of it.
    visible = np.zeros(5, bool)
    for k, (lx, ly) in enumerate(lm_px):
        col_, row_ = int(math.floor(lx)), int(math.floor(ly))
        if 0 <= row_ < H and 0 <= col_ < W:
            visible[k] = (6.0 - lm[k, 2]) <= best[row_, col_] + 0.08
    return {
        "image": rgb.reshape(H, W, 3),
        "mask": mask.reshape(H, W),
        "face": face_m.reshape(H, W),
        "landmarks": lm_px.astype(np.float32),
        "visible": visible,
    }
