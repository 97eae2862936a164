"""The train step the benchmarks time: the trainer's own, and its PyTorch twin.

``trainer_step`` builds ``jaxface.train.Trainer`` on ``configs/dream.py:msceleb_naive``
resized to the benchmark's workload and returns the jitted function ``jaxface train``
runs (`Trainer.make_train_step`), its state and one batch already on the device. The
workload: ResNet-18 with insightface's 3x3/1 stem at 112 px, global average pool,
Dense(512) embedding, a 1000-class softmax classifier with bias, no dropout, SGD lr 0.1,
momentum 0.9, weight decay 5e-4, BatchNorm in train mode, batch 16 by default.

``torch_twin`` is the same network and optimiser hand-written in PyTorch (channels-last,
BasicBlocks as torchvision's, no torchvision import) for the ratio rows.
"""

from __future__ import annotations

import pathlib
import tempfile

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]

CLASSES = 1000
EMBED = 512


def workload_config(
    batch: int = 16,
    image: int = 112,
    compute_dtype: str = "float32",
    backbone: str = "resnet18",
    stem: str = "small",
):
    """``configs/dream.py:msceleb_naive`` at the benchmark's size (no data is read);
    ``stem="imagenet"`` for torchvision's 7x7/2 stem and max-pool (the 224-px rows)."""
    from jaxface.quickstart import load_config  # pylint: disable=import-outside-toplevel

    c = load_config(REPO / "configs" / "dream.py", "msceleb_naive")
    c.model.backbone.name = backbone
    c.model.stem = stem
    c.model.embed_dim = EMBED
    c.num_classes = CLASSES
    c.image_size = image
    c.batch_size = batch
    c.head.dropout = 0.0
    c.optimizer.update(learning_rate=0.1, momentum=0.9, weight_decay=5e-4, schedule="constant")
    c.compute_dtype = compute_dtype
    return c


def trainer_step(config):
    """``(step, state, batch, rng, flops)``: the trainer's jitted step compiled for one
    random batch of ``config``'s shape; ``flops`` from XLA's cost analysis."""
    import jax  # pylint: disable=import-outside-toplevel

    from jaxface import train  # pylint: disable=import-outside-toplevel

    trainer = train.Trainer(config, tempfile.mkdtemp(prefix="jaxface_bench_"))
    b = trainer.per_host_batch
    batch = trainer.task.example_batch(b)
    rs = np.random.RandomState(1)
    batch["image"] = rs.standard_normal(batch["image"].shape).astype(np.float32)
    batch["label"] = rs.randint(0, int(config.num_classes), size=(b,)).astype(np.int32)
    state, sharding = trainer.init_state(batch)
    step = trainer.make_train_step(sharding)
    rng = jax.random.key(int(config.seed) + 1)
    gbatch = trainer.ctx.to_global(batch)
    # Compiled once, ahead of time: the same executable the jitted call would build.
    compiled = step.lower(state, gbatch, rng).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
    return compiled, state, gbatch, rng, flops


def torch_twin(batch: int = 16, image: int = 112, backbone: str = "resnet18", stem: str = "small"):
    """``(step_fn, describe)``: one SGD step of the PyTorch twin on random data."""
    import torch  # pylint: disable=import-outside-toplevel
    from torch import nn  # pylint: disable=import-outside-toplevel

    stages = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3), "resnet50": (3, 4, 6, 3)}[
        backbone
    ]
    bottleneck = backbone == "resnet50"

    def conv_bn(cin, cout, k, stride):
        return [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]

    class Block(nn.Module):
        """torchvision's BasicBlock, or its Bottleneck (v1.5: the stride on the 3x3)."""

        def __init__(self, cin, width, stride):
            super().__init__()
            cout = width * (4 if bottleneck else 1)
            if bottleneck:
                self.body = nn.Sequential(
                    *conv_bn(cin, width, 1, 1),
                    nn.ReLU(),
                    *conv_bn(width, width, 3, stride),
                    nn.ReLU(),
                    *conv_bn(width, cout, 1, 1),
                )
            else:
                self.body = nn.Sequential(
                    *conv_bn(cin, width, 3, stride), nn.ReLU(), *conv_bn(width, width, 3, 1)
                )
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(*conv_bn(cin, cout, 1, stride))
            self.cout = cout

        def forward(self, x):
            return torch.relu(self.body(x) + (x if self.down is None else self.down(x)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            if stem == "imagenet":  # 7x7/2, max-pool; stage 1 keeps its size
                layers = [*conv_bn(3, 64, 7, 2), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
                strides = (1, 2, 2, 2)
            else:  # insightface: 3x3/1, no pool; every stage halves
                layers = [*conv_bn(3, 64, 3, 1), nn.ReLU()]
                strides = (2, 2, 2, 2)
            cin = 64
            for i, n in enumerate(stages):
                for j in range(n):
                    block = Block(cin, 64 * 2**i, strides[i] if j == 0 else 1)
                    layers.append(block)
                    cin = block.cout
            self.trunk = nn.Sequential(*layers)
            self.embed = nn.Linear(cin, EMBED)
            self.fc = nn.Linear(EMBED, CLASSES)

        def forward(self, x):
            return self.fc(self.embed(self.trunk(x).mean((2, 3))))

    torch.manual_seed(0)
    net = Net().to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    rs = np.random.RandomState(1)
    x = torch.from_numpy(rs.standard_normal((batch, 3, image, image)).astype(np.float32))
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(rs.randint(0, CLASSES, size=(batch,)).astype(np.int64))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return loss.detach().item()

    return step, (
        f"PyTorch {torch.__version__} eager, channels-last, {torch.get_num_threads()} threads"
    )
