"""Feature distillation (yolojax.loss.distill) against ultralytics 8.4.190's DistillationModel.

The oracle runs in this process on CPU torch: ultralytics builds the student as its trainer
does (yolov8n.pt's yaml and weights, only '.dfl' frozen), wraps it with the teacher
yolov8s.pt, and computes the loss vector (box, cls, dfl, dis, each times the batch size) of
one batch of two COCO8 images. yolojax gets the same student and teacher weights (converted
from the same files), ultralytics' projector weights, and the same batch.
"""

from __future__ import annotations

import json

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shared_data import COCO8, SHARED, WEIGHTS, needs
from yolojax.loss import DetectionLoss, DistillationLoss, Projector, teacher_weights, weighted_l2

TEACHER = SHARED / "yolov8s.pt"
IMGSZ = 160
IMAGES = ("000000000036.jpg", "000000000042.jpg")


def _batch():
    """Two COCO8 val images resized to IMGSZ x IMGSZ (float [0, 1], NHWC) and their labels
    (normalised xywh stay valid under a plain resize)."""
    images, rows = [], []
    for i, name in enumerate(IMAGES):
        bgr = cv2.imread(str(COCO8 / "images" / "val" / name))
        images.append(cv2.resize(bgr, (IMGSZ, IMGSZ), interpolation=cv2.INTER_AREA)[..., ::-1] / 255.0)
        labels = np.loadtxt(COCO8 / "labels" / "val" / name.replace(".jpg", ".txt"), ndmin=2)
        rows += [[i, *row] for row in labels]
    return np.stack(images).astype(np.float32), np.array(rows, np.float32)


def _ultralytics(images, rows):
    torch = pytest.importorskip("torch")
    pytest.importorskip("ultralytics")
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.distill_model import DistillationModel
    from ultralytics.nn.tasks import DetectionModel, load_checkpoint

    weights = load_checkpoint(str(WEIGHTS))[0]
    student = DetectionModel(weights.yaml, nc=80, ch=3, verbose=False)
    student.load(weights, verbose=False)
    student.args = get_cfg(overrides={"imgsz": IMGSZ})
    for name, param in student.named_parameters():  # the trainer's freeze loop: only '.dfl'
        param.requires_grad = ".dfl" not in name
    torch.manual_seed(0)
    model = DistillationModel(teacher_model=str(TEACHER), student_model=student)
    model.train()
    batch = {"img": torch.from_numpy(images.transpose(0, 3, 1, 2).copy()),
             "batch_idx": torch.from_numpy(rows[:, 0].copy()), "cls": torch.from_numpy(rows[:, 1:2].copy()),
             "bboxes": torch.from_numpy(rows[:, 2:6].copy())}
    loss, items = model(batch)
    loss.sum().backward()
    projector = {f"level_{i}_conv_{j}": {"kernel": m[2 * j].weight.detach().numpy().transpose(2, 3, 1, 0),
                                         "bias": m[2 * j].bias.detach().numpy()}
                 for i, m in enumerate(model.projector) for j in (0, 1)}
    grads = {name: p.grad.numpy() for name, p in student.named_parameters() if p.grad is not None}
    projector_grads = {f"level_{i}_conv_{j}": m[2 * j].weight.grad.numpy().transpose(2, 3, 1, 0)
                       for i, m in enumerate(model.projector) for j in (0, 1)}
    return loss.detach().numpy(), {k: float(v.reshape(-1)[0]) for k, v in items.items()}, projector, grads, \
        projector_grads


def _yolojax(images, rows, projector_params):
    from yolojax.models import model_from_info
    from yolojax.weights import load_weights

    student_vars, student_info = load_weights(WEIGHTS)
    teacher_vars, teacher_info = load_weights(TEACHER)
    student, teacher = model_from_info(student_info), model_from_info(teacher_info)
    m = max(int((rows[:, 0] == i).sum()) for i in range(len(images)))
    boxes, classes, mask = np.zeros((len(images), m, 4), np.float32), np.zeros((len(images), m), np.int32), \
        np.zeros((len(images), m), bool)
    for i in range(len(images)):
        mine = rows[rows[:, 0] == i]
        xy, wh = mine[:, 2:4] * IMGSZ, mine[:, 4:6] * IMGSZ
        boxes[i, :len(mine)] = np.concatenate([xy - wh / 2, xy + wh / 2], 1)
        classes[i, :len(mine)], mask[i, :len(mine)] = mine[:, 1], True
    batch = {"boxes": jnp.asarray(boxes), "classes": jnp.asarray(classes), "mask": jnp.asarray(mask)}
    x = jnp.asarray(images)
    teacher_out, teacher_state = teacher.apply(teacher_vars, x, train=False, mutable=["intermediates"])
    teacher_feats = teacher_state["intermediates"]["detect_inputs"][0]
    detection, distillation = DetectionLoss(80), DistillationLoss()

    def objective(params):
        feats, state = student.apply({"params": params["student"], "batch_stats": student_vars["batch_stats"]}, x,
                                     train=True, mutable=["batch_stats", "intermediates"])
        total, parts = detection(feats, batch)
        projected = Projector(tuple(t.shape[-1] for t in teacher_feats)).apply(
            {"params": params["projector"]}, state["intermediates"]["detect_inputs"][0])
        dis = distillation(projected, teacher_feats, teacher_out)
        return (total + dis) * len(images), {**parts, "dis": dis}

    params = {"student": student_vars["params"], "projector": projector_params}
    grads, parts = jax.grad(objective, has_aux=True)(params)
    return {k: float(v) for k, v in parts.items()}, grads


@needs(WEIGHTS, TEACHER, COCO8)
def test_loss_items_and_student_gradient_match_ultralytics():
    from flax import traverse_util

    from yolojax.weights.ultralytics import torch_key_to_flax

    images, rows = _batch()
    loss, items, projector, torch_grads, torch_projector_grads = _ultralytics(images, rows)
    parts, grads = _yolojax(images, rows, projector)
    print("ultralytics", items, "yolojax", parts)
    for ours, theirs in (("box", "box_loss"), ("cls", "cls_loss"), ("dfl", "dfl_loss"), ("dis", "dis_loss")):
        assert parts[ours] == pytest.approx(items[theirs], rel=1e-3), ours
    assert items["dis_loss"] > 0.01 and loss[3] == pytest.approx(len(images) * items["dis_loss"], rel=1e-6)
    flat = traverse_util.flatten_dict(grads["student"])
    worst = 0.0
    for name, torch_grad in torch_grads.items():
        path = torch_key_to_flax(name, torch_grad.ndim)
        grad = np.asarray(flat[path[1:]])
        expected = torch_grad.transpose(2, 3, 1, 0) if torch_grad.ndim == 4 else torch_grad
        worst = max(worst, float(np.abs(grad - expected).max() / (np.abs(expected).max() + 1e-12)))
    for name, expected in torch_projector_grads.items():
        grad = np.asarray(grads["projector"][name]["kernel"])
        worst = max(worst, float(np.abs(grad - expected).max() / (np.abs(expected).max() + 1e-12)))
    print("largest gradient difference, relative to the leaf's largest value:", worst)
    assert len(torch_grads) == len(flat) - 1  # every student leaf but the frozen DFL kernel
    assert worst < 1e-3


def test_projector_is_initialised_as_torch_and_weights_split_the_levels():
    projector = Projector((8, 16))
    feats = [jnp.ones((2, 4, 4, 3)), jnp.ones((2, 2, 2, 5))]
    params = projector.init(jax.random.key(0), feats)["params"]
    assert params["level_0_conv_0"]["kernel"].shape == (1, 1, 3, 8)
    assert params["level_1_conv_1"]["kernel"].shape == (1, 1, 16, 16)
    for name, fan_in in (("level_0_conv_0", 3), ("level_1_conv_1", 16)):  # U(-1/sqrt(fan_in), +1/sqrt(fan_in))
        for leaf in ("kernel", "bias"):
            assert float(jnp.abs(params[name][leaf]).max()) <= 1 / np.sqrt(fan_in)
            assert float(jnp.abs(params[name][leaf]).max()) > 0.5 / np.sqrt(fan_in)
    out = projector.apply({"params": params}, feats)
    assert [o.shape for o in out] == [(2, 4, 4, 8), (2, 2, 2, 16)]
    scores = jnp.arange(2 * 20 * 3, dtype=jnp.float32).reshape(2, 20, 3) / 200
    weights = teacher_weights(scores, [(4, 4), (2, 2)])
    np.testing.assert_allclose(weights[0][0, 0, 1, 0], scores[0, 1].max())
    np.testing.assert_allclose(weights[1][1, 1, 0, 0], scores[1, 16 + 2].max())
    with pytest.raises(ValueError, match="scores have 20 anchors; the levels"):
        teacher_weights(scores, [(4, 4)])


def test_weighted_l2_is_a_score_weighted_mean_over_channels():
    teacher = jnp.zeros((1, 1, 2, 4))
    projected = jnp.stack([jnp.full((1, 4), 1.0), jnp.full((1, 4), 3.0)], axis=1)[None]  # pixel errors 1 and 9
    weights = jnp.array([[[[1.0], [0.0]]]])
    assert float(weighted_l2(projected, teacher, weights)) == pytest.approx(1.0)  # only the first pixel counts
    weights = jnp.array([[[[1.0], [1.0]]]])
    assert float(weighted_l2(projected, teacher, weights)) == pytest.approx((4 * 1 + 4 * 9) / (4 * 2))


def test_weighted_l2_shards_sum_to_the_whole_batch():
    """Under a mapped batch axis each shard returns its share: the shares and their gradients
    sum to the whole batch's numbers (as DetectionLoss's do under parallel.mode='pmap')."""
    rng = np.random.default_rng(0)
    projected, teacher = (jnp.asarray(rng.normal(size=(4, 4, 4, 6)), jnp.float32) for _ in range(2))
    weights = jnp.asarray(rng.uniform(size=(4, 4, 4, 1)), jnp.float32)
    whole, grad = jax.value_and_grad(weighted_l2)(projected, teacher, weights)
    split = lambda x: x.reshape(2, 2, *x.shape[1:])  # noqa: E731
    shares, grads = jax.vmap(jax.value_and_grad(lambda p, t, w: weighted_l2(p, t, w, "data")), axis_name="data")(
        split(projected), split(teacher), split(weights))
    np.testing.assert_allclose(float(shares.sum()), float(whole), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grads).reshape(grad.shape), np.asarray(grad), rtol=1e-5, atol=1e-9)


@needs(WEIGHTS)
def test_train_step_distills_from_a_frozen_teacher_and_bn_l1_adds_its_subgradient():
    """One jit train step: ``dis`` is the Distillation of the step's own features, the loss
    sums the four items, the projector gets a gradient, the teacher's variables come back
    unchanged; bn_l1 adds bn_l1 * sign(gamma) to the BatchNorm scales' gradients and to no other."""
    from flax import traverse_util

    from yolojax.data.sources.synthetic import rectangles_batch
    from yolojax.loss.distill import Distillation, detect_inputs, feature_widths
    from yolojax.models import model_from_info
    from yolojax.models.naming import DISTILL_PROJECTOR
    from yolojax.train import TrainState, make_recipe
    from yolojax.train.step import train_step
    from yolojax.weights import load_weights

    imgsz, nc = 64, 3
    variables, info = load_weights(WEIGHTS)  # yolov8n.pt as both: the projector (random) tells them apart
    student = teacher = model_from_info(info)
    teacher_vars = jax.tree.map(np.array, variables)
    distill = Distillation(teacher, feature_widths(teacher), DistillationLoss(6.0))
    assert distill.teacher_widths == (64, 128, 256)
    variables["params"][DISTILL_PROJECTOR] = distill.init_projector(jax.random.key(2), feature_widths(student))
    recipe = make_recipe(epochs=10, batch_size=2, dataset_size=8, num_classes=80, optimizer="SGD", lr0=0.01,
                         momentum=0.9, warmup_epochs=0)
    assert recipe.accumulate > 1  # the first step only accumulates: grad_accum holds its gradient
    state = TrainState.create(student.apply, variables, recipe, teacher=teacher_vars)
    batch = {k: jnp.asarray(v) for k, v in rectangles_batch(2, imgsz, nc, 4, seed=3).items()}
    loss_fn = DetectionLoss(80)

    bn_l1 = 1e6  # far above any loss gradient: the BatchNorm scales' gradients are then bn_l1 * sign(gamma)
    new, metrics = jax.jit(lambda s, b: train_step(s, b, loss_fn, distill=distill, bn_l1=bn_l1))(state, batch)

    @jax.jit
    def expected_dis(images):
        _, updates = student.apply(variables, images, train=True, mutable=["batch_stats", "intermediates"])
        return distill(variables["params"], detect_inputs(updates), *distill.teacher_forward(teacher_vars, images))

    expected = expected_dis(batch["image"].astype(jnp.float32) / 255.0)
    assert float(metrics["dis"]) == pytest.approx(float(expected), rel=1e-4) and float(metrics["dis"]) > 0
    assert float(metrics["loss"]) == pytest.approx(float(metrics["box"] + metrics["cls"] + metrics["dfl"]
                                                         + metrics["dis"]), rel=1e-6)
    jax.tree.map(np.testing.assert_array_equal, new.teacher, teacher_vars)
    projector_grad = traverse_util.flatten_dict(new.grad_accum[DISTILL_PROJECTOR])
    assert all(float(jnp.abs(g).max()) > 0 for g in projector_grad.values())
    params = traverse_util.flatten_dict(variables["params"])
    for path, grad in traverse_util.flatten_dict(new.grad_accum).items():
        if path[-2:] == ("bn", "scale"):
            np.testing.assert_allclose(np.asarray(grad) / bn_l1, np.sign(params[path]), atol=1e-3)
        else:
            assert float(jnp.abs(grad).max()) < 1e-3 * bn_l1, path


@needs(WEIGHTS)
def test_train_distills_resumes_with_the_teacher_reloaded_and_hands_on_only_the_student(tmp_path, monkeypatch):
    """`train` with distill_model: the dis item is logged; checkpoints hold the projector (in
    params and EMA) but never the teacher; a resume loads the teacher again and continues;
    validation, and the workdir as weights, see only the student."""
    from flax import traverse_util

    from yolojax import evaluation
    from yolojax.config import default_config
    from yolojax.console import ConfigError
    from yolojax.data.sources.synthetic import write_synthetic_dataset
    from yolojax.models import YOLOv8
    from yolojax.models.naming import DISTILL_PROJECTOR
    from yolojax.train.run import train
    from yolojax.weights import load_weights
    from yolojax.weights.workdir import _read_arrays

    data_yaml = write_synthetic_dataset(tmp_path / "shapes", num_train=8, num_val=2, size_range=(64, 96),
                                        max_shapes=2, seed=0)
    teacher = WEIGHTS  # yolov8n.pt: 80 classes to the student's 2
    c = default_config()
    c.model.scale, c.data.yaml, c.distill_model = "n", str(data_yaml), str(data_yaml)
    c.imgsz, c.batch_size, c.epochs, c.close_mosaic, c.max_steps = 64, 4, 2, 0, 2
    c.data.workers, c.progress, c.plots, c.compile_cache = 0, False, False, str(tmp_path / "cache")
    c.checkpoint.async_save, c.val.enabled, c.log_every_steps = False, False, 1
    workdir = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"^distill_model='.*data.yaml': "):
        train(c, workdir)
    c.distill_model = str(teacher)
    assert train(c, workdir)["step"] == 2
    state = _read_arrays(workdir / "checkpoints" / "2" / "state")
    assert "teacher" not in state and DISTILL_PROJECTOR in state["params"] and DISTILL_PROJECTOR in state["ema"]["params"]
    validated = []  # what validation gets (its own compile is left out: tests/test_val_predict.py)

    def validate(variables, **kwargs):
        validated.append(set(variables["params"]))
        return {"mAP50": 0.5, "mAP50-95": 0.25, "precision": 0.5, "recall": 0.5}

    monkeypatch.setattr(evaluation, "validate", validate)
    c.max_steps, c.val.enabled = 0, True
    summary = train(c, workdir)  # resumed: the teacher read again from distill_model
    assert summary["step"] == 4 and summary["last"]["mAP50-95"] == 0.25
    assert validated and all(DISTILL_PROJECTOR not in keys and "model_22" in keys for keys in validated)
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4] and all(r["dis"] > 0 for r in steps)
    for r in steps:
        assert r["loss"] == pytest.approx(r["box"] + r["cls"] + r["dfl"] + r["dis"], rel=1e-5)
    variables, _ = load_weights(workdir)
    assert DISTILL_PROJECTOR not in variables["params"]
    student = jax.eval_shape(lambda: YOLOv8(scale="n", num_classes=2).init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
    assert set(traverse_util.flatten_dict(variables["params"])) == set(traverse_util.flatten_dict(student["params"]))
