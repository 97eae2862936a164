"""The one flip fusion (`jaxface.ops.norm`): NumPy and jitted JAX against the plain
formula ``s / |s|`` of the sum, and the evaluation's NumPy twin against it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.evaluation import verification as V
from jaxface.ops import norm

RNG = np.random.default_rng(0)


def _pair(n=64, d=32, dtype=np.float32):
    return RNG.normal(size=(n, d)).astype(dtype), RNG.normal(size=(n, d)).astype(dtype)


def test_fuse_flip_numpy_is_the_normalised_sum_bit_for_bit():
    for dtype in (np.float32, np.float64):
        e, ef = _pair(dtype=dtype)
        s = e + ef
        ref = s / np.linalg.norm(s, axis=1, keepdims=True)
        out = norm.fuse_flip(e, ef)
        assert isinstance(out, np.ndarray) and out.dtype == dtype
        np.testing.assert_array_equal(out, ref)


def test_fuse_flip_jitted_matches_numpy():
    e, ef = _pair()
    out = jax.jit(norm.fuse_flip)(jnp.asarray(e), jnp.asarray(ef))
    assert isinstance(out, jax.Array) and out.dtype == jnp.float32
    s = e.astype(np.float64) + ef
    np.testing.assert_allclose(
        np.asarray(out), s / np.linalg.norm(s, axis=1, keepdims=True), rtol=0, atol=1e-6
    )
    # Bit for bit the jitted normalised sum: the halving cancels exactly.
    plain = jax.jit(lambda a, b: norm.l2_normalize(a + b))(e, ef)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(plain))


def test_verification_fuse_flip_is_the_float64_twin():
    e, ef = _pair()
    s = e.astype(np.float64) + ef
    out = V.fuse_flip(e, ef)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, s / np.linalg.norm(s, axis=1, keepdims=True))
    np.testing.assert_array_equal(out, norm.fuse_flip(e.astype(np.float64), ef, xp=np))
    ef[5] = -e[5]  # the sum of row 5 is zero: no direction
    with pytest.raises(ValueError, match="zero embedding at row 5"):
        V.fuse_flip(e, ef)
    assert not norm.fuse_flip(e, ef)[5].any()


def test_flip_mean_numpy_and_jax():
    e, ef = _pair(dtype=np.float64)
    np.testing.assert_array_equal(norm.flip_mean(e, ef), (e + ef) / 2)
    e32, ef32 = _pair()
    out = jax.jit(norm.flip_mean)(e32, ef32)
    np.testing.assert_array_equal(np.asarray(out), (e32 + ef32) / np.float32(2))
