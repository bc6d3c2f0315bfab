"""Validation letterbox and ultralytics' rectangular ('rect') batch shapes."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

PAD_VALUE = 114


@dataclasses.dataclass(frozen=True)
class Letterbox:
    """How an (h, w) image is placed into an (H, W) canvas.

    Attributes:
      ratio: scale applied to the image (same for x and y).
      resized_wh: (w, h) of the scaled image in pixels.
      top, bottom, left, right: padding in pixels.
      out_hw: (H, W) of the canvas.
    """

    ratio: float
    resized_wh: tuple[int, int]
    top: int
    bottom: int
    left: int
    right: int
    out_hw: tuple[int, int]


def letterbox_params(shape_hw: tuple[int, int], new_shape_hw: tuple[int, int], scaleup: bool = False) -> Letterbox:
    """Ultralytics' ``LetterBox`` (auto=False, centred) placement of `shape_hw` into `new_shape_hw`.

    Args:
      shape_hw: (h, w) of the image.
      new_shape_hw: (H, W) of the canvas.
      scaleup: allow ratio > 1 (validation uses False).
    """
    h, w = int(shape_hw[0]), int(shape_hw[1])
    new_h, new_w = int(new_shape_hw[0]), int(new_shape_hw[1])
    r = min(new_h / h, new_w / w)
    if not scaleup:
        r = min(r, 1.0)
    resized_wh = (max(round(w * r), 1), max(round(h * r), 1))
    dw, dh = (new_w - resized_wh[0]) / 2, (new_h - resized_wh[1]) / 2
    return Letterbox(
        ratio=r,
        resized_wh=resized_wh,
        top=round(dh - 0.1),
        bottom=round(dh + 0.1),
        left=round(dw - 0.1),
        right=round(dw + 0.1),
        out_hw=(new_h, new_w),
    )


def apply_letterbox(
    image: np.ndarray, lb: Letterbox, pad_value: int = PAD_VALUE, out: np.ndarray | None = None
) -> np.ndarray:
    """uint8 (h, w, 3) -> uint8 (H, W, 3) (`out` if given): bilinear resize, then constant padding."""
    if image.shape[1::-1] != lb.resized_wh:
        image = cv2.resize(image, lb.resized_wh, interpolation=cv2.INTER_LINEAR)
    if out is None:
        out = np.empty((*lb.out_hw, 3), np.uint8)
    h, w = image.shape[:2]
    if (lb.top + h + lb.bottom, lb.left + w + lb.right) == lb.out_hw:
        return cv2.copyMakeBorder(image, lb.top, lb.bottom, lb.left, lb.right, cv2.BORDER_CONSTANT,
                                  dst=out, value=(pad_value,) * 3)
    out[...] = pad_value  # rounding of odd paddings left a pixel over or short: place it by hand
    hh, ww = min(h, lb.out_hw[0] - lb.top), min(w, lb.out_hw[1] - lb.left)
    out[lb.top : lb.top + hh, lb.left : lb.left + ww] = image[:hh, :ww]
    return out


def letterbox_boxes(boxes_norm_xyxy: np.ndarray, image_hw: tuple[int, int], lb: Letterbox) -> np.ndarray:
    """(n, 4) boxes normalised to an (h, w) image -> (n, 4) xyxy pixels of the letterboxed canvas."""
    h, w = image_hw
    scale = np.array([w, h, w, h], np.float32) * np.float32(lb.ratio)
    offset = np.array([lb.left, lb.top, lb.left, lb.top], np.float32)
    return (np.asarray(boxes_norm_xyxy, np.float32).reshape(-1, 4) * scale + offset).astype(np.float32)


def rect_batch_shapes(
    shapes_hw: np.ndarray, batch_size: int, imgsz: int, stride: int = 32, pad: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Ultralytics' ``set_rectangle``: image order sorted by aspect ratio and one shape per batch.

    Args:
      shapes_hw: int (N, 2) original image h, w.
      batch_size: images per batch (the global batch).
      imgsz: long side in pixels.
      stride: shapes are multiples of it.
      pad: extra stride fraction (ultralytics uses 0.5 for validation).

    Returns:
      order: int64 (N,) image indices in batch order (ascending h / w).
      batch_shapes_hw: int64 (ceil(N / batch_size), 2) canvas (H, W) of each batch.
    """
    shapes_hw = np.asarray(shapes_hw, np.float64).reshape(-1, 2)
    n = len(shapes_hw)
    batch_index = np.floor(np.arange(n) / batch_size).astype(int)
    num_batches = batch_index[-1] + 1
    aspect = shapes_hw[:, 0] / shapes_hw[:, 1]
    order = aspect.argsort()
    aspect = aspect[order]
    shapes = [[1, 1]] * num_batches
    for i in range(num_batches):
        ar = aspect[batch_index == i]
        lo, hi = ar.min(), ar.max()
        if hi < 1:
            shapes[i] = [hi, 1]
        elif lo > 1:
            shapes[i] = [1, 1 / lo]
    batch_shapes = np.ceil(np.array(shapes) * imgsz / stride + pad).astype(int) * stride
    return order.astype(np.int64), batch_shapes.astype(np.int64)
