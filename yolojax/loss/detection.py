"""YOLOv8 detection loss: CIoU box loss + BCE class loss + distribution focal loss.

Reproduces ultralytics 8.4.190's ``v8DetectionLoss`` (with its ``BboxLoss``, ``DFLoss`` and
``TaskAlignedAssigner``) for fixed-shape, padded batches.

What ``total`` means, precisely
-------------------------------
ultralytics computes ``loss = [box, cls, dfl]``, each already multiplied by its gain
(``hyp.box``, ``hyp.cls``, ``hyp.dfl``) and each normalised by ``target_scores_sum`` (the sum
of all soft class targets of the batch, at least 1) -- a per-batch normalisation, not a mean
per image. It returns ``(loss * batch_size, loss.detach())``; the trainer prints/logs the
detached items and back-propagates ``(loss * batch_size).sum()`` (times ``world_size`` under
DDP, where each rank normalises by its own ``target_scores_sum``).

Here ``parts == {"box", "cls", "dfl"}`` are exactly ultralytics' detached items, and
``total = box + cls + dfl`` **without** the batch-size factor. Hence
``grad(ultralytics' backprop loss) == batch_size * grad(total)``, with ``batch_size`` the
global batch when one step sees the whole batch (jit/GSPMD). An optimizer that wants
ultralytics' update for the same ``lr``/``weight_decay`` must scale the gradient of ``total``
by the global batch size (ultralytics' SGD/AdamW hyper-parameters are tuned for that
sum-like scale; it also accumulates such gradients over ``nbs / batch_size`` steps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from yolojax.loss.assigner import Assignment, assign_bucketed
from yolojax.ops.anchors import bbox2dist, dist2bbox, make_anchors
from yolojax.ops.boxes import bbox_iou
from yolojax.ops.precision import compute_dtype


def _bce_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Elementwise ``BCEWithLogitsLoss(reduction='none')``: (1 - y) x - log sigmoid(x), in
    torch's stable form max(x, 0) - x y + log(1 + exp(-|x|)) (XLA:CPU compiles it to ~5x
    faster code than ``jax.nn.log_sigmoid``'s)."""
    return jnp.maximum(logits, 0.0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


@dataclass(frozen=True)
class DetectionLoss:
    """ultralytics' v8 detection loss as a pure function of head outputs and a batch.

    Attributes:
      num_classes: number of classes ``nc``.
      reg_max: DFL bins per box side (16 for YOLOv8); must be > 1.
      strides: pixel stride of each head level, in the order of ``feats``.
      box, cls, dfl: loss gains (ultralytics' default.yaml: 7.5, 0.5, 1.5).
      tal_topk: anchors kept per box by the assigner (``v8DetectionLoss``'s 10).
      tal_topk2: ultralytics' secondary top-k; None (the v8 default) means ``tal_topk``.
      axis_name: optional mapped axis (pmap / shard_map). When set, the normaliser
        ``target_scores_sum`` is summed over that axis, so each device returns its share of
        the global-batch loss: ``psum(total)`` and ``psum(parts)`` equal the numbers of one
        device seeing the whole batch, and so does the psum of the gradients. Leave None
        under jit/GSPMD, where the batch axis is just sharded.
      class_weights: None, or one float per class multiplying that class's BCE terms
        (ultralytics' ``cls_pw`` weights, :func:`yolojax.loss.class_weights.class_weights`).

    ``loss_fn(feats, batch) -> (total, parts)``:
      feats: sequence of per-level raw head outputs (B, h, w, 4 * reg_max + num_classes),
        any float dtype (computed in float32), as ``YOLOv8.apply(..., train=True)`` returns;
        box logits first (4 sides x reg_max bins, side-major), then class logits. The input
        image is (h * stride, w * stride) of the first level.
      batch: mapping with ``boxes`` float (B, M, 4) xyxy pixels of the input image,
        ``classes`` int (B, M), ``mask`` bool (B, M); other keys are ignored. A valid row
        whose coordinates sum to <= 0 is ignored, as ultralytics does.
      Returns ``total`` float32 scalar = box + cls + dfl (differentiate this) and ``parts``
      {"box", "cls", "dfl"}: float32 scalars, gain-scaled, gradient-stopped, equal to
      ultralytics' loss items. See the module docstring for the batch-size factor.
    """

    num_classes: int
    reg_max: int = 16
    strides: tuple[int, ...] = (8, 16, 32)
    box: float = 7.5
    cls: float = 0.5
    dfl: float = 1.5
    tal_topk: int = 10
    tal_topk2: int | None = None
    axis_name: str | None = None
    class_weights: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.reg_max <= 1:
            raise ValueError(f"DetectionLoss needs reg_max > 1 (DFL), got {self.reg_max}")
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        if self.class_weights is not None:
            weights = tuple(float(w) for w in self.class_weights)
            if len(weights) != self.num_classes:
                raise ValueError(f"class_weights has {len(weights)} values for {self.num_classes} classes")
            object.__setattr__(self, "class_weights", weights)

    # -- pieces -----------------------------------------------------------------------------

    def flatten(self, feats: Sequence[jax.Array]):
        """Per-level outputs -> (box logits (B, A, 4 * reg_max), class logits (B, A, nc),
        anchor points (A, 2) in grid units, strides (A, 1)), float32 (float64 for a float64 model)."""
        if len(feats) != len(self.strides):
            raise ValueError(f"expected {len(self.strides)} feature levels, got {len(feats)}")
        no = 4 * self.reg_max + self.num_classes
        for f in feats:
            if f.ndim != 4 or f.shape[-1] != no:
                raise ValueError(f"each level must be (B, h, w, {no}), got {f.shape}")
        b, nb = feats[0].shape[0], 4 * self.reg_max
        # Split each level before joining the levels: XLA folds the split into the head's own
        # box/class concatenation, while a split of the joined (B, A, no) array costs a copy.
        flat = lambda parts: jnp.concatenate([p.reshape(b, -1, p.shape[-1]) for p in parts], 1)  # noqa: E731
        dtype = compute_dtype(*(f.dtype for f in feats))
        pred_dist = flat([f[..., :nb].astype(dtype) for f in feats])
        pred_scores = flat([f[..., nb:].astype(dtype) for f in feats])
        points, stride = make_anchors([f.shape[1:3] for f in feats], self.strides)
        return pred_dist, pred_scores, points, stride

    def decode(self, pred_dist: jax.Array, anchor_points: jax.Array) -> jax.Array:
        """(B, A, 4 * reg_max) logits -> (B, A, 4) xyxy boxes in grid units of each anchor."""
        logits = pred_dist.reshape(*pred_dist.shape[:-1], 4, self.reg_max)
        dist = jax.nn.softmax(logits, axis=-1) @ jnp.arange(self.reg_max, dtype=logits.dtype)
        return dist2bbox(dist, anchor_points, xywh=False)

    def assign_targets(self, feats: Sequence[jax.Array], batch: Mapping[str, jax.Array]) -> Assignment:
        """The assigner's output for these predictions (targets in pixels)."""
        pred_dist, pred_scores, points, stride = self.flatten(feats)
        return self._assign(pred_dist, pred_scores, points, stride, batch)

    def _assign(self, pred_dist, pred_scores, points, stride, batch) -> Assignment:
        pred_bboxes = self.decode(pred_dist, points)
        gt_bboxes = jnp.asarray(batch["boxes"], pred_dist.dtype)
        mask_gt = jnp.asarray(batch["mask"], bool) & (gt_bboxes.sum(-1) > 0)
        return assign_bucketed(
            jax.nn.sigmoid(pred_scores),
            pred_bboxes * stride,
            points * stride,
            jnp.asarray(batch["classes"], jnp.int32),
            gt_bboxes,
            mask_gt,
            topk=self.tal_topk,
            alpha=0.5,
            beta=6.0,
            eps=1e-9,
            min_side=float(self.strides[1] if len(self.strides) > 1 else self.strides[0]),
            topk2=self.tal_topk2,
        )

    # -- the loss ---------------------------------------------------------------------------

    def __call__(self, feats: Sequence[jax.Array], batch: Mapping[str, jax.Array]):
        pred_dist, pred_scores, points, stride = self.flatten(feats)
        t = self._assign(pred_dist, pred_scores, points, stride, batch)

        target_scores_sum = t.target_scores.sum()
        if self.axis_name is not None:
            target_scores_sum = jax.lax.psum(target_scores_sum, self.axis_name)
        target_scores_sum = jnp.maximum(target_scores_sum, 1.0)

        # Class loss: BCE over every anchor and class.
        bce = _bce_with_logits(pred_scores, t.target_scores)
        if self.class_weights is not None:
            bce = bce * jnp.asarray(self.class_weights, bce.dtype)
        loss_cls = bce.sum() / target_scores_sum

        # Box losses on foreground anchors, weighted by their soft target mass. Background
        # anchors get a harmless dummy box so no NaN/inf can leak into the gradient.
        fg = t.fg_mask[..., None]
        weight = jnp.where(t.fg_mask, t.target_scores.sum(-1), 0.0)  # (B, A)
        target_grid = t.target_bboxes / stride
        dummy = jnp.asarray([0.0, 0.0, 1.0, 1.0], pred_dist.dtype)
        pred_bboxes = self.decode(pred_dist, points)
        iou = bbox_iou(
            jnp.where(fg, pred_bboxes, dummy), jnp.where(fg, target_grid, dummy),
            xywh=False, CIoU=True,
        )
        loss_box = ((1.0 - iou) * weight).sum() / target_scores_sum

        # Distribution focal loss: cross-entropy to the two bins around each target distance.
        target = bbox2dist(points, jnp.where(fg, target_grid, dummy), self.reg_max)  # (B, A, 4)
        left = jnp.floor(target).astype(jnp.int32)
        w_left = (left + 1).astype(target.dtype) - target
        logp = jax.nn.log_softmax(pred_dist.reshape(*target.shape, self.reg_max), axis=-1)
        lp_left = jnp.take_along_axis(logp, left[..., None], axis=-1)[..., 0]
        lp_right = jnp.take_along_axis(logp, left[..., None] + 1, axis=-1)[..., 0]
        dfl = -(lp_left * w_left + lp_right * (1.0 - w_left)).mean(-1)  # (B, A)
        loss_dfl = (dfl * weight).sum() / target_scores_sum

        box, cls, dfl_ = loss_box * self.box, loss_cls * self.cls, loss_dfl * self.dfl
        total = box + cls + dfl_
        parts = {"box": box, "cls": cls, "dfl": dfl_}
        return total, jax.tree.map(jax.lax.stop_gradient, parts)
