"""Detection losses: NumPy references, optax agreement, chex property checks."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import parameterized
from jax.test_util import check_grads

from jaxface import losses

RNG = np.random.default_rng(0)


def np_smooth_l1(x, beta):
    ax = np.abs(np.asarray(x, np.float64))
    return np.where(ax < beta, 0.5 * ax**2 / beta, ax - 0.5 * beta)


def np_bce(logits, labels):
    x = np.asarray(logits, np.float64)
    p = 1.0 / (1.0 + np.exp(-x))
    return -labels * np.log(p) - (1 - labels) * np.log1p(-p)


class SmoothL1(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(1.0, 1.0 / 9)
    def test_matches_numpy_and_optax_huber(self, beta):
        x = RNG.normal(size=(3, 7, 4)).astype(np.float32) * 2
        loss = self.variant(lambda v: losses.smooth_l1(v, beta=beta))
        got = loss(x)
        chex.assert_shape(got, x.shape)
        np.testing.assert_allclose(got, np_smooth_l1(x, beta), rtol=1e-6, atol=1e-7)
        # The Huber loss over its threshold (optax), to float32 rounding.
        np.testing.assert_allclose(
            got, optax.huber_loss(x, delta=beta) / beta, rtol=1e-6, atol=1e-6
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_symmetric_continuous_and_mask(self):
        beta = 1.0 / 9
        x = jnp.asarray(RNG.normal(size=(64,)), jnp.float32)
        loss = self.variant(lambda v, w: losses.smooth_l1(v, beta=beta, where=w))
        everywhere = jnp.ones(64, bool)
        chex.assert_trees_all_close(loss(x, everywhere), loss(-x, everywhere))
        at = jnp.array([beta - 1e-6, beta + 1e-6], jnp.float32)  # both sides of the knee
        both = loss(at, jnp.ones(2, bool))
        np.testing.assert_allclose(both[0], both[1], atol=1e-5)
        where = jnp.arange(64) % 3 == 0
        chex.assert_trees_all_close(loss(x, where), jnp.where(where, loss(x, everywhere), 0.0))

    @chex.variants(with_jit=True, without_jit=True)
    def test_gradient_is_clipped_to_one(self):
        x = jnp.asarray(RNG.normal(size=(128,)) * 5, jnp.float32)
        grad = self.variant(jax.grad(lambda v: losses.smooth_l1(v, beta=1.0).sum()))
        g = grad(x)
        chex.assert_tree_all_finite(g)
        assert float(jnp.max(jnp.abs(g))) <= 1.0
        np.testing.assert_allclose(g, np.clip(np.asarray(x), -1, 1), rtol=1e-6)


class SigmoidBCE(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_numpy_and_optax(self):
        logits = RNG.normal(size=(5, 9)).astype(np.float32) * 4
        labels = (RNG.random((5, 9)) > 0.5).astype(np.float32)
        loss = self.variant(losses.sigmoid_bce)
        got = loss(logits, labels)
        chex.assert_shape(got, logits.shape)
        np.testing.assert_allclose(got, np_bce(logits, labels), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(got, optax.sigmoid_binary_cross_entropy(logits, labels))

    @chex.variants(with_jit=True, without_jit=True)
    def test_stable_for_large_logits_and_nonnegative(self):
        logits = jnp.array([-1e4, -80.0, 0.0, 80.0, 1e4], jnp.float32)
        loss = self.variant(lambda x, y: losses.sigmoid_bce(x, y))
        for y in (jnp.zeros(5), jnp.ones(5)):
            v = loss(logits, y)
            chex.assert_tree_all_finite(v)
            assert float(jnp.min(v)) >= 0.0
            chex.assert_tree_all_finite(jax.grad(lambda x: loss(x, y).sum())(logits))
        np.testing.assert_allclose(loss(jnp.zeros(1), jnp.ones(1)), np.log(2.0), rtol=1e-6)

    def test_check_grads(self):
        logits = RNG.normal(size=(6,))
        labels = (RNG.random(6) > 0.5).astype(np.float64)
        check_grads(lambda x: losses.sigmoid_bce(x, labels), (logits,), 1, eps=1e-3)
        check_grads(lambda x: losses.smooth_l1(x, beta=0.5), (logits * 3,), 1, eps=1e-4)
