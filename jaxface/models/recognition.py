"""The recognition network: `jaxface.models.dream.FaceEmbedder` + identity classifier
(+ learned yaw head, + learned DeepID2 margin), the model of `jaxface.tasks.recognition`."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxface.models.dream import FaceEmbedder
from jaxface.models.resnet import ResNet

__all__ = ["STAGES", "YawHead", "RecognitionNet"]

# Backbone name -> (stage sizes, block) of `jaxface.models.resnet.ResNet`.
STAGES = {
    "resnet18": ((2, 2, 2, 2), "basic"),
    "resnet34": ((3, 4, 6, 3), "basic"),
    "resnet50": ((3, 4, 6, 3), "bottleneck"),
    "resnet10": ((1, 1, 1, 1), "basic"),
}


class YawHead(nn.Module):
    """Yaw in degrees from a feature: Dense(hidden) -> ReLU -> Dense(1), times 90."""

    hidden: int = 64

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(self.hidden, name="fc1")(x))
        return 90.0 * nn.Dense(1, name="fc2")(h)[..., 0]


class RecognitionNet(nn.Module):
    """FaceEmbedder + identity classifier (+ yaw head, + learned DeepID2 margin).

    Methods: ``features(images, train) -> phi [B, D]``; ``__call__(images, yaw, train)``
    -> dict ``phi``, ``embedding``, ``gate``, ``yaw`` (the gate's yaw), ``yaw_pred``
    (learned head, else absent); ``head(phi, yaw)`` the part after phi;
    ``classifier_params()`` -> (kernel [D, C], bias [C] or None); ``margin()``.
    """

    backbone: str = "resnet18"
    width: float = 1.0
    stem: str = "small"
    input_norm: str = "none"
    embed_dim: int = 256
    use_dream: bool = True
    dream_gate: str = "yaw"
    num_classes: int = 10
    #: Classifier columns (``>= num_classes``); the extra ones are zero padding so the
    #: classes split evenly over devices (`RecognitionTask.classifier_columns`).
    padded_classes: int | None = None
    head_type: str = "softmax"
    yaw_head: bool = False
    learn_margin: bool = False
    margin_init: float = 1.0

    def setup(self):
        stages, block = STAGES[self.backbone]
        self.embedder = FaceEmbedder(
            backbone=ResNet(
                stage_sizes=stages,
                block=block,
                width=self.width,
                stem=self.stem,
                input_norm=self.input_norm,
            ),
            embed_dim=self.embed_dim,
            use_dream=self.use_dream,
            dream_gate=self.dream_gate,
        )
        if self.yaw_head:
            self.yaw_net = YawHead()
        init = (
            nn.initializers.normal(0.01)
            if self.head_type != "softmax"
            else nn.initializers.lecun_normal()
        )
        cols = self.padded_classes or self.num_classes
        if cols < self.num_classes:
            raise ValueError(f"padded_classes={cols} < num_classes={self.num_classes}")

        def kernel_init(key, shape, dtype=jnp.float32):
            # The real classes' columns do not depend on the padding.
            w = init(key, (shape[0], self.num_classes), dtype)
            return jnp.pad(w, ((0, 0), (0, shape[1] - self.num_classes)))

        self.classifier_kernel = self.param(
            "classifier_kernel", kernel_init, (self.embed_dim, cols)
        )
        if self.head_type == "softmax":
            self.classifier_bias = self.param("classifier_bias", nn.initializers.zeros, (cols,))
        if self.learn_margin:
            self.verif_margin = self.param(
                "verif_margin", nn.initializers.constant(self.margin_init), ()
            )

    def features(self, images, train: bool = False):
        return self.embedder.embed(self.embedder.stem(images, train=train)["pooled"])

    def head(self, phi, yaw):
        return self.embedder.head(phi, yaw)

    def __call__(self, images, yaw=None, train: bool = False):
        phi = self.features(images, train)
        out = {}
        if self.yaw_head:
            out["yaw_pred"] = self.yaw_net(jax.lax.stop_gradient(phi))
            if yaw is None:
                yaw = jax.lax.stop_gradient(out["yaw_pred"])
        if yaw is None:
            yaw = jnp.zeros(phi.shape[:1], phi.dtype)
        out.update(self.head(phi, yaw))
        out["yaw"] = yaw
        return out

    def classifier_params(self):
        return self.classifier_kernel, (
            self.classifier_bias if self.head_type == "softmax" else None
        )

    def margin(self):
        return self.verif_margin
