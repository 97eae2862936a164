"""What a face detector must learn is *not* a face, drawn for pasted-face scenes.

Real photographs hold skin that is not a face (hands, arms, necks) and round, high
contrast emblems (badges, patches, logos) that a detector trained only on faces over
landscapes and textures mistakes for faces. `distractor` draws one such object as an
RGB patch with a feathered alpha, a pure function of its generator:

* ``hand``: a palm (ellipse) with four fingers and a thumb (rounded strokes), spread
  and turned at random;
* ``arm``: a rounded stroke, bent once, ending in a rounded fist or a narrowing;
* ``skin``: a soft elongated blob (a neck, a shoulder, a knee);
* ``badge``: a disc or a shield with concentric rings of two to four saturated
  colours, a star or letters in the middle.

Skin is one tone drawn over the range of human skin (`skin_tone`), shaded by a linear
light gradient and fine noise, so the patch has a face's colour but not its layout.

`tint` colours a greyscale photograph by mapping its luminance onto a random
dark-to-light pair of colours, so backgrounds are not predominantly grey.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["KINDS", "distractor", "skin_tone", "tint", "is_greyscale"]

KINDS = ("hand", "arm", "skin", "badge")
_SUPER = 4  # drawn at 4x and reduced: antialiased edges


def skin_tone(rng: np.random.Generator) -> np.ndarray:
    """An RGB skin colour: a point between a light and a dark tone, jittered."""
    light = np.array([236.0, 198.0, 172.0])
    dark = np.array([88.0, 57.0, 42.0])
    t = rng.uniform(0.0, 1.0)
    return np.clip(light * (1 - t) + dark * t + rng.normal(0.0, 8.0, 3), 0, 255)


def is_greyscale(image: np.ndarray) -> bool:
    """True when the three channels of a uint8 RGB image are (nearly) equal."""
    x = np.asarray(image, np.int16)
    return bool(
        np.abs(x[..., 0] - x[..., 1]).max() <= 2 and np.abs(x[..., 1] - x[..., 2]).max() <= 2
    )


def _hsv_colour(rng, s_range, v_range) -> np.ndarray:
    import colorsys  # pylint: disable=import-outside-toplevel

    rgb = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(*s_range), rng.uniform(*v_range))
    return np.array(rgb) * 255.0


def tint(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """uint8 RGB -> uint8 RGB: luminance ``l`` mapped to ``(1 - l) * dark + l * light``
    for a random dark colour and a random light one."""
    lum = np.asarray(image, np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255.0
    dark = _hsv_colour(rng, (0.2, 0.9), (0.0, 0.35))
    light = _hsv_colour(rng, (0.1, 0.7), (0.7, 1.0))
    out = (1.0 - lum[..., None]) * dark + lum[..., None] * light
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _stroke(draw, p0, p1, width):
    """A rounded stroke (a capsule) from ``p0`` to ``p1``."""
    draw.line([tuple(p0), tuple(p1)], fill=255, width=max(1, int(round(width))))
    for p in (p0, p1):
        r = width / 2
        draw.ellipse([p[0] - r, p[1] - r, p[0] + r, p[1] + r], fill=255)


def _hand_mask(rng, size):
    img = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(img)
    c = np.array([size * 0.5, size * 0.62])
    pw, ph = size * rng.uniform(0.34, 0.44), size * rng.uniform(0.30, 0.40)
    d.ellipse([c[0] - pw / 2, c[1] - ph / 2, c[0] + pw / 2, c[1] + ph / 2], fill=255)
    spread = rng.uniform(0.15, 0.45)
    width = size * rng.uniform(0.07, 0.10)
    for k in range(4):
        ang = -math.pi / 2 + (k - 1.5) * spread * 0.6
        base = c + np.array([(k - 1.5) * pw * 0.24, -ph * 0.35])
        length = size * rng.uniform(0.22, 0.36) * (0.8 if k in (0, 3) else 1.0)
        tip = base + length * np.array([math.cos(ang), math.sin(ang)])
        _stroke(d, base, tip, width)
    side = 1 if rng.random() < 0.5 else -1
    base = c + np.array([side * pw * 0.45, ph * 0.05])
    ang = -math.pi / 2 + side * rng.uniform(0.6, 1.2)
    _stroke(d, base, base + size * 0.22 * np.array([math.cos(ang), math.sin(ang)]), width * 1.1)
    return img


def _arm_mask(rng, size):
    img = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(img)
    width = size * rng.uniform(0.14, 0.24)
    p0 = np.array([rng.uniform(0.1, 0.3), rng.uniform(0.1, 0.9)]) * size
    p1 = np.array([rng.uniform(0.4, 0.6), rng.uniform(0.2, 0.8)]) * size
    p2 = np.array([rng.uniform(0.7, 0.9), rng.uniform(0.1, 0.9)]) * size
    _stroke(d, p0, p1, width)
    _stroke(d, p1, p2, width * rng.uniform(0.7, 1.0))
    if rng.random() < 0.5:  # a fist
        r = width * 0.75
        d.ellipse([p2[0] - r, p2[1] - r, p2[0] + r, p2[1] + r], fill=255)
    return img


def _blob_mask(rng, size):
    img = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(img)
    w, h = size * rng.uniform(0.4, 0.95), size * rng.uniform(0.25, 0.6)
    d.ellipse([(size - w) / 2, (size - h) / 2, (size + w) / 2, (size + h) / 2], fill=255)
    return img.rotate(float(rng.uniform(0, 180)), resample=Image.BILINEAR)


def _shade_skin(rng, mask: np.ndarray) -> np.ndarray:
    """Skin RGB over ``mask``'s grid: one tone, a linear light gradient, fine noise."""
    n = mask.shape[0]
    tone = skin_tone(rng)
    ang = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:n, 0:n] / max(n - 1, 1) - 0.5
    light = 1.0 + rng.uniform(0.1, 0.35) * (math.cos(ang) * xx + math.sin(ang) * yy) * 2
    noise = rng.normal(0.0, 4.0, (n, n, 1))
    return np.clip(tone * light[..., None] + noise, 0, 255)


def _badge(rng, size):
    rgb = Image.new("RGB", (size, size), (0, 0, 0))
    mask = Image.new("L", (size, size), 0)
    d, dm = ImageDraw.Draw(rgb), ImageDraw.Draw(mask)
    n_rings = int(rng.integers(2, 5))
    shield = rng.random() < 0.3
    for k in range(n_rings):
        m = size * (0.04 + 0.12 * k)
        col = tuple(int(v) for v in _hsv_colour(rng, (0.5, 1.0), (0.4, 1.0)))
        box = [m, m, size - m, size - m]
        if shield:
            poly = [
                (m, m),
                (size - m, m),
                (size - m, size * 0.55),
                (size / 2, size - m),
                (m, size * 0.55),
            ]
            d.polygon(poly, fill=col)
            if k == 0:
                dm.polygon(poly, fill=255)
        else:
            d.ellipse(box, fill=col)
            if k == 0:
                dm.ellipse(box, fill=255)
    col = tuple(int(v) for v in _hsv_colour(rng, (0.0, 1.0), (0.6, 1.0)))
    cx = cy = size / 2
    if rng.random() < 0.5:  # a five-pointed star
        r_out, r_in = size * 0.22, size * 0.09
        pts = []
        for k in range(10):
            r = r_out if k % 2 == 0 else r_in
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
        d.polygon(pts, fill=col)
    else:  # letters on a band
        d.rectangle([size * 0.2, size * 0.42, size * 0.8, size * 0.58], fill=col)
        letters = "".join(chr(ord("A") + int(i)) for i in rng.integers(0, 26, 4))
        ink = tuple(255 - v for v in col)
        for i, ch in enumerate(letters):
            d.text((size * (0.24 + 0.14 * i), size * 0.43), ch, fill=ink)
    return np.asarray(rgb, np.float32), np.asarray(mask, np.float32) / 255.0


def distractor(rng: np.random.Generator, height: float, kind: str | None = None):
    """One hard negative about ``height`` px tall: ``(rgb uint8 [n, n, 3], alpha float32
    [n, n], kind)``; ``kind`` one of `KINDS` (default: drawn uniformly)."""
    if kind is None:
        kind = KINDS[int(rng.integers(len(KINDS)))]
    if kind not in KINDS:
        raise ValueError(f"unknown distractor kind {kind!r}; known: {KINDS}")
    n = max(4, int(round(height)))
    big = n * _SUPER
    if kind == "badge":
        rgb, alpha = _badge(rng, big)
    else:
        mask = {"hand": _hand_mask, "arm": _arm_mask, "skin": _blob_mask}[kind](rng, big)
        alpha = np.asarray(mask, np.float32) / 255.0
        rgb = _shade_skin(rng, alpha)
    if rng.random() < 0.5:
        rgb, alpha = rgb[:, ::-1], alpha[:, ::-1]
    rgb_img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).resize((n, n), Image.BOX)
    soft = Image.fromarray(np.round(alpha * 255).astype(np.uint8)).resize((n, n), Image.BOX)
    soft = soft.filter(ImageFilter.GaussianBlur(radius=max(0.5, n / 80)))
    return np.asarray(rgb_img, np.uint8), np.asarray(soft, np.float32) / 255.0, kind
