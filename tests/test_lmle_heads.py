"""Heads on a frozen attribute trunk (experiments/lmle_heads.py): ``model.frozen_trunk``,
``metric_attributes``, ``init_from`` of a BCE run into a head with a mining pool, and the
resampled mean balanced accuracy used for the paired bootstrap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface import train
from jaxface.data import pipeline
from jaxface.evaluation import attributes as attr_eval
from jaxface.tasks import attributes as task_lib
from jaxface.tasks import common
from test_task_attributes import tiny as attributes_tiny


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def tiny(tfds_dir, loss="lmle", **overrides):
    """`test_task_attributes.tiny` without evaluators."""
    return attributes_tiny(tfds_dir, loss, evals=[], **overrides)


def _batch(task, n=16):
    src, transform = task.data("train", train=True)
    batch = pipeline.collate([transform(src[i], np.random.default_rng(i)) for i in range(n)])
    return {k: jnp.asarray(v) for k, v in batch.items()}


def test_metric_attributes_restrict_the_round_robin(tfds_dir):
    """The balanced batch of step s is balanced for attribute subset[s mod 3]: half of it
    positive for that attribute, every record tagged with it."""
    subset = ["Bald", "Male", 3]  # names or indices
    config = tiny(tfds_dir, metric_loss_balanced_only=True, num_train_steps=12)
    config.metric_attributes = subset
    task = task_lib.AttributesTask(config)
    assert task.metric_attributes == (4, 20, 3)
    src, _ = task.data("train", train=True)
    labels = task.labels("train")
    sampler = pipeline.IndexSampler(len(src), config.batch_size, seed=config.seed)
    for step in range(6):
        want = (4, 20, 3)[step % 3]
        vs = sampler.indices(step)
        assert {src.balanced_for(v) for v in vs} == {want}
        real = [src.record_index(v) for v in vs]
        assert labels[real, want].sum() == config.batch_size // 2
    for bad in (["No_Such_Attribute"], ["Bald", "Bald"], [40]):
        config.metric_attributes = bad
        with pytest.raises(ValueError, match="metric_attributes"):
            task_lib.AttributesTask(config)


@pytest.mark.parametrize("frozen", [True, False])
def test_frozen_trunk_gets_no_gradient_and_keeps_its_statistics(tfds_dir, frozen):
    config = tiny(tfds_dir)
    config.model.frozen_trunk = frozen
    config.model.embedding_bn = False
    task = task_lib.AttributesTask(config)
    batch = _batch(task)
    variables = task.init_variables(jax.random.key(0), batch)
    params = variables["params"]
    mstate = {k: v for k, v in variables.items() if k != "params"}
    ts = task.init_task_state(jax.random.key(1), variables)
    mask = task.trainable_mask(params)
    assert all(v is not frozen for v in jax.tree.leaves(mask["trunk"]))
    assert all(jax.tree.leaves(mask["embedding"])) and all(jax.tree.leaves(mask["classifier"]))

    def loss(p):
        return task.loss(p, mstate, batch, jax.random.key(2), ts)

    grads, (new_state, _) = jax.grad(loss, has_aux=True)(params)
    trunk_grad = sum(float(np.abs(np.asarray(g)).sum()) for g in jax.tree.leaves(grads["trunk"]))
    assert (trunk_grad == 0.0) is frozen
    assert float(np.abs(np.asarray(grads["embedding"]["kernel"])).sum()) > 0
    same = [
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(
            jax.tree.leaves(new_state["batch_stats"]), jax.tree.leaves(mstate["batch_stats"])
        )
    ]
    assert all(same) is frozen


def test_head_starts_from_a_bce_run_and_leaves_its_trunk_unchanged(tfds_dir, tmp_path):
    """A BCE run's checkpoint initialises an LMLE head with a mining pool (a model-state
    collection the BCE run does not have: it starts empty); after training, the trunk's
    parameters and BatchNorm statistics are bit-identical to the BCE run's."""
    bce = tiny(tfds_dir, "bce", num_train_steps=2, checkpoint_every=2)
    bce.model.embedding_bn = False
    train.train_and_evaluate(bce, str(tmp_path / "bce"))
    _, bce_state, _ = train.load_state(bce, str(tmp_path / "bce"))

    head = tiny(tfds_dir, "lmle", num_train_steps=2, checkpoint_every=2, mining_pool=32)
    head.model.embedding_bn = False
    head.model.frozen_trunk = True
    head.metric_loss_balanced_only = True
    head.metric_attributes = ["Male", "Smiling"]
    head.init_from = str(tmp_path / "bce")
    head.optimizer.weight_decay = 0.0  # else AdamW decays the other attributes too
    train.train_and_evaluate(head, str(tmp_path / "head"))
    _, state, _ = train.load_state(head, str(tmp_path / "head"))
    for a, b in zip(
        jax.tree.leaves((state.params["trunk"], state.model_state["batch_stats"])),
        jax.tree.leaves((bce_state.params["trunk"], bce_state.model_state["batch_stats"])),
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    k_head = np.asarray(state.params["embedding"]["kernel"])
    k_bce = np.asarray(bce_state.params["embedding"]["kernel"]).reshape(k_head.shape[0], 40, -1)
    changed = np.abs(k_head.reshape(k_bce.shape) - k_bce).sum(axis=(0, 2)) > 0
    # Only the two metric attributes' embeddings trained (Male 20, Smiling 31).
    assert set(np.flatnonzero(changed)) == {20, 31}
    assert np.asarray(state.model_state[task_lib.POOL]["valid"]).sum() == 2 * head.batch_size
    # The predict function exposes the trunk feature the heads read.
    out = common.variables_of(state)
    batch = _batch(task_lib.AttributesTask(head), 4)
    pred = task_lib.AttributesTask(head).predict(out, batch)
    assert pred["feature"].shape == (4, head.model.widths[-1])


def test_mean_balanced_accuracy_fn_matches_metrics_on_resamples():
    """Against `attribute_metrics` on explicitly resampled arrays, averaged over runs,
    including resamples that miss a class of an attribute."""
    rng = np.random.default_rng(0)
    n, a, s = 30, 4, 3
    labels = (rng.random((n, a)) < [0.5, 0.2, 0.1, 0.05]).astype(np.int32)
    labels[0, 3] = 1
    preds = (rng.random((s, n, a)) < 0.4).astype(np.int32)
    fn = attr_eval.mean_balanced_accuracy_fn(preds, labels)
    idx = rng.integers(0, n, size=(50, n))
    idx[0] = 1  # one image repeated: a single class everywhere
    got = fn(idx)
    want = [
        np.mean(
            [
                attr_eval.attribute_metrics(p[row], labels[row])["mean_balanced_accuracy"]
                for p in preds
            ]
        )
        for row in idx
    ]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    single = attr_eval.mean_balanced_accuracy_fn(preds[0], labels)(np.arange(n)[None])
    assert single[0] == pytest.approx(
        attr_eval.attribute_metrics(preds[0], labels)["mean_balanced_accuracy"]
    )
    with pytest.raises(ValueError, match="do not match"):
        attr_eval.mean_balanced_accuracy_fn(preds[:, :5], labels)
