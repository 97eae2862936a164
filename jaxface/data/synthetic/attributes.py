"""``attributes`` examples: aligned frontal crops (CelebA-like) showing 40 binary attributes.

A fast 2-D renderer (PIL ImageDraw at 2x, box-downsampled); the labels come from
:func:`jaxface.data.synthetic.attribute_stats.sample_attributes`, each attribute drawn
as a visible change (see :func:`render_attribute_face`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from jaxface.data.synthetic import attribute_parts as parts
from jaxface.data.synthetic.attribute_stats import (
    ATTRIBUTE_NAMES,
    A,
    sample_attributes,
)
from jaxface.data.synthetic.common import (
    Spec,
    _c,
    _mix,
    _random_colour,
    example_rng,
)


def attributes_example(seed: int, split: str, index: int, spec: Spec = Spec()) -> dict[str, Any]:
    """One attribute example: ``{"image": uint8 [S, S, 3], "attributes": int32 [40], "id"}``.

    Every attribute changes the picture (see :func:`render_attribute_face`); the
    sample is a pure function of ``(seed, split, index, spec.attribute_image_size)``.
    """
    rng = example_rng(seed, "attributes", split, index)
    attrs = sample_attributes(rng)
    image = render_attribute_face(attrs, rng, spec.attribute_image_size)
    return {"image": image, "attributes": attrs, "id": np.int64(index)}


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
    _draw_background(d, rng, W, bg)

    # Framing like CelebA's aligned crops: hair to upper chest, face ~55% of the height.
    sc = W * 0.86 * float(rng.uniform(0.94, 1.06))
    cx = W * (0.5 + float(rng.uniform(-0.025, 0.025)))
    cy = W * (0.46 + float(rng.uniform(-0.025, 0.025)))
    cv = parts.Canvas(d, sc, cx, cy)
    # The main stream is read in a fixed order: look, shirt (draw_body), iris (eyes).
    f = parts.make_look(a, arng, rng)
    parts.draw_body(cv, f, rng)
    parts.draw_ears(cv, f)
    parts.draw_face_shape(cv, f)
    ug = None if a["Attractive"] else arng("Attractive")  # the unattractive look's draws
    asym = 0.0 if ug is None else float(ug.uniform(0.008, 0.02))
    parts.draw_skin(cv, f, ug)
    parts.draw_facial_hair(cv, f)
    parts.draw_eyes_and_brows(cv, f, rng, asym)
    parts.draw_nose(cv, f)
    parts.draw_mouth(cv, f)
    parts.draw_head_hair(cv, f)
    parts.draw_glasses(cv, f)

    img = img.reduce(ss)
    if a["Blurry"]:
        img = img.filter(
            ImageFilter.GaussianBlur(float(arng("Blurry").uniform(1.2, 2.0)) * size / 64)
        )
    return np.asarray(img, np.uint8)


def _draw_background(d: ImageDraw.ImageDraw, rng: np.random.Generator, W: int, bg) -> None:
    """Background clutter (nuisance): one to three rectangles or ellipses."""
    for _ in range(int(rng.integers(1, 4))):
        x0, y0 = rng.random(2) * W
        w, h = (0.2 + 0.6 * rng.random(2)) * W
        col = _c(_mix(bg, _random_colour(rng), 0.5))
        if rng.random() < 0.5:
            d.rectangle([x0 - w / 2, y0 - h / 2, x0 + w / 2, y0 + h / 2], fill=col)
        else:
            d.ellipse([x0 - w / 2, y0 - h / 2, x0 + w / 2, y0 + h / 2], fill=col)
