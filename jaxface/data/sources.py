"""Random-access sources from tfds builders (array_record), prepared on demand.

Builders of this project register themselves with tfds when their module is
imported; :data:`BUILDER_MODULES` names the module of each so that a config can
refer to a builder by its tfds name alone. Preparation happens on process 0; the
other processes wait for it. Real datasets are read from ``manual_dir`` in their
original layout; nothing is downloaded. `Subset`: rows of any random-access source.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import os
from typing import Any, Mapping

import jax
import numpy as np

BUILDER_MODULES = {
    "synthetic_faces": "jaxface.data.synthetic.builder",
    "wider_face_original": "jaxface.data.widerface_builder",
    "celeb_a_manual": "jaxface.data.celeba",
    "cfp_manual": "jaxface.data.cfp",
    "cfp_scenes": "jaxface.data.cfp_scenes",
}

# Builders that read a real dataset from ``manual_dir`` -> the folder name under
# ``$JAXFACE_DATA`` the configs look in.
REAL_DATA_BUILDERS = {
    "wider_face_original": "widerface",
    "celeb_a_manual": "celeba",
    "cfp_manual": "cfp",
    "cfp_scenes": "cfp",
}


def default_data_dir() -> str:
    return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def _hide_gpus_from_tf():
    """tf.data must not take accelerator memory that JAX needs."""
    try:
        import tensorflow as tf  # pylint: disable=import-outside-toplevel

        tf.config.set_visible_devices([], "GPU")
    except (ImportError, RuntimeError):  # RuntimeError: devices already initialised
        pass


def get_builder(
    name: str,
    config: Any = None,
    *,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    config_overrides: Mapping[str, Any] | None = None,
    prepare: bool = True,
):
    """A prepared tfds builder (array_record) for ``name`` / ``config``.

    ``config_overrides``: fields that replace those of the named builder config
    (e.g. a smaller synthetic set for tests); see :func:`derived_config`.
    """
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    _hide_gpus_from_tf()
    if name not in BUILDER_MODULES:
        raise ValueError(
            f"config.data.builder: unknown builder {name!r}; known: {sorted(BUILDER_MODULES)}"
        )
    importlib.import_module(BUILDER_MODULES[name])  # registers the builder with tfds
    if config_overrides:
        config = derived_config(name, config, dict(config_overrides))
    data_dir = data_dir or default_data_dir()
    builder = tfds.builder(name, config=config, data_dir=data_dir, file_format="array_record")
    if prepare and not builder.is_prepared():
        if name in REAL_DATA_BUILDERS and not manual_dir:
            raise ValueError(
                f"config.data.manual_dir is empty: builder {name!r} reads real data; pass "
                f"--config.data.manual_dir=/path or set JAXFACE_DATA to the folder holding "
                f"{REAL_DATA_BUILDERS[name]}/"
            )
        if jax.process_index() == 0:
            if config_overrides:
                # The builder config's description is the default variant's; these are the
                # fields that differ (e.g. the quickstart's smaller scenes).
                changed = ", ".join(f"{k}={v}" for k, v in sorted(config_overrides.items()))
                if len(changed) > 120:
                    changed = changed[:117] + "..."
                logging.info("%s: %s", name, changed)
            # tqdm bars ("Generating splits...", "Shuffling ...") write carriage returns
            # into logs; jaxface's builders log their own progress lines instead.
            tfds.disable_progress_bar()
            dl_config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
            builder.download_and_prepare(download_config=dl_config, file_format="array_record")
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

            multihost_utils.sync_global_devices(f"prepare {name}")
        builder = tfds.builder(name, config=config, data_dir=data_dir, file_format="array_record")
    return builder


def derived_config(builder_name: str, config_name: str | None, overrides: Mapping[str, Any]):
    """A copy of a dataclass builder config with ``overrides`` applied.

    Its name gets a digest of the overrides, so each variant is prepared in its own
    directory and never mistaken for the default one.
    """
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    cls = tfds.builder_cls(builder_name)
    configs = {c.name: c for c in cls.BUILDER_CONFIGS}
    base_name = config_name or cls.DEFAULT_CONFIG_NAME
    if base_name not in configs:
        raise ValueError(f"{builder_name}: unknown config {base_name!r}; known: {sorted(configs)}")
    base = configs[base_name]
    if not dataclasses.is_dataclass(base):
        raise ValueError(f"{builder_name}: config {base_name!r} does not accept overrides")
    fields = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"config.data.overrides: {builder_name}/{base_name} has no field(s) {unknown}"
        )
    digest = hashlib.sha1(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()[
        :10
    ]
    return dataclasses.replace(base, name=f"{base_name}_{digest}", **overrides)


def source_from_config(data_config, split: str):
    """``builder.as_data_source(split)`` for a ``config.data`` block."""
    builder = get_builder(
        data_config.builder,
        data_config.get("config") or None,
        data_dir=data_config.get("data_dir") or None,
        manual_dir=data_config.get("manual_dir") or None,
        config_overrides=data_config.get("overrides") or None,
    )
    if split not in builder.info.splits:
        raise ValueError(
            f"split {split!r} not in {data_config.builder}: {list(builder.info.splits)}"
        )
    return builder.as_data_source(split)


class Subset:
    """Rows ``rows`` of a random-access source."""

    def __init__(self, source, rows):
        self.source, self.rows = source, np.asarray(rows, np.int64)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.source[int(self.rows[int(i)])]
