"""What every synthetic renderer shares: the spec, the per-example random streams, colours.

Every example is a pure function of ``(spec, seed, split, index)``: its random
stream is ``np.random.default_rng([seed, KIND, split_id, index])`` (:func:`example_rng`),
so any subset can be regenerated alone and generation parallelises trivially.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image

# --------------------------------------------------------------------------------------
# Specification and per-example random streams.
# --------------------------------------------------------------------------------------

SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}
KIND_IDS = {"attributes": 1, "identity": 2, "detection": 3, "identity_params": 4}


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a renderer needs to know besides ``(seed, split, index)``.

    The one declaration of these fields: ``SyntheticFacesConfig`` (the tfds builder
    config) takes them from here (``attribute_image_size`` is its ``image_size``) and
    converts back with ``config.spec()``; NumPy-only users build a Spec directly.

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
