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


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_unknown_variant_is_one_line_listing_the_valid_ones(path):
    m = _module(path)
    with pytest.raises(ValueError) as err:
        m.get_config("no_such_variant")
    msg = str(err.value)
    assert "\n" not in msg and "'no_such_variant'" in msg
    assert all(v in msg for v in m.VARIANTS), msg


def _walk_strings(node, prefix=""):
    for k, v in node.items():
        if isinstance(v, ml_collections.ConfigDict):
            yield from _walk_strings(v, f"{prefix}{k}.")
        elif isinstance(v, str):
            yield f"{prefix}{k}", v


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_real_data_comes_from_jaxface_data_never_from_the_source_tree(path, monkeypatch):
    m = _module(path)
    repo = str(pathlib.Path(__file__).resolve().parents[1].parent)
    monkeypatch.delenv("JAXFACE_DATA", raising=False)
    for variant in m.VARIANTS:
        c = m.get_config(variant)
        for field, value in _walk_strings(c):
            assert not value.startswith(repo), (variant, field, value)
            assert "shared" not in value.split("/"), (variant, field, value)
        assert c.data.manual_dir == "", (variant, c.data.manual_dir)
    monkeypatch.setenv("JAXFACE_DATA", "/data/faces")
    for variant in m.VARIANTS:
        d = m.get_config(variant).data
        if d.builder in ("cfp_manual", "cfp_scenes"):
            assert d.manual_dir == "/data/faces/cfp", variant
        elif d.builder == "celeb_a_manual":
            assert d.manual_dir == "/data/faces/celeba", variant
        else:
            assert d.manual_dir == "", variant


def test_real_data_variant_without_a_location_fails_with_one_line_at_use(tmp_path, monkeypatch):
    from jaxface.data import sources

    monkeypatch.delenv("JAXFACE_DATA", raising=False)
    c = _module(CONFIGS[[p.stem for p in CONFIGS].index("dream")]).get_config("cfp")
    with pytest.raises(ValueError) as err:
        sources.get_builder(
            c.data.builder,
            data_dir=str(tmp_path),
            manual_dir=c.data.manual_dir or None,
            config_overrides=c.data.overrides,
        )
    msg = str(err.value)
    assert "\n" not in msg and "JAXFACE_DATA" in msg and "config.data.manual_dir" in msg, msg
