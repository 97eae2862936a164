"""DREAM's stitching recipe options (configs/dream.py, `jaxface.tasks.recognition_stitching`):
the gate modes, identity-first sampling, the profile cap of a frontal-heavy stem, whole
batches of cached stem features, and stitching onto a naive stem.

The trained-model tests run the tiny synthetic config (8 CPU devices) for a few steps."""

import functools

import jax
import ml_collections
import numpy as np
import pytest

from jaxface import train
from jaxface.data import pipeline, step_batches
from jaxface.models.dream import DreamBlock
from jaxface.tasks import recognition_stitching as rs
from jaxface.tasks.recognition_data import RecognitionData
from jaxface.training.checkpoints import make_checkpoint_manager
from test_task_recognition import _config


def _np_gate(yaw):
    return 1.0 / (1.0 + np.exp(-10.0 * (np.abs(yaw) / 45.0 - 1.0)))


def _np_block(p, phi, g):
    h = np.maximum(phi @ np.asarray(p["fc1"]["kernel"]) + np.asarray(p["fc1"]["bias"]), 0)
    r = np.maximum(h @ np.asarray(p["fc2"]["kernel"]) + np.asarray(p["fc2"]["bias"]), 0)
    return phi + g[:, None] * r


# -- the gate ----------------------------------------------------------------------------


@pytest.mark.parametrize("gate", ["yaw", "none", "off"])
def test_dream_gate_modes_against_numpy(gate):
    rng = np.random.default_rng(0)
    phi = rng.normal(size=(6, 8)).astype(np.float32)
    yaw = np.float32([0, 20, 45, 60, -90, 90])
    block = DreamBlock(gate=gate)
    params = block.init(jax.random.key(0), phi, yaw)["params"]
    got = np.asarray(block.apply({"params": params}, phi, yaw))
    g = {"yaw": _np_gate(yaw), "none": np.ones(6), "off": np.zeros(6)}[gate]
    np.testing.assert_allclose(got, _np_block(params, phi, g), rtol=1e-5, atol=1e-5)
    if gate == "off":
        np.testing.assert_array_equal(got, phi)


# -- sampling ----------------------------------------------------------------------------


def _groups():
    # identity 3 has 1 profile, identity 7 has 9: rows 100.. (any order in, grouped out)
    rows = np.array([100] + list(range(200, 209)))
    labels = np.array([3] + [7] * 9)
    perm = np.random.default_rng(1).permutation(len(rows))
    return rs.ProfileGroups.of(rows[perm], labels[perm])


def test_profile_groups_are_grouped_by_identity():
    g = _groups()
    np.testing.assert_array_equal(g.labels, [3, 7])
    np.testing.assert_array_equal(g.counts, [1, 9])
    np.testing.assert_array_equal(g.rows[g.starts[0] : g.starts[0] + 1], [100])
    np.testing.assert_array_equal(np.sort(g.rows[g.starts[1] :]), np.arange(200, 209))


@pytest.mark.parametrize("sampling", ["identity", "image"])
def test_sampling_distribution(sampling):
    """identity: each identity half the draws, its profiles uniform within; image: each
    profile image 1/10 of the draws."""
    g = _groups()
    s = rs.sampler(g, sampling, 64, seed=3)
    rows = np.concatenate([g.rows[rs.positions(g, sampling, s, t)] for t in range(500)])
    n = len(rows)
    share_3 = np.mean(rows == 100)
    if sampling == "identity":
        assert abs(share_3 - 0.5) < 0.02, share_3
        within = np.bincount(rows[rows >= 200] - 200, minlength=9) / np.sum(rows >= 200)
        np.testing.assert_allclose(within, np.full(9, 1 / 9), atol=0.01)
    else:
        counts = np.bincount(rows - 100, minlength=109)[[0] + list(range(100, 109))] / n
        np.testing.assert_allclose(counts, np.full(10, 0.1), atol=1e-12)  # whole epochs
    # a pure function of (seed, step)
    again = rs.positions(g, sampling, rs.sampler(g, sampling, 64, seed=3), 17)
    np.testing.assert_array_equal(again, rs.positions(g, sampling, s, 17))


def test_unknown_sampling_is_an_error():
    with pytest.raises(ValueError, match="config.stitching.sampling"):
        rs.sampler(_groups(), "uniform", 4, 0)


def test_step_batches_slice_per_host_and_check_rows():
    s = pipeline.IndexSampler(10, 4, seed=0)
    make = lambda step: {"x": np.arange(4) + 10 * step}  # noqa: E731
    b = step_batches.StepBatches(make, s, process_index=1, process_count=2)
    np.testing.assert_array_equal(b.batch(3)["x"], [32, 33])
    it = b.iterate(2)
    np.testing.assert_array_equal(next(it)["x"], [22, 23])
    np.testing.assert_array_equal(next(it)["x"], [32, 33])
    bad = step_batches.StepBatches(lambda step: {"x": np.arange(3)}, s)
    with pytest.raises(ValueError, match="3 rows, expected 4"):
        bad.batch(0)


# -- the profile cap of a frontal-heavy stem ----------------------------------------------


class _Meta(RecognitionData):
    def __init__(self, abs_yaw, fraction):
        self.config = ml_collections.ConfigDict(
            dict(
                train_split="train",
                data=dict(max_profile_fraction=fraction),
                stitching=dict(profile_min_yaw=50.0),
            )
        )
        self._m = {"abs_yaw": np.asarray(abs_yaw, float), "label": np.zeros(len(abs_yaw))}

    def metadata(self, split, data_config=None):
        return self._m


def test_profile_cap_keeps_frontals_and_at_most_the_fraction_of_profiles():
    yaw = np.where(np.random.default_rng(0).random(1000) < 0.3, 90.0, 0.0)
    yaw[:5] = [10, 49.9, 50, 70, 20]  # 49.9 is not a profile, 50 is
    n_front = int(np.sum(yaw < 50))
    for f in (0.0, 0.01, 0.1):
        rows = _Meta(yaw, f).training_rows("train")
        prof = np.sum(yaw[rows] >= 50)
        assert np.all(np.isin(np.flatnonzero(yaw < 50), rows))
        assert prof == int(np.floor(f * n_front / (1 - f) + 1e-9))
        assert prof / len(rows) <= f + 1e-12
        np.testing.assert_array_equal(rows, _Meta(yaw, f).training_rows("train"))
    assert _Meta(yaw, 1.0).training_rows("train") is None
    assert _Meta(yaw, 0.01).training_rows("test") is None
    with pytest.raises(ValueError, match="max_profile_fraction"):
        _Meta(yaw, 1.5).training_rows("train")


# -- cached stitching through the trainer, onto a naive stem -----------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def naive_stem(data_dir, tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("naive"))
    c = _config("tiny_naive", data_dir, num_train_steps=2, async_checkpointing=False, evals=[])
    assert train.train_and_evaluate(c, wd).status == "finished"
    return wd


def _direct_fused_phi(task, variables, split, rows):
    """Independent of predict_split: every image and its mirror through model.apply."""
    src = task.source(split)
    batch = pipeline.collate(
        [task.transform(src[int(r)], None, train=False, with_label=False) for r in rows]
    )
    f = functools.partial(task.model.apply, variables, method=type(task.model).features)
    return 0.5 * (np.asarray(f(batch["image"])) + np.asarray(f(batch["image"][:, :, ::-1])))


def test_cached_stitching_batches_and_loss_against_numpy(data_dir, naive_stem, tmp_path):
    c = _config("tiny_stitch", data_dir, init_from=naive_stem)
    trainer = train.Trainer(c, str(tmp_path / "st"))
    task = trainer.task
    assert task.hooks() == [] and task.init_task_state(None, None) == {}
    loader = trainer.train_loader()
    assert isinstance(loader, step_batches.StepBatches)
    batch = loader.batch(0)
    variables = jax.device_get(task.stem_variables(naive_stem))
    meta = task.metadata("train")
    profile_rows, frontal_rows, keep = task.stitching_rows("train")
    # every example is a profile of a kept identity: phi, target and gate yaw match a
    # direct computation
    cache = task.feature_cache("train")
    pos = rs.positions(cache.groups, "identity", loader.sampler, 0)
    rows = cache.groups.rows[pos]
    assert np.all(np.isin(rows, profile_rows)) and np.all(meta["abs_yaw"][rows] >= 50)
    np.testing.assert_array_equal(batch["label"], meta["label"][rows])
    np.testing.assert_allclose(
        batch["phi"], _direct_fused_phi(task, variables, "train", rows), rtol=1e-4, atol=1e-4
    )
    front = _direct_fused_phi(task, variables, "train", frontal_rows)
    flab = meta["label"][frontal_rows]
    want_target = np.stack([front[flab == lab].mean(0) for lab in batch["label"]])
    np.testing.assert_allclose(batch["target"], want_target, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(batch["gate_yaw"], meta["yaw"][rows], rtol=1e-6)
    # the loss of the first batch at R's initialisation, in NumPy
    state, sharding = trainer.init_state(batch)
    mngr = make_checkpoint_manager(str(tmp_path / "st"), c)
    state, origin = trainer.restore(mngr, state, sharding)
    mngr.close()
    assert origin.startswith("init_from")
    params = jax.device_get(state.params)
    pred = _np_block(params["embedder"]["dream"], batch["phi"], _np_gate(batch["gate_yaw"]))
    want = np.mean(np.mean((pred - batch["target"]) ** 2, axis=1))
    got, _ = task.loss(params, jax.device_get(state.model_state), batch, jax.random.key(0), {})
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    # the stem is the naive run's, bit for bit
    for k in ("backbone", "embed"):
        jax.tree.map(
            np.testing.assert_array_equal, params["embedder"][k], variables["params"]["embedder"][k]
        )
    assert len(keep) == len(cache.groups.labels)


def test_cached_stitching_run_trains_only_the_block(data_dir, naive_stem, tmp_path):
    """A whole run through `train.train_and_evaluate` from a naive stem: the stem stays
    bit-identical, R moves, and a features_file gives the same run."""
    wd = str(tmp_path / "st")
    c = _config("tiny_stitch", data_dir, init_from=naive_stem, async_checkpointing=False, evals=[])
    c.num_train_steps = c.eval_every = c.checkpoint_every = 6
    assert train.train_and_evaluate(c, wd).status == "finished"
    _, s_naive, _ = train.load_state(_config("tiny_naive", data_dir), naive_stem)
    _, s, _ = train.load_state(c, wd)
    p, p0 = jax.device_get(s.params), jax.device_get(s_naive.params)
    jax.tree.map(
        np.testing.assert_array_equal, p["embedder"]["backbone"], p0["embedder"]["backbone"]
    )
    jax.tree.map(np.testing.assert_array_equal, p["embedder"]["embed"], p0["embedder"]["embed"])
    task = train.Trainer(c, wd).task
    fresh = jax.device_get(task.stem_variables(naive_stem))["params"]["embedder"]["dream"]
    moved = [
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(p["embedder"]["dream"]), jax.tree.leaves(fresh))
    ]
    assert any(moved)
    # features_file: the same phi of every training row, read instead of computed
    phi = task.stem_features(jax.device_get(task.stem_variables(naive_stem)), "train")
    path = str(tmp_path / "phi.npz")
    np.savez(path, phi=phi, init_from=naive_stem)
    c2 = _config(
        "tiny_stitch",
        data_dir,
        init_from=naive_stem,
        async_checkpointing=False,
        evals=[],
        **{"stitching.features_file": path},
    )
    c2.num_train_steps = c2.eval_every = c2.checkpoint_every = 6
    wd2 = str(tmp_path / "st2")
    assert train.train_and_evaluate(c2, wd2).status == "finished"
    _, s2, _ = train.load_state(c2, wd2)
    jax.tree.map(
        functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6),
        jax.device_get(s2.params["embedder"]["dream"]),
        p["embedder"]["dream"],
    )
    np.savez(path, phi=phi, init_from=str(tmp_path))
    with pytest.raises(ValueError, match="not of config.init_from"):
        train.Trainer(c2, str(tmp_path / "st3")).train_loader()


def test_cached_stitching_needs_init_from_and_a_gate(data_dir, tmp_path):
    with pytest.raises(ValueError, match="config.init_from"):
        train.Trainer(_config("tiny_stitch", data_dir), str(tmp_path))
    off = _config("tiny_stitch", data_dir, init_from="x", **{"model.dream_gate": "off"})
    with pytest.raises(ValueError, match="dream_gate='off'"):
        train.Trainer(off, str(tmp_path))


def test_image_path_identity_first(data_dir, tmp_path):
    """cached=False, sampling=identity: the source is the kept identities; each example
    is one of that identity's profile images."""
    c = _config("tiny_stitch", data_dir, **{"stitching.cached": False})
    task = train.Trainer(c, str(tmp_path)).task
    src, transform = task.data("train", train=True)
    _, _, keep = task.stitching_rows("train")
    assert len(src) == len(keep)
    meta = task.metadata("train")
    groups = task.profile_groups("train")
    for i in range(len(src)):
        ex = transform(src[i], np.random.default_rng(i))
        assert int(ex["label"]) == groups.labels[i]
        assert abs(float(ex["yaw"])) >= 50
    assert np.all(meta["abs_yaw"][groups.rows] >= 50)
