"""Box format conversions and IoU variants (ultralytics' ``ops`` / ``metrics`` semantics).

All functions are pure ``jax.numpy``, jit- and vmap-friendly, and work on any leading batch
shape. Units are whatever the inputs use (pixels or grid cells); they are never rescaled.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def xywh2xyxy(boxes: jax.Array) -> jax.Array:
    """(..., 4) centre x, centre y, width, height -> (..., 4) x1, y1, x2, y2 (same units)."""
    xy, half_wh = boxes[..., :2], boxes[..., 2:] / 2
    return jnp.concatenate([xy - half_wh, xy + half_wh], axis=-1)


def xyxy2xywh(boxes: jax.Array) -> jax.Array:
    """(..., 4) x1, y1, x2, y2 -> (..., 4) centre x, centre y, width, height (same units)."""
    x1, y1, x2, y2 = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=-1)


def box_area(boxes: jax.Array) -> jax.Array:
    """(..., 4) xyxy boxes -> (...,) areas (negative sides are not clipped)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: jax.Array, boxes2: jax.Array, eps: float = 1e-7) -> jax.Array:
    """Pairwise IoU of xyxy boxes: (..., N, 4) x (..., M, 4) -> (..., N, M), computed in fp32.

    ``inter / (area1 + area2 - inter + eps)`` as ultralytics' ``metrics.box_iou`` (used by NMS
    and the mAP matcher). Leading dimensions broadcast.
    """
    a = boxes1.astype(jnp.float32)[..., :, None, :]
    b = boxes2.astype(jnp.float32)[..., None, :, :]
    wh = jnp.clip(jnp.minimum(a[..., 2:], b[..., 2:]) - jnp.maximum(a[..., :2], b[..., :2]), 0.0)
    inter = wh[..., 0] * wh[..., 1]
    wh1, wh2 = a[..., 2:] - a[..., :2], b[..., 2:] - b[..., :2]
    return inter / (wh1[..., 0] * wh1[..., 1] + wh2[..., 0] * wh2[..., 1] - inter + eps)


def bbox_iou(
    box1: jax.Array,
    box2: jax.Array,
    xywh: bool = True,
    GIoU: bool = False,
    DIoU: bool = False,
    CIoU: bool = False,
    eps: float = 1e-7,
) -> jax.Array:
    """Elementwise IoU / GIoU / DIoU / CIoU of two broadcastable sets of boxes.

    Args:
      box1, box2: (..., 4) boxes, centre xywh if ``xywh`` else xyxy, in any common unit.
      GIoU, DIoU, CIoU: which variant (at most one is used; CIoU wins over DIoU over GIoU).
      eps: the 1e-7 of ultralytics' ``metrics.bbox_iou``; for xyxy input it is added to the
        heights, and always to the union and the enclosing box diagonal/area.

    Returns:
      (...,) values in the broadcast shape of the leading dimensions (ultralytics keeps a
      trailing 1; this does not). CIoU's trade-off factor ``alpha`` is treated as a constant
      (``stop_gradient``), as ultralytics computes it under ``torch.no_grad``. The formula is
      not symmetric to the last ulp: pass (prediction, target) in the order ultralytics does
      when bit-level agreement matters.
    """
    if xywh:
        x1, y1, w1, h1 = jnp.moveaxis(box1, -1, 0)
        x2, y2, w2, h2 = jnp.moveaxis(box2, -1, 0)
        w1_, h1_, w2_, h2_ = w1 / 2, h1 / 2, w2 / 2, h2 / 2
        b1_x1, b1_x2, b1_y1, b1_y2 = x1 - w1_, x1 + w1_, y1 - h1_, y1 + h1_
        b2_x1, b2_x2, b2_y1, b2_y2 = x2 - w2_, x2 + w2_, y2 - h2_, y2 + h2_
    else:
        b1_x1, b1_y1, b1_x2, b1_y2 = jnp.moveaxis(box1, -1, 0)
        b2_x1, b2_y1, b2_x2, b2_y2 = jnp.moveaxis(box2, -1, 0)
        w1, h1 = b1_x2 - b1_x1, b1_y2 - b1_y1 + eps
        w2, h2 = b2_x2 - b2_x1, b2_y2 - b2_y1 + eps

    inter = jnp.clip(jnp.minimum(b1_x2, b2_x2) - jnp.maximum(b1_x1, b2_x1), 0.0) * jnp.clip(
        jnp.minimum(b1_y2, b2_y2) - jnp.maximum(b1_y1, b2_y1), 0.0
    )
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    if not (CIoU or DIoU or GIoU):
        return iou
    cw = jnp.maximum(b1_x2, b2_x2) - jnp.minimum(b1_x1, b2_x1)  # enclosing box width
    ch = jnp.maximum(b1_y2, b2_y2) - jnp.minimum(b1_y1, b2_y1)  # enclosing box height
    if CIoU or DIoU:
        c2 = cw**2 + ch**2 + eps  # enclosing diagonal squared
        rho2 = ((b2_x1 + b2_x2 - b1_x1 - b1_x2) ** 2 + (b2_y1 + b2_y2 - b1_y1 - b1_y2) ** 2) / 4
        if CIoU:
            v = (4 / math.pi**2) * (jnp.arctan(w2 / h2) - jnp.arctan(w1 / h1)) ** 2
            alpha = jax.lax.stop_gradient(v / (1 - iou + v + eps))
            return iou - (rho2 / c2 + v * alpha)
        return iou - rho2 / c2
    c_area = cw * ch + eps
    return iou - (c_area - union) / c_area
