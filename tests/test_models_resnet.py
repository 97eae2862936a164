"""`jaxface.models.resnet`'s im2col lowering against XLA's convolution and NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.models.resnet import ResNet, im2col_conv


def _numpy_conv(x, w, stride):
    """Direct NHWC / HWIO convolution with zero padding k // 2, in float64."""
    k = w.shape[0]
    p = k // 2
    xp = np.pad(x.astype(np.float64), ((0, 0), (p, p), (p, p), (0, 0)))
    b, h, wd, _ = x.shape
    ho, wo = (h + 2 * p - k) // stride + 1, (wd + 2 * p - k) // stride + 1
    out = np.zeros((b, ho, wo, w.shape[-1]))
    for i in range(ho):
        for j in range(wo):
            win = xp[:, i * stride : i * stride + k, j * stride : j * stride + k, :]
            out[:, i, j] = np.einsum("bhwc,hwco->bo", win, w.astype(np.float64))
    return out


@pytest.mark.parametrize("k,stride,size", [(3, 1, 7), (3, 2, 8), (3, 2, 7), (7, 2, 9), (1, 2, 6)])
def test_im2col_conv_matches_numpy_and_lax(k, stride, size):
    rs = np.random.RandomState(k * 10 + stride)
    x = rs.standard_normal((2, size, size + 1, 3)).astype(np.float32)
    w = rs.standard_normal((k, k, 3, 5)).astype(np.float32)
    got = jax.jit(im2col_conv, static_argnums=2)(x, w, stride)
    np.testing.assert_allclose(np.asarray(got), _numpy_conv(x, w, stride), rtol=1e-5, atol=1e-5)
    p = k // 2
    ref = jax.lax.conv_general_dilated(
        x, w, (stride, stride), ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stem", ["small", "imagenet"])
def test_resnet_im2col_same_parameters_outputs_and_gradients(stem):
    """The lowering changes no parameter: one set of variables, both lowerings, equal
    outputs and gradients (float32 sums in another order)."""
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    plain = ResNet(stage_sizes=(1, 1, 1, 1), width=0.25, stem=stem)
    lowered = ResNet(stage_sizes=(1, 1, 1, 1), width=0.25, stem=stem, im2col=("stem", "res2"))
    variables = plain.init(jax.random.key(1), x)
    assert jax.tree.structure(variables) == jax.tree.structure(lowered.init(jax.random.key(1), x))

    def loss(params, model):
        # BatchNorm on running statistics: with batch statistics a 1x1 res5 map of two
        # images is ill-conditioned and amplifies any rounding difference.
        out = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x)
        return jnp.sum(out["pooled"] ** 2)

    va, ga = jax.jit(jax.value_and_grad(lambda p: loss(p, plain)))(variables["params"])
    vb, gb = jax.jit(jax.value_and_grad(lambda p: loss(p, lowered)))(variables["params"])
    np.testing.assert_allclose(float(va), float(vb), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        # float32 sums in another order: errors scale with the leaf's largest gradient
        scale = float(np.abs(np.asarray(a)).max())
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5 * scale)


def test_resnet_im2col_rejects_unknown_place():
    with pytest.raises(ValueError, match="ResNet.im2col: unknown place"):
        ResNet(stage_sizes=(1, 1, 1, 1), width=0.25, im2col=("res6",)).init(
            jax.random.key(0), jnp.zeros((1, 32, 32, 3))
        )
