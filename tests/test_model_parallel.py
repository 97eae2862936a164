"""The recognition classifier split by class over the mesh's ``model`` axis.

``model_parallel`` 1, 2, 4 and 8 on the 8 CPU devices must train to the same loss and
parameters (mp=1 without Partial FC runs the dense single-device classifier, an
independent reference for the sharded one), with and without Partial FC, and each
device must hold only its ``[D, C / mp]`` slice of the classifier and of its momentum.
"""

import pathlib

import jax
import numpy as np
import pytest

from jaxface import train
from jaxface.quickstart import load_config

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
# More classifier columns than the tiny set's 16 identities, so that Partial FC's
# groups (64 classes each) are larger than the batch and really sample.
NUM_CLASSES = 512


def _config(data_dir, mp, sample_rate, head="arcface"):
    c = load_config(CONFIGS / "dream.py", "tiny")
    c.data.data_dir = str(data_dir)
    c.num_classes = NUM_CLASSES
    c.model_parallel = mp
    c.head.update(type=head, sample_rate=sample_rate, class_groups=8, dropout=0.0)
    c.evals = []
    return c


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


def _run(c, workdir, steps=3):
    trainer = train.Trainer(c, str(workdir))
    loader = trainer.train_loader()
    batches = [loader.batch(i) for i in range(steps)]
    loader.close()
    state, sharding = trainer.init_state(batches[0])
    init_kernel = np.asarray(jax.device_get(state.params["classifier_kernel"]))
    step = trainer.make_train_step(sharding)
    rng = jax.device_put(jax.random.key(7), trainer.replicated)
    losses = []
    for b in batches:
        state, m = step(state, trainer.ctx.to_global(b), rng)
        losses.append(float(m.compute()["loss"]))
    # The steps really updated (a skipped, non-finite step would make every mp agree).
    assert int(state.nonfinite_total) == 0
    moved = np.abs(np.asarray(jax.device_get(state.params["classifier_kernel"])) - init_kernel)
    assert moved[:, :16].min() > 0
    return trainer, state, losses


# Per-parameter tolerance: rtol 1e-5, plus an absolute floor relative to the tensor's
# largest entry. ArcFace normalises class centres initialised at N(0, 0.01): the first
# step's gradient is amplified by 1/|w| (~18x) and by the scale 64, so fp32 summation-order
# differences between the dense and the sharded reductions reach ~1e-4 of the largest
# entry after 3 steps; the softmax head stays within 1e-5 of it.
_FLOOR = {"softmax": 1e-5, "arcface": 1e-4}


@pytest.mark.parametrize(("head", "sample_rate"), [("softmax", 1.0), ("arcface", 0.5)])
def test_model_parallel_sizes_train_identically(data_dir, tmp_path, sample_rate, head):
    assert jax.device_count() == 8
    ref_params = ref_losses = None
    for mp in (1, 2, 4, 8):
        trainer, state, losses = _run(
            _config(data_dir, mp, sample_rate, head), tmp_path / f"mp{mp}"
        )
        assert trainer.task.sharded == (mp > 1 or sample_rate < 1)
        params = jax.device_get(state.params)
        # The dense path (mp=1, no Partial FC) has no padding columns; compare real classes.
        params["classifier_kernel"] = params["classifier_kernel"][:, :NUM_CLASSES]
        if "classifier_bias" in params:
            params["classifier_bias"] = params["classifier_bias"][:NUM_CLASSES]
        if ref_params is None:
            ref_params, ref_losses = params, losses
            continue
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, err_msg=f"mp={mp}")
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(
                a, b, rtol=1e-5, atol=_FLOOR[head] * np.abs(b).max(), err_msg=f"mp={mp}"
            ),
            params,
            ref_params,
        )


def test_classifier_and_momentum_are_split_over_model(data_dir, tmp_path):
    mp = 4
    trainer, state, _ = _run(_config(data_dir, mp, 0.5), tmp_path, steps=1)
    kernel = state.params["classifier_kernel"]
    d, c = kernel.shape
    assert c == NUM_CLASSES
    # SGD momentum: the trace of the classifier kernel, found by shape in the optimizer state.
    traces = [
        x
        for x in jax.tree.leaves(state.opt_state)
        if hasattr(x, "shape") and tuple(x.shape) == (d, c)
    ]
    assert len(traces) == 1
    for arr in (kernel, traces[0]):
        shapes = {tuple(s.data.shape) for s in arr.addressable_shards}
        assert shapes == {(d, c // mp)}
        # Each of the mp column slices exists on 8 / mp devices (the data axis).
        cols = sorted({s.index[1].start for s in arr.addressable_shards})
        assert cols == [k * c // mp for k in range(mp)]
    # Everything else stays replicated.
    emb = jax.tree.leaves(state.params["embedder"])[0]
    assert {tuple(s.data.shape) for s in emb.addressable_shards} == {emb.shape}


def test_model_parallel_without_anything_to_split_is_an_error(tmp_path):
    c = load_config(CONFIGS / "lmle.py", "tiny")
    c.data.data_dir = str(tmp_path / "tfds")
    c.model_parallel = 2
    with pytest.raises(ValueError, match=r"config.model_parallel=2.*no parameter to split"):
        trainer = train.Trainer(c, str(tmp_path / "wd"))
        loader = trainer.train_loader()
        trainer.init_state(loader.batch(0))


def test_class_groups_must_be_a_multiple_of_model_parallel(data_dir):
    c = _config(data_dir, 8, 1.0)
    c.head.class_groups = 12
    from jaxface.tasks import recognition

    with pytest.raises(ValueError, match=r"class_groups=12.*model_parallel=8"):
        recognition.RecognitionTask(c)
