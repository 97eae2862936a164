"""Embedded procedural face data: the tfds builder ``synthetic_faces`` and its renderers.

``render`` is pure NumPy/PIL (no TensorFlow); importing it is cheap::

  from jaxface.data.synthetic import render
  ex = render.attributes_example(seed=0, split="train", index=7)

The tfds builder lives in ``builder`` and is imported (and so registered under the
name ``synthetic_faces``) on first access of ``SyntheticFaces`` /
``SyntheticFacesConfig`` here, or by ``import jaxface.data.synthetic.builder``.
"""

from jaxface.data.synthetic import render
from jaxface.data.synthetic.render import (
    ATTRIBUTE_NAMES,
    CELEBA_ATTRIBUTE_RATES,
    Spec,
    attributes_example,
    difficulty_subsets,
    detection_example,
    identity_example,
)

__all__ = [
    "ATTRIBUTE_NAMES",
    "CELEBA_ATTRIBUTE_RATES",
    "Spec",
    "SyntheticFaces",
    "SyntheticFacesConfig",
    "attributes_example",
    "detection_example",
    "difficulty_subsets",
    "identity_example",
    "render",
]


def __getattr__(name):  # lazy: tensorflow_datasets only when the builder is wanted
    if name in ("SyntheticFaces", "SyntheticFacesConfig", "builder"):
        import importlib

        builder = importlib.import_module("jaxface.data.synthetic.builder")
        return builder if name == "builder" else getattr(builder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
