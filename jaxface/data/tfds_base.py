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

The class is abstract (no ``_info``), so tfds does not register it.
"""

from __future__ import annotations

import inspect

from etils import epath
import tensorflow_datasets as tfds


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

    def _download_and_prepare(self, dl_manager, download_config=None, **kwargs):
        super()._download_and_prepare(
            dl_manager=dl_manager, download_config=download_config, **kwargs
        )
        self._mirror_to_array_record()

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
