"""The base of every jaxface tfds builder: the tfds 4.9.10 workarounds, in one place.

* ``code_path``: tfds' own lookup imports ``importlib_resources``, which tfds 4.9.10
  does not install; a builder's code path is simply the file that defines it.
* ``alternative_file_formats``: tfds 4.9.10 writes them to ``dataset_info.json`` but
  does not restore them when it reads a prepared dataset back, so ``as_data_source``
  would refuse an array_record mirror; they are restored on construction.
* The array_record mirror: tfds 4.9 reads tfrecord only through ``as_dataset`` and
  array_record only through ``as_data_source`` (its converter needs Apache Beam). A
  dataset prepared as tfrecord is mirrored record by record into array_record, so
  both the tf.data path and the trainer's random access work. Prepared directly as
  array_record (what `jaxface.data.sources` does), nothing is mirrored and no
  TensorFlow is needed.
* Skip-and-report: a real-data builder reads each example's files through
  :meth:`Builder.read_or_skip`. A missing, truncated or undecodable input file
  (or a per-image annotation file that cannot be read) skips that one example; the
  build goes on, logs a warning per skip and a summary at the end, and writes
  ``<dataset dir>/skipped.json`` (``{"skipped": [{"split", "key", "path",
  "reason"}], "counts": {split: n}}``, written even when nothing was skipped).
  :func:`skip_report` / :attr:`Builder.skipped` read it back. Malformed annotation
  *lines* are not skipped: the parsers raise, naming file and line.

The class is abstract (no ``_info``), so tfds does not register it.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import time
import zipfile
from typing import Any, Callable, Optional

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

SKIP_REPORT = "skipped.json"


class UnreadableFileError(OSError):
    """An input file of one example is missing or cannot be decoded (the example is skipped)."""


# What "this file cannot be read" looks like: missing/permission/truncated (OSError, which
# includes PIL's UnidentifiedImageError), a bad zip member (CRC), a broken PNG chunk
# (SyntaxError in PIL), an image past PIL's decompression-bomb limit, and a text file
# that is not text. ValueError in general is NOT here: malformed annotation content
# must stay an error naming file and line.
UNREADABLE = (
    OSError,
    EOFError,
    zipfile.BadZipFile,
    SyntaxError,
    UnicodeDecodeError,
)


def scene_features(face_fields=None, image_fields=None) -> tfds.features.FeaturesDict:
    """The detection scene layout the detection task reads (``synthetic_faces/detection``,
    ``cfp_scenes``): a PNG ``image``, ``image/id`` and a ``faces`` sequence of ``bbox``, 5
    ``landmarks`` and WIDER's per-face labels; ``face_fields`` / ``image_fields`` (dicts of
    tfds features) add per-face / per-image features."""
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(
                shape=(None, None, 3), dtype=np.uint8, encoding_format="png"
            ),
            "image/id": tfds.features.Scalar(dtype=np.int64),
            **(image_fields or {}),
            "faces": tfds.features.Sequence(
                {
                    "bbox": tfds.features.BBoxFeature(),
                    "landmarks": tfds.features.Tensor(shape=(5, 2), dtype=np.float32),
                    "blur": tfds.features.Scalar(dtype=np.int32),
                    "occlusion": tfds.features.Scalar(dtype=np.int32),
                    "pose": tfds.features.Scalar(dtype=np.int32),
                    "invalid": tfds.features.Scalar(dtype=np.int32),
                    **(face_fields or {}),
                }
            ),
        }
    )


def _pil_errors():
    try:
        from PIL import Image  # pylint: disable=import-outside-toplevel

        return (Image.DecompressionBombError,)
    except ImportError:  # pragma: no cover
        return ()


def check_image(data_or_path, *, what: str = "") -> tuple[int, int]:
    """Fully decodes an image (bytes or a path) with PIL; returns ``(width, height)``.

    A header-only open would accept a truncated JPEG; ``load()`` decodes every scan.
    Raises `UnreadableFileError` naming ``what`` (or the path) for a missing, empty,
    truncated or undecodable file.
    """
    import io  # pylint: disable=import-outside-toplevel

    from PIL import Image, ImageFile  # pylint: disable=import-outside-toplevel

    name = what or (os.fspath(data_or_path) if not isinstance(data_or_path, bytes) else "<bytes>")
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # a global someone may have set: refuse to be lenient
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set; cannot detect truncation")
    src = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path
    try:
        with Image.open(src) as im:
            im.load()
            return im.size
    except UNREADABLE + _pil_errors() as err:
        raise UnreadableFileError(f"{name}: {type(err).__name__}: {err}") from err


def skip_report(dataset_dir) -> Optional[dict]:
    """The ``skipped.json`` of a prepared dataset directory, or None if it has none."""
    path = os.path.join(os.fspath(dataset_dir), SKIP_REPORT)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class Builder(tfds.core.GeneratorBasedBuilder):
    """GeneratorBasedBuilder with the workarounds above."""

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        return epath.Path(inspect.getfile(cls))

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        info = self.info
        for value in info.as_proto.alternative_file_formats:
            fmt = tfds.core.FileFormat.from_value(value)
            if fmt not in info.alternative_file_formats:
                info.alternative_file_formats.append(fmt)

    # tfds prints "Downloading and preparing dataset Unknown size (download: Unknown
    # size ...)" and "... downloaded and prepared" to stdout; nothing of this project is
    # downloaded (data is generated, or read from local files), so say what happens.
    def _log_download_bytes(self) -> None:
        self._prepare_t0 = time.monotonic()
        logging.info(
            "preparing %s/%s (nothing to download) in %s",
            self.name,
            self.builder_config.name if self.builder_config else "default",
            getattr(self, "_data_dir_root", self.data_dir),
        )

    def _log_download_done(self) -> None:
        from jaxface import progress  # pylint: disable=import-outside-toplevel

        dt = time.monotonic() - getattr(self, "_prepare_t0", time.monotonic())
        logging.info("prepared %s in %s", self.name, progress.format_duration(dt))

    def _download_and_prepare(self, dl_manager, download_config=None, **kwargs):
        from jaxface import progress  # pylint: disable=import-outside-toplevel

        self._skipped_during_build = []
        what = f"preparing {self.name}/{self.builder_config.name if self.builder_config else 'default'}"
        try:
            # tfds consumes the examples in bursts: a steady line between the counter's.
            with progress.Phase(what, quiet=True):
                super()._download_and_prepare(
                    dl_manager=dl_manager, download_config=download_config, **kwargs
                )
        except AssertionError as err:  # tfds: 'Failed to finalize ... No examples were yielded'
            if "No examples were yielded" not in str(err) or not self._skipped_during_build:
                raise
            raise UnreadableFileError(
                f"{self.name}: {err}: every example of the split was skipped as unreadable: "
                + "; ".join(
                    f"{e['split']}/{e['key']} ({e['reason']})"
                    for e in self._skipped_during_build[:10]
                )
            ) from None
        self._mirror_to_array_record()
        self._write_skip_report()

    # -- skip-and-report ---------------------------------------------------------
    def read_or_skip(self, split: str, key: str, path, make: Callable[[], Any]):
        """``make()``, or None after recording a skip when it raises an `UNREADABLE` error.

        Args:
          split: the tfds split being generated.
          key: the example's key (named in the report).
          path: the input file(s) being read, for the report.
          make: builds the example dict (reads and decodes the files).
        """
        try:
            return make()
        except UNREADABLE + _pil_errors() as err:
            entry = {
                "split": split,
                "key": str(key),
                "path": os.fspath(path) if path is not None else "",
                "reason": f"{type(err).__name__}: {err}",
            }
            if not hasattr(self, "_skipped_during_build"):
                self._skipped_during_build = []
            self._skipped_during_build.append(entry)
            logging.warning(
                "%s: skipping %s example %s (%s): %s",
                self.name,
                split,
                key,
                entry["path"],
                entry["reason"],
            )
            return None

    def _write_skip_report(self):
        skipped = list(getattr(self, "_skipped_during_build", []))
        counts: dict = {}
        for e in skipped:
            counts[e["split"]] = counts.get(e["split"], 0) + 1
        report = {"builder": self.name, "skipped": skipped, "counts": counts}
        out = os.path.join(os.fspath(self.data_dir), SKIP_REPORT)
        with open(out, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
        if skipped:
            logging.warning(
                "%s: %d unreadable example(s) skipped (%s); first: %s; full list in %s",
                self.name,
                len(skipped),
                ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())),
                "; ".join(f"{e['split']}/{e['key']}" for e in skipped[:5]),
                out,
            )

    @property
    def skipped(self) -> list:
        """Examples skipped when this dataset was prepared (from ``skipped.json``)."""
        report = skip_report(self.data_dir)
        return [] if report is None else list(report["skipped"])

    def _mirror_to_array_record(self):
        """Copies tfrecord shards into array_record shards (same serialized examples)."""
        main = self.info.file_format
        if main is None or main.value != "tfrecord":
            return
        from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
        import tensorflow as tf  # pylint: disable=import-outside-toplevel

        for split_info in self.info.splits.values():
            for path in split_info.filepaths:
                out = epath.Path(str(path).replace(".tfrecord-", ".array_record-"))
                writer = array_record_module.ArrayRecordWriter(str(out), "group_size:1")
                for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
                    writer.write(record)
                writer.close()
        if "array_record" not in [f.value for f in self.info.alternative_file_formats]:
            self.info.add_alternative_file_format("array_record")
