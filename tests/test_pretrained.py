"""Pretrained backbones: torchvision ResNets (random weights, nothing downloaded) read from
.pth / .safetensors files without torch, converted into jaxface's ResNet, give torch's
features; files that do not fit are errors naming the key; the .pth reader runs no code."""

import io
import os
import pathlib
import pickle
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
safetensors_torch = pytest.importorskip("safetensors.torch")

from jaxface import train  # noqa: E402
from jaxface.data import pipeline  # noqa: E402
from jaxface.models import pretrained  # noqa: E402
from jaxface.models.resnet import ResNet18, ResNet34, ResNet50  # noqa: E402
from jaxface.quickstart import load_config  # noqa: E402
from jaxface.tasks import detection as det  # noqa: E402

DEPTHS = {
    # torchvision's ResNet class with one BasicBlock per stage: jaxface's "resnet10".
    10: (
        lambda weights=None: torchvision.models.resnet.ResNet(
            torchvision.models.resnet.BasicBlock, [1, 1, 1, 1]
        ),
        None,
    ),
    18: (torchvision.models.resnet18, ResNet18),
    34: (torchvision.models.resnet34, ResNet34),
    50: (torchvision.models.resnet50, ResNet50),
}


def _random_torch_resnet(depth: int, seed: int = 0):
    """A torchvision ResNet with random weights, random BatchNorm affine parameters and
    random running statistics (the defaults, 1 / 0, would hide a swapped mean / var).

    The running statistics are first measured on random images (as training leaves
    them, so activations keep a trained net's scale instead of growing ~10x per stage,
    which would leave float32 no digits at 1e-4), then each is perturbed at random."""
    torch.manual_seed(seed)
    net = DEPTHS[depth][0](weights=None)
    g = torch.Generator().manual_seed(seed + 1)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            n = m.num_features
            m.weight.copy_(0.5 + torch.rand(n, generator=g))
            m.bias.copy_(0.1 * torch.randn(n, generator=g))
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
        net.train()
        for _ in range(2):
            net(torch.randn(8, 3, 64, 64, generator=g))
        for m in bns:
            n = m.num_features
            m.running_mean.add_(0.05 * m.running_var.sqrt() * torch.randn(n, generator=g))
            m.running_var.mul_(0.9 + 0.2 * torch.rand(n, generator=g))
            m.momentum = 0.1
            m.num_batches_tracked.fill_(7)
    return net.eval()


def _torch_features(net, x01_nchw):
    """torchvision's forward, stage by stage, on ImageNet-normalised input."""
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=x01_nchw.dtype).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=x01_nchw.dtype).view(1, 3, 1, 1)
    x = (x01_nchw - mean) / std
    out = {}
    with torch.no_grad():
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        for i, name in enumerate(("res2", "res3", "res4", "res5")):
            x = getattr(net, f"layer{i + 1}")(x)
            out[name] = x.numpy().transpose(0, 2, 3, 1)  # NCHW -> NHWC
        out["pooled"] = torch.flatten(net.avgpool(x), 1).numpy()
        out["logits"] = net.fc(torch.flatten(net.avgpool(x), 1)).numpy()
    return out


def _jax_model_and_templates(depth, num_classes=None):
    model = DEPTHS[depth][1](input_norm="imagenet", num_classes=num_classes)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    return model, shapes["params"], shapes["batch_stats"]


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


FEATURES = ("res2", "res3", "res4", "res5", "pooled", "logits")


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_torchvision_resnet_features_match_torch(depth, tmp_path):
    """Eval mode, BatchNorm running statistics included. In float64 (torch and JAX alike)
    the features agree to 1e-9: the mapping is exact. In float32 -- as trained -- they
    agree to 1e-4 per unit of the feature's scale (max |torch feature|, at least 1): the
    rounding of two float32 implementations over up to 50 layers."""
    net = _random_torch_resnet(depth)
    sd = net.state_dict()
    torch.save(sd, tmp_path / "w.pth")
    safetensors_torch.save_file(
        {k: v.contiguous() for k, v in sd.items()}, tmp_path / "w.safetensors"
    )

    read_pth = pretrained.read_state_dict(str(tmp_path / "w.pth"))
    read_st = pretrained.read_state_dict(str(tmp_path / "w.safetensors"))
    assert sorted(read_pth) == sorted(sd) == sorted(read_st)
    for k, v in sd.items():
        np.testing.assert_array_equal(read_pth[k], v.numpy(), err_msg=k)
        np.testing.assert_array_equal(read_st[k], v.numpy(), err_msg=k)
        assert read_pth[k].dtype == v.numpy().dtype, k

    rng = np.random.default_rng(depth)
    x = rng.uniform(-1.0, 1.0, (2, 64, 64, 3)).astype(np.float32)  # jaxface's [-1, 1] input
    x01 = torch.from_numpy((x.transpose(0, 3, 1, 2) + 1.0) / 2.0)  # torchvision's [0, 1] input
    model, p_tpl, s_tpl = _jax_model_and_templates(depth, num_classes=1000)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))

    ref = _torch_features(net, x01)
    for name, state_dict in (("pth", read_pth), ("safetensors", read_st)):
        params, stats = pretrained.convert_torchvision_resnet(state_dict, p_tpl, s_tpl)
        assert params["stem"]["conv"]["kernel"].dtype == np.float32
        out = apply({"params": params, "batch_stats": stats}, x)
        diffs = {k: _max_diff(out[k], ref[k]) for k in FEATURES}
        scale = {k: max(1.0, float(np.abs(ref[k]).max())) for k in FEATURES}
        print(
            f"resnet{depth} float32 {name}: max|diff| "
            + " ".join(f"{k}={diffs[k]:.2e}(/{scale[k]:.0f})" for k in FEATURES)
        )
        for k in FEATURES:
            assert out[k].shape == ref[k].shape, (k, out[k].shape, ref[k].shape)
            assert diffs[k] < 1e-4 * scale[k], (depth, name, k, diffs[k], scale[k])

    x01_64 = torch.from_numpy((x.astype(np.float64).transpose(0, 3, 1, 2) + 1.0) / 2.0)
    ref64 = _torch_features(net.double(), x01_64)
    with jax.enable_x64(True):
        v64 = jax.tree.map(
            lambda a: np.asarray(a, np.float64), {"params": params, "batch_stats": stats}
        )
        out64 = jax.jit(lambda v, x: model.apply(v, x, train=False))(v64, x.astype(np.float64))
        assert out64["res5"].dtype == np.float64
        diffs = {k: _max_diff(out64[k], ref64[k]) for k in FEATURES}
    print(f"resnet{depth} float64: max|diff| " + " ".join(f"{k}={v:.2e}" for k, v in diffs.items()))
    for k in FEATURES:
        assert diffs[k] < 1e-9, (depth, k, diffs[k])


def test_conversion_without_fc_ignores_it_and_layouts():
    """fc.* and num_batches_tracked are ignored when the model has no fc; kernels are HWIO."""
    net = _random_torch_resnet(18, seed=3)
    sd = {k: v.numpy() for k, v in net.state_dict().items()}
    _, p_tpl, s_tpl = _jax_model_and_templates(18)
    params, stats = pretrained.convert_torchvision_resnet(sd, p_tpl, s_tpl)
    np.testing.assert_array_equal(
        params["res3_block0"]["downsample"]["conv"]["kernel"],
        sd["layer2.0.downsample.0.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(params["stem"]["bn"]["scale"], sd["bn1.weight"])
    np.testing.assert_array_equal(
        stats["res5_block1"]["conv_bn2"]["bn"]["var"], sd["layer4.1.bn2.running_var"]
    )
    assert jax.tree.structure(params) == jax.tree.structure(p_tpl)
    assert jax.tree.structure(stats) == jax.tree.structure(s_tpl)


def _sd18():
    return {k: v.numpy() for k, v in _random_torch_resnet(18, seed=5).state_dict().items()}


def test_missing_extra_and_misshaped_keys_are_named():
    _, p_tpl, s_tpl = _jax_model_and_templates(18)
    sd = _sd18()
    del sd["layer3.1.bn2.running_var"]
    with pytest.raises(ValueError, match=r"missing in the file: layer3\.1\.bn2\.running_var"):
        pretrained.convert_torchvision_resnet(sd, p_tpl, s_tpl)

    sd = _sd18()
    sd["layer5.0.conv1.weight"] = np.zeros((4, 4, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"does not use: layer5\.0\.conv1\.weight"):
        pretrained.convert_torchvision_resnet(sd, p_tpl, s_tpl)

    sd = _sd18()
    sd["layer2.0.conv1.weight"] = sd["layer2.0.conv1.weight"][:, :, :1, :1]
    with pytest.raises(
        ValueError,
        match=r"layer2\.0\.conv1\.weight \[128, 64, 1, 1\] vs res3_block0/conv_bn1/conv/kernel expecting \[128, 64, 3, 3\]",
    ):
        pretrained.convert_torchvision_resnet(sd, p_tpl, s_tpl)

    # A ResNet-34 file into a ResNet-18: every extra block is named.
    sd34 = {k: v.numpy() for k, v in torchvision.models.resnet34(weights=None).state_dict().items()}
    with pytest.raises(ValueError, match=r"layer3\.5\.conv2\.weight"):
        pretrained.convert_torchvision_resnet(sd34, p_tpl, s_tpl)


def test_small_stem_is_a_named_shape_error():
    small = ResNet18(stem="small")
    shapes = jax.eval_shape(small.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(
        ValueError,
        match=r"conv1\.weight \[64, 3, 7, 7\] vs stem/conv/kernel expecting \[64, 3, 3, 3\].*'imagenet' stem",
    ):
        pretrained.convert_torchvision_resnet(_sd18(), shapes["params"], shapes["batch_stats"])


class _Evil:
    """Unpickles as ``os.system(<touch a marker>)``: harmless, and visible if it ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _torch_zip_with_pickle(path, payload: bytes):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "ran"
    payload = pickle.dumps({"conv1.weight": _Evil(marker)}, protocol=2)
    pickle.loads(payload)  # the plain unpickler runs it: the fault is real
    assert marker.exists()
    marker.unlink()
    _torch_zip_with_pickle(tmp_path / "evil.pth", payload)
    with pytest.raises(ValueError, match=r"refusing to unpickle the global (posix|os)\.system"):
        pretrained.read_state_dict(str(tmp_path / "evil.pth"))
    assert not marker.exists()
    # Any other global too, even a harmless one.
    _torch_zip_with_pickle(tmp_path / "other.pth", pickle.dumps({"a": io.BytesIO()}, protocol=2))
    with pytest.raises(ValueError, match=r"refusing to unpickle the global _io\.BytesIO"):
        pretrained.read_state_dict(str(tmp_path / "other.pth"))


def test_legacy_and_truncated_files_are_errors(tmp_path):
    net = torch.nn.Linear(2, 2)
    torch.save(net.state_dict(), tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match=r"legacy \(pre-1\.6, non-zip\) torch file.*torch\.save"):
        pretrained.read_state_dict(str(tmp_path / "legacy.pth"))

    safetensors_torch.save_file({"w": torch.ones(4, 4)}, tmp_path / "t.safetensors")
    blob = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(blob[:-8])
    with pytest.raises(ValueError, match=r"'w' data_offsets \[0, 64\] do not hold F32 \[4, 4\]"):
        pretrained.read_state_dict(str(tmp_path / "cut.safetensors"))
    with pytest.raises(ValueError, match=r"expected a \.pth / \.pt"):
        pretrained.read_state_dict(str(tmp_path / "w.npz"))


def test_load_backbone_replaces_only_the_subtree(tmp_path):
    net = _random_torch_resnet(18, seed=9)
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    model = ResNet18(input_norm="imagenet")
    v = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    params = {"backbone": v["params"], "head": {"w": np.ones(3, np.float32)}}
    state = {"batch_stats": {"backbone": v["batch_stats"]}}
    new_p, new_s = pretrained.load_backbone(
        params, state, ("backbone",), str(tmp_path / "r18.pth"), field="config.x.pretrained"
    )
    np.testing.assert_array_equal(new_p["head"]["w"], params["head"]["w"])
    np.testing.assert_array_equal(
        new_p["backbone"]["res4_block1"]["conv_bn2"]["conv"]["kernel"],
        net.layer3[1].conv2.weight.detach().numpy().transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        new_s["batch_stats"]["backbone"]["stem"]["bn"]["mean"], net.bn1.running_mean.numpy()
    )
    with pytest.raises(
        FileNotFoundError,
        match=r"config\.x\.pretrained='.*nope\.pth': no such file.*JAXFACE_WEIGHTS",
    ):
        pretrained.load_backbone(
            params, state, ("backbone",), str(tmp_path / "nope.pth"), field="config.x.pretrained"
        )


# ---------------------------------------------------------------------------------
# Tasks and trainer
# ---------------------------------------------------------------------------------

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def _kernel(net_conv):
    return net_conv.weight.detach().numpy().transpose(2, 3, 1, 0)


def test_trainer_starts_from_the_pretrained_backbone(tmp_path):
    """configs/dream.py:tiny with a full-width ResNet-10 (torchvision's ResNet class with one
    BasicBlock per stage), 'imagenet' stem and ``pretrained`` set: the
    trainer's fresh state holds the file's weights (sharded as the state), the rest of
    the model is untouched, the stem sees ImageNet-normalised input; a checkpoint in
    the workdir wins over the file; a missing file is an error naming the field."""
    c = load_config(CONFIGS / "dream.py", "tiny")
    c.data.data_dir = str(tmp_path / "tfds")
    c.async_checkpointing = False
    c.model.backbone.name = "resnet10"
    c.model.update(width=1.0, stem="imagenet")
    c.model.backbone.pretrained = str(tmp_path / "weights" / "r10.pth")
    trainer = train.Trainer(c, str(tmp_path / "wd"))
    source, transform = trainer.task.data("train", train=False)
    batch = pipeline.collate([transform(source[i], None) for i in range(c.batch_size)])
    state, sharding = trainer.init_state(batch)
    mngr = train.make_checkpoint_manager(str(tmp_path / "wd"), c)
    with pytest.raises(
        FileNotFoundError, match=r"config\.model\.backbone\.pretrained='.*r10\.pth': no such file"
    ):
        trainer.restore(mngr, state, sharding)

    net = _random_torch_resnet(10, seed=11)
    (tmp_path / "weights").mkdir()
    torch.save(net.state_dict(), tmp_path / "weights" / "r10.pth")
    scratch = jax.device_get((state.params, state.model_state))
    loaded, origin = trainer.restore(mngr, state, sharding)
    assert origin == f"pretrained backbone {tmp_path / 'weights' / 'r10.pth'}"
    stem = loaded.params["embedder"]["backbone"]
    leaf = stem["res3_block0"]["downsample"]["conv"]["kernel"]
    np.testing.assert_array_equal(np.asarray(leaf), _kernel(net.layer2[0].downsample[0]))
    assert (
        leaf.sharding
        == sharding.params["embedder"]["backbone"]["res3_block0"]["downsample"]["conv"]["kernel"]
    )
    stats = loaded.model_state["batch_stats"]["embedder"]["backbone"]
    np.testing.assert_array_equal(
        np.asarray(stats["res5_block0"]["conv_bn1"]["bn"]["var"]),
        net.layer4[0].bn1.running_var.numpy(),
    )
    np.testing.assert_array_equal(
        np.asarray(loaded.params["embedder"]["embed"]["kernel"]),
        scratch[0]["embedder"]["embed"]["kernel"],
    )
    # The task's stem on its own [-1, 1] batch = torchvision on the ImageNet-normalised image.
    x = np.asarray(batch["image"][:2])
    pooled = jax.jit(
        lambda v, x: trainer.task.model.apply(
            v, x, method=lambda m, x: m.embedder.stem(x, train=False)["pooled"]
        )
    )({"params": loaded.params, **loaded.model_state}, x)
    ref = _torch_features(net, torch.from_numpy((x.transpose(0, 3, 1, 2) + 1.0) / 2.0))["pooled"]
    assert _max_diff(pooled, ref) < 1e-4 * max(1.0, float(np.abs(ref).max()))

    # A checkpoint in the workdir comes first: the (scratch) state saved there is restored.
    assert train.save_checkpoint(mngr, state, 1)
    mngr.wait_until_finished()
    resumed, origin = trainer.restore(mngr, state, sharding)
    assert origin == "resumed from step 1"
    np.testing.assert_array_equal(
        np.asarray(resumed.params["embedder"]["backbone"]["stem"]["conv"]["kernel"]),
        scratch[0]["embedder"]["backbone"]["stem"]["conv"]["kernel"],
    )
    mngr.close()


def test_detection_configs_take_torchvision_resnets(tmp_path, monkeypatch):
    """`wider` defaults to $JAXFACE_WEIGHTS/resnet50-0676ba61.pth and its ScaleFace backbone
    takes torchvision's ResNet-50 whole; the synthetic variants train from scratch."""
    monkeypatch.setenv("JAXFACE_WEIGHTS", str(tmp_path))
    c = load_config(CONFIGS / "scaleface.py", "wider")
    assert c.model.backbone.pretrained == str(tmp_path / "resnet50-0676ba61.pth")
    assert load_config(CONFIGS / "scaleface.py", "synthetic").model.backbone.pretrained == ""
    c.image_size = 128
    task = det.DetectionTask(c)
    assert task.model.backbone["input_norm"] == "imagenet"
    variables = jax.eval_shape(
        task.init_variables, jax.random.key(0), {"image": jnp.zeros((1, 128, 128, 3))}
    )
    params, state = variables["params"], {"batch_stats": variables["batch_stats"]}
    with pytest.raises(
        FileNotFoundError,
        match=r"config\.model\.backbone\.pretrained=.*resnet50-0676ba61\.pth.*JAXFACE_WEIGHTS",
    ):
        task.load_pretrained(params, state)
    net = _random_torch_resnet(50, seed=2)
    torch.save(net.state_dict(), tmp_path / "resnet50-0676ba61.pth")
    new_params, new_state, what = task.load_pretrained(params, state)
    assert "resnet50-0676ba61.pth" in what
    np.testing.assert_array_equal(
        new_params["resnet"]["res5_block2"]["conv_bn3"]["conv"]["kernel"],
        _kernel(net.layer4[2].conv3),
    )
    np.testing.assert_array_equal(
        new_state["batch_stats"]["resnet"]["stem"]["bn"]["mean"], net.bn1.running_mean.numpy()
    )
    assert new_params["heads_0"] is params["heads_0"]
    assert jax.tree.structure(new_params) == jax.tree.structure(params)
    # A ResNet-18 file does not fit the ResNet-50: the error names the keys.
    torch.save(_random_torch_resnet(18).state_dict(), tmp_path / "resnet50-0676ba61.pth")
    with pytest.raises(ValueError, match=r"missing in the file: .*layer1\.0\.conv3\.weight"):
        task.load_pretrained(params, state)
