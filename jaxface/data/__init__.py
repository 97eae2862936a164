"""Datasets and input pipelines.

* tfds builders: ``synthetic_faces`` (embedded, procedural) and the real datasets read
  from a manual directory in their original layout (CelebA, WIDER FACE, CFP); all
  derive from `jaxface.data.tfds_base.Builder`.
* Annotation parsers that need no TensorFlow (``celeba``, ``widerface``, the WIDER
  evaluation's prediction folders and ground truth ``widerface_eval_files``,
  ``recognition_formats``, ``recordio``): usable on their own.
* `jaxface.data.pipeline`: deterministic, resumable, host-sliced batches over
  random-access sources; `jaxface.data.sources`: builders by name, prepared on demand.

Submodules are imported explicitly; importing this package loads nothing heavy.
"""
