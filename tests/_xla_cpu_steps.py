"""Run by `test_xla_cpu.py` in a fresh process per set of XLA flags: three train steps of
the trainer's own jitted step (`Trainer.make_train_step`) on `configs/dream.py:tiny` at
width 0.5, 32 px, one fixed random batch; writes the final parameters and the losses to
the ``.npz`` named by ``argv[1]``."""

import pathlib
import sys
import tempfile

import jax
import numpy as np

from jaxface import train
from jaxface.quickstart import load_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def main(out: str) -> None:
    c = load_config(REPO / "configs" / "dream.py", "tiny")
    c.model.width = 0.5
    c.optimizer.learning_rate = 0.01
    trainer = train.Trainer(c, tempfile.mkdtemp(prefix="jaxface_xla_cpu_"))
    b = trainer.per_host_batch
    batch = trainer.task.example_batch(b)
    rs = np.random.RandomState(0)
    batch["image"] = rs.standard_normal(batch["image"].shape).astype(np.float32)
    batch["label"] = rs.randint(0, int(c.num_classes), size=(b,)).astype(np.int32)
    state, sharding = trainer.init_state(batch)
    step = trainer.make_train_step(sharding)
    gbatch = trainer.ctx.to_global(batch)
    losses = []
    for i in range(3):
        state, metrics = step(state, gbatch, jax.random.key(i))
        losses.append(float(metrics.compute()["loss"]))
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]
    arrays = {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}
    np.savez(out, losses=np.asarray(losses), **arrays)


if __name__ == "__main__":
    main(sys.argv[1])
