"""The parts of an ``attributes`` face, one drawing function per part.

`jaxface.data.synthetic.attributes.render_attribute_face` calls them in a fixed order
(later parts paint over earlier ones). Each draws on a `Canvas` in face-relative units
from a `Look` (the attributes and the colours and face size they fix); randomness
that only one attribute's drawing uses comes from that attribute's own stream
(``Look.arng``), the rest from the example's stream, read in the order
`render_attribute_face` documents.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np
from PIL import ImageDraw

from jaxface.data.synthetic.attribute_stats import _HAIR_COLOURS
from jaxface.data.synthetic.common import (
    _PALE_SKIN,
    _c,
    _hair_rgb,
    _mix,
    _random_colour,
    _skin_tone,
)


# Face-relative positions shared by several parts: eye centre height and half-spacing,
# brow height.
EYE_Y = -0.04
EYE_X = 0.105
BROW_Y = EYE_Y - 0.065


class Canvas:
    """The supersampled picture in face-relative units: (x, y) lands at pixel
    (cx + sc x, cy + sc y)."""

    def __init__(self, d: ImageDraw.ImageDraw, sc: float, cx: float, cy: float):
        self.d, self.sc, self.cx, self.cy = d, sc, cx, cy

    def P(self, x, y):  # face-relative unit coordinates -> pixels
        return (self.cx + self.sc * x, self.cy + self.sc * y)

    def box(self, x0, y0, x1, y1):
        (a0, b0), (a1, b1) = self.P(x0, y0), self.P(x1, y1)
        return [min(a0, a1), min(b0, b1), max(a0, a1), max(b0, b1)]

    def ell(self, x, y, rx, ry, **kw):
        self.d.ellipse(self.box(x - rx, y - ry, x + rx, y + ry), **kw)

    def poly(self, pts, **kw):
        self.d.polygon([self.P(x, y) for x, y in pts], **kw)

    def line(self, pts, width, **kw):
        self.d.line([self.P(x, y) for x, y in pts], width=max(1, int(round(width * self.sc))), **kw)


@dataclasses.dataclass(frozen=True)
class Look:
    """The attributes of one face and what they fix before drawing: colours and face size."""

    a: dict  # attribute name -> bool
    arng: Callable[[str], np.random.Generator]  # an attribute's own stream
    male: bool
    skin: np.ndarray
    skin_dark: np.ndarray
    hair: np.ndarray
    hair_dark: np.ndarray
    beard: np.ndarray
    fw: float  # face half-width
    fh: float  # face half-height
    top: float  # top of the face ellipse (-fh)
    long_hair: bool
    lh_len: float  # how far long hair reaches down


def make_look(a: dict, arng, rng: np.random.Generator) -> Look:
    """Skin, hair colours and face size: draws, in this order, tone, hair shade, face
    width, face height, long hair and its length from ``rng``."""
    male = a["Male"]
    # Skin.
    tone = float(rng.random())
    if a["Pale_Skin"]:
        skin = _PALE_SKIN + arng("Pale_Skin").uniform(-6, 4, 3)
    else:
        skin = _skin_tone(0.18 + 0.82 * tone**1.6)
    if not a["Young"]:
        skin = _mix(skin, np.full(3, skin.mean()), 0.35)
    skin_dark = skin * 0.72
    hair_name = next((n for n in _HAIR_COLOURS if a[n]), "other")
    hair = _hair_rgb(hair_name, rng)
    hair_dark = hair * 0.6 if hair_name != "Black_Hair" else hair + 40
    beard = hair * 0.85

    fw = 0.25 * (1.18 if a["Chubby"] else 1.0) * (0.86 if a["Oval_Face"] else 1.0)
    fw *= float(rng.uniform(0.96, 1.04))
    fh = 0.32 * (1.06 if a["Oval_Face"] else 1.0) * float(rng.uniform(0.97, 1.03))
    top = -fh
    long_hair = rng.random() < (0.12 if male else 0.9)
    lh_len = float(rng.uniform(0.32, 0.5))
    return Look(
        a=a,
        arng=arng,
        male=male,
        skin=skin,
        skin_dark=skin_dark,
        hair=hair,
        hair_dark=hair_dark,
        beard=beard,
        fw=fw,
        fh=fh,
        top=top,
        long_hair=long_hair,
        lh_len=lh_len,
    )


def draw_body(cv: Canvas, f: Look, rng: np.random.Generator) -> None:
    """Long hair behind the head, shoulders and neck, necktie, necklace (draws the
    shirt colour from ``rng``)."""
    a, male, arng, skin = f.a, f.male, f.arng, f.skin
    hair, fw, fh, long_hair = f.hair, f.fw, f.fh, f.long_hair
    lh_len = f.lh_len
    d, box, ell, poly = cv.d, cv.box, cv.ell, cv.poly
    # Long hair behind the head (mostly women).
    if long_hair:
        ell(0, -0.05, fw * 1.35, fh * 1.1, fill=_c(hair))
        d.rectangle(box(-fw * 1.35, -0.05, fw * 1.35, lh_len), fill=_c(hair))
    # Shoulders / clothes and neck.
    shirt = _random_colour(rng, 20, 235)
    ell(0, 0.56, 0.5, 0.21, fill=_c(shirt))
    d.rectangle(box(-0.52, 0.56, 0.52, 0.8), fill=_c(shirt))
    nw = 0.13 if male else 0.095
    d.rectangle(box(-nw, 0.1, nw, 0.42), fill=_c(skin * 0.9))
    ell(0, 0.41, nw * 1.25, 0.05, fill=_c(skin * 0.9))
    if long_hair:  # strands over the shoulders in front of the shirt
        d.rectangle(box(-fw * 1.35, 0.2, -fw * 0.85, lh_len), fill=_c(hair))
        d.rectangle(box(fw * 0.85, 0.2, fw * 1.35, lh_len), fill=_c(hair))
    if a["Wearing_Necktie"]:
        poly(
            [(-0.15, 0.37), (0, 0.47), (0.15, 0.37), (0.13, 0.52), (-0.13, 0.52)],
            fill=(245, 245, 245),
        )
        tie = _c(
            _random_colour(arng("Wearing_Necktie"), 0, 200) * np.array([1.0, 0.4, 0.4])
            + np.array([40, 0, 0])
        )
        poly([(-0.04, 0.46), (0.04, 0.46), (0.06, 0.64), (0, 0.7), (-0.06, 0.64)], fill=tie)
        poly([(-0.035, 0.41), (0.035, 0.41), (0.04, 0.47), (-0.04, 0.47)], fill=tie)
    if a["Wearing_Necklace"]:
        metal = (255, 215, 60) if arng("Wearing_Necklace").random() < 0.6 else (235, 235, 245)
        for t in np.linspace(-1, 1, 9):
            ell(0.12 * t, 0.36 + 0.07 * (1 - t * t), 0.02, 0.02, fill=metal, outline=(60, 50, 20))


def draw_ears(cv: Canvas, f: Look) -> None:
    """Ears and earrings."""
    a, arng, skin, fw = f.a, f.arng, f.skin, f.fw
    ell = cv.ell
    for s in (-1, 1):
        ell(s * fw * 1.02, -0.02, 0.04, 0.075, fill=_c(skin * 0.93))
        if a["Wearing_Earrings"]:
            metal = (255, 210, 40) if arng("Wearing_Earrings").random() < 0.5 else (240, 240, 255)
            ell(s * fw * 1.02, 0.1, 0.034, 0.034, fill=metal, outline=(90, 70, 20))


def draw_face_shape(cv: Canvas, f: Look) -> None:
    """Face ellipse, square jaw, chubby cheeks, double chin."""
    a, male, skin, skin_dark = f.a, f.male, f.skin, f.skin_dark
    fw, fh = f.fw, f.fh
    d, sc, box, ell = cv.d, cv.sc, cv.box, cv.ell
    poly = cv.poly
    ell(0, 0, fw, fh, fill=_c(skin))
    if male:  # square jaw
        poly(
            [
                (-fw, -0.02),
                (-fw * 0.93, fh * 0.72),
                (-fw * 0.5, fh * 0.98),
                (fw * 0.5, fh * 0.98),
                (fw * 0.93, fh * 0.72),
                (fw, -0.02),
            ],
            fill=_c(skin),
        )
    if a["Chubby"]:
        for s in (-1, 1):
            ell(s * fw * 0.78, fh * 0.35, fw * 0.32, fh * 0.3, fill=_c(skin))
    if a["Double_Chin"]:
        ell(0, fh * 1.05, fw * 0.62, fh * 0.14, fill=_c(skin * 0.97))
        d.arc(
            box(-fw * 0.55, fh * 0.8, fw * 0.55, fh * 1.02),
            20,
            160,
            fill=_c(skin_dark),
            width=max(1, int(0.016 * sc)),
        )
        d.arc(
            box(-fw * 0.6, fh * 0.92, fw * 0.6, fh * 1.19),
            15,
            165,
            fill=_c(skin_dark),
            width=max(1, int(0.014 * sc)),
        )


def draw_skin(cv: Canvas, f: Look, ug: np.random.Generator | None) -> None:
    """Blemishes (``ug``: the unattractive look's stream, or None), cheekbones,
    rosy cheeks, wrinkles, bags under the eyes."""
    a, skin, skin_dark, fw = f.a, f.skin, f.skin_dark, f.fw
    d, sc, box, ell = cv.d, cv.sc, cv.box, cv.ell
    line = cv.line
    ey, ex = EYE_Y, EYE_X
    # Skin marks.
    if not a["Attractive"]:
        ell(
            float(ug.uniform(-0.12, 0.12)),
            float(ug.uniform(0.05, 0.15)),
            0.06,
            0.045,
            fill=_c(skin * 0.9),
        )
        for _ in range(int(ug.integers(3, 7))):
            ell(
                float(ug.uniform(-fw * 0.8, fw * 0.8)),
                float(ug.uniform(-0.15, 0.2)),
                0.01,
                0.01,
                fill=_c(skin * 0.62 + np.array([30, 0, 0])),
            )
    if a["High_Cheekbones"]:
        for s in (-1, 1):
            ell(s * 0.14, 0.045, 0.06, 0.028, fill=_c(_mix(skin, (255, 255, 255), 0.35)))
            line([(s * 0.2, 0.08), (s * 0.09, 0.12)], 0.012, fill=_c(skin_dark))
    if a["Rosy_Cheeks"]:
        for s in (-1, 1):
            ell(s * 0.145, 0.08, 0.058, 0.044, fill=_c(_mix(skin, (235, 70, 100), 0.7)))
    if not a["Young"]:
        wr = _c(skin * 0.55)
        for k in range(3):
            yy = -0.2 + 0.03 * k
            line([(-0.12, yy), (0, yy - 0.01), (0.12, yy)], 0.01, fill=wr)
        for s in (-1, 1):
            line([(s * 0.08, 0.06), (s * 0.11, 0.14), (s * 0.1, 0.19)], 0.011, fill=wr)
            for k in (-1, 0, 1):
                line([(s * 0.17, ey), (s * 0.21, ey + 0.018 * k)], 0.009, fill=wr)
    if a["Bags_Under_Eyes"]:
        for s in (-1, 1):
            ell(s * ex, ey + 0.045, 0.05, 0.022, fill=_c(_mix(skin * 0.8, (80, 50, 70), 0.5)))
            d.arc(
                box(s * ex - 0.055, ey - 0.01, s * ex + 0.055, ey + 0.075),
                20,
                160,
                fill=_c(_mix(skin, (60, 35, 50), 0.7)),
                width=max(1, int(0.018 * sc)),
            )


def draw_facial_hair(cv: Canvas, f: Look) -> None:
    """Stubble, full beard, sideburns, goatee."""
    a, arng, skin, hair_dark = f.a, f.arng, f.skin, f.hair_dark
    beard, fw, fh = f.beard, f.fw, f.fh
    d, P, poly = cv.d, cv.P, cv.poly
    if a["5_o_Clock_Shadow"]:
        stub = _c(_mix(skin, (60, 70, 90), 0.35))
        poly(
            [
                (-fw * 0.95, 0.05),
                (-fw * 0.6, fh * 0.95),
                (0, fh * 1.01),
                (fw * 0.6, fh * 0.95),
                (fw * 0.95, 0.05),
                (fw * 0.5, 0.16),
                (-fw * 0.5, 0.16),
            ],
            fill=stub,
        )
        poly([(-0.08, 0.13), (0.08, 0.13), (0.06, 0.155), (-0.06, 0.155)], fill=stub)
        pts = arng("5_o_Clock_Shadow").uniform([-fw * 0.8, 0.1], [fw * 0.8, fh * 0.92], (40, 2))
        d.point([P(x, y) for x, y in pts], fill=_c(_mix(skin, (30, 30, 40), 0.7)))
    if not a["No_Beard"]:
        poly(
            [
                (-fw * 1.0, -0.03),
                (-fw * 0.95, fh * 0.75),
                (-fw * 0.45, fh * 1.08),
                (fw * 0.45, fh * 1.08),
                (fw * 0.95, fh * 0.75),
                (fw * 1.0, -0.03),
                (fw * 0.8, 0.1),
                (fw * 0.45, 0.15),
                (-fw * 0.45, 0.15),
                (-fw * 0.8, 0.1),
            ],
            fill=_c(beard),
        )
    if a["Sideburns"]:
        for s in (-1, 1):
            poly(
                [
                    (s * fw * 0.97, -0.12),
                    (s * fw * 0.78, -0.12),
                    (s * fw * 0.78, 0.07),
                    (s * fw * 0.99, 0.09),
                ],
                fill=_c(hair_dark),
            )
    if a["Goatee"]:
        poly(
            [(-0.065, 0.225), (0.065, 0.225), (0.05, fh * 1.12), (0, fh * 1.2), (-0.05, fh * 1.12)],
            fill=_c(hair_dark),
        )


def draw_eyes_and_brows(cv: Canvas, f: Look, rng: np.random.Generator, asym: float) -> None:
    """Eyes (iris colour from ``rng``; ``asym``: the unattractive look's eye
    height offset) and brows."""
    a, arng, skin, skin_dark = f.a, f.arng, f.skin, f.skin_dark
    hair = f.hair
    sc, ell, line = cv.sc, cv.ell, cv.line
    ey, ex, by = EYE_Y, EYE_X, BROW_Y
    # Eyes.
    erx = 0.05 * (1.12 if a["Attractive"] else 1.0)
    ery = 0.011 if a["Narrow_Eyes"] else 0.03 * (1.1 if a["Attractive"] else 1.0)
    iris = _c(_random_colour(rng, 20, 140))
    for s, dy in ((-1, -asym), (1, asym)):
        x, y = s * ex, ey + dy
        if a["Heavy_Makeup"]:
            shadow = _c((150, 60, 160) if arng("Heavy_Makeup").random() < 0.5 else (70, 90, 190))
            ell(x, y - 0.02, erx * 1.15, ery + 0.03, fill=shadow)
        ell(
            x,
            y,
            erx,
            ery,
            fill=(250, 250, 250),
            outline=(10, 10, 10) if a["Heavy_Makeup"] else _c(skin_dark),
            width=max(1, int((0.016 if a["Heavy_Makeup"] else 0.006) * sc)),
        )
        ir = min(ery * 0.95, 0.022)
        ell(x, y, ir, ir, fill=iris)
        ell(x, y, ir * 0.45, ir * 0.45, fill=(5, 5, 5))
    # Brows.
    brow = hair * (0.45 if a["Bushy_Eyebrows"] else 0.6)
    if np.abs(brow - skin).sum() < 120:  # keep brows visible on any skin
        brow = skin * 0.45
    brow_col = _c(brow)
    bw = 0.03 if a["Bushy_Eyebrows"] else 0.014
    for s in (-1, 1):
        if a["Arched_Eyebrows"]:
            pts = [
                (s * 0.045, by + 0.015),
                (s * 0.085, by - 0.03),
                (s * 0.125, by - 0.04),
                (s * 0.17, by + 0.02),
            ]
        else:
            pts = [(s * 0.045, by), (s * 0.1, by - 0.005), (s * 0.17, by)]
        line(pts, bw, fill=brow_col, joint="curve")


def draw_nose(cv: Canvas, f: Look) -> None:
    """Nose: pointy (a dark-edged wedge) or a bulb; big or not."""
    a, skin = f.a, f.skin
    d, sc, box, ell = cv.d, cv.sc, cv.box, cv.ell
    poly, line = cv.poly, cv.line
    # Nose: pointy = narrow dark-edged triangle with a sharp tip; else a round bulb.
    big = 1.7 if a["Big_Nose"] else 1.0
    ntip = 0.075 * (1.3 if a["Big_Nose"] else 1.0)
    nw_ = 0.03 * big
    nose_col = _c(skin * 0.7)
    line([(-0.02, -0.03), (-0.025, ntip - 0.02)], 0.008, fill=nose_col)
    if a["Pointy_Nose"]:  # long sharp wedge from the bridge, dark edges, tip below the nostrils
        tip = ntip + 0.05
        poly([(0, tip), (-nw_, ntip - 0.005), (0, -0.03), (nw_, ntip - 0.005)], fill=_c(skin * 0.8))
        line(
            [(0, -0.03), (-nw_, ntip - 0.005), (0, tip), (nw_, ntip - 0.005), (0, -0.03)],
            0.014,
            fill=_c(skin * 0.5),
        )
    else:
        ell(0, ntip, nw_ * 1.25, 0.026 * big, fill=_c(skin * 0.88))
        d.arc(
            box(-nw_ * 1.25, ntip - 0.024 * big, nw_ * 1.25, ntip + 0.026 * big),
            10,
            170,
            fill=nose_col,
            width=max(1, int(0.012 * sc)),
        )
    for s in (-1, 1):
        ell(s * nw_ * 0.6, ntip + 0.014, 0.012 * big, 0.008 * big, fill=_c(skin * 0.4))


def draw_mouth(cv: Canvas, f: Look) -> None:
    """Mustache and mouth: lips, lipstick, smile, open mouth, smile lines."""
    a, arng, skin, skin_dark = f.a, f.arng, f.skin, f.skin_dark
    hair_dark = f.hair_dark
    d, sc, box, poly = cv.d, cv.sc, cv.box, cv.poly
    line = cv.line
    # Mustache (above the lip, under the nose).
    my = 0.19
    if a["Mustache"]:
        poly(
            [
                (-0.095, my - 0.0),
                (-0.065, my - 0.05),
                (0.065, my - 0.05),
                (0.095, my - 0.0),
                (0.0, my - 0.025),
            ],
            fill=_c(hair_dark),
        )

    # Mouth.
    mw = 0.085
    lip_h = 0.034 if a["Big_Lips"] else 0.012
    if a["Wearing_Lipstick"]:
        lip = _c((205, 15, 45) if arng("Wearing_Lipstick").random() < 0.6 else (235, 60, 140))
    else:
        lip = _c(_mix(skin * 0.7, (170, 40, 60), 0.45))
    smile = 0.05 if a["Smiling"] else 0.0
    gap = 0.03 if a["Mouth_Slightly_Open"] else 0.0
    # Upper lip (from corner to corner through the centre), lower lip beneath the gap.
    xs = np.linspace(-1, 1, 9)
    curve = smile * (1 - xs**2)  # >0: centre lower than corners => upturned corners
    upper = [(mw * x, my + c - lip_h * (1 - x * x) ** 0.5) for x, c in zip(xs, curve)]
    mid_top = [(mw * x, my + c) for x, c in zip(xs, curve)]
    mid_bot = [(mw * x, my + c + gap * (1 - x * x)) for x, c in zip(xs, curve)]
    lower = [
        (mw * x, my + c + gap * (1 - x * x) + lip_h * 1.2 * (1 - x * x) ** 0.5)
        for x, c in zip(xs, curve)
    ]
    poly(upper + mid_top[::-1], fill=lip)
    poly(mid_bot + lower[::-1], fill=lip)
    if gap > 0:
        poly(mid_top + mid_bot[::-1], fill=(40, 10, 15))
        if a["Smiling"]:
            poly(
                [(mw * 0.7 * x, my + c * 1.0 + 0.002) for x, c in zip(xs, curve)]
                + [
                    (mw * 0.7 * x, my + c + gap * 0.5 * (1 - x * x))
                    for x, c in zip(xs[::-1], curve[::-1])
                ],
                fill=(245, 245, 240),
            )
    else:
        line(mid_top, 0.008, fill=_c(_mix(lip, (40, 10, 10), 0.6)))
    if a["Smiling"]:  # smile lines beside the mouth corners
        for s in (-1, 1):
            d.arc(
                box(s * mw - 0.035, my - 0.05, s * mw + 0.035, my + 0.03),
                250 if s < 0 else -70,
                110 if s < 0 else 70,
                fill=_c(skin_dark),
                width=max(1, int(0.012 * sc)),
            )


def draw_head_hair(cv: Canvas, f: Look) -> None:
    """Hair on the head (bald, receding, bangs, straight / wavy strands) and hat."""
    a, arng, skin, hair = f.a, f.arng, f.skin, f.hair
    hair_dark, fw, fh, top = f.hair_dark, f.fw, f.fh, f.top
    long_hair, lh_len = f.long_hair, f.lh_len
    d, box, ell, poly = cv.d, cv.box, cv.ell, cv.poly
    line = cv.line
    by = BROW_Y
    hairline = top + fh * (0.5 if a["Receding_Hairline"] else 0.32)
    if not a["Bald"]:
        cap_top = top - 0.06
        d.chord(box(-fw * 1.1, cap_top, fw * 1.1, 2 * hairline - cap_top), 180, 360, fill=_c(hair))
        for s in (-1, 1):  # temples down to the ears (greying when not young)
            d.rectangle(box(s * fw * 1.1, hairline - 0.02, s * fw * 0.86, -0.09), fill=_c(hair))
            if not a["Young"]:
                d.rectangle(
                    box(s * fw * 1.1, hairline + 0.04, s * fw * 0.9, -0.1),
                    fill=_c(_mix(hair, (200, 200, 200), 0.7)),
                )
        if a["Receding_Hairline"]:
            for s in (-1, 1):
                ell(s * fw * 0.5, hairline - 0.01, fw * 0.3, 0.07, fill=_c(skin))
    else:
        ell(
            -fw * 0.3,
            top + fh * 0.18,
            fw * 0.25,
            fh * 0.08,
            fill=_c(_mix(skin, (255, 255, 255), 0.45)),
        )
        for s in (-1, 1):
            d.rectangle(box(s * fw * 1.06, -0.16, s * fw * 0.9, -0.05), fill=_c(hair))
    if a["Bangs"]:
        pts = [(-fw * 0.95, top + fh * 0.1), (fw * 0.95, top + fh * 0.1)]
        n = 7
        for k in range(n + 1):
            x = fw * 0.9 * (1 - 2 * k / n)
            pts.append((x, by - 0.012 - (0.03 if k % 2 else 0.0)))
        poly(pts, fill=_c(hair))
    strand = _c(hair_dark)
    if a["Straight_Hair"] and not a["Bald"]:
        for x in np.linspace(-0.8, 0.8, 7):
            line([(fw * x, top - 0.03), (fw * x * 1.05, hairline - 0.01)], 0.007, fill=strand)
        if long_hair:
            for s in (-1, 1):
                for x in (0.95, 1.1, 1.25):
                    line([(s * fw * x, 0.0), (s * fw * x, lh_len - 0.02)], 0.007, fill=strand)
    if a["Wavy_Hair"]:
        ys = np.linspace(-0.2 if not long_hair else -0.1, lh_len - 0.02 if long_hair else -0.02, 9)
        for s in (-1, 1):
            for x0 in (1.0, 1.2) if long_hair else (0.98,):
                line(
                    [(s * (fw * x0 + 0.025 * math.sin(7 * yy * 6.28 / 2)), yy) for yy in ys],
                    0.01,
                    fill=strand,
                )
        if not a["Bald"]:
            xs2 = np.linspace(-0.8, 0.8, 9)
            for k in range(2):
                yy = top + 0.02 + 0.035 * k
                line([(fw * x, yy + 0.012 * math.sin(9 * x)) for x in xs2], 0.009, fill=strand)
    if a["Wearing_Hat"]:
        hat = _c(_random_colour(arng("Wearing_Hat"), 10, 240))
        d.chord(box(-fw * 1.08, top - 0.12, fw * 1.08, top + fh * 0.55), 180, 360, fill=hat)
        ell(0, top + fh * 0.17, fw * 1.45, 0.035, fill=_c(np.asarray(hat) * 0.8))


def draw_glasses(cv: Canvas, f: Look) -> None:
    """Glasses, on top of everything on the face."""
    a, arng, fw = f.a, f.arng, f.fw
    d, sc, box, ell = cv.d, cv.sc, cv.box, cv.ell
    line = cv.line
    ey, ex = EYE_Y, EYE_X
    if a["Eyeglasses"]:
        gr = arng("Eyeglasses")
        frame = _c(gr.uniform(0, 60, 3))
        lw = max(2, int(0.014 * sc))
        for s in (-1, 1):
            if gr.random() < 0.5:
                d.rectangle(
                    box(s * ex - 0.068, ey - 0.045, s * ex + 0.068, ey + 0.045),
                    outline=frame,
                    width=lw,
                )
            else:
                ell(s * ex, ey, 0.07, 0.05, outline=frame, width=lw)
            line([(s * (ex + 0.068), ey - 0.02), (s * fw * 1.0, ey - 0.03)], 0.012, fill=frame)
        line([(-ex + 0.068, ey - 0.01), (ex - 0.068, ey - 0.01)], 0.012, fill=frame)
