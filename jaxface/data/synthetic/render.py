"""Procedural face renderers: pure NumPy + PIL, no TensorFlow, no download.

Every example is a pure function of ``(spec, seed, split, index)``: its random
stream is ``np.random.default_rng([seed, KIND, split_id, index])``, so any subset
can be regenerated alone and generation parallelises trivially. Identity
parameters (face shape, skin, hair, feature geometry) come from their own stream
``default_rng([seed, KIND_IDENTITY, 0, global_identity])`` and do not depend on
the split or image index, so an identity looks the same in every image.

Three kinds of example (see :func:`attributes_example`, :func:`identity_example`,
:func:`detection_example`):

* ``attributes``: aligned frontal crops (CelebA-like) labelled with CelebA's 40
  binary attributes, sampled at CelebA's real positive rates (see
  :data:`CELEBA_ATTRIBUTE_RATES`), each attribute drawn as a visible change.
  A fast 2-D renderer (PIL ImageDraw at 2x, box-downsampled).
* ``identity``: 112x112 aligned crops of parametric 3-D heads, ray-cast with
  NumPy (ellipsoid cranium + jaw, protruding nose, ears, hair shell, neck), so a
  profile view genuinely differs from a frontal one: the far eye is hidden by the
  head, the nose leaves the silhouette, ears and the back of the hair appear.
* ``detection``: cluttered scenes of 256-640 px holding 0-40 heads (the same 3-D
  renderer) of 8-400 px with boxes, 5 landmarks and WIDER-style blur /
  occlusion / pose / invalid labels; :func:`difficulty_subsets` derives
  easy / medium / hard subsets.

Landmark order everywhere: left eye, right eye, nose tip, left mouth corner,
right mouth corner, as (x, y) in image pixels; "left" is the image left.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from statistics import NormalDist
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from jaxface.data.attribute_names import CELEBA_ATTRIBUTES

# --------------------------------------------------------------------------------------
# Specification and per-example random streams.
# --------------------------------------------------------------------------------------

SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}
KIND_IDS = {"attributes": 1, "identity": 2, "detection": 3, "identity_params": 4}


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a renderer needs to know besides ``(seed, split, index)``.

    ``SyntheticFacesConfig`` (the tfds builder config) carries the same fields and
    converts with ``config.spec()``; NumPy-only users build one directly.

    Attributes:
      attribute_image_size: side of the square attribute crops (pixels).
      identity_image_size: side of the square identity crops (pixels; 112 default).
      num_train_identities: identities in ``train``; their global ids are
        ``0 .. num_train_identities - 1``.
      num_test_identities: identities in ``test`` (and ``validation``), disjoint
        from train: global ids ``num_train_identities ..``.
      images_per_identity: images of each identity in its split; image ``k`` of
        identity ``j`` is split index ``j * images_per_identity + k``.
      detection_min_side, detection_max_side: scene height and width range.
      detection_max_faces: at most this many faces per scene.
      detection_min_face, detection_max_face: face box height range (pixels).
    """

    attribute_image_size: int = 64
    identity_image_size: int = 112
    num_train_identities: int = 2000
    num_test_identities: int = 200
    images_per_identity: int = 10
    detection_min_side: int = 256
    detection_max_side: int = 640
    detection_max_faces: int = 40
    detection_min_face: int = 8
    detection_max_face: int = 400


def example_rng(seed: int, kind: str, split: str, index: int) -> np.random.Generator:
    """The one random stream of an example: a pure function of its coordinates."""
    return np.random.default_rng([int(seed), KIND_IDS[kind], _split_id(split), int(index)])


def _split_id(split: str) -> int:
    try:
        return SPLIT_IDS[split]
    except KeyError:
        raise ValueError(
            f"render: unknown split {split!r}; expected one of {sorted(SPLIT_IDS)}"
        ) from None


# --------------------------------------------------------------------------------------
# CelebA attribute statistics (embedded: the source file is not shipped).
# --------------------------------------------------------------------------------------

# CelebA's 40 attributes in the order of list_attr_celeba.txt (its line 2).
ATTRIBUTE_NAMES = CELEBA_ATTRIBUTES
NUM_ATTRIBUTES = 40
A = {name: i for i, name in enumerate(ATTRIBUTE_NAMES)}

# Positive rate of each attribute (fraction of rows == 1), same order as ATTRIBUTE_NAMES.
# Source: the first 20,000 rows (images 000001.jpg-020000.jpg) of CelebA's
# list_attr_celeba.txt (202,599 rows).
CELEBA_ATTRIBUTE_RATES = (
    0.11225,
    0.26425,
    0.51310,
    0.20460,
    0.02320,
    0.15145,
    0.23860,
    0.23740,
    0.24265,
    0.14885,
    0.05175,
    0.20320,
    0.14405,
    0.05710,
    0.04635,
    0.06460,
    0.06250,
    0.04190,
    0.38490,
    0.45000,
    0.42155,
    0.47910,
    0.03935,
    0.11580,
    0.83210,
    0.27880,
    0.04315,
    0.27625,
    0.07800,
    0.06335,
    0.05840,
    0.47935,
    0.21235,
    0.31615,
    0.18630,
    0.04975,
    0.47105,
    0.12200,
    0.07405,
    0.77990,
)
# P(attribute == 1 | Male == 1) over the same 20,000 rows (8,431 of them Male); with the
# marginal rates above it fixes P(attribute | female) too, so sampling Male first and the
# rest conditionally keeps every marginal rate exact (beards on men, lipstick on women).
CELEBA_RATES_GIVEN_MALE = (
    0.26616,
    0.05219,
    0.27636,
    0.34148,
    0.05492,
    0.08315,
    0.15075,
    0.42439,
    0.29652,
    0.02206,
    0.05942,
    0.15206,
    0.24315,
    0.11908,
    0.09667,
    0.11991,
    0.14814,
    0.08599,
    0.00308,
    0.30554,
    1.00000,
    0.42273,
    0.09335,
    0.12537,
    0.60325,
    0.22358,
    0.02716,
    0.16072,
    0.11659,
    0.00451,
    0.13854,
    0.40055,
    0.24090,
    0.13925,
    0.01459,
    0.08409,
    0.00593,
    0.01791,
    0.17519,
    0.64132,
)


def _conditional_rates():
    p = np.asarray(CELEBA_ATTRIBUTE_RATES, np.float64)
    pm = np.asarray(CELEBA_RATES_GIVEN_MALE, np.float64)
    male = p[A["Male"]]
    pf = np.clip((p - male * pm) / (1.0 - male), 0.0, 1.0)
    pm = pm.copy()
    pf[A["Male"]] = 0.0
    return pm, pf


_P_MALE_COND, _P_FEMALE_COND = _conditional_rates()

# Within each gender, attributes other than Male and the hair colours are drawn through
# a Gaussian copula: z = sqrt(1 - |L|^2) e - L f, attribute = z < Phi^-1(p). The
# marginals stay exact whatever L is; L (hand-set, not fitted) adds the obvious
# correlations: age, smile, beard, make-up, weight and hair texture factors.
_FACTORS = ("age", "smile", "beard", "glam", "heavy", "texture")
_LOADINGS = {
    "Young": {"age": -0.6},
    "Bald": {"age": 0.5},
    "Receding_Hairline": {"age": 0.5},
    "Bags_Under_Eyes": {"age": 0.4, "heavy": 0.3},
    "Double_Chin": {"age": 0.3, "heavy": 0.6},
    "Chubby": {"heavy": 0.7, "age": 0.2},
    "Eyeglasses": {"age": 0.3},
    "Attractive": {"age": -0.4, "heavy": -0.3, "glam": 0.4},
    "Smiling": {"smile": 0.7},
    "Mouth_Slightly_Open": {"smile": 0.5},
    "High_Cheekbones": {"smile": 0.6},
    "No_Beard": {"beard": -0.7},
    "Goatee": {"beard": 0.6},
    "Mustache": {"beard": 0.6},
    "Sideburns": {"beard": 0.5},
    "5_o_Clock_Shadow": {"beard": 0.3},
    "Heavy_Makeup": {"glam": 0.7},
    "Wearing_Lipstick": {"glam": 0.7},
    "Arched_Eyebrows": {"glam": 0.4},
    "Wearing_Earrings": {"glam": 0.3},
    "Wearing_Necklace": {"glam": 0.3},
    "Rosy_Cheeks": {"glam": 0.3},
    "Oval_Face": {"heavy": -0.3},
    "Big_Nose": {"heavy": 0.2, "age": 0.2},
    "Wavy_Hair": {"texture": 0.5},
    "Straight_Hair": {"texture": -0.5},
}
_HAIR_COLOURS = ("Black_Hair", "Brown_Hair", "Blond_Hair", "Gray_Hair")  # + "other" (auburn/red)


def _copula_tables():
    load = np.zeros((NUM_ATTRIBUTES, len(_FACTORS)))
    for name, row in _LOADINGS.items():
        for f, v in row.items():
            load[A[name], _FACTORS.index(f)] = v
    resid = np.sqrt(1.0 - (load**2).sum(1))
    nd = NormalDist()

    def thresholds(p):
        return np.array([-np.inf if q <= 0 else np.inf if q >= 1 else nd.inv_cdf(q) for q in p])

    return load, resid, thresholds(_P_MALE_COND), thresholds(_P_FEMALE_COND)


_LOAD, _RESID, _THRESH_MALE, _THRESH_FEMALE = _copula_tables()
_COPULA_MASK = np.ones(NUM_ATTRIBUTES, bool)
_COPULA_MASK[[A["Male"]] + [A[n] for n in _HAIR_COLOURS]] = False


def sample_attributes(rng: np.random.Generator) -> np.ndarray:
    """One CelebA-like attribute vector, int32 [40] of 0/1.

    Male ~ Bernoulli(CelebA rate); then, given the gender, every other attribute has
    exactly its CelebA conditional rate, so every marginal is CelebA's. Hair colour is
    one category (black / brown / blond / gray / other), so at most one colour is set;
    its uniform draw loads on the age factor so gray hair goes with age.
    """
    out = np.zeros(NUM_ATTRIBUTES, np.int32)
    male = rng.random() < CELEBA_ATTRIBUTE_RATES[A["Male"]]
    out[A["Male"]] = male
    f = rng.standard_normal(len(_FACTORS))
    e = rng.standard_normal(NUM_ATTRIBUTES)
    z = _RESID * e - _LOAD @ f  # minus: a positive loading makes the attribute likelier
    thresh = _THRESH_MALE if male else _THRESH_FEMALE
    out[_COPULA_MASK] = (z < thresh)[_COPULA_MASK]
    # Hair colour: u uniform (a Gaussian with 0.5 age loading pushed through Phi), gray last.
    u = NormalDist().cdf(0.5 * f[0] + math.sqrt(0.75) * rng.standard_normal())
    cond = _P_MALE_COND if male else _P_FEMALE_COND
    probs = [cond[A[n]] for n in _HAIR_COLOURS]
    # Order on the unit interval: other, black, brown, blond, gray (gray at the old end).
    edge = 1.0 - sum(probs)
    for n, q in zip(_HAIR_COLOURS, probs):
        if edge <= u < edge + q:
            out[A[n]] = 1
        edge += q
    return out


# --------------------------------------------------------------------------------------
# Colours.
# --------------------------------------------------------------------------------------

_SKIN_RAMP = np.array(
    [
        [241, 210, 186],
        [224, 182, 150],
        [198, 144, 108],
        [160, 108, 74],
        [112, 72, 48],
        [80, 52, 36],
    ],
    np.float64,
)
_PALE_SKIN = np.array([250, 236, 228], np.float64)


def _skin_tone(t: float) -> np.ndarray:
    t = float(np.clip(t, 0, 1)) * (len(_SKIN_RAMP) - 1)
    i = min(int(t), len(_SKIN_RAMP) - 2)
    w = t - i
    return _SKIN_RAMP[i] * (1 - w) + _SKIN_RAMP[i + 1] * w


_HAIR_RGB = {
    "Black_Hair": ((18, 16, 16), (45, 35, 30)),
    "Brown_Hair": ((85, 52, 30), (130, 85, 50)),
    "Blond_Hair": ((205, 170, 100), (240, 215, 150)),
    "Gray_Hair": ((150, 150, 150), (215, 215, 210)),
    "other": ((140, 50, 20), (185, 80, 35)),  # auburn / red: CelebA's "no colour set"
}


def _hair_rgb(name: str, rng: np.random.Generator) -> np.ndarray:
    lo, hi = _HAIR_RGB[name]
    w = rng.random()
    return np.asarray(lo, np.float64) * (1 - w) + np.asarray(hi, np.float64) * w


def _c(rgb) -> tuple:
    """RGB-like -> PIL colour tuple of ints in [0, 255] (hot path: plain Python)."""
    if isinstance(rgb, np.ndarray):
        rgb = rgb.tolist()
    return tuple(0 if v < 0 else 255 if v > 255 else int(v + 0.5) for v in rgb)


def _mix(a, b, w: float) -> np.ndarray:
    return np.asarray(a, np.float64) * (1 - w) + np.asarray(b, np.float64) * w


def _random_colour(rng: np.random.Generator, lo: int = 0, hi: int = 255) -> np.ndarray:
    return rng.integers(lo, hi + 1, 3).astype(np.float64)


# --------------------------------------------------------------------------------------
# Attributes: 2-D frontal renderer.
# --------------------------------------------------------------------------------------


def attributes_example(seed: int, split: str, index: int, spec: Spec = Spec()) -> dict[str, Any]:
    """One attribute example: ``{"image": uint8 [S, S, 3], "attributes": int32 [40], "id"}``.

    Every attribute changes the picture (see :func:`render_attribute_face`); the
    sample is a pure function of ``(seed, split, index, spec.attribute_image_size)``.
    """
    rng = example_rng(seed, "attributes", split, index)
    attrs = sample_attributes(rng)
    image = render_attribute_face(attrs, rng, spec.attribute_image_size)
    return {"image": image, "attributes": attrs, "id": np.int64(index)}


def attributes_labels(seed: int, split: str, index: int) -> np.ndarray:
    """The attribute vector of example ``index`` without drawing it (same stream, same values)."""
    return sample_attributes(example_rng(seed, "attributes", split, index))


def render_attribute_face(
    attrs: np.ndarray, rng: np.random.Generator, size: int = 64
) -> np.ndarray:
    """Draws an aligned frontal face showing ``attrs`` (int [40]); returns uint8 [size, size, 3].

    The visible rendering of each attribute (everything else is nuisance: colours,
    position, background clutter):

    ============================  =====================================================
    5_o_Clock_Shadow              grey-blue stubble tint + stipple over jaw and upper lip
    Arched_Eyebrows               brows drawn as a raised arc (else nearly straight)
    Attractive                    symmetric, clean skin, larger eyes (else blemishes,
                                  uneven features, skin blotch)
    Bags_Under_Eyes               dark crescents under the eyes
    Bald                          no hair on the crown, shiny scalp (hair at sides only)
    Bangs                         jagged fringe over the forehead down to the brows
    Big_Lips                      lips about three times as thick
    Big_Nose                      longer, wider nose with broad nostrils
    Black/Brown/Blond/Gray_Hair   hair colour (none set: auburn/red)
    Blurry                        Gaussian blur of the whole crop
    Bushy_Eyebrows                thick dark brows
    Chubby                        wider face with cheek bulges
    Double_Chin                   second chin contour under the chin
    Eyeglasses                    dark frames, bridge and temples
    Goatee                        beard patch on the chin, hanging below it
    Heavy_Makeup                  coloured eye shadow and thick eyeliner
    High_Cheekbones               cheek highlights with shadow lines beneath
    Male                          square jaw, broad neck, mostly short hair (else round
                                  chin, mostly long hair to the shoulders)
    Mouth_Slightly_Open           dark gap between the lips
    Mustache                      band of hair above the upper lip
    Narrow_Eyes                   eye openings one third as tall
    No_Beard                      (when 0) full beard along the jaw and cheeks
    Oval_Face                     narrower, taller face ellipse
    Pale_Skin                     near-white skin (other skins are darker tones)
    Pointy_Nose                   long dark-edged wedge with a sharp tip (else a bulb)
    Receding_Hairline             hairline raised with bare temples
    Rosy_Cheeks                   pink discs on the cheeks
    Sideburns                     hair strips from the temples down past the ears
    Smiling                       upturned mouth, smile lines (teeth when open)
    Straight_Hair                 straight parallel strands
    Wavy_Hair                     wavy strands (both set: both patterns)
    Wearing_Earrings              bright hanging discs under the ear lobes
    Wearing_Hat                   hat crown and brim over the head
    Wearing_Lipstick              saturated red/pink lips (else lips near skin tone)
    Wearing_Necklace              chain of bright beads around the neck
    Wearing_Necktie               white collar and a tie
    Young                         smooth skin (else forehead lines, crow's feet,
                                  nasolabial folds, greyer skin, greying temples)
    ============================  =====================================================
    """
    a = {name: bool(attrs[i]) for i, name in enumerate(ATTRIBUTE_NAMES)}
    ss = 2  # supersampling factor
    W = size * ss
    # Randomness that only an attribute's drawing uses comes from that attribute's own
    # stream, so toggling one attribute changes nothing else in the picture.
    base = int(rng.integers(2**62))

    def arng(name):
        return np.random.default_rng([base, A[name]])

    bg = _random_colour(rng, 30, 230)
    img = Image.new("RGB", (W, W), _c(bg))
    d = ImageDraw.Draw(img)

    # Background clutter (nuisance).
    for _ in range(int(rng.integers(1, 4))):
        x0, y0 = rng.random(2) * W
        w, h = (0.2 + 0.6 * rng.random(2)) * W
        col = _c(_mix(bg, _random_colour(rng), 0.5))
        if rng.random() < 0.5:
            d.rectangle([x0 - w / 2, y0 - h / 2, x0 + w / 2, y0 + h / 2], fill=col)
        else:
            d.ellipse([x0 - w / 2, y0 - h / 2, x0 + w / 2, y0 + h / 2], fill=col)

    # Framing like CelebA's aligned crops: hair to upper chest, face ~55% of the height.
    sc = W * 0.86 * float(rng.uniform(0.94, 1.06))
    cx = W * (0.5 + float(rng.uniform(-0.025, 0.025)))
    cy = W * (0.46 + float(rng.uniform(-0.025, 0.025)))

    def P(x, y):  # face-relative unit coordinates -> pixels
        return (cx + sc * x, cy + sc * y)

    def box(x0, y0, x1, y1):
        (a0, b0), (a1, b1) = P(x0, y0), P(x1, y1)
        return [min(a0, a1), min(b0, b1), max(a0, a1), max(b0, b1)]

    def ell(x, y, rx, ry, **kw):
        d.ellipse(box(x - rx, y - ry, x + rx, y + ry), **kw)

    def poly(pts, **kw):
        d.polygon([P(x, y) for x, y in pts], **kw)

    def line(pts, width, **kw):
        d.line([P(x, y) for x, y in pts], width=max(1, int(round(width * sc))), **kw)

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

    # Ears and earrings.
    for s in (-1, 1):
        ell(s * fw * 1.02, -0.02, 0.04, 0.075, fill=_c(skin * 0.93))
        if a["Wearing_Earrings"]:
            metal = (255, 210, 40) if arng("Wearing_Earrings").random() < 0.5 else (240, 240, 255)
            ell(s * fw * 1.02, 0.1, 0.034, 0.034, fill=metal, outline=(90, 70, 20))

    # Face shape.
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

    ey = -0.04
    ex = 0.105
    ug = None if a["Attractive"] else arng("Attractive")  # the unattractive look's draws
    asym = 0.0 if ug is None else float(ug.uniform(0.008, 0.02))

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

    # Facial hair.
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
    by = ey - 0.065
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

    # Hair on the head.
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

    # Glasses on top of everything on the face.
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

    img = img.reduce(ss)
    if a["Blurry"]:
        img = img.filter(
            ImageFilter.GaussianBlur(float(arng("Blurry").uniform(1.2, 2.0)) * size / 64)
        )
    return np.asarray(img, np.uint8)


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


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random two-colour gradient, float32 [h, w, 3] (drawn small, resized up)."""
    c0, c1 = _random_colour(rng, 20, 235), _random_colour(rng, 20, 235)
    ang = rng.uniform(0, 2 * math.pi)
    g = (
        math.cos(ang) * np.linspace(0, 1, 8)[None, :]
        + math.sin(ang) * np.linspace(0, 1, 8)[:, None]
    )
    g = (g - g.min()) / (float(g.max() - g.min()) + 1e-6)
    small = (c0 + g[..., None] * (c1 - c0)).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR), np.float32)


def identity_of(split: str, index: int, spec: Spec = Spec()) -> tuple[int, int]:
    """(global identity id, image number k) of example ``index`` of an identity split."""
    per = spec.images_per_identity
    local, k = divmod(int(index), per)
    if split == "train":
        if local >= spec.num_train_identities:
            raise IndexError(f"identity train index {index} >= {spec.num_train_identities} x {per}")
        return local, k
    if local >= spec.num_test_identities:
        raise IndexError(f"identity {split} index {index} >= {spec.num_test_identities} x {per}")
    return spec.num_train_identities + local, k


def sample_yaw(rng: np.random.Generator, k: int) -> float:
    """Image k of an identity: k=0 near-frontal, k=1 profile, else a frontal-heavy mixture."""
    if k == 0:
        return float(rng.uniform(-10, 10))
    if k == 1:
        return float(rng.choice([-1, 1]) * rng.uniform(70, 90))
    if rng.random() < 0.5:
        return float(np.clip(rng.normal(0, 20), -90, 90))
    return float(rng.uniform(-90, 90))


def identity_example(seed: int, split: str, index: int, spec: Spec = Spec()) -> dict[str, Any]:
    """One identity crop: ``image`` uint8 [S, S, 3], ``label``, ``yaw``, ``landmarks`` [5, 2], ``id``.

    The identity (its :class:`HeadParams`) is fixed by ``(seed, label)``; the view and
    nuisance (yaw, small pitch/roll, light, expression, blur, background, framing
    jitter) by ``(seed, split, index)``.
    """
    label, k = identity_of(split, index, spec)
    hp = head_params(seed, label)
    rng = example_rng(seed, "identity", split, index)
    S = spec.identity_image_size
    yaw = sample_yaw(rng, k)
    pitch, roll = float(rng.normal(0, 5)), float(rng.normal(0, 3))
    el, az = math.radians(rng.uniform(-50, 30)), math.radians(rng.uniform(-60, 60))
    light = np.array([math.sin(az) * math.cos(el), math.sin(el), math.cos(az) * math.cos(el)])
    bg = _background(rng, S, S)
    sc = S / 112 * 55.0 * float(rng.uniform(0.95, 1.05))
    # Aligned crop: centred on the face (head-frame point (0, 0.1, 0.6) projected), not on
    # the skull, so a profile shows the whole face and loses the back of the head.
    anchor_x = float((_rotation(yaw, pitch, roll) @ np.array([0.0, 0.1, 0.6]))[0])
    centre = (
        S / 2 - sc * anchor_x + float(rng.uniform(-2, 2)) * S / 112,
        S / 2 + float(rng.uniform(-2, 2)) * S / 112,
    )
    smile = float(rng.random()) if rng.random() < 0.5 else 0.0
    out = render_head(
        hp,
        yaw=yaw,
        pitch=pitch,
        roll=roll,
        size=(S, S),
        scale=sc,
        centre=centre,
        light=light,
        ambient=float(rng.uniform(0.3, 0.6)),
        smile=smile,
        mouth_open=float(rng.random()) if rng.random() < 0.3 else 0.0,
        eye_close=float(rng.random()) if rng.random() < 0.1 else 0.0,
        brow_raise=float(rng.random()),
        background=bg,
    )
    img = out["image"] * rng.uniform(0.85, 1.15)  # exposure
    img = np.clip(img, 0, 255).astype(np.uint8)
    r = rng.random()
    if r < 0.35:
        img = np.asarray(
            Image.fromarray(img).filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.0))))
        )
    return {
        "image": img,
        "label": np.int64(label),
        "yaw": np.float32(yaw),
        "landmarks": out["landmarks"],
        "id": np.int64(index),
    }


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
