"""``detection`` examples: cluttered WIDER-like scenes of 3-D heads, and their difficulty subsets.

Scenes of 256-640 px hold 0-40 heads of 8-400 px with boxes, 5 landmarks and
WIDER-style blur / occlusion / pose / invalid labels; :func:`difficulty_subsets`
derives easy / medium / hard subsets.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from jaxface.data.synthetic.common import (
    Spec,
    _background,
    _c,
    _random_colour,
    _skin_tone,
    example_rng,
)
from jaxface.data.synthetic.heads import HeadParams, head_params, render_head

# --------------------------------------------------------------------------------------
# Detection scenes.
# --------------------------------------------------------------------------------------

# Head units a face box spans vertically (hairline to chin), used to size renders.
_FACE_UNITS = 1.5
# Faces are ray-cast with a face height of at most this many pixels, then resized:
# big faces cost no more than this, tiny ones are drawn larger and downsampled.
_MIN_RENDER_FACE, _MAX_RENDER_FACE = 24, 96


def _draw_clutter(d: ImageDraw.ImageDraw, rng: np.random.Generator, h: int, w: int) -> None:
    """Background clutter: shapes, stripes, and face-coloured non-face distractors."""
    area = h * w
    for _ in range(int(rng.integers(15, 45) * area / (448 * 448)) + 5):
        kind = rng.integers(0, 5)
        x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
        sz = float(np.exp(rng.uniform(np.log(6), np.log(0.5 * min(h, w)))))
        col = _c(_random_colour(rng))
        if kind == 0:
            d.rectangle(
                [x, y, x + sz * rng.uniform(0.3, 2), y + sz * rng.uniform(0.3, 2)], fill=col
            )
        elif kind == 1:
            d.ellipse(
                [x, y, x + sz * rng.uniform(0.3, 2), y + sz * rng.uniform(0.3, 2)],
                fill=col,
                outline=_c(_random_colour(rng)) if rng.random() < 0.3 else None,
            )
        elif kind == 2:
            pts = [
                (x + sz * float(rng.uniform(-1, 1)), y + sz * float(rng.uniform(-1, 1)))
                for _ in range(int(rng.integers(3, 7)))
            ]
            d.polygon(pts, fill=col)
        elif kind == 3:  # stripes / texture patch
            gap = float(rng.uniform(2, 8))
            ang = float(rng.uniform(0, math.pi))
            dx, dy = math.cos(ang), math.sin(ang)
            for k in range(int(sz / gap)):
                o = k * gap
                d.line(
                    [(x - dy * o, y + dx * o), (x - dy * o + dx * sz, y + dx * o + dy * sz)],
                    fill=col,
                    width=int(rng.integers(1, 3)),
                )
        else:  # lines / poles
            d.line(
                [
                    (x, y),
                    (
                        x + float(rng.uniform(-1, 1)) * sz * 2,
                        y + float(rng.uniform(-1, 1)) * sz * 2,
                    ),
                ],
                fill=col,
                width=int(rng.integers(1, 6)),
            )
    # Distractors: skin-coloured blobs (hands, arms), balls and face-sized ovals without
    # facial features, so that colour and shape alone do not find faces.
    for _ in range(int(rng.integers(2, 10))):
        x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
        sz = float(np.exp(rng.uniform(np.log(8), np.log(0.3 * min(h, w)))))
        skin = _skin_tone(float(rng.random()))
        if rng.random() < 0.5:
            d.ellipse([x, y, x + sz * 0.75, y + sz], fill=_c(skin), outline=_c(skin * 0.8))
        else:
            d.rounded_rectangle(
                [x, y, x + sz * rng.uniform(0.3, 0.6), y + sz * rng.uniform(0.8, 1.6)],
                radius=sz * 0.15,
                fill=_c(skin),
            )
            ball = _random_colour(rng)
            d.ellipse(
                [x + sz, y, x + sz * 1.6, y + sz * 0.6], fill=_c(ball), outline=_c(ball * 0.6)
            )


def _resize(arr: np.ndarray, size: tuple) -> np.ndarray:
    """uint8 [h, w(, c)] -> [size[1], size[0](, c)], area-filtered (PIL)."""
    return np.asarray(Image.fromarray(arr).resize(size, Image.BILINEAR))


def _face_patch(
    hp: HeadParams, rng: np.random.Generator, face_h: float, yaw: float, pitch: float, roll: float
) -> dict[str, Any]:
    """Renders one head whose face box is about ``face_h`` pixels tall (no background)."""
    fr = float(np.clip(face_h, _MIN_RENDER_FACE, _MAX_RENDER_FACE))
    sc = fr / _FACE_UNITS
    side = int(math.ceil(2.9 * sc))
    el, az = math.radians(rng.uniform(-50, 30)), math.radians(rng.uniform(-60, 60))
    light = np.array([math.sin(az) * math.cos(el), math.sin(el), math.cos(az) * math.cos(el)])
    out = render_head(
        hp,
        yaw=yaw,
        pitch=pitch,
        roll=roll,
        size=(side, side),
        scale=sc,
        centre=(side / 2, side / 2),
        centre_y=0.2,
        light=light,
        ambient=float(rng.uniform(0.3, 0.6)),
        smile=float(rng.random()) if rng.random() < 0.5 else 0.0,
        mouth_open=float(rng.random()) if rng.random() < 0.3 else 0.0,
        with_body=False,
        with_neck=True,
    )
    rows = np.flatnonzero(out["face"].any(1))
    if len(rows) == 0:
        return {}
    factor = face_h / float(rows[-1] + 1 - rows[0])
    new = max(2, int(round(side * factor)))
    f = new / side
    rgb = _resize(
        np.clip(out["image"] * float(rng.uniform(0.8, 1.2)), 0, 255).astype(np.uint8), (new, new)
    )
    alpha = _resize(out["mask"].astype(np.uint8) * 255, (new, new))
    face = _resize(out["face"].astype(np.uint8) * 255, (new, new)) > 127
    return {"rgb": rgb, "alpha": alpha, "face": face, "landmarks": out["landmarks"] * f}


def _bbox(mask: np.ndarray):
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return None
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float64)


def _intersects(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def detection_example(seed: int, split: str, index: int, spec: Spec = Spec()) -> dict[str, Any]:
    """One WIDER-like scene.

    Returns ``{"image": uint8 [H, W, 3], "image/id": int64, "faces": {...}}`` where
    ``faces`` holds NumPy arrays over the N faces: ``boxes`` float32 [N, 4] pixels
    (x0, y0, x1, y1; x1, y1 exclusive, inside the image), ``landmarks`` float32
    [N, 5, 2] pixels, ``blur``, ``occlusion``, ``pose``, ``invalid`` int32 [N], and
    ``yaw`` float32 [N] (degrees, for analysis).

    Labels (WIDER FACE's definitions where it has them):

    * size: box height; planned log-uniform in [min_face, max_face] (capped by the
      scene and, in crowds, by the room per face), so small faces dominate.
    * blur: 0 clear (60%), 1 normal (25%: Gaussian sigma 0.6-1.2 px + 1.5% of the
      size), 2 heavy (15%: 1.8-3 px + 5% of the size).
    * occlusion: fraction of the box covered by an occluder drawn over the face:
      0 none (65%), 1 partial (22%: 5-30%), 2 heavy (13%: 35-70%).
    * pose: 1 (atypical) when |yaw| > 60, |pitch| > 30 or |roll| > 30 degrees.
    * invalid: 1 when the face is not fairly recognisable: occluded >= 60%, or
      heavily blurred and under 16 px, or under 6 px tall.

    Faces never overlap each other's boxes (a head may not cover another face), so
    the occlusion label is the whole truth about what hides a face.
    """
    rng = example_rng(seed, "detection", split, index)
    H = int(rng.integers(spec.detection_min_side, spec.detection_max_side + 1))
    W = int(rng.integers(spec.detection_min_side, spec.detection_max_side + 1))
    canvas = Image.fromarray(np.clip(_background(rng, H, W), 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(canvas)
    _draw_clutter(d, rng, H, W)

    # How many faces: 8% none; else log-uniform in 1..max (WIDER: many images with few
    # faces, a long tail of crowds).
    max_n = spec.detection_max_faces
    if rng.random() < 0.08 or max_n == 0:
        n = 0
    else:
        n = int(min(max_n, math.floor(math.exp(rng.uniform(0, math.log(max_n + 1))))))
    lo = float(spec.detection_min_face) + 1.0
    hi = min(float(spec.detection_max_face) - 1.0, 0.85 * min(H, W))
    if n:
        hi = max(lo, min(hi, 1.3 * math.sqrt(H * W / n)))
    sizes = np.sort(np.exp(rng.uniform(math.log(lo), math.log(max(hi, lo) + 1e-6), n)))[::-1]

    placed = []
    for size in sizes:
        size = float(size)
        hp = head_params(seed, 1_000_000_000 + int(rng.integers(0, 1_000_000)))
        yaw = (
            float(rng.uniform(-90, 90))
            if rng.random() < 0.2
            else float(np.clip(rng.normal(0, 30), -90, 90))
        )
        pitch = float(np.clip(rng.normal(0, 10), -40, 40))
        roll = (
            float(rng.choice([-1, 1]) * rng.uniform(30, 60))
            if rng.random() < 0.06
            else float(rng.normal(0, 8))
        )
        patch = _face_patch(hp, rng, size, yaw, pitch, roll)
        if not patch:
            continue
        fbox = _bbox(patch["face"])
        hbox = _bbox(patch["alpha"] > 20)
        if fbox is None or hbox is None:
            continue
        lm = patch["landmarks"]
        # The box holds the landmarks too (a hidden far eye projects inside the head).
        fbox = np.concatenate(
            [np.minimum(fbox[:2], np.floor(lm.min(0))), np.maximum(fbox[2:], np.ceil(lm.max(0)))]
        )
        fbox = np.maximum(fbox, 0)
        fbox[2:] = np.minimum(fbox[2:], patch["alpha"].shape[::-1])
        if fbox[2] - fbox[0] > W or fbox[3] - fbox[1] > H:
            continue
        for _ in range(30):
            ox = int(rng.integers(int(-fbox[0]), int(W - fbox[2]) + 1))
            oy = int(rng.integers(int(-fbox[1]), int(H - fbox[3]) + 1))
            sb = fbox + (ox, oy, ox, oy)
            sh = hbox + (ox, oy, ox, oy)
            if all(
                not _intersects(sb, q["head"]) and not _intersects(sh, q["box"]) for q in placed
            ):
                placed.append(
                    {
                        "patch": patch,
                        "box": sb,
                        "head": sh,
                        "off": (ox, oy),
                        "yaw": yaw,
                        "pitch": pitch,
                        "roll": roll,
                    }
                )
                break

    # Bodies under the heads (drawn before any face, so they never cover one).
    for q in placed:
        x0, y0, x1, y1 = q["box"]
        bw, bh = x1 - x0, y1 - y0
        col = _c(_random_colour(rng, 10, 240))
        d.ellipse([x0 - 0.9 * bw, y1 + 0.25 * bh, x1 + 0.9 * bw, y1 + 2.6 * bh], fill=col)

    img = np.asarray(canvas, np.float32).copy()
    labels = {
        "boxes": [],
        "landmarks": [],
        "blur": [],
        "occlusion": [],
        "pose": [],
        "invalid": [],
        "yaw": [],
    }
    occluders = []
    for q in placed:
        pt = q["patch"]
        box = q["box"]
        size = float(box[3] - box[1])
        rgb, alpha = pt["rgb"].astype(np.float32), pt["alpha"].astype(np.float32) / 255.0
        r = rng.random()
        blur = 0 if r < 0.6 else 1 if r < 0.85 else 2
        if blur:
            if blur == 1:
                sigma = float(rng.uniform(0.6, 1.2)) + 0.015 * size
            else:
                sigma = float(rng.uniform(1.8, 3.0)) + 0.05 * size
            rgb = np.asarray(
                Image.fromarray(rgb.astype(np.uint8)).filter(ImageFilter.GaussianBlur(sigma)),
                np.float32,
            )
            alpha = (
                np.asarray(
                    Image.fromarray((alpha * 255).astype(np.uint8)).filter(
                        ImageFilter.GaussianBlur(sigma)
                    ),
                    np.float32,
                )
                / 255.0
            )
        ox, oy = q["off"]
        ph, pw = alpha.shape
        ys0, xs0 = max(0, oy), max(0, ox)
        ys1, xs1 = min(H, oy + ph), min(W, ox + pw)
        a = alpha[ys0 - oy : ys1 - oy, xs0 - ox : xs1 - ox, None]
        # rgb is premultiplied (0 off the head; resized and blurred like alpha).
        img[ys0:ys1, xs0:xs1] = (
            img[ys0:ys1, xs0:xs1] * (1 - a) + rgb[ys0 - oy : ys1 - oy, xs0 - ox : xs1 - ox]
        )
        # Occlusion.
        r = rng.random()
        occ = 0 if r < 0.65 else 1 if r < 0.87 else 2
        frac = 0.0
        if occ:
            frac = float(rng.uniform(0.05, 0.3)) if occ == 1 else float(rng.uniform(0.35, 0.7))
            occluders.append(_occluder(rng, box, frac))
            frac = occluders[-1][1]
            occ = 0 if frac <= 0 else 1 if frac <= 0.3 else 2
        pose = int(abs(q["yaw"]) > 60 or abs(q["pitch"]) > 30 or abs(q["roll"]) > 30)
        invalid = int(frac >= 0.6 or (blur == 2 and size < 16) or size < 6)
        labels["boxes"].append(box)
        labels["landmarks"].append(pt["landmarks"] + np.array([ox, oy], np.float32))
        labels["blur"].append(blur)
        labels["occlusion"].append(occ)
        labels["pose"].append(pose)
        labels["invalid"].append(invalid)
        labels["yaw"].append(q["yaw"])
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    if occluders:
        d = ImageDraw.Draw(out)
        for rect, _, col in occluders:
            d.rectangle(rect, fill=col)
    n = len(labels["boxes"])
    faces = {
        "boxes": np.asarray(labels["boxes"], np.float32).reshape(n, 4),
        "landmarks": np.asarray(labels["landmarks"], np.float32).reshape(n, 5, 2),
        "blur": np.asarray(labels["blur"], np.int32),
        "occlusion": np.asarray(labels["occlusion"], np.int32),
        "pose": np.asarray(labels["pose"], np.int32),
        "invalid": np.asarray(labels["invalid"], np.int32),
        "yaw": np.asarray(labels["yaw"], np.float32),
    }
    return {"image": np.asarray(out, np.uint8), "image/id": np.int64(index), "faces": faces}


def _occluder(rng: np.random.Generator, box, frac: float):
    """An axis-aligned occluder inside ``box`` covering about ``frac`` of it.

    Returns ``(rect [x0, y0, x1, y1] for PIL (inclusive), exact covered fraction, colour)``.
    It hangs from one side (a scarf, a hand, a sign) or sits in a corner.
    """
    x0, y0, x1, y1 = (int(v) for v in box)
    w, h = x1 - x0, y1 - y0
    kind = rng.integers(0, 3)
    if kind == 0:  # band from the bottom or top
        hh = max(1, int(round(frac * h)))
        ry0 = y1 - hh if rng.random() < 0.7 else y0
        rect = (x0, ry0, x1, ry0 + hh)
    elif kind == 1:  # band from the left or right
        ww = max(1, int(round(frac * w)))
        rx0 = x0 if rng.random() < 0.5 else x1 - ww
        rect = (rx0, y0, rx0 + ww, y1)
    else:  # corner block
        ww, hh = max(1, int(round(math.sqrt(frac) * w))), max(1, int(round(math.sqrt(frac) * h)))
        rx0 = x0 if rng.random() < 0.5 else x1 - ww
        ry0 = y0 if rng.random() < 0.5 else y1 - hh
        rect = (rx0, ry0, rx0 + ww, ry0 + hh)
    covered = (rect[2] - rect[0]) * (rect[3] - rect[1]) / max(1, w * h)
    col = _c(_random_colour(rng, 10, 245))
    return (rect[0], rect[1], rect[2] - 1, rect[3] - 1), float(covered), col


def difficulty_subsets(sizes, blur, occlusion, pose, invalid=None) -> dict[str, np.ndarray]:
    """WIDER-like nested subsets: ``{"easy", "medium", "hard"}`` bool masks over faces.

    WIDER FACE ranks its subsets by how often EdgeBox proposals find a face, which in
    practice tracks size first, then blur, occlusion and pose; hard contains medium
    contains easy. The rule here (sizes = box heights in pixels):

    * hard:   valid and size >= 10.
    * medium: hard, size >= 20, and not heavily blurred or occluded unless >= 50 px.
    * easy:   medium, size >= 50, blur <= 1, occlusion <= 1 and a typical pose.

    ``invalid`` faces are in no subset (WIDER ignores them in evaluation).
    """
    sizes = np.asarray(sizes, np.float64)
    blur, occlusion, pose = (np.asarray(v) for v in (blur, occlusion, pose))
    valid = np.ones(sizes.shape, bool) if invalid is None else ~np.asarray(invalid, bool)
    hard = valid & (sizes >= 10)
    medium = hard & (sizes >= 20) & (((blur <= 1) & (occlusion <= 1)) | (sizes >= 50))
    easy = medium & (sizes >= 50) & (blur <= 1) & (occlusion <= 1) & (pose == 0)
    return {"easy": easy, "medium": medium, "hard": hard}
