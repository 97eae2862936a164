"""jaxface: deep face analysis in JAX/Flax (ScaleFace detection, DREAM + DeepID2
recognition, LMLE attributes), with one trainer and exact evaluation protocols.

Losses (`jaxface.losses`), ops (`jaxface.ops`) and evaluation protocols
(`jaxface.evaluation`) import without the trainer or TensorFlow.
"""

__version__ = "0.1.0"
