"""CFP's 30 hand-labelled fiducials -> the 5 detection landmarks and a face box.

CFP's annotation scheme (worked out by plotting the numbered points on frontal and profile
images of identities 001, 002, 010, 050 and 100, and checked over all 7,000 files):
CFP labels **one half** of the face, the same 30 points for frontal and profile images:

* 0-8    jaw outline, from the ear (0) down to the chin (8);
* 9-11   eyebrow (9 outer end, 10 top, 11 inner end);
* 12-17  eye outline (12 outer corner, 13-14 upper lid, 15 inner corner, 16-17 lower lid);
* 18-21  nose bridge from the nasion (18) to the nose tip (21);
* 22-24  nose base (22 columella/subnasale, 23 nostril, 24 alar wing);
* 25     the labelled side's mouth corner;
* 26, 27 upper lip, top and bottom edge on the midline;
* 29, 28 lower lip, top and bottom edge on the midline.

Frontal images: the labelled half is always the image-left one (all 5,000 files: eye
centre and ear point left of the nose tip); points 18-22, 26-29 and 8 lie on the face's
midline. Profile images: the visible half, looking left or right (1,027 of 2,000 look
left, i.e. the nose tip is left of the ear point); 18-22 and 26-29 lie on the silhouette.

Five points (:func:`five_points`), in the insightface / RetinaFace order -- left eye
centre, right eye centre, nose tip, left mouth corner, right mouth corner, with left/right
as seen in the image (smaller x first):

* labelled eye centre = mean of fiducials 12-17; nose tip = fiducial 21; labelled mouth
  corner = fiducial 25;
* frontal: the other eye and mouth corner are the labelled ones reflected across the
  midline, a total-least-squares line through 18-22, 26-29 and 8 (so head roll is kept);
* profile: the other eye and mouth corner are hidden behind the nose / lips and are
  *estimated*: each is put halfway between the labelled point and the silhouette point
  at the same height (the nose-bridge polyline 18-19-20-21 for the eye, the lip polyline
  26-27-29-28 for the mouth corner; linear interpolation in y, clamped to the ends).
  Why halfway: rotate a symmetric face (eyes at lateral +-d, nasion ~0.55 d in front of
  them) by yaw t; the projected eyes sit at -+d cos t and the nasion at 0.55 d sin t, so
  the hidden eye lies 77 % of the way from the visible eye to the bridge at 70 deg, 48 %
  at 80 deg and 0 % at 90 deg; CFP's profiles are ~70-90 deg, and 0.5 is the middle of that
  range (the same argument holds for the mouth corners and the lips).
  The hidden points are placed on the nose side of the visible ones, so in the image the
  left/right order of a right-looking profile is (visible, hidden).

Face box (:func:`face_box`), one definition for the whole project's CFP scenes: the tight
box of the labelled points together with their reflection across the midline (frontal;
profiles use the labelled points alone, the far half being hidden), with the top raised
by 0.3 x the brow-to-chin height to take in the forehead (WIDER FACE boxes run from about
the hairline to the chin). Boxes are ``[x1, y1, x2, y2]`` pixels.

Checked on all 7,000 real files (tests/test_cfp_scenes.py checks every 10th of them) and
by eye on a drawn sheet of 6 frontal and 6 profile faces of identities 003-499 (the five
points and the box plotted over the images): every point lies in the face box; both eyes
lie above both mouth corners. Frontal (5,000 / 5,000): left eye and left mouth corner left
of the nose tip, right ones to its right, nose tip between eyes and mouth in height.
Profile: the nose tip lies between eyes and mouth in height in 98.2 % of files (strongly
tilted heads are the rest); in 1 of 2,000 the estimated mouth corner falls on the other
side of the labelled one than the estimated eye does (the pair is kept on the eyes' side).
"""

from __future__ import annotations

import numpy as np

__all__ = ["five_points", "face_box", "full_face_points", "FOREHEAD"]

_EYE = slice(12, 18)
_NOSE_TIP = 21
_MOUTH_CORNER = 25
_MIDLINE = (18, 19, 20, 21, 22, 26, 27, 28, 29, 8)
_BRIDGE = (18, 19, 20, 21)
_LIPS = (26, 27, 29, 28)
_BROW = (9, 10, 11)
_CHIN = 8
PROFILE_HIDDEN_FRACTION = 0.5  # see the module docstring
FOREHEAD = 0.3  # top of the box raised by this x brow-to-chin height


def _check(fiducials) -> np.ndarray:
    f = np.asarray(fiducials, np.float64)
    if f.shape != (30, 2):
        raise ValueError(f"CFP fiducials: expected [30, 2], got {f.shape}")
    return f


def _midline(f: np.ndarray):
    """(point on the midline, unit direction) of the TLS line through the midline points."""
    m = f[list(_MIDLINE)]
    c = m.mean(0)
    _, _, vt = np.linalg.svd(m - c)
    return c, vt[0]


def _reflect(p: np.ndarray, c: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Reflection of points ``p`` [..., 2] across the line through ``c`` along unit ``d``."""
    v = p - c
    along = (v @ d)[..., None] * d
    return c + 2 * along - v


def _at_height(poly: np.ndarray, y: float) -> np.ndarray:
    """Point of a polyline (ordered top to bottom) at height ``y`` (clamped to its ends)."""
    ys = poly[:, 1]
    order = np.argsort(ys, kind="stable")
    ys, xs = ys[order], poly[order, 0]
    return np.array([np.interp(y, ys, xs), np.clip(y, ys[0], ys[-1])])


def _hidden_profile_point(f: np.ndarray, visible: np.ndarray, contour) -> np.ndarray:
    sil = _at_height(f[list(contour)], float(visible[1]))
    sil[1] = visible[1]
    return visible + PROFILE_HIDDEN_FRACTION * (sil - visible)


def five_points(fiducials: np.ndarray, is_profile: bool) -> np.ndarray:
    """float32 [5, 2]: left eye, right eye, nose tip, left / right mouth corner (image x order).

    Args:
      fiducials: [30, 2] CFP fiducials (``x, y`` pixels) of one image.
      is_profile: the image's CFP folder flag (``profile/``); decides how the unlabelled
        eye and mouth corner are obtained (module docstring).
    """
    f = _check(fiducials)
    eye, mouth, nose = f[_EYE].mean(0), f[_MOUTH_CORNER], f[_NOSE_TIP]
    if is_profile:
        eye2 = _hidden_profile_point(f, eye, _BRIDGE)
        mouth2 = _hidden_profile_point(f, mouth, _LIPS)
    else:
        c, d = _midline(f)
        eye2, mouth2 = _reflect(eye, c, d), _reflect(mouth, c, d)
    # Keep each side's eye and mouth corner together: the side is decided by the eyes.
    if eye[0] <= eye2[0]:
        out = [eye, eye2, nose, mouth, mouth2]
    else:
        out = [eye2, eye, nose, mouth2, mouth]
    return np.stack(out).astype(np.float32)


def full_face_points(fiducials: np.ndarray, is_profile: bool) -> np.ndarray:
    """The labelled points plus, for frontal faces, their reflection across the midline."""
    f = _check(fiducials)
    if is_profile:
        return f
    c, d = _midline(f)
    return np.concatenate([f, _reflect(f, c, d)])


def face_box(fiducials: np.ndarray, is_profile: bool) -> np.ndarray:
    """float32 [4] ``x1, y1, x2, y2``: the face box defined in the module docstring."""
    f = _check(fiducials)
    pts = full_face_points(f, is_profile)
    x1, y1 = pts.min(0)
    x2, y2 = pts.max(0)
    brow = f[list(_BROW), 1].min()
    y1 = min(y1, brow - FOREHEAD * (f[_CHIN, 1] - brow))
    return np.array([x1, y1, x2, y2], np.float32)
