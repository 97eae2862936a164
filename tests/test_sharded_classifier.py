"""Sharded identity classifier on 8 CPU devices vs the unsharded losses: value and gradients."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxface import losses

B, D, C = 16, 8, 64


def _mesh():
    devs = np.array(jax.devices()[:8]).reshape(2, 4)
    return Mesh(devs, ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)


def _data(seed=0, c=C):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, D)).astype(np.float32)
    w = rng.normal(size=(c, D)).astype(np.float32)
    y = rng.integers(0, c, size=(B,)).astype(np.int32)
    # Weighted reduction so per-example gradients (not just their sum) are compared.
    r = rng.uniform(0.5, 1.5, size=(B,)).astype(np.float32)
    return x, w, y, r


def _reference(kind, x, w, y, *, scale, margin, easy_margin=False):
    """The unsharded loss: [C, D] centres -> the existing single-device logits + CE."""
    if kind == "softmax":
        logits = x @ w.T
    elif kind == "cosface":
        logits = losses.cosface_logits(x, w.T, y, scale=scale, margin=margin)
    else:
        logits = losses.arcface_logits(
            x, w.T, y, scale=scale, margin=margin, easy_margin=easy_margin
        )
    return losses.softmax_identity_cross_entropy(logits, y)


def _value_and_grads(fn, x, w, r):
    f = jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(r * fn(x, w)), argnums=(0, 1)))
    (v, (gx, gw)) = f(x, w)
    chex.assert_shape((gx, gw), (x.shape, w.shape))
    chex.assert_tree_all_finite((v, gx, gw))
    return float(v), np.asarray(gx), np.asarray(gw)


def _assert_same(a, b, rtol=2e-5, atol=2e-5):
    np.testing.assert_allclose(a[0], b[0], rtol=rtol)
    np.testing.assert_allclose(a[1], b[1], rtol=rtol, atol=atol)
    np.testing.assert_allclose(a[2], b[2], rtol=rtol, atol=atol)


CASES = [  # (kind, settings, class axes: the model axis, or every device)
    ("softmax", dict(), "model"),
    ("softmax", dict(), ("data", "model")),
    ("cosface", dict(scale=64.0, margin=0.35), "model"),
    ("cosface", dict(scale=64.0, margin=0.35), ("data", "model")),
    ("arcface", dict(scale=64.0, margin=0.5), "model"),
    ("arcface", dict(scale=30.0, margin=0.5, easy_margin=True), ("data", "model")),
]


@pytest.mark.parametrize("kind,kw,class_axes", CASES)
def test_sharded_matches_unsharded(kind, kw, class_axes):
    mesh = _mesh()
    x, w, y, r = _data()
    if kind == "arcface":
        # Put some targets past the pi - m switch so both ArcFace branches are exercised.
        x[:3] = -w[y[:3]] + 0.05 * x[:3]
    ref_kw = dict(
        scale=kw.get("scale", 1.0),
        margin=kw.get("margin", 0.0),
        easy_margin=kw.get("easy_margin", False),
    )
    sharded = functools.partial(
        losses.sharded_classifier_loss, mesh=mesh, kind=kind, class_axes=class_axes, **kw
    )
    got = _value_and_grads(lambda a, b: sharded(a, b, y), x, w, r)
    want = _value_and_grads(lambda a, b: _reference(kind, a, b, y, **ref_kw), x, w, r)
    _assert_same(got, want)
    # Per-example values too, and under jit with the inputs already laid out on the mesh.
    xs = jax.device_put(x, NamedSharding(mesh, P("data", None)))
    ws = jax.device_put(w, losses.class_centres_sharding(mesh, class_axes))
    per = jax.jit(lambda a, b: sharded(a, b, y))(xs, ws)
    np.testing.assert_allclose(per, _reference(kind, x, w, y, **ref_kw), rtol=2e-5, atol=2e-5)
    chex.assert_shape(per, (B,))


def test_padding_and_where_mask():
    mesh = _mesh()
    x, w, y, r = _data(1, c=30)
    cp = losses.padded_num_classes(30, mesh, "model")
    assert cp == 32
    wp = np.concatenate([w, np.full((cp - 30, D), 5.0, np.float32)])  # padding rows must not count
    where = np.arange(B) % 3 != 0
    got = _value_and_grads(
        lambda a, b: losses.sharded_classifier_loss(
            a, b, y, mesh=mesh, kind="cosface", num_classes=30, where=where
        ),
        x,
        wp,
        r,
    )
    want = _value_and_grads(
        lambda a, b: jnp.where(
            where, _reference("cosface", a, b[:30], y, scale=64.0, margin=0.35), 0.0
        ),
        x,
        wp,
        r,
    )
    _assert_same(got, want)
    assert np.all(got[2][30:] == 0.0)
    assert np.all(got[1][~where] == 0.0)


def test_bad_shapes_are_named():
    mesh = _mesh()
    x, w, y, _ = _data()
    with pytest.raises(ValueError, match="do not divide"):
        losses.sharded_classifier_loss(x, w[:30], y, mesh=mesh)
    with pytest.raises(ValueError, match="kind"):
        losses.sharded_classifier_loss(x, w, y, mesh=mesh, kind="sphereface")
    with pytest.raises(ValueError, match="rng"):
        losses.sharded_classifier_loss(x, w, y, mesh=mesh, sample_rate=0.5)


def test_init_class_centres_is_sharded():
    mesh = _mesh()
    w = losses.init_class_centres(jax.random.key(0), 1001, 16, mesh=mesh, class_axes="model")
    assert w.shape == (1004, 16)
    assert w.sharding.is_equivalent_to(losses.class_centres_sharding(mesh, "model"), 2)
    assert {s.data.shape for s in w.addressable_shards} == {(251, 16)}


def test_partial_fc_rate_one_equals_full():
    mesh = _mesh()
    x, w, y, r = _data(2)
    key = jax.random.key(3)
    for kind in ("cosface", "arcface"):
        full = _value_and_grads(
            lambda a, b: losses.sharded_classifier_loss(a, b, y, mesh=mesh, kind=kind), x, w, r
        )
        pfc = _value_and_grads(
            lambda a, b: losses.sharded_classifier_loss(
                a, b, y, mesh=mesh, kind=kind, sample_rate=1.0, rng=key
            ),
            x,
            w,
            r,
        )
        _assert_same(pfc, full, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("class_axes,kind", [("model", "arcface"), (("data", "model"), "cosface")])
def test_partial_fc_sampling(class_axes, kind):
    mesh = _mesh()
    c = 256
    x, w, y, r = _data(4, c=c)
    n = 4 if class_axes == "model" else 8
    rate = 0.1
    s = losses.partial_fc_num_sampled(c // n, B, rate)
    assert s == max(int(np.ceil(rate * c / n)), B)
    key = jax.random.key(7)
    sample = jax.jit(
        functools.partial(
            losses.partial_fc_sample,
            mesh=mesh,
            total_classes=c,
            sample_rate=rate,
            class_axes=class_axes,
        )
    )
    ids = np.asarray(sample(y, key))
    # Fixed shape, sorted, unique, every positive kept, each shard keeps its own rows.
    assert ids.shape == (n * s,)
    assert np.all(np.diff(ids) > 0)
    assert set(y.tolist()) <= set(ids.tolist())
    assert np.all(ids.reshape(n, s) // (c // n) == np.arange(n)[:, None])
    # Deterministic from rng; another rng gives another sample (same positives).
    np.testing.assert_array_equal(ids, np.asarray(sample(y, key)))
    ids2 = np.asarray(sample(y, jax.random.key(8)))
    assert not np.array_equal(ids, ids2) and set(y.tolist()) <= set(ids2.tolist())
    # A batch whose positives crowd one shard: still all kept (S >= batch).
    crowd = np.arange(B, dtype=np.int32) * 2
    assert set(crowd.tolist()) <= set(np.asarray(sample(crowd, key)).tolist())

    # The sampled loss is the full softmax restricted to the sampled centres.
    got = _value_and_grads(
        lambda a, b: losses.sharded_classifier_loss(
            a, b, y, mesh=mesh, kind=kind, sample_rate=rate, rng=key, class_axes=class_axes
        ),
        x,
        w,
        r,
    )
    remap = np.searchsorted(ids, y).astype(np.int32)
    kw = dict(scale=64.0, margin=0.35 if kind == "cosface" else 0.5)
    sub = _value_and_grads(lambda a, b: _reference(kind, a, b, remap, **kw), x, w[ids], r)
    np.testing.assert_allclose(got[0], sub[0], rtol=2e-5)
    np.testing.assert_allclose(got[1], sub[1], rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(got[2][ids], sub[2], rtol=2e-5, atol=2e-5)
    unsampled = np.setdiff1d(np.arange(c), ids)
    assert np.all(got[2][unsampled] == 0.0)
    # And it is not the full loss (negatives really were dropped).
    assert got[0] < float(jnp.sum(r * _reference(kind, x, w, y, **kw)))
