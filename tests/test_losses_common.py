"""`jaxface.losses._common.apply_where` against NumPy: values, gradients, the two contracts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.losses._common import apply_where


def _values():
    return np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)


def test_none_returns_the_values():
    v = jnp.asarray(_values())
    assert apply_where(v, None) is v


@pytest.mark.parametrize("mask_shape", [(4, 5), (5,), (4, 1), ()])
def test_broadcast_mask_matches_numpy(mask_shape):
    v = _values()
    w = np.random.default_rng(1).random(mask_shape) < 0.5
    want = np.where(np.broadcast_to(w, v.shape), v, 0)
    got = jax.jit(apply_where)(v, w)
    assert got.shape == v.shape and got.dtype == v.dtype
    np.testing.assert_array_equal(got, want)


def test_non_bool_mask_is_cast_unless_bool_only():
    v = _values()
    w = np.array([0.0, 2.0, 0.0, -1.0, 1.0], np.float32)
    np.testing.assert_array_equal(apply_where(v, w), np.where(w != 0, v, 0))
    with pytest.raises(TypeError, match="boolean"):
        apply_where(v, w, bool_only=True)
    np.testing.assert_array_equal(apply_where(v, w != 0, bool_only=True), np.where(w != 0, v, 0))


def test_same_shape_rejects_a_broadcast_mask():
    v = _values()
    w = np.ones(5, bool)
    with pytest.raises(ValueError, match="where"):
        apply_where(v, w, same_shape=True)
    full = np.random.default_rng(2).random(v.shape) < 0.5
    np.testing.assert_array_equal(apply_where(v, full, same_shape=True), np.where(full, v, 0))


def test_a_mask_may_not_enlarge_the_values():
    with pytest.raises(ValueError):
        apply_where(jnp.ones(5), np.ones((3, 5), bool))


def test_gradient_is_zero_where_masked():
    v = _values()
    w = np.random.default_rng(3).random(v.shape) < 0.5
    g = jax.grad(lambda x: jnp.sum(apply_where(x * x, w)))(v)
    np.testing.assert_array_equal(g, np.where(w, 2 * v, 0))
