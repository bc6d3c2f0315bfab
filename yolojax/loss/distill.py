"""Feature distillation from a frozen teacher: ultralytics 8.4.190's ``DistillationModel`` loss.

ultralytics (nn/distill_model.py, ``DistillationModel.loss`` and ``loss_sl2``) matches the
inputs of the Detect head, the three neck features P3, P4, P5 (YOLOv8 layers 15, 18, 21), of
a student and a teacher that see the same batch:

* a projector per level maps the student's feature to the teacher's width: a 1x1 conv with
  bias (student -> teacher channels), ReLU, a 1x1 conv with bias (teacher -> teacher channels),
  both initialised as torch.nn.Conv2d is by default (:class:`Projector`);
* each pixel is weighted by the teacher's confidence there: the highest sigmoid class score
  of its head at that anchor (:func:`teacher_weights`; constants, no gradient);
* per level, the score-weighted mean squared error over batch, channels and pixels
  ``L = sum(w * (P(S) - T)**2) / (C_teacher * sum(w) + 1e-9)`` (:func:`weighted_l2`), one
  scalar for the whole batch;
* the levels are summed and multiplied by ``dis`` (default 6.0): ultralytics' ``dis_loss``
  item, which joins the detection loss's items (box, cls, dfl) and, like them, is
  back-propagated times the batch size.

Features are NHWC here: (B, H_l, W_l, C). The teacher's scores are those its eval forward
returns (:class:`yolojax.models.YOLOv8` with ``train=False``: (B, N, 4 + nc), sigmoid class
scores, stride 8 first and row-major within a level), whose maximum over classes is the
sigmoid of the maximum logit, as ultralytics takes it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from yolojax.models.layers import Conv2d
from yolojax.models.naming import DISTILL_PROJECTOR

DEFAULT_DIS = 6.0  # ultralytics 8.4.190 cfg/default.yaml `dis`
_EPS = 1e-9  # ultralytics' loss_sl2 denominator guard


def _torch_bias_init(fan_in: int):
    """torch.nn.Conv2d's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class Projector(nn.Module):
    """Student neck features -> teacher widths, one 1x1 conv, ReLU, 1x1 conv per level.

    Attributes:
      teacher_widths: the teacher's channels per level (yolov8s: 128, 256, 512).

    Call with the student's features [(B, H_l, W_l, C_student_l)] and get
    [(B, H_l, W_l, teacher_widths[l])]. Parameters ``level_{l}/conv_{0,1}/{kernel,bias}``.
    """

    teacher_widths: tuple[int, ...]

    @nn.compact
    def __call__(self, feats: Sequence[jax.Array]) -> list[jax.Array]:
        if len(feats) != len(self.teacher_widths):
            raise ValueError(f"{len(feats)} student levels for {len(self.teacher_widths)} teacher levels")
        out = []
        for level, (x, width) in enumerate(zip(feats, self.teacher_widths)):
            x = Conv2d(width, 1, use_bias=True, bias_init=_torch_bias_init(x.shape[-1]),
                       name=f"level_{level}_conv_0")(x.astype(jnp.float32))
            x = nn.relu(x)
            x = Conv2d(width, 1, use_bias=True, bias_init=_torch_bias_init(width), name=f"level_{level}_conv_1")(x)
            out.append(x)
        return out


def teacher_weights(scores: jax.Array, level_shapes: Sequence[tuple[int, int]]) -> list[jax.Array]:
    """The per-pixel weights of each level: the teacher's highest class score at that anchor.

    Args:
      scores: float (B, N, nc) sigmoid class scores (or (B, N, 4 + nc) with ``scores[..., 4:]``
        taken by the caller), N = sum of H_l * W_l, stride 8 first, row-major within a level.
      level_shapes: (H_l, W_l) of each level, in that order.

    Returns:
      [(B, H_l, W_l, 1) float32], no gradient (ultralytics computes them under no_grad).

    Raises:
      ValueError: N is not the sum of the level sizes.
    """
    sizes = [h * w for h, w in level_shapes]
    if scores.shape[1] != sum(sizes):
        raise ValueError(f"scores have {scores.shape[1]} anchors; the levels {list(level_shapes)} have {sum(sizes)}")
    best = jax.lax.stop_gradient(scores.astype(jnp.float32).max(axis=-1))
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [best[:, s:s + h * w].reshape(-1, h, w, 1) for s, (h, w) in zip(starts, level_shapes)]


def weighted_l2(projected: jax.Array, teacher: jax.Array, weights: jax.Array, axis_name: str | None = None) -> jax.Array:
    """ultralytics' ``loss_sl2`` of one level: sum(w (P - T)^2) / (C * sum(w) + 1e-9), float32.

    Args:
      projected: (B, H, W, C) the projected student feature.
      teacher: (B, H, W, C) the teacher's feature (treated as a constant).
      weights: (B, H, W, 1) :func:`teacher_weights`.
      axis_name: a mapped batch axis (shard_map): the weights are summed over the global
        batch, so each shard returns its share of the global loss (their ``psum``, and the
        ``psum`` of their gradients, are one device's numbers), as :class:`DetectionLoss` does.
    """
    diff = projected.astype(jnp.float32) - jax.lax.stop_gradient(teacher.astype(jnp.float32))
    numerator = jnp.sum(weights * diff * diff)
    weight_sum = jnp.sum(weights)
    if axis_name is not None:
        weight_sum = jax.lax.psum(weight_sum, axis_name)
    return numerator / (projected.shape[-1] * weight_sum + _EPS)


@dataclass(frozen=True)
class DistillationLoss:
    """ultralytics' ``dis_loss``: ``dis`` times the sum over levels of :func:`weighted_l2`.

    Attributes:
      dis: the weight (ultralytics' ``dis``, 6.0).
      axis_name: see :func:`weighted_l2` (this shard's share of the loss).

    Call with the projected student features, the teacher's features (both [(B, H_l, W_l, C_l)])
    and the teacher's eval output (B, N, 4 + nc); returns the float32 scalar ``dis_loss``,
    without the batch-size factor (the train step multiplies it, as the detection items).
    """

    dis: float = DEFAULT_DIS
    axis_name: str | None = None

    def __call__(self, projected: Sequence[jax.Array], teacher_feats: Sequence[jax.Array],
                 teacher_out: jax.Array) -> jax.Array:
        shapes = [tuple(t.shape[1:3]) for t in teacher_feats]
        weights = teacher_weights(teacher_out[..., 4:], shapes)
        levels = [weighted_l2(p, t, w, self.axis_name) for p, t, w in zip(projected, teacher_feats, weights)]
        return self.dis * jnp.sum(jnp.stack(levels))


def detect_inputs(updates: dict) -> tuple[jax.Array, ...]:
    """The Detect head's inputs a YOLOv8 forward with "intermediates" mutable sowed (P3, P4, P5)."""
    return tuple(updates["intermediates"]["detect_inputs"][0])


@dataclass(frozen=True)
class Distillation:
    """Knowledge distillation in the train step (ultralytics 8.4.190's ``DistillationModel``
    wrapped around the student): a frozen teacher, the projector and the loss.

    Attributes:
      teacher: the teacher's module (:class:`yolojax.models.YOLOv8`, any scale and class count),
        run in eval mode (BatchNorm running statistics, no update) on the student's batch; its
        variables travel in the train state (``TrainState.teacher``), never checkpointed.
      teacher_widths: the teacher's channels at P3, P4, P5 (:func:`feature_widths`).
      loss: the :class:`DistillationLoss` (``dis``; ``axis_name`` under shard_map).

    The projector's parameters live in the student's ``params`` under
    :data:`yolojax.models.naming.DISTILL_PROJECTOR`, so they are trained, clipped and averaged
    into the EMA with the student, as ultralytics' projector is (its optimiser groups take conv
    weights with decay and biases without).
    """

    teacher: Any
    teacher_widths: tuple[int, ...]
    loss: DistillationLoss = DistillationLoss()

    def teacher_forward(self, teacher_variables: dict, images: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        """The teacher's eval output (B, N, 4 + nc) and its features [(B, H_l, W_l, C_l)] for
        ``images`` float (B, H, W, 3) in [0, 1]; no gradient."""
        out, updates = self.teacher.apply(teacher_variables, images, train=False, mutable=["intermediates"])
        return jax.lax.stop_gradient((out, detect_inputs(updates)))

    def init_projector(self, key: jax.Array, student_widths: Sequence[int]) -> dict:
        """Fresh projector parameters (torch.nn.Conv2d's default init) from student widths."""
        feats = [jnp.zeros((1, 1, 1, c), jnp.float32) for c in student_widths]
        return Projector(self.teacher_widths).init(key, feats)["params"]

    def __call__(self, params: dict, student_feats: Sequence[jax.Array], teacher_out: jax.Array,
                 teacher_feats: Sequence[jax.Array]) -> jax.Array:
        """``dis_loss`` (float32 scalar, without the batch-size factor) of the student's
        features under ``params[DISTILL_PROJECTOR]`` against the teacher's."""
        projected = Projector(self.teacher_widths).apply({"params": params[DISTILL_PROJECTOR]}, student_feats)
        return self.loss(projected, teacher_feats, teacher_out)

    def with_axis_name(self, axis_name: str | None) -> "Distillation":
        """This distillation with its loss reduced over ``axis_name`` (shard_map)."""
        return Distillation(self.teacher, self.teacher_widths, DistillationLoss(self.loss.dis, axis_name))


def feature_widths(module: Any, imgsz: int = 64) -> tuple[int, ...]:
    """The channels of a YOLOv8 module's Detect inputs (P3, P4, P5), from its shapes alone."""
    images = jax.ShapeDtypeStruct((1, imgsz, imgsz, 3), jnp.float32)

    def forward(x):
        variables = module.init(jax.random.key(0), x)
        return detect_inputs(module.apply(variables, x, train=False, mutable=["intermediates"])[1])

    return tuple(int(f.shape[-1]) for f in jax.eval_shape(forward, images))
