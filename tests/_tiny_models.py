"""Tiny checkpoints (detector with landmarks, DREAM recogniser, LMLE attributes) in the
trainer's format, made once per test session, for the analyzer / export / CLI tests."""

from __future__ import annotations

import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
_CACHE: dict = {}

# (config file, variant, overrides).
RUNS = {
    "detector": ("scaleface.py", "tiny", {"model.landmarks": True}),
    "recognizer": ("dream.py", "tiny", {"yaw_source": "landmarks"}),
    "attributes": ("lmle.py", "tiny", {"loss": "lmle", "evals": ["cluster_knn"]}),
}


def workdirs(tmp_path_factory) -> dict[str, str]:
    """{"detector" | "recognizer" | "attributes" | "data_dir": path}, made once.

    Each is a workdir in the trainer's format (``config.json`` + an orbax checkpoint
    of the full train state written by `jaxface.train.Trainer.save`), holding the
    initial weights: compiling a training step of each model takes minutes on a shared
    CPU and buys nothing here (the tests compare the analyzer with independent
    references, not accuracy). The LMLE model's task state gets random centroids so a
    test can tell a restored state from a freshly initialised one.
    """
    if _CACHE:
        return dict(_CACHE)
    import json

    import jax
    import numpy as np

    from jaxface import train
    from jaxface.quickstart import load_config

    root = tmp_path_factory.mktemp("tiny_models")
    data_dir = str(root / "tfds")
    out = {"data_dir": data_dir}
    for name, (file, variant, overrides) in RUNS.items():
        c = load_config(REPO / "configs" / file, variant)
        c.data.data_dir = data_dir
        c.async_checkpointing = False
        for k, v in overrides.items():
            node = c
            *parents, leaf = k.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = v
        workdir = root / name
        workdir.mkdir()
        (workdir / "config.json").write_text(c.to_json_best_effort(indent=2))
        trainer = train.Trainer(c, str(workdir))
        state, _ = trainer.init_state(trainer.task.example_batch(int(c.batch_size)))
        if name == "attributes":
            ts = dict(state.task_state)
            rng = np.random.default_rng(0)
            ts["centroids"] = jax.numpy.asarray(
                rng.normal(size=ts["centroids"].shape).astype(np.float32)
            )
            ts["centroid_valid"] = jax.numpy.ones(ts["centroid_valid"].shape, bool)
            ts["clustered_at"] = jax.numpy.asarray(7, jax.numpy.int32)
            state = state.replace(task_state=ts)
        mngr = train.make_checkpoint_manager(str(workdir), c)
        trainer.save(mngr, state, 1, force=True)
        mngr.wait_until_finished()
        mngr.close()
        json.loads((workdir / "config.json").read_text())
        out[name] = str(workdir)
    _CACHE.update(out)
    return dict(out)


def synthetic_scene(data_dir: str, index: int = 0):
    """A synthetic detection scene (uint8 [H, W, 3]) and its faces (`faces_of`)."""
    from jaxface.data import sources
    from jaxface.quickstart import load_config
    from jaxface.tasks.detection_data import faces_of

    c = load_config(REPO / "configs" / "scaleface.py", "tiny")
    c.data.data_dir = data_dir
    src = sources.source_from_config(c.data, "validation")
    ex = src[index]
    return __import__("numpy").asarray(ex["image"]), faces_of(ex)


def identity_images(data_dir: str, n: int = 6):
    """(images uint8 [n, S, S, 3], labels) from the tiny synthetic identity test split."""
    import numpy as np

    from jaxface.data import sources
    from jaxface.quickstart import load_config

    c = load_config(REPO / "configs" / "dream.py", "tiny")
    c.data.data_dir = data_dir
    src = sources.source_from_config(c.data, "test")
    exs = [src[i] for i in range(n)]
    return np.stack([np.asarray(e["image"]) for e in exs]), np.array([int(e["label"]) for e in exs])
