"""``identity`` examples: 112x112 aligned crops of the 3-D heads, yaw -90..90, with landmarks."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from jaxface.data.synthetic.common import Spec, _background, example_rng
from jaxface.data.synthetic.heads import _rotation, head_params, render_head


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
