"""Procedural face renderers: pure NumPy + PIL, no TensorFlow, no download.

This module gathers the public names of the renderer modules: ``common`` (spec,
random streams, colours), ``attribute_stats`` (CelebA label model), ``attributes``
(with its face parts in ``attribute_parts``),
``heads`` (3-D heads), ``identity`` and ``scenes`` (detection).

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

from jaxface.data.synthetic.attribute_stats import (
    ATTRIBUTE_NAMES,
    CELEBA_ATTRIBUTE_RATES,
    CELEBA_RATES_GIVEN_MALE,
    NUM_ATTRIBUTES,
    A,
    attributes_labels,
    sample_attributes,
)
from jaxface.data.synthetic.attributes import attributes_example, render_attribute_face
from jaxface.data.synthetic.common import KIND_IDS, SPLIT_IDS, Spec, example_rng
from jaxface.data.synthetic.heads import HeadParams, head_params, landmarks_3d, render_head
from jaxface.data.synthetic.identity import identity_example, identity_of, sample_yaw
from jaxface.data.synthetic.scenes import detection_example, difficulty_subsets

__all__ = [
    "A",
    "ATTRIBUTE_NAMES",
    "CELEBA_ATTRIBUTE_RATES",
    "CELEBA_RATES_GIVEN_MALE",
    "HeadParams",
    "KIND_IDS",
    "NUM_ATTRIBUTES",
    "SPLIT_IDS",
    "Spec",
    "attributes_example",
    "attributes_labels",
    "detection_example",
    "difficulty_subsets",
    "example_rng",
    "head_params",
    "identity_example",
    "identity_of",
    "landmarks_3d",
    "render_attribute_face",
    "render_head",
    "sample_attributes",
    "sample_yaw",
]
