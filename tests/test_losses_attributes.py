"""LMLE losses and their baselines against NumPy references, under jax.jit."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxface import losses
from jaxface.losses import (
    balanced_class_weights,
    sigmoid_binary_cross_entropy,
    triple_header_hinge,
    triplet_margin,
)

B, D = 7, 5


def _np_d(x, y):
    return ((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2).sum(-1)


def np_triple_header(a, pc, nc, pf, n, margins, where=None):
    g1, g2, g3 = margins
    h = np.stack(
        [
            np.maximum(0.0, g1 + _np_d(a, pc) - _np_d(a, nc)),
            np.maximum(0.0, g2 + _np_d(a, nc) - _np_d(a, pf)),
            np.maximum(0.0, g3 + _np_d(a, pf) - _np_d(a, n)),
        ],
        -1,
    )
    if where is not None:
        w = np.asarray(where)
        h = h * (w if w.ndim == h.ndim else w[..., None])
    return h.sum(-1)


def np_triplet(a, p, n, margin):
    return np.maximum(0.0, margin + _np_d(a, p) - _np_d(a, n))


def np_bce(logits, labels, weights=None, where=None):
    x = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.float64)
    p = 1.0 / (1.0 + np.exp(-x))
    pos, neg = -y * np.log(p), -(1 - y) * np.log(1 - p)
    if weights is not None:
        pos, neg = pos * weights[1], neg * weights[0]
    per = pos + neg
    if where is None:
        return per.mean(-1)
    m = np.broadcast_to(where if where.ndim == per.ndim else where[..., None], per.shape)
    return (per * m).sum(-1) / np.maximum(m.sum(-1), 1)


def _unit(key, shape):
    x = jax.random.normal(key, shape)
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def _five():
    return [_unit(k, (B, D)) for k in jax.random.split(jax.random.PRNGKey(0), 5)]


@pytest.fixture
def five():
    return _five()


def test_public_names():
    for name in ("triple_header_hinge", "triplet_margin", "sigmoid_binary_cross_entropy"):
        assert callable(getattr(losses, name))


@pytest.mark.parametrize("margins", [(0.05, 0.05, 0.2), (0.3, 0.7, 1.1), (0.0, 0.0, 0.0)])
def test_triple_header_matches_numpy(five, margins):
    got = jax.jit(lambda *x: triple_header_hinge(*x, margins=margins))(*five)
    chex.assert_shape(got, (B,))
    np.testing.assert_allclose(got, np_triple_header(*five, margins), rtol=1e-5, atol=1e-6)


def test_triple_header_default_margins(five):
    got = triple_header_hinge(*five)
    np.testing.assert_allclose(
        got, np_triple_header(*five, losses.DEFAULT_LMLE_MARGINS), rtol=1e-5, atol=1e-6
    )


def test_triple_header_where_masks(five):
    where = jnp.array([True, False, True, True, False, True, False])
    got = jax.jit(lambda *x, w: triple_header_hinge(*x, margins=(0.4, 0.4, 0.4), where=w))(
        *five, w=where
    )
    np.testing.assert_allclose(
        got, np_triple_header(*five, (0.4, 0.4, 0.4), np.asarray(where)), rtol=1e-5, atol=1e-6
    )
    assert np.all(np.asarray(got)[~np.asarray(where)] == 0)
    # Per-header mask [B, 3].
    hw = jax.random.bernoulli(jax.random.PRNGKey(3), 0.5, (B, 3))
    got = triple_header_hinge(*five, margins=(0.4, 0.4, 0.4), where=hw)
    np.testing.assert_allclose(
        got, np_triple_header(*five, (0.4, 0.4, 0.4), np.asarray(hw)), rtol=1e-5, atol=1e-6
    )
    # Masked examples get zero gradient.
    grads = jax.grad(
        lambda a: triple_header_hinge(a, *five[1:], margins=(0.4,) * 3, where=where).sum()
    )(five[0])
    assert np.all(np.asarray(grads)[~np.asarray(where)] == 0)
    assert np.any(np.asarray(grads)[np.asarray(where)] != 0)


def test_triple_header_grads(five):
    with jax.enable_x64(True):
        x = [jnp.asarray(np.asarray(v), jnp.float64) for v in five]
        fn = lambda *v: triple_header_hinge(*v, margins=(0.3, 0.7, 1.1))  # noqa: E731
        # Random points lie away from the hinge kinks (checked: every header is active or
        # clearly inactive), so finite differences are valid.
        pre = np.stack(
            [
                0.3 + _np_d(x[0], x[1]) - _np_d(x[0], x[2]),
                0.7 + _np_d(x[0], x[2]) - _np_d(x[0], x[3]),
                1.1 + _np_d(x[0], x[3]) - _np_d(x[0], x[4]),
            ]
        )
        assert np.abs(pre).min() > 1e-3
        check_grads(fn, x, order=1, modes=["fwd", "rev"])


def test_triple_header_rejects_bad_inputs(five):
    with pytest.raises(ValueError, match="margins"):
        triple_header_hinge(*five, margins=(0.1, 0.1))
    with pytest.raises(ValueError, match="neg_class"):
        triple_header_hinge(*five[:4], five[4][:, :2])


@pytest.mark.parametrize("margin", [0.2, 1.5])
def test_triplet_margin_matches_numpy_and_grads(five, margin):
    a, p, n = five[:3]
    got = jax.jit(lambda *x: triplet_margin(*x, margin=margin))(a, p, n)
    chex.assert_shape(got, (B,))
    np.testing.assert_allclose(got, np_triplet(a, p, n, margin), rtol=1e-5, atol=1e-6)
    where = jnp.arange(B) % 2 == 0
    masked = triplet_margin(a, p, n, margin=margin, where=where)
    np.testing.assert_allclose(
        masked, np.where(where, np_triplet(a, p, n, margin), 0), rtol=1e-5, atol=1e-6
    )
    with jax.enable_x64(True):
        x = [jnp.asarray(np.asarray(v), jnp.float64) for v in (a, p, n)]
        assert np.abs(margin + _np_d(x[0], x[1]) - _np_d(x[0], x[2])).min() > 1e-3
        check_grads(lambda *v: triplet_margin(*v, margin=margin), x, order=1, modes=["fwd", "rev"])


def test_bce_matches_numpy(five):
    key = jax.random.PRNGKey(4)
    logits = 3 * jax.random.normal(key, (B, 40))
    labels = jax.random.bernoulli(jax.random.fold_in(key, 1), 0.3, (B, 40)).astype(jnp.int32)
    got = jax.jit(sigmoid_binary_cross_entropy)(logits, labels)
    chex.assert_shape(got, (B,))
    np.testing.assert_allclose(got, np_bce(logits, labels), rtol=1e-5)

    rate = jnp.linspace(0.02, 0.9, 40)
    w = balanced_class_weights(rate)
    chex.assert_shape(w, (2, 40))
    np.testing.assert_allclose(w[1], 0.5 / np.asarray(rate), rtol=1e-6)
    np.testing.assert_allclose(w[0], 0.5 / (1 - np.asarray(rate)), rtol=1e-6)
    got = jax.jit(lambda x, y, w: sigmoid_binary_cross_entropy(x, y, class_weights=w))(
        logits, labels, w
    )
    np.testing.assert_allclose(got, np_bce(logits, labels, np.asarray(w)), rtol=1e-5)

    where = jax.random.bernoulli(jax.random.fold_in(key, 2), 0.7, (B, 40))
    where = where.at[0].set(False)  # an example with every label missing gives 0
    got = sigmoid_binary_cross_entropy(logits, labels, where=where)
    np.testing.assert_allclose(got, np_bce(logits, labels, where=np.asarray(where)), rtol=1e-5)
    assert float(got[0]) == 0.0
    ex_where = jnp.arange(B) < 3
    got = sigmoid_binary_cross_entropy(logits, labels, where=ex_where)
    np.testing.assert_allclose(got, np.where(ex_where, np_bce(logits, labels), 0), rtol=1e-5)


def test_bce_rejects_bad_weights():
    with pytest.raises(ValueError, match="class_weights"):
        sigmoid_binary_cross_entropy(
            jnp.zeros((2, 3)), jnp.zeros((2, 3)), class_weights=jnp.ones((3, 3))
        )


class Properties(chex.TestCase):
    """Orderings, permutation, vmap and stability, with and without jit (the README's
    chex pattern)."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_triple_header_zero_when_orderings_hold_and_grows_when_one_breaks(self):
        g = (0.1, 0.2, 0.3)
        a = jnp.zeros((1, 2))
        # Distances on a line from the anchor: D = r², chosen so each gap exceeds its margin.
        r2 = {"pc": 0.1, "nc": 0.3, "pf": 0.6, "n": 1.0}
        hinge = self.variant(lambda *v: triple_header_hinge(*v, margins=g))

        def pt(d2):
            return jnp.array([[jnp.sqrt(d2), 0.0]])

        def loss(pc=r2["pc"], nc=r2["nc"], pf=r2["pf"], n=r2["n"]):
            out = hinge(a, pt(pc), pt(nc), pt(pf), pt(n))
            chex.assert_shape(out, (1,))
            return float(out[0])

        assert loss() == 0.0
        # Exactly at the margins: still zero.
        assert loss(pc=0.1, nc=0.2, pf=0.4, n=0.7) == pytest.approx(0.0, abs=1e-6)
        # Break header 1, 2, 3 in turn, by growing amounts: the loss is the violation.
        for kw, base_violation in (
            ({"pc": 0.25}, 0.25 + 0.1 - 0.3),
            ({"pf": 0.45}, 0.3 + 0.2 - 0.45),
            ({"n": 0.8}, 0.6 + 0.3 - 0.8),
        ):
            ((key, val),) = kw.items()
            first = loss(**kw)
            assert first == pytest.approx(base_violation, abs=1e-6) and first > 0
            worse = loss(**{key: val + (0.05 if key in ("pc",) else -0.05)})
            assert worse > first

    @chex.variants(with_jit=True, without_jit=True)
    def test_triple_header_permutation_and_vmap(self):
        five = _five()
        hinge = self.variant(triple_header_hinge)
        perm = jax.random.permutation(jax.random.PRNGKey(1), B)
        full = hinge(*five)
        chex.assert_shape(full, (B,))
        permuted = hinge(*[v[perm] for v in five])
        np.testing.assert_allclose(permuted, full[perm], rtol=1e-6)
        per_example = jax.vmap(lambda *v: triple_header_hinge(*[u[None] for u in v])[0])(*five)
        np.testing.assert_allclose(per_example, full, rtol=1e-6)
        chex.assert_tree_all_finite(jax.grad(lambda x: hinge(x, *five[1:]).sum())(five[0]))

    @chex.variants(with_jit=True, without_jit=True)
    def test_triplet_margin_zero_when_ordering_holds(self):
        a = jnp.zeros((1, 1))
        loss = self.variant(lambda x, p, n: triplet_margin(x, p, n, margin=0.2))
        assert float(loss(a, a + 0.1, a + 1.0)[0]) == 0.0
        assert float(loss(a, a + 0.9, a + 1.0)[0]) > 0.0
        chex.assert_shape(loss(a, a + 0.9, a + 1.0), (1,))

    @chex.variants(with_jit=True, without_jit=True)
    def test_bce_stable_for_large_logits(self):
        logits = jnp.array([[100.0, -100.0, 30.0]])
        labels = jnp.array([[1, 0, 0]])
        bce = self.variant(sigmoid_binary_cross_entropy)
        out = bce(logits, labels)
        chex.assert_shape(out, (1,))
        chex.assert_tree_all_finite(out)
        np.testing.assert_allclose(out, [30.0 / 3], rtol=1e-5)
        chex.assert_tree_all_finite(jax.grad(lambda x: bce(x, labels).sum())(logits))

    def test_bce_grads(self):
        with jax.enable_x64(True):
            x = jax.random.normal(jax.random.PRNGKey(0), (3, 6), jnp.float64)
            y = (jax.random.uniform(jax.random.PRNGKey(1), (3, 6)) > 0.5).astype(jnp.float64)
            w = jnp.asarray(np.random.default_rng(0).uniform(0.5, 2.0, (2, 6)))
            check_grads(
                lambda z: sigmoid_binary_cross_entropy(z, y, class_weights=w),
                (x,),
                order=1,
                modes=["fwd", "rev"],
            )
