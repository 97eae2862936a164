"""A compact convolutional trunk for CPU-sized variants (attributes, quick tests).

The paper-scale models are the ResNets of `jaxface.models.resnet`; this trunk is the
small variant the quickstart trains on a laptop CPU: ``len(widths)`` stages of
[conv3x3-BN-ReLU] x ``convs_per_stage``; the first convolution has stride
``stem_stride`` (2 by default: full-resolution layers dominate the cost on a CPU)
and every later stage opens with a stride-2 convolution; then global average
pooling. NHWC.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp


class ConvTrunk(nn.Module):
    """Input ``[B, H, W, C]`` float -> pooled feature ``[B, widths[-1]]``."""

    widths: Sequence[int] = (32, 64, 128, 256)
    convs_per_stage: int = 2
    stem_stride: int = 2
    dtype: Any = None

    @nn.compact
    def __call__(self, x, *, train: bool):
        if self.dtype is not None:
            x = x.astype(self.dtype)
        for i, width in enumerate(self.widths):
            for j in range(self.convs_per_stage):
                stride = (self.stem_stride if i == 0 else 2) if j == 0 else 1
                x = nn.Conv(
                    width,
                    (3, 3),
                    strides=stride,
                    use_bias=False,
                    dtype=self.dtype,
                    name=f"stage{i}_conv{j}",
                )(x)
                x = nn.BatchNorm(
                    use_running_average=not train,
                    momentum=0.9,
                    dtype=self.dtype,
                    name=f"stage{i}_bn{j}",
                )(x)
                x = nn.relu(x)
        return jnp.mean(x, axis=(1, 2)).astype(jnp.float32)
