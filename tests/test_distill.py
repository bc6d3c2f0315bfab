"""Feature distillation (yolojax.loss.distill) against ultralytics 8.4.190's DistillationModel.

The oracle runs in this process on CPU torch: ultralytics builds the student as its trainer
does (yolov8n.pt's yaml and weights, only '.dfl' frozen), wraps it with the teacher
yolov8s.pt, and computes the loss vector (box, cls, dfl, dis, each times the batch size) of
one batch of two COCO8 images. yolojax gets the same student and teacher weights (converted
from the same files), ultralytics' projector weights, and the same batch.
"""

from __future__ import annotations

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
    from yolojax.models import yolov8_from_info
    from yolojax.weights import load_weights

    student_vars, student_info = load_weights(WEIGHTS)
    teacher_vars, teacher_info = load_weights(TEACHER)
    student, teacher = yolov8_from_info(student_info), yolov8_from_info(teacher_info)
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
