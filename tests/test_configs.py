"""Every file in configs/ loads in every variant; unknown variants and fields are errors."""

import pathlib

import ml_collections
import pytest

from jaxface import tasks
from jaxface.config import validate
from jaxface.quickstart import ENTRIES, load_config

CONFIGS = sorted((pathlib.Path(__file__).resolve().parents[1] / "configs").glob("*.py"))


def _module(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"cfg_{path.stem}", path)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_variant_loads(path):
    m = _module(path)
    assert m.VARIANTS, f"{path.name} declares no VARIANTS"
    assert m.SMALL_VARIANT in m.VARIANTS
    assert m.__doc__ and "jaxface train --config configs/" in m.__doc__, (
        "docstring must hold the run command"
    )
    for variant in m.VARIANTS:
        c = m.get_config(variant)
        assert isinstance(c, ml_collections.ConfigDict)
        assert c.task in tasks.available(), (path.name, variant, c.task)
        tasks.get_task(c.task)  # the task class imports
        assert c.num_train_steps > 0 and c.batch_size > 0
        validate(c)  # every shipped variant passes the checks `jaxface train` applies
    with pytest.raises(ValueError, match="unknown variant"):
        m.get_config("no_such_variant")


def test_quickstart_entries_point_at_real_variants():
    cdir = pathlib.Path(__file__).resolve().parents[1] / "configs"
    for _, file, variant, _ in ENTRIES:
        assert load_config(cdir / file, variant).task in tasks.available()
