"""Anchor points and the distance <-> box transforms of anchor-free heads."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def make_anchors(
    feature_hw: Sequence[tuple[int, int]], strides: Sequence[int], offset: float = 0.5
) -> tuple[jax.Array, jax.Array]:
    """Anchor centres and strides for a list of feature-map sizes.

    Returns ``(points, strides)``: float32 (N, 2) anchor centres (x, y) in grid units of
    their own level (cell index + ``offset``), and float32 (N, 1) strides in pixels. Levels
    are concatenated in order, row-major within a level (ultralytics' ``make_anchors``).
    """
    points, stride_rows = [], []
    for (h, w), s in zip(feature_hw, strides):
        sy, sx = jnp.meshgrid(
            jnp.arange(h, dtype=jnp.float32) + offset,
            jnp.arange(w, dtype=jnp.float32) + offset,
            indexing="ij",
        )
        points.append(jnp.stack([sx, sy], axis=-1).reshape(-1, 2))
        stride_rows.append(jnp.full((h * w, 1), s, dtype=jnp.float32))
    return jnp.concatenate(points), jnp.concatenate(stride_rows)


def dist2bbox(distance: jax.Array, anchor_points: jax.Array, xywh: bool = True) -> jax.Array:
    """(..., 4) distances (left, top, right, bottom) from anchor points (..., 2) -> boxes.

    Returns (..., 4) boxes in the same units as the inputs: centre xywh if ``xywh`` else xyxy.
    """
    lt, rb = distance[..., :2], distance[..., 2:]
    x1y1, x2y2 = anchor_points - lt, anchor_points + rb
    if xywh:
        return jnp.concatenate([(x1y1 + x2y2) / 2, x2y2 - x1y1], axis=-1)
    return jnp.concatenate([x1y1, x2y2], axis=-1)


def bbox2dist(anchor_points: jax.Array, boxes_xyxy: jax.Array, reg_max: int) -> jax.Array:
    """xyxy boxes (..., 4) -> distances (l, t, r, b) from anchor points, clipped to
    [0, reg_max - 1 - 0.01] as ultralytics' DFL targets are (here ``reg_max`` is the number
    of bins, 16 for YOLOv8)."""
    x1y1, x2y2 = boxes_xyxy[..., :2], boxes_xyxy[..., 2:]
    dist = jnp.concatenate([anchor_points - x1y1, x2y2 - anchor_points], axis=-1)
    return jnp.clip(dist, 0.0, reg_max - 1 - 0.01)
