"""DREAM gate and block, ResNet shapes and torchvision parameter counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.models.dream import DreamBlock, FaceEmbedder, yaw_gate
from jaxface.models.resnet import ResNet, ResNet18, ResNet34, ResNet50


def n_params(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_yaw_gate_values():
    g = np.asarray(jax.jit(yaw_gate)(jnp.array([0.0, 45.0, -45.0, 60.0, 90.0, -90.0])))
    np.testing.assert_allclose(g[0], 4.54e-5, rtol=1e-2)
    np.testing.assert_allclose(g[1:3], 0.5, rtol=1e-6)
    np.testing.assert_allclose(g[3], 0.9655, atol=5e-4)
    assert g[4] > 0.9999 and g[4] == g[5]
    ref = 1 / (1 + np.exp(-10 * (np.abs(np.linspace(-90, 90, 19)) / 45 - 1)))
    np.testing.assert_allclose(yaw_gate(np.linspace(-90, 90, 19)), ref, rtol=1e-5)


def test_dream_block_param_count_and_gating():
    block = DreamBlock()
    phi = jax.random.normal(jax.random.key(0), (4, 256))
    params = block.init(jax.random.key(1), phi, jnp.zeros(4))
    assert n_params(params) == 131_584 == 2 * (256**2 + 256)
    yaw = jnp.array([0.0, 30.0, 60.0, 90.0])
    f = block.apply(params, phi, yaw)
    assert f.shape == (4, 256)
    p = params["params"]
    r = jax.nn.relu(
        jax.nn.relu(phi @ p["fc1"]["kernel"] + p["fc1"]["bias"]) @ p["fc2"]["kernel"]
        + p["fc2"]["bias"]
    )
    np.testing.assert_allclose(f, phi + yaw_gate(yaw)[:, None] * r, rtol=1e-5, atol=1e-6)
    # Frontal faces pass (almost) untouched.
    np.testing.assert_allclose(f[0], phi[0], atol=1e-3)
    with pytest.raises(ValueError, match="yaw shape"):
        block.apply(params, phi, jnp.zeros(3))


@pytest.mark.parametrize(
    "ctor,count", [(ResNet18, 11_689_512), (ResNet34, 21_797_672), (ResNet50, 25_557_032)]
)
def test_resnet_torchvision_param_counts(ctor, count):
    model = ctor(num_classes=1000)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
    assert n_params(shapes["params"]) == count


def test_resnet_stage_shapes_imagenet_and_small_stem():
    model = ResNet50(num_classes=10)
    out = jax.eval_shape(
        lambda: model.init_with_output(jax.random.key(0), jnp.zeros((2, 224, 224, 3)))[0]
    )
    assert out["res2"].shape == (2, 56, 56, 256)
    assert out["res3"].shape == (2, 28, 28, 512)
    assert out["res4"].shape == (2, 14, 14, 1024)
    assert out["res5"].shape == (2, 7, 7, 2048)
    assert out["logits"].shape == (2, 10)
    small = ResNet18(stem="small")
    out = jax.eval_shape(
        lambda: small.init_with_output(jax.random.key(0), jnp.zeros((2, 112, 112, 3)))[0]
    )
    assert out["stem"].shape == (2, 112, 112, 64)
    assert [out[k].shape[1] for k in ("res2", "res3", "res4", "res5")] == [56, 28, 14, 7]
    assert out["pooled"].shape == (2, 512)


def test_tiny_resnet_runs_trains_and_embedder():
    tiny = ResNet(stage_sizes=(1, 1, 1, 1), block="basic", width=0.125, stem="small")
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    emb = FaceEmbedder(backbone=tiny, embed_dim=16, use_dream=True)
    # The rbg PRNG compiles much faster than threefry on CPU; the values do not matter here.
    ve = jax.jit(emb.init)(jax.random.key(2, impl="rbg"), x, jnp.zeros(2))
    assert n_params(ve["params"]["dream"]) == 2 * (16 * 16 + 16)

    @jax.jit
    def run(v, x, yaw):
        train_out, mutated = emb.apply(v, x, yaw, train=True, mutable=["batch_stats"])
        return emb.apply(v, x, yaw), train_out, mutated

    o, o_train, mutated = run(ve, x, jnp.array([0.0, 90.0]))
    assert o["embedding"].shape == (2, 16)
    np.testing.assert_allclose(o["embedding"][0], o["phi"][0], atol=1e-3)  # frontal: gate ~ 0
    assert not np.allclose(o["embedding"][1], o["phi"][1])  # profile: the residual is added
    # Training mode updates the running statistics; eval mode uses them (different output).
    assert not np.allclose(o_train["phi"], o["phi"])
    before = jax.tree.leaves(ve["batch_stats"])
    after = jax.tree.leaves(mutated["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
    feats = jax.eval_shape(lambda: tiny.init_with_output(jax.random.key(1), x)[0])
    assert feats["res5"].shape == (2, 1, 1, 64)
    naive = FaceEmbedder(backbone=tiny, embed_dim=16, use_dream=False)
    vn = jax.eval_shape(lambda: naive.init(jax.random.key(2), x))
    assert "dream" not in vn["params"]
    with pytest.raises(ValueError, match="stem"):
        jax.eval_shape(lambda: ResNet(stem="big").init(jax.random.key(0), x))
