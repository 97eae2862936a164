"""ResNet-18/34/50 in the torchvision layout, NHWC, flax.linen.

Layout (torchvision ``resnet.py``, "ResNet v1.5"):
- stem: 7x7/2 conv (64, no bias, padding 3) -> BN -> ReLU -> 3x3/2 max-pool (padding 1);
- four stages ``res2..res5`` of BasicBlocks (ResNet-18/34) or Bottlenecks (ResNet-50)
  with base widths 64, 128, 256, 512 (x4 output for Bottleneck); the first block of
  stages 3-5 strides 2; in the Bottleneck the stride sits on the 3x3 conv (v1.5, not
  on the first 1x1 as in the original paper / Caffe);
- projection shortcut (1x1 conv with stride + BN) when the shape changes;
- global average pool and an optional ``Dense(num_classes)`` (torchvision's ``fc``).

With ``num_classes=1000`` the parameter counts equal torchvision's: ResNet-18
11,689,512; ResNet-34 21,797,672; ResNet-50 25,557,032 (BN scale/bias are
params, running statistics live in the ``batch_stats`` collection).

``stem="small"`` is insightface's choice for 112x112 aligned face crops
(``iresnet.py``): a 3x3 stride-1 conv (64) -> BN -> ReLU and **no** max-pool, and
every stage, including the first, strides 2, so a 112x112 input still ends at a
7x7 ``res5`` map. (insightface also uses PReLU and a BN-Dropout-FC-BN head; this
module keeps ReLU and torchvision's blocks so the two stems share one code path.)

``input_norm="imagenet"`` is for torchvision's pretrained weights
(`jaxface.models.pretrained`): the input, an RGB image in [-1, 1]
(`jaxface.tasks.common.normalize_image`), is mapped to torchvision's ImageNet
normalisation ``((x + 1) / 2 - IMAGENET_MEAN) / IMAGENET_STD`` first.

``width`` (a multiplier on the stage widths), ``stage_sizes`` and ``stage_strides``
are fields, so tiny CPU-sized variants are one-liners, e.g.
``ResNet(stage_sizes=(1, 1, 1, 1), block="basic", width=0.25, stem="small")``.

`__call__` returns a dict with the stage outputs, so detectors (ScaleFace uses
res2..res5) and embedders can share the backbone.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = [
    "ResNet",
    "ResNet18",
    "ResNet34",
    "ResNet50",
    "BasicBlock",
    "Bottleneck",
    "STAGE_NAMES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

STAGE_NAMES = ("res2", "res3", "res4", "res5")
INPUT_NORMS = ("none", "imagenet")
# torchvision's ImageNet input statistics (RGB in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu").
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # untruncated, as torch


def _pad(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
    p = k // 2
    return ((p, p), (p, p))


class _ConvBN(nn.Module):
    features: int
    kernel: int
    stride: int = 1
    relu: bool = True
    zero_init_scale: bool = False
    dtype: Any = None

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(
            self.features,
            (self.kernel, self.kernel),
            (self.stride, self.stride),
            padding=_pad(self.kernel),
            use_bias=False,
            kernel_init=conv_init,
            dtype=self.dtype,
            name="conv",
        )(x)
        # torchvision BatchNorm2d: momentum 0.1 (flax 0.9), eps 1e-5.
        x = nn.BatchNorm(
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            dtype=self.dtype,
            scale_init=nn.initializers.zeros if self.zero_init_scale else nn.initializers.ones,
            name="bn",
        )(x)
        return nn.relu(x) if self.relu else x


class BasicBlock(nn.Module):
    """Two 3x3 convs; ``expansion = 1``."""

    features: int
    stride: int = 1
    zero_init_residual: bool = False
    dtype: Any = None
    expansion = 1

    @nn.compact
    def __call__(self, x, train: bool):
        out = _ConvBN(self.features, 3, self.stride, dtype=self.dtype, name="conv_bn1")(x, train)
        out = _ConvBN(
            self.features,
            3,
            1,
            relu=False,
            zero_init_scale=self.zero_init_residual,
            dtype=self.dtype,
            name="conv_bn2",
        )(out, train)
        if self.stride != 1 or x.shape[-1] != self.features:
            x = _ConvBN(
                self.features, 1, self.stride, relu=False, dtype=self.dtype, name="downsample"
            )(x, train)
        return nn.relu(out + x)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride here: v1.5) -> 1x1 (x4); ``expansion = 4``."""

    features: int
    stride: int = 1
    zero_init_residual: bool = False
    dtype: Any = None
    expansion = 4

    @nn.compact
    def __call__(self, x, train: bool):
        out_features = self.features * self.expansion
        out = _ConvBN(self.features, 1, 1, dtype=self.dtype, name="conv_bn1")(x, train)
        out = _ConvBN(self.features, 3, self.stride, dtype=self.dtype, name="conv_bn2")(out, train)
        out = _ConvBN(
            out_features,
            1,
            1,
            relu=False,
            zero_init_scale=self.zero_init_residual,
            dtype=self.dtype,
            name="conv_bn3",
        )(out, train)
        if self.stride != 1 or x.shape[-1] != out_features:
            x = _ConvBN(
                out_features, 1, self.stride, relu=False, dtype=self.dtype, name="downsample"
            )(x, train)
        return nn.relu(out + x)


_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """Configurable torchvision-layout ResNet.

    Attributes:
      stage_sizes: blocks per stage (res2..res5), e.g. (2, 2, 2, 2) for ResNet-18.
      block: "basic" or "bottleneck".
      width: multiplier on the stem and stage widths (64, 128, 256, 512); 1.0 = torchvision.
      stem: "imagenet" (7x7/2 + max-pool) or "small" (3x3/1, no pool; insightface).
      stage_strides: strides of the first block of each stage; None = (1, 2, 2, 2) for
        the imagenet stem and (2, 2, 2, 2) for the small stem.
      num_classes: add torchvision's ``fc`` (Dense) on the pooled feature when set.
      zero_init_residual: torchvision's option (last BN scale of each block = 0).
      input_norm: "none" or "imagenet" (a [-1, 1] input mapped to torchvision's ImageNet
        normalisation; for its pretrained weights).
      dtype: computation dtype.

    Call: ``model.apply(variables, x, train=False)`` with ``x`` ``[B, H, W, 3]``
    (``mutable=["batch_stats"]`` when ``train=True``). Returns a dict:
    ``stem`` ``[B, H/4, W/4, C0]`` (imagenet stem) or ``[B, H, W, C0]`` (small),
    ``res2..res5`` (strides 4, 8, 16, 32 for the imagenet stem; 2, 4, 8, 16 for the
    small stem), ``pooled`` ``[B, C5]`` (global average of res5) and, with
    ``num_classes``, ``logits`` ``[B, num_classes]``.
    """

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    block: str = "basic"
    width: float = 1.0
    stem: str = "imagenet"
    stage_strides: Sequence[int] | None = None
    num_classes: int | None = None
    zero_init_residual: bool = False
    input_norm: str = "none"
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        if self.block not in _BLOCKS:
            raise ValueError(f"ResNet.block: expected one of {sorted(_BLOCKS)}, got {self.block!r}")
        if self.stem not in ("imagenet", "small"):
            raise ValueError(f"ResNet.stem: expected 'imagenet' or 'small', got {self.stem!r}")
        if len(self.stage_sizes) != 4:
            raise ValueError(f"ResNet.stage_sizes: expected 4 stages, got {self.stage_sizes}")
        if x.ndim != 4:
            raise ValueError(f"ResNet input: expected NHWC [B, H, W, C], got shape {x.shape}")
        if self.input_norm not in INPUT_NORMS:
            raise ValueError(
                f"ResNet.input_norm: expected one of {INPUT_NORMS}, got {self.input_norm!r}"
            )
        strides = self.stage_strides
        if strides is None:
            strides = (1, 2, 2, 2) if self.stem == "imagenet" else (2, 2, 2, 2)
        block_cls = _BLOCKS[self.block]
        base = max(1, int(round(64 * self.width)))
        out: dict[str, jax.Array] = {}
        if self.input_norm == "imagenet":
            mean = jnp.asarray(IMAGENET_MEAN, x.dtype)
            std = jnp.asarray(IMAGENET_STD, x.dtype)
            x = ((x + 1.0) * 0.5 - mean) / std
        if self.dtype is not None:
            x = x.astype(self.dtype)
        if self.stem == "imagenet":
            x = _ConvBN(base, 7, 2, dtype=self.dtype, name="stem")(x, train)
            x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        else:
            x = _ConvBN(base, 3, 1, dtype=self.dtype, name="stem")(x, train)
        out["stem"] = x
        for i, (n_blocks, stride) in enumerate(zip(self.stage_sizes, strides)):
            features = max(1, int(round(64 * (2**i) * self.width)))
            for j in range(n_blocks):
                x = block_cls(
                    features,
                    stride if j == 0 else 1,
                    zero_init_residual=self.zero_init_residual,
                    dtype=self.dtype,
                    name=f"{STAGE_NAMES[i]}_block{j}",
                )(x, train)
            out[STAGE_NAMES[i]] = x
        pooled = jnp.mean(x, axis=(1, 2))
        out["pooled"] = pooled
        if self.num_classes is not None:
            out["logits"] = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(pooled)
        return out


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block="basic")
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block="basic")
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block="bottleneck")
