"""tfds builder ``synthetic_faces``: the embedded default data, procedural, no download.

Importing this module registers the builder with tfds::

  import jaxface.data.synthetic.builder  # noqa: F401  (registers "synthetic_faces")
  builder = tfds.builder("synthetic_faces/attributes", data_dir=...)
  builder.download_and_prepare()
  ds = builder.as_dataset(split="train")          # tf.data
  src = builder.as_data_source(split="train")     # random access (array_record)

Small custom configs::

  cfg = SyntheticFacesConfig(name="attributes_tiny", kind="attributes", num_train=64, num_test=16)
  builder = tfds.builder("synthetic_faces", config=cfg, data_dir=tmp)

Every example is a pure function of ``(config, seed, split, index)``
(:mod:`jaxface.data.synthetic.render`), so a split can be regenerated or spot-checked
without TensorFlow through :func:`render.attributes_example` and friends. Records are
written as ``array_record`` unless ``file_format=`` says otherwise, so both
``as_dataset`` and ``as_data_source`` work.

Default configs (sized for the quickstart on a 2-core CPU):

=============  ==========================================  ====================================
config         splits                                      what
=============  ==========================================  ====================================
``attributes``  train 20,000 / test 4,000                  64x64 crops, CelebA's 40 attributes
``identity``    train 2,000 ids x 10 = 20,000 /            112x112 crops, yaw -90..90,
                test 200 ids x 10 = 2,000 (disjoint ids)    landmarks
``detection``   train 2,000 / validation 300               256-640 px scenes, 0-40 faces
=============  ==========================================  ====================================

Feature schema (per ``kind``):

* ``attributes``: ``image`` uint8 [S, S, 3] (S = ``image_size``, 64 default);
  ``attributes`` int32 [40] of 0/1 in CelebA file order
  (:data:`render.ATTRIBUTE_NAMES`); ``id`` int64 (split index).
* ``identity``: ``image`` uint8 [112, 112, 3]; ``label`` int64 global identity id
  (train ``0 .. num_train_identities-1``, test from ``num_train_identities`` on; the
  two sets are disjoint); ``yaw`` float32 degrees in [-90, 90] (+: the nose turns
  toward the image right, hiding the right eye); ``landmarks`` float32 [5, 2] (x, y)
  pixels: left eye, right eye, nose tip, left and right mouth corner (projected even
  when hidden); ``id`` int64 (split index). Image ``k`` of an identity: ``k == 0`` is
  near-frontal (|yaw| < 10), ``k == 1`` a profile (|yaw| in 70..90), the rest are drawn
  from a frontal-heavy mixture (half N(0, 20 deg), half uniform).
* ``detection``: ``image`` uint8 [H, W, 3] with H, W in 256..640; ``image/id`` int64;
  ``faces``: a ``tfds.features.Sequence`` of ``bbox`` (``BBoxFeature``: normalised
  ymin, xmin, ymax, xmax), ``landmarks`` float32 [5, 2] pixels, ``blur`` int32
  (0 clear, 1 normal, 2 heavy), ``occlusion`` int32 (0 none, 1 partial (1-30% of the
  box covered), 2 heavy (> 30%)), ``pose`` int32 (0 typical, 1 atypical: |yaw| > 60
  or |roll| > 30), ``invalid`` int32 (1: face too small or too occluded to count,
  see :func:`render.detection_example`). :func:`render.difficulty_subsets` turns
  these into WIDER-like easy / medium / hard masks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import sys

import numpy as np
import tensorflow_datasets as tfds

from jaxface.data import tfds_base
from jaxface.data.synthetic import encode, render

KINDS = ("attributes", "identity", "detection")


# The renderer's fields (names, types, defaults, order) are declared once, by
# `render.Spec`; the config takes them from there, keyword-only, calling
# ``attribute_image_size`` ``image_size``. `SyntheticFacesConfig.spec` maps them back.
_CONFIG_NAME = {"attribute_image_size": "image_size"}
_SpecFields = dataclasses.make_dataclass(
    "_SpecFields",
    [
        (
            _CONFIG_NAME.get(f.name, f.name),
            f.type,
            dataclasses.field(default=f.default, kw_only=True),
        )
        for f in dataclasses.fields(render.Spec)
    ],
    eq=False,
    namespace={"__module__": __name__},
)


@dataclasses.dataclass(eq=False)
class SyntheticFacesConfig(tfds.core.BuilderConfig, _SpecFields):
    """A ``synthetic_faces`` variant. Sizes are per split; fields unused by a kind are ignored.

    Attributes:
      kind: ``attributes``, ``identity`` or ``detection``.
      seed: the data seed; with the other fields it fixes every byte.
      num_train, num_validation, num_test: examples per split (attributes, detection);
        a split with 0 examples is not generated.
      image_size, identity_image_size, num_train_identities, num_test_identities,
        images_per_identity, detection_*: keyword-only, the fields of `render.Spec`
        (``image_size`` is its ``attribute_image_size``: the attribute crop side), with
        its defaults. Identity has exactly ``train`` and ``test``, with disjoint identities.
    """

    kind: str = "attributes"
    seed: int = 0
    num_train: int = 20_000
    num_validation: int = 0
    num_test: int = 4_000

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(
                f"SyntheticFacesConfig(name={self.name!r}): kind={self.kind!r}, expected one of {KINDS}"
            )
        for f in (
            "num_train",
            "num_validation",
            "num_test",
            "num_train_identities",
            "num_test_identities",
            "images_per_identity",
            "image_size",
            "identity_image_size",
        ):
            if getattr(self, f) < 0:
                raise ValueError(
                    f"SyntheticFacesConfig(name={self.name!r}): {f}={getattr(self, f)} must be >= 0"
                )
        if not 16 <= self.image_size <= 512:
            raise ValueError(
                f"SyntheticFacesConfig(name={self.name!r}): image_size={self.image_size}, expected 16..512"
            )
        if not (
            self.detection_min_face <= self.detection_max_face
            and 64 <= self.detection_min_side <= self.detection_max_side
        ):
            raise ValueError(
                f"SyntheticFacesConfig(name={self.name!r}): inconsistent detection_* ranges"
            )

    def spec(self) -> render.Spec:
        """The renderer's view of this config."""
        return render.Spec(
            **{
                f.name: getattr(self, _CONFIG_NAME.get(f.name, f.name))
                for f in dataclasses.fields(render.Spec)
            }
        )

    def fingerprint(self) -> dict:
        """The fields that determine the data (stored with it, checked when reused)."""
        base = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
        return {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in base
        }

    def split_sizes(self) -> dict[str, int]:
        """Examples per split, zero-sized splits left out."""
        if self.kind == "identity":
            sizes = {
                "train": self.num_train_identities * self.images_per_identity,
                "test": self.num_test_identities * self.images_per_identity,
            }
        else:
            sizes = {
                "train": self.num_train,
                "validation": self.num_validation,
                "test": self.num_test,
            }
        return {k: v for k, v in sizes.items() if v > 0}


DEFAULT_CONFIGS = (
    SyntheticFacesConfig(
        name="attributes",
        kind="attributes",
        num_train=20_000,
        num_test=4_000,
        image_size=64,
        description="64x64 aligned crops with CelebA's 40 binary attributes at CelebA's rates.",
    ),
    SyntheticFacesConfig(
        name="identity",
        kind="identity",
        num_train_identities=2_000,
        num_test_identities=200,
        images_per_identity=10,
        description="112x112 crops of 2,000 train / 200 disjoint test identities, yaw -90..90.",
    ),
    SyntheticFacesConfig(
        name="detection",
        kind="detection",
        num_train=2_000,
        num_validation=300,
        num_test=0,
        description="Cluttered 256-640 px scenes with 0-40 faces of 8-400 px, WIDER-style labels.",
    ),
)


class SyntheticFaces(tfds_base.Builder):
    """Procedural faces for detection, identity and attributes; see the module docstring."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = list(DEFAULT_CONFIGS)
    DEFAULT_CONFIG_NAME = "attributes"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        info = self.info
        # tfds caches by config *name*: refuse data prepared from a same-named config with
        # other fields (else a changed custom config would silently read the old data).
        stored = dict(info.metadata or {}).get("config") if self.is_prepared() else None
        if stored is not None:
            want = self.builder_config.fingerprint()
            diff = {k: (stored.get(k), v) for k, v in want.items() if stored.get(k) != v}
            if diff:
                raise ValueError(
                    f"synthetic_faces/{self.builder_config.name} in {self.data_dir} was prepared from a config "
                    f"with other values (stored, requested): {diff}. Use another config name or data_dir, "
                    "or delete that directory."
                )

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        if cfg.kind == "attributes":
            s = cfg.image_size
            features = tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(
                        shape=(s, s, 3), dtype=np.uint8, encoding_format="png"
                    ),
                    "attributes": tfds.features.Tensor(
                        shape=(render.NUM_ATTRIBUTES,), dtype=np.int32
                    ),
                    "id": tfds.features.Scalar(dtype=np.int64),
                }
            )
            supervised = ("image", "attributes")
        elif cfg.kind == "identity":
            s = cfg.identity_image_size
            features = tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(
                        shape=(s, s, 3), dtype=np.uint8, encoding_format="png"
                    ),
                    "label": tfds.features.Scalar(dtype=np.int64),
                    "yaw": tfds.features.Scalar(dtype=np.float32),
                    "landmarks": tfds.features.Tensor(shape=(5, 2), dtype=np.float32),
                    "id": tfds.features.Scalar(dtype=np.int64),
                }
            )
            supervised = ("image", "label")
        else:
            features = tfds_base.scene_features()
            supervised = None
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=features,
            supervised_keys=supervised,
            homepage="https://github.com/jaxface/jaxface",
            metadata=tfds.core.MetadataDict(
                kind=cfg.kind,
                seed=cfg.seed,
                config=cfg.fingerprint(),
                attribute_names=list(render.ATTRIBUTE_NAMES) if cfg.kind == "attributes" else [],
                celeba_attribute_rates=list(render.CELEBA_ATTRIBUTE_RATES)
                if cfg.kind == "attributes"
                else [],
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {
            split: self._generate_examples(split, n)
            for split, n in self.builder_config.split_sizes().items()
        }

    def _generate_examples(self, split: str, num_examples: int):
        from jaxface import progress  # pylint: disable=import-outside-toplevel

        cfg = self.builder_config
        counter = progress.RateLogger(f"generating {self.name}/{cfg.name} {split}", num_examples)
        yield from counter.wrap(
            generate(cfg.kind, cfg.seed, split, num_examples, cfg.spec(), features=True)
        )


def num_workers(num_examples: int) -> int:
    """Render processes for a split: ``$JAXFACE_SYNTHETIC_WORKERS`` if set, else one per
    CPU (at most 8) for splits of 2,000+ examples; 1 means in-process."""
    env = os.environ.get("JAXFACE_SYNTHETIC_WORKERS")
    if env is not None:
        try:
            return max(1, int(env))
        except ValueError:
            raise ValueError(f"JAXFACE_SYNTHETIC_WORKERS={env!r}: expected an integer") from None
    if num_examples < 2000 or "forkserver" not in multiprocessing.get_all_start_methods():
        return 1
    return max(1, min(8, os.cpu_count() or 1))


def _render_chunk(args):
    """`encode.render_chunk`, with tfds' ``BBox`` for detection boxes."""
    return _with_bboxes(args[0], args[6], encode.render_chunk(args))


def _with_bboxes(kind: str, features: bool, examples: list) -> list:
    if not (features and kind == "detection"):
        return examples
    for ex in examples:
        ex["faces"]["bbox"] = [tfds.features.BBox(*b) for b in ex["faces"]["bbox"]]
    return examples


@contextlib.contextmanager
def _main_module_hidden():
    """While the workers start, the caller's ``__main__`` names no file or module.

    A ``forkserver`` (or ``spawn``) worker re-imports the parent's main module before it
    runs anything; the workers here need only `encode` (an importable module), and
    re-running a script without an ``if __name__ == "__main__"`` guard in every worker
    would fail. Restored as soon as the pool has started its workers."""
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    try:
        main.__dict__.pop("__file__", None)
        main.__dict__["__spec__"] = None
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


def generate(
    kind: str,
    seed: int,
    split: str,
    num_examples: int,
    spec: render.Spec,
    workers: int | None = None,
    features: bool = False,
):
    """Yields ``(index, example)`` for ``index`` in order, rendering in parallel when it pays.

    Examples are pure functions of their index, so the workers' output is byte-identical
    to rendering in-process. Workers come from a ``forkserver`` context: forking the
    calling process itself (JAX's and TensorFlow's threads included) could deadlock, and
    the worker function (`encode.render_chunk`) imports NumPy and PIL only. They receive
    contiguous chunks; results come back in order. ``features=True`` yields the
    tfds feature dicts (PNG-encoded by PIL in the workers: tfds would otherwise encode
    every image through a TF graph in the writing process, its main cost).
    """
    workers = num_workers(num_examples) if workers is None else workers
    if workers <= 1:
        for start in range(0, num_examples, 64):
            stop = min(start + 64, num_examples)
            for k, ex in enumerate(_render_chunk((kind, seed, split, spec, start, stop, features))):
                yield start + k, ex
        return
    chunk = 16 if kind == "detection" else 128
    jobs = [
        (kind, seed, split, spec, a, min(a + chunk, num_examples), features)
        for a in range(0, num_examples, chunk)
    ]
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["jaxface.data.synthetic.encode"])
    with _main_module_hidden():
        pool = ctx.Pool(workers)  # starts every worker now
    with pool:
        index = 0
        for part in pool.imap(encode.render_chunk, jobs):
            for ex in _with_bboxes(kind, features, part):
                yield index, ex
                index += 1
