"""The ``detection`` task (ScaleFace) on the tiny config: training on 8 devices, the exact
WIDER evaluation on synthetic ground truth, and the prediction-folder writer."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from jaxface.data import pipeline
from jaxface.evaluation import widerface as wider_eval
from jaxface.quickstart import load_config
from jaxface.tasks import detection as det
from jaxface.tasks import detection_data as det_data
from jaxface.tasks import detection_evaluators as det_eval

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def task_and_batch(tmp_path_factory):
    config = load_config(CONFIGS / "scaleface.py", "tiny")
    config.data.data_dir = str(tmp_path_factory.mktemp("tfds"))
    task = det.DetectionTask(config)
    src, transform = task.data("train", train=True)
    batch = pipeline.collate([transform(src[i], np.random.default_rng(i)) for i in range(8)])
    return task, batch


def test_transform_fixed_shapes_and_boxes_follow_the_image(task_and_batch):
    task, batch = task_and_batch
    s, m = task.config.image_size, task.config.max_faces
    assert batch["image"].shape == (8, s, s, 3) and batch["gt_boxes"].shape == (8, m, 4)
    assert batch["gt_valid"].any()
    b = batch["gt_boxes"][batch["gt_valid"]]
    assert np.all((b >= 0) & (b <= s)) and np.all(b[:, 2] > b[:, 0])
    # Evaluation placement: boxes are the originals times the scale.
    src, transform = task.data("train", train=False)
    ex = src[0]
    out = transform(ex, np.random.default_rng(0))
    faces = det_data.faces_of(ex)
    n = min(len(faces["boxes"]), task.config.max_faces)
    np.testing.assert_allclose(
        out["gt_boxes"][:n], np.clip(faces["boxes"][:n] * out["scale"], 0, s), atol=1e-3
    )


def test_few_steps_on_8_devices_finite_decreasing_loss(task_and_batch):
    task, batch = task_and_batch
    assert jax.device_count() == 8
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
    shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    gbatch = {k: jax.device_put(v, shard) for k, v in batch.items()}
    variables = jax.jit(task.init_variables, out_shardings=repl)(jax.random.key(0), gbatch)
    params = variables["params"]
    state = {k: v for k, v in variables.items() if k != "params"}
    tx = optax.adam(2e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, state, opt, batch):
        (loss, (new_state, metrics)), g = jax.value_and_grad(task.loss, has_aux=True)(
            params, state, batch, jax.random.key(1), {}
        )
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), new_state, opt, loss, metrics

    losses = []
    for _ in range(6):
        params, state, opt, loss, metrics = step(params, state, opt, gbatch)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], losses
    assert set(task.metric_names()) <= set(metrics)

    # Inference on the same batch: fixed shapes, boxes inside the original image.
    out = jax.jit(task.predict)({"params": params, **state}, gbatch)
    k = task.config.max_detections
    assert out["boxes"].shape == (8, k, 4) and out["valid"].shape == (8, k)
    assert out["landmarks"].shape == (8, k, 5, 2)
    v = np.asarray(out["valid"])
    sc = np.asarray(out["scores"])
    assert np.all((sc[v] >= 0) & (sc[v] <= 1))
    # Valid detections come first, in descending score order.
    for row, vr in zip(sc, v):
        n = int(vr.sum())
        assert vr[:n].all() and not vr[n:].any()
        assert np.all(np.diff(row[:n]) <= 0)

    # Prediction writer on an image folder in the WIDER layout; the official reader parses it.
    variables = {"params": params, **state}
    root = pathlib.Path(task.config.data.data_dir).parent / "images"
    rng = np.random.default_rng(0)
    rels = ["0--Parade/a_1.jpg", "0--Parade/b_2.jpg", "12--Group/c_3.png"]
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (100 + 20 * len(rel), 150, 3), dtype=np.uint8)).save(
            root / rel
        )
    pred_dir = root.parent / "pred"
    assert det.write_folder_predictions(task, variables, root, pred_dir, batch_size=2) == 3
    for rel in rels:
        f = pred_dir / (rel.rsplit(".", 1)[0] + ".txt")
        assert f.read_text().splitlines()[0] == rel.rsplit("/", 1)[1].rsplit(".", 1)[0]
        boxes, scores = wider_eval.read_prediction_file(f)
        assert boxes.shape[0] == scores.shape[0] <= k
        assert np.all(np.diff(scores) <= 0)


def test_synthetic_ground_truth_perfect_predictions_give_ap_one():
    faces = [
        {
            "boxes": np.array(
                [[10, 10, 70, 80], [100, 100, 115, 114], [200, 50, 212, 58]], np.float32
            ),
            "blur": np.array([0, 0, 0]),
            "occlusion": np.array([0, 0, 0]),
            "pose": np.array([0, 0, 0]),
            "invalid": np.array([0, 0, 1]),
        },
        {
            "boxes": np.zeros((0, 4), np.float32),
            "blur": np.zeros(0),
            "occlusion": np.zeros(0),
            "pose": np.zeros(0),
            "invalid": np.zeros(0),
        },
    ]
    gt = det_eval.synthetic_ground_truth(faces, size_buckets=[(10, 40), (40, 0)])
    # hard keeps the 70 px and 14 px faces; easy only the 70 px; the invalid one is ignored.
    assert gt.settings["hard"].keep.tolist() == [True, True, False]
    assert gt.settings["easy"].keep.tolist() == [True, False, False]
    assert gt.settings["size_10_40"].keep.tolist() == [False, True, False]
    boxes = np.zeros((2, 4, 4), np.float32)
    boxes[0, :3] = faces[0]["boxes"]
    scores = np.array([[0.9, 0.8, 0.7, 0], [0, 0, 0, 0]], np.float32)
    valid = np.array([[True, True, True, False], [False] * 4])
    res = wider_eval.evaluate(gt, det_eval.predictions_from_arrays(boxes, scores, valid))
    for k in ("easy", "medium", "hard", "size_10_40", "size_40_up"):
        assert res[k].ap == pytest.approx(1.0), k
    # A missed face halves the hard recall: AP drops.
    valid2 = np.array([[True, False, True, False], [False] * 4])
    res2 = wider_eval.evaluate(gt, det_eval.predictions_from_arrays(boxes, scores, valid2))
    assert res2["hard"].ap == pytest.approx(0.5) and res2["easy"].ap == pytest.approx(1.0)


@pytest.mark.parametrize("variant", ["wider", "synthetic", "single_branch", "single_branch_s8"])
def test_every_variant_traces_init_loss_and_predict(variant):
    """Shape-level check (no compilation) of the real variants on a 256 px batch."""
    config = load_config(CONFIGS / "scaleface.py", variant)
    config.image_size = 256
    task = det.DetectionTask(config)
    m = int(config.max_faces)
    batch = {
        "image": jnp.zeros((2, 256, 256, 3)),
        "gt_boxes": jnp.tile(jnp.array([[20.0, 20.0, 60.0, 70.0]]), (2, m, 1)),
        "gt_valid": jnp.zeros((2, m), bool).at[:, 0].set(True),
        "gt_ignore": jnp.zeros((2, m), bool),
        "gt_landmarks": jnp.zeros((2, m, 5, 2)),
        "gt_landmarks_valid": jnp.zeros((2, m), bool),
        "image_hw": jnp.full((2, 2), 256.0),
        "scale": jnp.ones((2,)),
    }
    variables = jax.eval_shape(task.init_variables, jax.random.key(0), batch)
    params = variables["params"]
    state = {k: v for k, v in variables.items() if k != "params"}
    assert len([k for k in params if k.startswith("heads_")]) == len(config.model.branches)
    loss, _ = jax.eval_shape(
        lambda p, s, b: task.loss(p, s, b, jax.random.key(1), {}), params, state, batch
    )
    assert loss.shape == ()
    out = jax.eval_shape(task.predict, variables, batch)
    assert out["boxes"].shape == (2, config.max_detections, 4)


def test_recipe_options_default_to_the_paper_except_on_the_cpu_variants():
    """OHEM's NMS is on (IoU 0.7) for the paper's setting; the CPU variants whose numbers
    are published keep the old recipe; the stride control is one res2+res3 branch at 8."""
    assert load_config(CONFIGS / "scaleface.py", "wider").ohem_nms_iou == 0.7
    for v in ("synthetic", "single_branch", "single_branch_s8", "cfp_scenes", "tiny"):
        assert not load_config(CONFIGS / "scaleface.py", v).ohem_nms_iou, v
    s8 = load_config(CONFIGS / "scaleface.py", "single_branch_s8")
    one = load_config(CONFIGS / "scaleface.py", "single_branch")
    (b8,), (b16,) = s8.model.branches, one.model.branches
    assert (list(b8.stages), b8.stride) == (["res2", "res3"], 8)
    assert list(b8.anchors) == list(b16.anchors) and list(b8.size_range) == list(b16.size_range)
    assert s8.ohem_rois == one.ohem_rois and s8.targets.rpn_batch == one.targets.rpn_batch


def test_wider_head_is_two_fc_layers_and_cpu_variants_keep_two_convs():
    """`wider`'s RoI head: no 3x3 convolution, FC 1,024 -> 1,024 on the RoIAlign template;
    the CPU variants (published numbers) keep their two convolutions."""
    for variant, convs in (("wider", 0), ("synthetic", 2), ("cfp_scenes", 2)):
        config = load_config(CONFIGS / "scaleface.py", variant)
        config.model.backbone.pretrained = ""
        task = det.DetectionTask(config)
        x = jnp.zeros((1, 128, 128, 3))
        params = jax.eval_shape(lambda k, x: task.model.init(k, x), jax.random.key(0), x)["params"]
        head = params["heads_0"]
        assert sorted(k for k in head if k.startswith("head_convs_")) == [
            f"head_convs_{i}" for i in range(convs)
        ], variant
        m = config.model
        width = m.head_conv_channels if convs else m.merge_channels
        assert head["head_dense_0"]["kernel"].shape == (
            m.roi_size * m.roi_size * width,
            m.head_fc[0],
        ), variant


def test_augmentation_keeps_boxes_on_the_pixels():
    from jaxface.data import detection_aug as aug

    img = np.zeros((120, 200, 3), np.uint8)
    img[30:70, 50:90] = 255  # a white "face" at x 50..90, y 30..70
    boxes = np.array([[50, 30, 90, 70], [180, 0, 200, 40]], np.float32)
    lm = np.tile(
        np.array([[55, 40], [85, 40], [70, 50], [60, 62], [80, 62]], np.float32), (2, 1, 1)
    )
    # Flip: the box still covers the white pixels; landmarks swap sides.
    fi, fb, fl = aug.flip_horizontal(img, boxes, lm)
    x1, y1, x2, y2 = fb[0].astype(int)
    assert fi[y1:y2, x1:x2].min() == 255 and fi[:, :x1].max() == 0
    np.testing.assert_allclose(fl[0, 0], [200 - 85, 40])  # new left eye = mirrored right eye
    ri, rb, _ = aug.flip_horizontal(fi, fb, fl)
    np.testing.assert_array_equal(ri, img)
    np.testing.assert_allclose(rb, boxes)
    # A random placement (scale + crop/pad): the white block lands where the box says.
    rng = np.random.default_rng(0)
    for _ in range(5):
        p = aug.random_placement(rng, 120, 200, 128, scale_range=(0.8, 1.6))
        out = aug.place(img, boxes, p, landmarks=lm)
        b = out["boxes"][0]
        if not out["keep"][0] or out["ignore"][0]:
            continue
        inner = out["image"][
            int(np.ceil(b[1])) + 1 : int(b[3]) - 1, int(np.ceil(b[0])) + 1 : int(b[2]) - 1
        ]
        assert inner.size and inner.min() > 200
        np.testing.assert_allclose(
            out["landmarks"][0, 2], lm[0, 2] * p.scale - np.array(p.offset), atol=1e-4
        )
    # A crop that cuts the second face to a sliver makes it an ignore region.
    p = aug.Placement(scale=1.0, offset=(170.0, 0.0), out_size=64)
    out = aug.place(img, boxes, p)
    assert not out["keep"][0] and out["keep"][1] and not out["ignore"][1]
    p = aug.Placement(scale=1.0, offset=(192.0, 0.0), out_size=64)
    out = aug.place(img, boxes, p)
    assert out["keep"][1] and out["ignore"][1]
    jit = aug.photometric_jitter(rng, img)
    assert jit.shape == img.shape and jit.dtype == np.uint8


def test_wider_evaluator_writes_its_report_pr_curve_and_samples(task_and_batch, tmp_path):
    """The `wider` evaluator end to end (untrained weights: the numbers are not the point):
    APs in [0, 1] equal to its JSON, the PR-curve PNG and the sample-detection PNG written."""
    import json

    from jaxface.tasks.base import EvalContext
    from jaxface.training import eval_writer

    task, batch = task_and_batch
    task.config.eval_limit = 16
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()).reshape(-1, 1), ("data", "model"))
    variables = jax.jit(task.init_variables)(jax.random.key(0), batch)
    ctx = EvalContext(mesh=mesh, workdir=str(tmp_path), step=3, process_index=0, process_count=1)
    evaluator = task.evaluators()["wider"]
    assert evaluator.predict == "detect"
    got, artefacts = evaluator.run(task.predict_fns()["detect"], variables, ctx)
    assert not list(tmp_path.iterdir())  # an evaluator writes nothing itself
    eval_writer.write_artefacts(str(tmp_path), 3, artefacts)
    assert set(got) >= {"ap_easy", "ap_medium", "ap_hard"}
    saved = json.loads((tmp_path / "wider_eval_step3.json").read_text())
    for k, ap in got.items():
        # A setting with no face in these 16 scenes has no AP (NaN); every other is in [0, 1].
        if saved["num_faces"][k.removeprefix("ap_")] == 0:
            assert np.isnan(ap) and np.isnan(saved[k])
        else:
            assert 0.0 <= ap <= 1.0 and saved[k] == ap
    assert saved["num_faces"]["hard"] > 0
    # The saved detections give the same APs through the plain evaluation.
    from jaxface.evaluation import widerface as wider_eval
    from jaxface.tasks import detection_evaluators as de
    from jaxface.tasks.detection_data import faces_of

    det = np.load(tmp_path / "wider_detections_step3.npz")
    assert det["boxes"].shape[:2] == det["scores"].shape == det["valid"].shape
    src, _ = task.data(task.config.eval_split, train=False)
    faces = [faces_of(src[i]) for i in range(det["boxes"].shape[0])]
    gt = de.synthetic_ground_truth(faces, size_buckets=task.config.eval_size_buckets)
    preds = de.predictions_from_arrays(det["boxes"], det["scores"], det["valid"])
    again = wider_eval.evaluate(gt, preds)
    for k, ap in got.items():
        np.testing.assert_equal(again[k.removeprefix("ap_")].ap, ap)
    for name in ("wider_pr_step3.png", "sample_detections_step3.png"):
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG" and min(im.size) > 100


def test_native_scale_training_crops_and_evaluation_canvas():
    """`augment.scale_reference = "native"`: training crops the image at its own scale
    (x the factor), evaluation shows it unscaled on the `eval_image_size` canvas."""
    from jaxface.tasks import detection_data

    config = load_config(CONFIGS / "scaleface.py", "tiny")
    config.augment.scale_reference = "native"
    config.augment.scale_range = [1.0, 1.0]
    config.augment.photometric = False
    config.eval_image_size = 256
    image = np.zeros((150, 200, 3), np.uint8)
    image[40:80, 60:100] = 255
    faces = {
        "boxes": np.array([[60, 40, 100, 80]], np.float32),
        "invalid": np.zeros((1,), np.int32),
        "landmarks": np.zeros((1, 5, 2), np.float32),
        "has_landmarks": np.zeros((1,), bool),
    }
    ev = detection_data.prepare(config, image, faces, None, train=False)
    assert ev["image"].shape == (256, 256, 3) and ev["scale"] == 1.0
    np.testing.assert_allclose(ev["gt_boxes"][0], [60, 40, 100, 80])
    np.testing.assert_allclose(ev["image_hw"], [150, 200])
    rng = np.random.default_rng(0)
    whole = 0
    for _ in range(20):
        tr = detection_data.prepare(config, image, faces, rng, train=True)
        assert tr["image"].shape == (128, 128, 3) and tr["scale"] == 1.0
        b = tr["gt_boxes"][0]
        if tr["gt_valid"][0] and b[0] > 0 and b[1] > 0 and b[2] < 128 and b[3] < 128:
            whole += 1
            assert (b[2] - b[0], b[3] - b[1]) == pytest.approx((40, 40), abs=1e-3)  # not shrunk
    assert whole >= 3
