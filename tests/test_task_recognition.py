"""The ``recognition`` task (DREAM / DeepID2 / margin heads) on 8 CPU devices.

Tiny synthetic identity data (configs/dream.py:tiny) prepared once per module.
"""

import functools
import pathlib

import jax
import numpy as np
import pytest

from jaxface import train
from jaxface.data import pipeline
from jaxface.evaluation import face_pairs
from jaxface.evaluation import verification as verif
from jaxface.quickstart import load_config
from jaxface.tasks import common
from jaxface.tasks import recognition as rec
from jaxface.training import eval_writer

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def _config(variant, data_dir, **overrides):
    c = load_config(CONFIGS / "dream.py", variant)
    c.data.data_dir = str(data_dir)
    c.update_from_flattened_dict(overrides)  # "a.b": v sets c.a.b
    return c


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


def _steps(trainer, n):
    """n train steps on one fixed batch (the loader's first), after the start hooks.

    Returns (state, losses, (params, model_state) before the first step, on the host)."""
    loader = trainer.train_loader()
    host = loader.batch(0)
    loader.close()
    state, sharding = trainer.init_state(host)
    for hook in trainer.task.hooks():
        if hook.at_start:
            state = hook.fn(state, trainer.ctx)
    before = jax.device_get((state.params, state.model_state))
    step = trainer.make_train_step(sharding)
    rng = jax.device_put(jax.random.key(1), trainer.replicated)
    g = trainer.ctx.to_global(host)
    losses = []
    for _ in range(n):
        state, m = step(state, g, rng)
        losses.append(float(m.compute()["loss"]))
    return state, losses, before


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    assert jax.device_count() == 8
    c = _config("tiny", data_dir)
    trainer = train.Trainer(c, str(tmp_path_factory.mktemp("wd")))
    state, losses, _ = _steps(trainer, 6)
    return trainer, state, losses


def test_end_to_end_loss_finite_and_decreasing(trained):
    _, state, losses = trained
    assert all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0] - 0.05, losses
    assert int(state.nonfinite_total) == 0
    # The DREAM block exists and is part of the params.
    assert "dream" in state.params["embedder"]


def test_stitching_freezes_stem_and_trains_block(data_dir, tmp_path_factory):
    c = _config(
        "tiny_stitch", data_dir, **{"stitching.cached": False, "stitching.sampling": "image"}
    )
    trainer = train.Trainer(c, str(tmp_path_factory.mktemp("wd_st")))
    task = trainer.task
    # Training rows are profile images of identities that also have a frontal image.
    src, _ = task.data("train", train=True)
    meta = task.metadata("train")
    assert len(src) > 0 and np.all(meta["abs_yaw"][src.rows] >= 50)
    state, losses, before = _steps(trainer, 3)
    after = jax.device_get((state.params, state.model_state))
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert float(np.abs(np.asarray(state.task_state["frontal_mean"])).sum()) > 0
    flat_b = jax.tree_util.tree_flatten_with_path(before)[0]
    flat_a = jax.tree.leaves(after)
    changed_dream, n_frozen = 0, 0
    for (path, b), a in zip(flat_b, flat_a):
        keys = [getattr(p, "key", getattr(p, "idx", None)) for p in path]
        if keys[1:3] == ["embedder", "dream"]:
            changed_dream += int(not np.array_equal(a, b))
        else:
            n_frozen += 1
            assert np.array_equal(a, b), f"frozen leaf changed: {keys}"
    assert n_frozen > 10 and changed_dream == 4  # fc1/fc2 kernel and bias


def _direct_test_embeddings(task, state):
    """Independent of the evaluators: every test image and its mirror through the model
    (no batching or sharding), fused as `verification.fuse_flip`."""
    src, _ = task.data("test", train=False)
    transform = functools.partial(task.transform, train=False)
    batch = pipeline.collate([transform(src[i], None) for i in range(len(src))])
    variables = jax.device_get(common.variables_of(state))
    out = task.model.apply(variables, batch["image"], batch["yaw"], train=False)
    out_f = task.model.apply(variables, batch["image"][:, :, ::-1], batch["yaw"], train=False)
    return verif.fuse_flip(np.asarray(out["embedding"]), np.asarray(out_f["embedding"]))


def _evaluate(task, name, state, ctx):
    """One evaluator through its contract: its metrics; its artefacts written to the workdir."""
    evaluator = task.evaluators()[name]
    metrics, artefacts = evaluator.run(
        task.predict_fns()[evaluator.predict], common.variables_of(state), ctx
    )
    eval_writer.write_artefacts(ctx.workdir, ctx.step, artefacts)
    return metrics


def test_verification_evaluator_equals_direct_computation(trained):
    trainer, state, _ = trained
    task = trainer.task
    got = _evaluate(task, "verification", state, trainer.ctx)
    fused = _direct_test_embeddings(task, state)
    meta = task.metadata("test")
    v = trainer.config.verification
    pairs = face_pairs.build_verification_pairs(
        meta["label"],
        meta["abs_yaw"],
        frontal_max_yaw=v.frontal_max_yaw,
        profile_min_yaw=v.profile_min_yaw,
        pairs_per_identity=v.pairs_per_identity,
        num_folds=v.folds,
        seed=v.seed,
    )
    for name in ("FF", "FP"):
        i, j, same, fold = pairs[name]
        # The pair sets mean what they say.
        assert np.array_equal(same, meta["label"][i] == meta["label"][j])
        assert np.all(meta["abs_yaw"][i] <= 20)
        assert (
            np.all(meta["abs_yaw"][j] <= 20) if name == "FF" else np.all(meta["abs_yaw"][j] >= 50)
        )
        for f in np.unique(fold):  # folds are identity-disjoint
            others = set(meta["label"][np.concatenate([i, j])[np.tile(fold, 2) != f]])
            assert not set(meta["label"][np.concatenate([i, j])[np.tile(fold, 2) == f]]) & others
        want = verif.evaluate_folds(
            verif.pair_distances(fused[i], fused[j]), same, fold, kind="distance"
        )
        for m in ("accuracy", "eer", "auc"):
            for s in ("mean", "std"):
                np.testing.assert_allclose(
                    got[f"{name.lower()}_{m}_{s}"],
                    want[f"{m}_{s}"],
                    atol=1e-6,
                    err_msg=f"{name} {m} {s}",
                )


def test_margin_heads_deepid2_and_learned_yaw_give_finite_gradients(data_dir):
    c = _config(
        "tiny",
        data_dir,
        **{
            "head.type": "arcface",
            "deepid2.weight": 0.05,
            "deepid2.learn_margin": True,
            "yaw_source": "learned",
        },
    )
    task = rec.RecognitionTask(c)
    src, transform = task.data("train", train=True)
    batch = pipeline.collate([transform(src[i], np.random.default_rng(i)) for i in range(16)])
    variables = task.init_variables(jax.random.key(0), batch)
    params = variables.pop("params")
    assert "verif_margin" in params and "yaw_net" in params

    @jax.jit
    def grad(p):
        return jax.grad(lambda q: task.loss(q, variables, batch, jax.random.key(1), {})[0])(p)

    g = grad(params)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(g))
    assert float(g["verif_margin"]) != 0.0  # the learned margin receives lambda dVerif/dm
    assert float(np.abs(g["yaw_net"]["fc2"]["kernel"]).sum()) > 0  # the yaw head trains


def test_cfp_config_reads_real_files(real_data):
    root = real_data("cfp")
    c = load_config(CONFIGS / "dream.py", "cfp")
    assert pathlib.Path(c.data.manual_dir).resolve() == root.resolve()
    assert c.data.builder == "cfp_manual" and list(c.cfp.eval_splits) == [9, 10]
    from jaxface.data import cfp

    idx = cfp.index_cfp(c.data.manual_dir)
    assert len(idx.paths) == 7000
    train_rows = idx.select(c.data.overrides.train_splits)
    test_rows = idx.select(c.cfp.eval_splits)
    assert len(train_rows) == 5600 and len(np.unique(idx.identity[train_rows])) == c.num_classes
    assert not set(idx.identity[train_rows]) & set(idx.identity[test_rows])
    for r in (int(train_rows[0]), int(test_rows[-1])):
        fid = verif.read_cfp_fiducials(idx.protocol.fiducial_path(idx.paths[r]))
        image, pts = cfp.crop_image(idx.paths[r], fid, c.data.overrides.image_size)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and image.std() > 10
        assert pts.shape == (30, 2) and np.all(np.isfinite(pts))
    # The profile flag drives the gate on CFP: 0 deg frontal, 90 deg profile.
    task = rec.RecognitionTask(c)
    ex = {"image": image, "label": 0, "is_profile": True}
    out = task.transform(ex, None, train=False)
    assert out["image"].shape == (c.image_size, c.image_size, 3)
    assert float(task.gate_yaw({k: np.asarray(v)[None] for k, v in out.items()})[0]) == 90.0


def test_gate_yaw_from_landmarks_tracks_metadata_yaw(data_dir):
    """yaw_source='landmarks': the 5-point mean-face fit (on resized, randomly mirrored
    crops) recovers the rendered |yaw| the metadata holds."""
    c = _config("tiny", data_dir, yaw_source="landmarks")
    task = rec.RecognitionTask(c)
    src, transform = task.data("train", train=True)
    exs = [src[i] for i in range(len(src))]
    batch = pipeline.collate([transform(ex, np.random.default_rng(i)) for i, ex in enumerate(exs)])
    assert "yaw" not in batch and batch["landmarks"].shape == (len(exs), 5, 2)
    got = np.abs(np.asarray(jax.jit(task.gate_yaw)(batch)))
    want = np.abs(np.array([ex["yaw"] for ex in exs]))
    assert np.corrcoef(got, want)[0, 1] > 0.9, (got, want)
    assert np.median(np.abs(got - want)) < 10.0


def test_end_to_end_then_stitching_through_init_from(data_dir, tmp_path):
    """The paper's best recipe with two commands: the stitching run starts from the
    end-to-end run's weights (trainer's init_from reads params + model state only, though
    the optimizer state differs), keeps the stem bit-identical and trains the block."""
    e2e, stitch = str(tmp_path / "e2e"), str(tmp_path / "stitch")
    c1 = _config("tiny", data_dir, num_train_steps=2, async_checkpointing=False, evals=[])
    assert train.train_and_evaluate(c1, e2e).status == "finished"
    c2 = _config(
        "tiny_stitch",
        data_dir,
        num_train_steps=2,
        async_checkpointing=False,
        evals=[],
        init_from=e2e,
    )
    assert train.train_and_evaluate(c2, stitch).status == "finished"
    _, s1, _ = train.load_state(c1, e2e)
    _, s2, _ = train.load_state(c2, stitch)
    p1 = jax.tree_util.tree_flatten_with_path(jax.device_get(s1.params))[0]
    p2 = jax.tree.leaves(jax.device_get(s2.params))
    changed = 0
    for (path, a), b in zip(p1, p2):
        keys = [getattr(p, "key", None) for p in path]
        if "dream" in keys:
            changed += int(not np.array_equal(a, b))
        else:
            np.testing.assert_array_equal(a, b, err_msg=str(keys))
    assert changed > 0
    jax.tree.map(
        np.testing.assert_array_equal,
        jax.device_get(s1.model_state),
        jax.device_get(s2.model_state),
    )


def _write_lfw_like(root, images, labels, n_folds=10, per_fold=2):
    """An LFW-layout folder (<name>/<name>_NNNN.jpg + pairs.txt) from synthetic faces."""
    from PIL import Image

    names, counts, index = {}, {}, []
    for img, lab in zip(images, labels):
        name = f"Person_{int(lab):03d}"
        counts[name] = counts.get(name, 0) + 1
        (root / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / name / f"{name}_{counts[name]:04d}.jpg", quality=95)
        index.append((name, counts[name]))
        names.setdefault(name, []).append(counts[name])
    multi = sorted(n for n, v in names.items() if len(v) >= 2)
    rng = np.random.default_rng(0)
    lines = [f"{n_folds}\t{per_fold}"]
    for _ in range(n_folds):
        for _ in range(per_fold):
            n = multi[rng.integers(len(multi))]
            a, b = rng.choice(names[n], 2, replace=False)
            lines.append(f"{n}\t{a}\t{b}")
        for _ in range(per_fold):
            n1, n2 = rng.choice(sorted(names), 2, replace=False)
            lines.append(f"{n1}\t{rng.choice(names[n1])}\t{n2}\t{rng.choice(names[n2])}")
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")


def _direct_report(task, state, images, i, j, same, fold, far):
    """Independent path: decode, resize, embed with model.apply at yaw 0, the evaluation module."""
    from PIL import Image

    size = task.config.image_size
    x = np.stack(
        [np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in images]
    )
    x = x.astype(np.float32) * (2.0 / 255.0) - 1.0
    variables = jax.device_get(common.variables_of(state))
    yaw = np.zeros(len(x), np.float32)
    e = task.model.apply(variables, x, yaw, train=False)["embedding"]
    ef = task.model.apply(variables, x[:, :, ::-1], yaw, train=False)["embedding"]
    fused = verif.fuse_flip(np.asarray(e), np.asarray(ef))
    dist = verif.pair_distances(fused[i], fused[j])
    rep = verif.evaluate_folds(dist, same, fold, kind="distance")
    val = verif.kfold_tar_at_far(dist, same, fold, far, kind="distance")
    return rep, val


def test_lfw_and_bin_evaluators_equal_direct_computation(trained, tmp_path):
    import io
    import pickle

    from PIL import Image

    trainer, state, _ = trained
    task = trainer.task
    src, _ = task.data("test", train=False)
    n = min(len(src), 60)
    images = [np.asarray(src[k]["image"])[..., :3] for k in range(n)]
    labels = task.metadata("test")["label"][:n]
    assert trainer.config.yaw_source == "metadata"

    # LFW layout. crop_fraction 1: the synthetic faces fill their image.
    _write_lfw_like(tmp_path / "lfw", images, labels)
    trainer.config.lfw = {"manual_dir": str(tmp_path / "lfw"), "crop_fraction": 1.0, "far": 0.1}
    got = _evaluate(task, "lfw", state, trainer.ctx)
    pairs = verif.parse_lfw_pairs(tmp_path / "lfw" / "pairs.txt")
    p1, p2 = pairs.paths(tmp_path / "lfw")
    uniq = sorted(set(map(str, p1)) | set(map(str, p2)))
    decoded = [np.asarray(Image.open(p).convert("RGB")) for p in uniq]
    i = np.array([uniq.index(str(p)) for p in p1])
    j = np.array([uniq.index(str(p)) for p in p2])
    rep, val = _direct_report(task, state, decoded, i, j, pairs.same, pairs.fold, 0.1)
    np.testing.assert_allclose(got["lfw_accuracy_mean"], rep["accuracy_mean"], atol=1e-6)
    np.testing.assert_allclose(got["lfw_auc_mean"], rep["auc_mean"], atol=1e-6)
    np.testing.assert_allclose(got["lfw_tar_at_far_0.1_mean"], val["tar_mean"], atol=1e-6)
    assert (pathlib.Path(trainer.ctx.workdir) / f"lfw_roc_step{trainer.ctx.step}.png").exists()

    # The same pairs as an insightface .bin (encoded images in pair order + issame).
    blobs = []
    for a, b in zip(i, j):
        for k in (a, b):
            buf = io.BytesIO()
            Image.fromarray(decoded[k]).save(buf, format="PNG")
            blobs.append(buf.getvalue())
    (tmp_path / "set.bin").write_bytes(pickle.dumps((blobs, [bool(s) for s in pairs.same])))
    trainer.config.bins = {"files": [str(tmp_path / "set.bin")], "far": 0.1}
    got_bin = _evaluate(task, "bins", state, trainer.ctx)
    from sklearn.model_selection import KFold

    kfold = np.zeros(len(i), int)
    for f, (_, test) in enumerate(KFold(10, shuffle=False).split(np.arange(len(i)))):
        kfold[test] = f
    flat = [decoded[k] for ab in zip(i, j) for k in ab]
    rep_b, _ = _direct_report(
        task, state, flat, 2 * np.arange(len(i)), 2 * np.arange(len(i)) + 1, pairs.same, kfold, 0.1
    )
    np.testing.assert_allclose(got_bin["set_accuracy_mean"], rep_b["accuracy_mean"], atol=1e-6)
    np.testing.assert_allclose(got_bin["set_eer_mean"], rep_b["eer_mean"], atol=1e-6)


def test_lfw_evaluator_reads_the_real_pairs_file_and_names_missing_images(real_data, tmp_path):
    from jaxface.data import recognition_sources as rs

    # The real-data folder's lfw/ holds pairs.txt and only two of its 7,701 images.
    lfw = real_data("lfw")
    with pytest.raises(FileNotFoundError, match=r"LFW: 77\d\d of the 7701 images .* missing"):
        rs.lfw_pairs_source(lfw / "pairs.txt", lfw)
    src = rs.ImageListSource([lfw / "Anthony_Hopkins_0001.jpg"], crop_fraction=0.6)
    assert src[0]["image"].shape == (150, 150, 3)


def test_identity_folder_source_trains_and_lists_labels(data_dir, tmp_path):
    """root/<split>/<identity>/<image> as the recognition data: labels from sorted folder
    names, yaw from a per-image .npy, a short training run through the trainer."""
    from PIL import Image

    c0 = _config("tiny", data_dir)
    task0 = rec.RecognitionTask(c0)
    src0, _ = task0.data("train", train=False)
    meta0 = task0.metadata("train")
    n = min(len(src0), 64)
    root = tmp_path / "faces"
    paths = []
    for k in range(n):
        ident = f"id_{int(meta0['label'][k]):04d}"
        p = root / "train" / ident / f"{k:05d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(src0[k]["image"])[..., :3]).save(p)
        paths.append(p)
    order = sorted(range(n), key=lambda k: (paths[k].parent.name, paths[k].name))
    yaw = np.asarray(meta0["yaw"][:n], np.float32)[order]
    np.save(tmp_path / "yaw.npy", yaw)
    c = _config(
        "tiny",
        data_dir,
        **{"data.builder": "identity_folder", "data.manual_dir": str(root)},
        num_train_steps=2,
        evals=(),
        async_checkpointing=False,
    )
    c.data.split_subdirs = True
    c.data.yaw_file = str(tmp_path / "yaw.npy")
    task = rec.RecognitionTask(c)
    meta = task.metadata("train")
    names = sorted({p.parent.name for p in paths})
    want = np.array([names.index(paths[k].parent.name) for k in order])
    np.testing.assert_array_equal(meta["label"], want)
    np.testing.assert_allclose(meta["abs_yaw"], np.abs(yaw))
    ex = task.source("train")[3]
    np.testing.assert_array_equal(ex["image"], np.asarray(src0[order[3]]["image"])[..., :3])
    with pytest.raises(ValueError, match="split 'test'"):
        c.data.split_subdirs = False
        rec.RecognitionTask(c).source("test")
    c.data.split_subdirs = True
    c.num_classes = len(names)
    result = train.train_and_evaluate(c, str(tmp_path / "wd"))
    assert result.status == "finished" and result.step == 2


def test_identification_evaluator_matches_numpy_and_draws_cmc(trained):
    trainer, state, _ = trained
    task = trainer.task
    got = _evaluate(task, "identification", state, trainer.ctx)
    fused = _direct_test_embeddings(task, state)
    meta = task.metadata("test")
    lab, yaw = meta["label"], meta["abs_yaw"]
    # Gallery: the most frontal image of each identity; every other image probes it.
    gallery = np.array([np.flatnonzero(lab == k)[np.argmin(yaw[lab == k])] for k in np.unique(lab)])
    probes = np.setdiff1d(np.arange(len(lab)), gallery)
    top1 = np.argmax(fused[probes] @ fused[gallery].T, axis=1)
    np.testing.assert_allclose(got["all_rank1"], np.mean(lab[gallery][top1] == lab[probes]))
    png = pathlib.Path(trainer.ctx.workdir) / f"identification_cmc_step{trainer.ctx.step}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
