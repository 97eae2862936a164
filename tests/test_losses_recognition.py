"""Recognition losses: NumPy references under jit, gradients, properties."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.test_util import check_grads

from jaxface import losses

RNG = np.random.default_rng(0)


def np_softmax_ce(logits, labels):
    logits = np.asarray(logits, np.float64)
    m = logits.max(1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(1, keepdims=True)))[:, 0]
    return lse - logits[np.arange(len(labels)), labels]


def np_contrastive(f1, f2, same, m):
    d = np.linalg.norm(np.asarray(f1, np.float64) - f2, axis=1)
    return np.where(same, 0.5 * d**2, 0.5 * np.maximum(0, m - d) ** 2)


def np_normalize(x, axis):
    return x / np.linalg.norm(x, axis=axis, keepdims=True)


def np_arcface(e, w, y, s, m, easy):
    cos = np.clip(np_normalize(e, 1) @ np_normalize(w, 0), -1, 1)
    out = cos.copy()
    for b, label in enumerate(y):
        c = cos[b, label]
        th = math.acos(c)
        if easy:
            out[b, label] = math.cos(th + m) if c > 0 else c
        else:
            out[b, label] = (
                math.cos(th + m) if c > math.cos(math.pi - m) else c - math.sin(math.pi - m) * m
            )
    return s * out


def test_softmax_ce_matches_numpy_and_mask():
    logits = RNG.normal(size=(6, 11)).astype(np.float32) * 3
    labels = RNG.integers(0, 11, size=6)
    got = jax.jit(losses.softmax_identity_cross_entropy)(logits, labels)
    np.testing.assert_allclose(got, np_softmax_ce(logits, labels), rtol=1e-5, atol=1e-5)
    where = np.array([1, 0, 1, 1, 0, 1], bool)
    masked = jax.jit(lambda a, b, w: losses.softmax_identity_cross_entropy(a, b, where=w))(
        logits, labels, where
    )
    np.testing.assert_allclose(
        masked, np.where(where, np_softmax_ce(logits, labels), 0), rtol=1e-5, atol=1e-5
    )
    check_grads(
        lambda x: losses.softmax_identity_cross_entropy(x, labels),
        (logits.astype(np.float64),),
        1,
        eps=1e-3,
        rtol=1e-2,
        atol=1e-2,
    )


class ContrastiveProperties(chex.TestCase):
    """The README's "property-check a loss with chex" pattern, and more of the same."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_zero_beyond_margin_and_symmetric(self):
        f1 = jax.random.normal(jax.random.key(0), (16, 8))
        f2 = f1 + 10.0  # far apart: ||f1 - f2|| = 28.3
        loss = self.variant(lambda a, b, s: losses.contrastive_verification(a, b, s, margin=1.0))
        diff = jnp.zeros(16, bool)
        chex.assert_trees_all_close(loss(f1, f2, diff), jnp.zeros(16))  # hinge inactive
        same = jnp.ones(16, bool)
        chex.assert_trees_all_close(loss(f1, f2, same), loss(f2, f1, same))
        chex.assert_shape(loss(f1, f2, same), (16,))
        chex.assert_tree_all_finite(jax.grad(lambda a: loss(a, f2, same).sum())(f1))

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_numpy_permutes_and_vmaps(self):
        f1 = RNG.normal(size=(8, 5)).astype(np.float32)
        f2 = RNG.normal(size=(8, 5)).astype(np.float32)
        same = np.array([1, 0, 1, 0, 0, 1, 0, 0], bool)
        fn = self.variant(lambda a, b, s, m: losses.contrastive_verification(a, b, s, margin=m))
        got = fn(f1, f2, same, 3.0)
        chex.assert_shape(got, (8,))
        np.testing.assert_allclose(got, np_contrastive(f1, f2, same, 3.0), rtol=1e-5, atol=1e-6)
        # Different pairs farther apart than the margin cost nothing.
        np.testing.assert_array_equal(fn(f1, f1 + 10.0, np.zeros(8, bool), 3.0), 0.0)
        # Permuting the batch permutes the per-pair loss.
        perm = RNG.permutation(8)
        np.testing.assert_allclose(
            fn(f1[perm], f2[perm], same[perm], 3.0), np.asarray(got)[perm], rtol=1e-6
        )
        # vmap over a leading axis agrees with the batched call.
        vm = jax.vmap(
            lambda a, b, s: losses.contrastive_verification(a[None], b[None], s[None], margin=3.0)[
                0
            ]
        )
        np.testing.assert_allclose(vm(f1, f2, same), got, rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_gradients_finite_at_zero_distance_and_margin_gradient(self):
        f = jnp.ones((3, 4))
        same = jnp.array([False, True, False])
        grad = self.variant(
            jax.grad(
                lambda a, m: losses.contrastive_verification(a, f, same, margin=m).sum(),
                argnums=(0, 1),
            )
        )
        g_f1, g_m = grad(f, 2.0)
        chex.assert_tree_all_finite((g_f1, g_m))
        np.testing.assert_allclose(g_f1, 0.0)
        # d = 0 for both different pairs: dL/dm = max(0, m - d) = m per different pair.
        np.testing.assert_allclose(g_m, 2 * 2.0, rtol=1e-6)

    def test_check_grads(self):
        f1 = RNG.normal(size=(4, 3))
        f2 = RNG.normal(size=(4, 3))
        s = np.array([True, False, False, True])
        check_grads(
            lambda a, b, m: losses.contrastive_verification(a, b, s, margin=m),
            (f1, f2, 5.0),
            1,
            eps=1e-3,
            rtol=2e-2,
            atol=2e-2,
        )


def np_batch_verification(emb, labels, m, normalize):
    emb = np.asarray(emb, np.float64)
    if normalize:
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-6)
    same_terms, diff_terms = [], []
    for i in range(len(emb)):
        for j in range(i + 1, len(emb)):
            d = np.linalg.norm(emb[i] - emb[j])
            if labels[i] == labels[j]:
                same_terms.append(0.5 * d**2)
            else:
                diff_terms.append(0.5 * max(0.0, m - d) ** 2)
    mean = lambda t: sum(t) / max(len(t), 1)  # noqa: E731
    return 0.5 * (mean(same_terms) + mean(diff_terms)), len(same_terms)


class BatchVerification(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters((True, 1.0), (False, 4.0))
    def test_matches_numpy(self, normalize, margin):
        emb = RNG.normal(size=(10, 6)).astype(np.float32)
        labels = np.array([0, 1, 0, 2, 1, 3, 3, 0, 4, 2])
        fn = self.variant(
            lambda e, y: losses.deepid2_batch_verification(e, y, margin=margin, normalize=normalize)
        )
        v, n_same = fn(emb, labels)
        chex.assert_shape((v, n_same), ((), ()))
        want, want_same = np_batch_verification(emb, labels, margin, normalize)
        np.testing.assert_allclose(v, want, rtol=1e-5, atol=1e-6)
        assert int(n_same) == want_same == 6

    @chex.variants(with_jit=True, without_jit=True)
    def test_no_same_pair_and_margin_gradient(self):
        emb = jnp.asarray(RNG.normal(size=(5, 4)), jnp.float32)
        labels = jnp.arange(5)  # every pair different: only the hinge mean counts
        fn = self.variant(lambda e, m: losses.deepid2_batch_verification(e, labels, margin=m)[0])
        v = fn(emb, 3.0)
        want, n = np_batch_verification(emb, np.arange(5), 3.0, True)
        assert n == 0
        np.testing.assert_allclose(v, want, rtol=1e-5)
        g_e, g_m = jax.grad(fn, argnums=(0, 1))(emb, 3.0)
        chex.assert_tree_all_finite((g_e, g_m))
        assert float(g_m) > 0  # a larger margin costs more


def test_deepid2_joint_and_learned_margin_gradient():
    logits1 = RNG.normal(size=(4, 6))
    logits2 = RNG.normal(size=(4, 6))
    y1 = np.array([0, 1, 2, 3])
    y2 = np.array([0, 5, 2, 1])
    f1 = RNG.normal(size=(4, 3))
    f2 = RNG.normal(size=(4, 3))
    lam, m = 0.05, 4.0
    got = jax.jit(lambda *a: losses.deepid2_joint_loss(*a, margin=m, verification_weight=lam))(
        logits1, logits2, y1, y2, f1, f2
    )
    ref = (
        np_softmax_ce(logits1, y1)
        + np_softmax_ce(logits2, y2)
        + lam * np_contrastive(f1, f2, y1 == y2, m)
    )
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    gm = jax.grad(
        lambda mm: losses.deepid2_joint_loss(
            logits1, logits2, y1, y2, f1, f2, margin=mm, verification_weight=lam
        ).sum()
    )(m)
    d = np.linalg.norm(f1 - f2, axis=1)
    np.testing.assert_allclose(
        gm, lam * np.sum(np.where(y1 != y2, np.maximum(0, m - d), 0)), rtol=1e-5
    )


def test_cosface_matches_numpy():
    e = RNG.normal(size=(5, 8)).astype(np.float32)
    w = RNG.normal(size=(8, 7)).astype(np.float32)
    y = np.array([0, 3, 6, 2, -1])
    got = jax.jit(lambda a, b, c: losses.cosface_logits(a, b, c, scale=30.0, margin=0.4))(e, w, y)
    cos = np_normalize(e, 1) @ np_normalize(w, 0)
    ref = cos.copy()
    for b, label in enumerate(y):
        if label >= 0:
            ref[b, label] -= 0.4
    np.testing.assert_allclose(got, 30 * ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("easy", [False, True])
def test_arcface_matches_numpy_including_fallback_region(easy):
    d, c = 4, 6
    w = RNG.normal(size=(d, c))
    y = np.arange(8) % c
    e = RNG.normal(size=(8, d))
    # Force a few target cosines into the region cos < cos(pi - m) (theta + m > pi)
    # and a few into cos < 0.
    wn = np_normalize(w, 0)
    e[0] = -wn[:, y[0]] + 0.01 * RNG.normal(size=d)
    e[1] = -wn[:, y[1]] + 0.2 * RNG.normal(size=d)
    e[2] = wn[:, y[2]]
    got = jax.jit(
        lambda a, b, l: losses.arcface_logits(a, b, l, scale=64.0, margin=0.5, easy_margin=easy)
    )(e, w, y)
    np.testing.assert_allclose(
        got, np_arcface(e, w, y, 64.0, 0.5, easy), rtol=1e-4, atol=3e-2
    )  # float32 sqrt(1-cos^2) near cos=1
    g = jax.grad(
        lambda a: losses.softmax_identity_cross_entropy(
            losses.arcface_logits(a, w, y, easy_margin=easy), y
        ).sum()
    )(jnp.asarray(e))
    assert np.all(np.isfinite(g))
    # The margin only lowers the target logit.
    cos_only = losses.arcface_logits(e, w, -np.ones(8, int))
    assert np.all(np.asarray(got)[np.arange(8), y] <= np.asarray(cos_only)[np.arange(8), y] + 1e-4)


def test_arcface_gradient_finite_at_cos_one_and_check_grads():
    w = np.eye(3)
    e = np.eye(3)  # cos = 1 exactly for the target
    g = jax.grad(lambda a: losses.arcface_logits(a, w, np.arange(3)).sum())(jnp.asarray(e))
    assert np.all(np.isfinite(g))
    e2 = RNG.normal(size=(3, 5))
    w2 = RNG.normal(size=(5, 4))
    check_grads(
        lambda a, b: losses.arcface_logits(a, b, np.array([0, 1, 3]), scale=2.0),
        (e2, w2),
        1,
        modes=["rev"],
        eps=1e-3,
        rtol=2e-2,
        atol=2e-2,
    )


def test_dream_stitching_mse():
    p = RNG.normal(size=(4, 6))
    t = RNG.normal(size=(4, 6))
    got = jax.jit(
        lambda a, b: losses.dream_stitching_mse(a, b, where=np.array([1, 1, 0, 1], bool))
    )(p, t)
    ref = ((p - t) ** 2).mean(1)
    ref[2] = 0
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    np.testing.assert_array_equal(losses.dream_stitching_mse(t, t), 0.0)
    check_grads(lambda a: losses.dream_stitching_mse(a, t), (p,), 1, eps=1e-3, rtol=2e-2, atol=2e-2)


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        losses.contrastive_verification(
            np.ones((2, 3)), np.ones((2, 4)), np.ones(2, bool), margin=1.0
        )
    with pytest.raises(ValueError, match="where"):
        losses.dream_stitching_mse(np.ones((2, 3)), np.ones((2, 3)), where=np.ones(3, bool))
