"""Batched non-maximum suppression with fixed output shapes (jit / vmap friendly).

Semantics follow ultralytics' ``utils.nms.non_max_suppression`` for detection outputs:

1. candidates: ``score > conf_thres``; with ``multi_label`` every (box, class) pair above the
   threshold is a candidate, otherwise each box's best class only;
2. at most ``max_nms`` candidates, the highest scores first;
3. greedy suppression in descending score order (torchvision's ``nms``: a box is dropped
   when its IoU with a kept box is ``> iou_thres``), class-aware by offsetting boxes by
   ``class * max_wh`` exactly as ultralytics does (``agnostic=True``: one group);
4. the first ``max_det`` kept detections, in descending score order.

Because the greedy loop keeps at most ``max_det`` boxes it stops after ``max_det`` picks, so
its cost is O(max_det * max_nms) per image with O(max_nms) memory; no (K, K) IoU matrix.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from yolojax.ops.boxes import xywh2xyxy


class Detections(NamedTuple):
    """NMS output with fixed shapes; rows at and after ``count`` are zeros.

    Attributes:
      boxes: float32 (B, max_det, 4) xyxy, same units as the input boxes.
      scores: float32 (B, max_det).
      classes: int32 (B, max_det).
      count: int32 (B,) number of valid rows per image.
    """

    boxes: jax.Array
    scores: jax.Array
    classes: jax.Array
    count: jax.Array

    def to_list(self) -> list[np.ndarray]:
        """Per image a float32 (n, 6) array ``x1, y1, x2, y2, score, class`` (ultralytics' layout)."""
        boxes, scores, classes, count = (np.asarray(a) for a in self)
        out = []
        for b in range(boxes.shape[0]):
            n = int(count[b])
            out.append(np.concatenate(
                [boxes[b, :n], scores[b, :n, None], classes[b, :n, None].astype(np.float32)], axis=1
            ).astype(np.float32))
        return out


def _greedy_keep(boxes: jax.Array, alive: jax.Array, iou_thres: float, max_det: int) -> tuple[jax.Array, jax.Array]:
    """Greedy NMS over candidates sorted by descending score.

    Args:
      boxes: float32 (K, 4) xyxy (class-offset), sorted by descending score.
      alive: bool (K,) candidates taking part (False for those below the confidence threshold).
      iou_thres: suppress boxes whose IoU with a kept box is > iou_thres.
      max_det: maximum number of boxes to keep.

    Returns:
      keep: int32 (max_det,) kept candidate indices in order (0 past ``count``).
      count: int32 () number kept.
    """
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    positions = jnp.arange(boxes.shape[0])

    def cond(state):
        alive, _, count = state
        return (count < max_det) & jnp.any(alive)

    def body(state):
        alive, keep, count = state
        i = jnp.argmax(alive)  # first alive = highest remaining score
        w = jnp.maximum(0.0, jnp.minimum(x2[i], x2) - jnp.maximum(x1[i], x1))
        h = jnp.maximum(0.0, jnp.minimum(y2[i], y2) - jnp.maximum(y1[i], y1))
        inter = w * h
        iou = inter / (areas[i] + areas - inter)  # torchvision: no eps
        alive = alive & ~(iou > iou_thres) & (positions != i)
        keep = keep.at[count].set(i.astype(jnp.int32))
        return alive, keep, count + 1

    keep0 = jnp.zeros((max_det,), jnp.int32)
    _, keep, count = jax.lax.while_loop(cond, body, (alive, keep0, jnp.int32(0)))
    return keep, count


# Candidate-prefix lengths the greedy loop may run on (see _non_max_suppression).
GREEDY_SIZES = (512, 2048, 8192)


def _candidates(
    pred: jax.Array,
    conf_thres: float,
    agnostic: bool,
    multi_label: bool,
    max_nms: int,
    max_wh: float,
    class_mask: jax.Array | None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """One image's NMS candidates, the top ``max_nms`` by score, in descending order.

    Returns boxes (K, 4) xyxy, the same with the class offset, alive bool (K,) (score above
    ``conf_thres`` and class allowed: always a prefix, as the others sort last at -inf),
    scores (K,) and int32 classes (K,).
    """
    n, c = pred.shape
    nc = c - 4
    boxes = xywh2xyxy(pred[:, :4].astype(jnp.float32))
    scores = pred[:, 4:].astype(jnp.float32)
    if multi_label and nc > 1:
        flat = scores.reshape(-1)
        valid = flat > conf_thres
        if class_mask is not None:
            valid = valid & jnp.tile(class_mask, n)
        k = min(max_nms, n * nc)
        top, idx = jax.lax.top_k(jnp.where(valid, flat, -jnp.inf), k)
        alive = valid[idx]
        box_idx, cls = idx // nc, (idx % nc).astype(jnp.int32)
    else:
        conf, cls_all = jnp.max(scores, axis=1), jnp.argmax(scores, axis=1).astype(jnp.int32)
        valid = conf > conf_thres
        if class_mask is not None:
            valid = valid & class_mask[cls_all]
        k = min(max_nms, n)
        top, box_idx = jax.lax.top_k(jnp.where(valid, conf, -jnp.inf), k)
        alive = valid[box_idx]
        cls = cls_all[box_idx]
    cand = boxes[box_idx]
    offset = cls.astype(jnp.float32)[:, None] * (0.0 if agnostic else float(max_wh))
    return cand, cand + offset, alive, top, cls


def non_max_suppression(
    prediction: jax.Array,
    conf_thres: float = 0.25,
    iou_thres: float = 0.7,
    *,
    agnostic: bool = False,
    multi_label: bool = False,
    max_det: int = 300,
    max_nms: int = 30000,
    max_wh: float = 7680.0,
    classes: Sequence[int] | None = None,
) -> Detections:
    """Fixed-shape batched NMS of YOLOv8 eval outputs.

    Args:
      prediction: (B, N, 4 + nc): xywh boxes then class scores (the model's eval output).
      conf_thres: keep candidates with score > conf_thres.
      iou_thres: suppress boxes with IoU > iou_thres against a kept box (same class unless
        ``agnostic``).
      agnostic: one suppression group for all classes.
      multi_label: every (box, class) pair above conf_thres is a candidate (ultralytics val).
      max_det: detections kept per image (output rows).
      max_nms: candidates per image entering the suppression (the top scores).
      max_wh: class offset in box units for class-aware NMS (ultralytics' 7680).
      classes: optional tuple of class ids to keep (others are dropped before NMS).

    Returns:
      :class:`Detections` with (B, max_det) rows sorted by descending score.
    """
    classes = None if classes is None else tuple(int(c) for c in classes)
    return _non_max_suppression(prediction, float(conf_thres), float(iou_thres), agnostic=bool(agnostic),
                                multi_label=bool(multi_label), max_det=int(max_det), max_nms=int(max_nms),
                                max_wh=float(max_wh), classes=classes)


@functools.partial(
    jax.jit,
    static_argnames=("conf_thres", "iou_thres", "agnostic", "multi_label", "max_det", "max_nms", "max_wh", "classes"),
)
def _non_max_suppression(prediction, conf_thres, iou_thres, *, agnostic, multi_label, max_det, max_nms, max_wh,
                         classes):
    if not 0.0 <= conf_thres <= 1.0:
        raise ValueError(f"conf_thres {conf_thres} outside [0, 1]")
    if not 0.0 <= iou_thres <= 1.0:
        raise ValueError(f"iou_thres {iou_thres} outside [0, 1]")
    if prediction.ndim != 3 or prediction.shape[-1] < 5:
        raise ValueError(f"prediction must be (B, N, 4 + nc), got {prediction.shape}")
    nc = prediction.shape[-1] - 4
    class_mask = None
    if classes is not None:
        class_mask = jnp.zeros((nc,), bool).at[jnp.asarray(tuple(classes), jnp.int32)].set(True)
    candidates = functools.partial(_candidates, conf_thres=conf_thres, agnostic=agnostic, multi_label=multi_label,
                                   max_nms=max_nms, max_wh=max_wh, class_mask=class_mask)
    cand, cand_offset, alive, top, cls = jax.vmap(candidates)(prediction)

    # Each greedy iteration compares the kept box with every candidate slot, but only the
    # alive prefix can matter: run the loop on the shortest of GREEDY_SIZES (or all K slots)
    # that holds every image's alive candidates. Same result, a fraction of the work at
    # conf 0.001 (hundreds to a few thousand alive of 30000).
    k = cand.shape[1]
    sizes = [s for s in GREEDY_SIZES if s < k] + [k]

    def greedy_on_prefix(size):
        return lambda boxes, alive: jax.vmap(lambda b, a: _greedy_keep(b, a, iou_thres, max_det))(
            boxes[:, :size], alive[:, :size])

    longest = jnp.max(jnp.sum(alive, axis=1))
    branch = sum((longest > s).astype(jnp.int32) for s in sizes[:-1])
    keep, count = jax.lax.switch(branch, [greedy_on_prefix(s) for s in sizes], cand_offset, alive)

    row_ok = jnp.arange(max_det)[None, :] < count[:, None]
    take = functools.partial(jnp.take_along_axis, indices=keep, axis=1)
    out_boxes = jnp.where(row_ok[..., None], jnp.take_along_axis(cand, keep[..., None], axis=1), 0.0)
    return Detections(out_boxes, jnp.where(row_ok, take(top), 0.0), jnp.where(row_ok, take(cls), 0), count)
