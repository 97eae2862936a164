"""jaxface: deep face analysis in JAX/Flax (ScaleFace detection, DREAM + DeepID2
recognition, LMLE attributes), with one trainer and exact evaluation protocols.

Losses (`jaxface.losses`), ops (`jaxface.ops`) and evaluation protocols
(`jaxface.evaluation`) import without the trainer or TensorFlow.
"""

__version__ = "0.1.0"

__all__ = ["FaceAnalyzer"]


def __getattr__(name):
    # Lazy: `import jaxface.losses` must not pull in the analyzer (and through it the
    # trainer's tasks, flax, orbax).
    if name == "FaceAnalyzer":
        from jaxface.analyzer import FaceAnalyzer  # pylint: disable=import-outside-toplevel

        return FaceAnalyzer
    raise AttributeError(f"module 'jaxface' has no attribute {name!r}")
