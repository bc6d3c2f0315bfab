"""ultralytics' ``multi_scale`` (8.4.190, ``DetectionTrainer.preprocess_batch``): each batch is
resized to a random size.

Per batch: ``sz = randrange(max(stride, int(imgsz * (1 - ms))), int(imgsz * (1 + ms) + stride))
// stride * stride``; the batch (H, W) scales by ``sf = sz / max(H, W)`` to
``ceil(x * sf / stride) * stride`` per side (bilinear, half-pixel centres), the boxes with it.
The sizes are therefore the stride multiples of :func:`multi_scale_sizes`, a small fixed
set, so a jit train step compiles at most once per size. yolojax draws ``sz`` from
(seed, step) (the same on every process, and on resume) and resizes the uint8 batch on the
host with OpenCV (ultralytics resizes the float batch on the device: pixels may differ by
one level of rounding).
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

_SCALE_STREAM = 2  # record_rng uses streams 0 (shuffle) and 1 (records)


def multi_scale_bounds(imgsz: int, multi_scale: float, stride: int = 32) -> tuple[int, int]:
    """ultralytics' ``randrange`` bounds [low, high) of the drawn size before snapping."""
    return max(stride, int(imgsz * (1.0 - multi_scale))), int(imgsz * (1.0 + multi_scale) + stride)


def multi_scale_sizes(imgsz: int, multi_scale: float, stride: int = 32) -> list[int]:
    """Every size a batch's long side can get (sorted stride multiples); [imgsz] when off."""
    if multi_scale <= 0:
        return [imgsz]
    low, high = multi_scale_bounds(imgsz, multi_scale, stride)
    return sorted({x // stride * stride for x in range(low, high)})


def draw_size(seed: int, step: int, imgsz: int, multi_scale: float, stride: int = 32) -> int:
    """The drawn size of the batch at ``step`` (an element of :func:`multi_scale_sizes`)."""
    low, high = multi_scale_bounds(imgsz, multi_scale, stride)
    rng = np.random.default_rng([seed, int(step), _SCALE_STREAM])
    return int(rng.integers(low, high)) // stride * stride


def scaled_shape(hw: tuple[int, int], size: int, stride: int = 32) -> tuple[int, int]:
    """The batch (h, w) after scaling its long side to ``size`` (each side rounded up to a
    stride multiple); unchanged when the long side is already ``size``."""
    sf = size / max(hw)
    if sf == 1:
        return int(hw[0]), int(hw[1])
    return tuple(math.ceil(x * sf / stride) * stride for x in hw)


def rescale_batch(batch: dict[str, Any], out_hw: tuple[int, int], out: np.ndarray | None = None) -> dict[str, Any]:
    """``batch`` (DESIGN.md's train batch) with its images resized to ``out_hw`` (bilinear) and
    its boxes scaled with them (x by W'/W, y by H'/H). ``out``: an uint8 (B, H', W', 3) array
    to write the images into (e.g. shared memory)."""
    images = batch["image"]
    h, w = images.shape[1:3]
    if (h, w) == tuple(out_hw):
        return batch
    new_h, new_w = out_hw
    resized = out if out is not None else np.empty((len(images), new_h, new_w, 3), np.uint8)
    for i, image in enumerate(images):
        resized[i] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    factor = np.array([new_w / w, new_h / h, new_w / w, new_h / h], np.float32)
    return {**batch, "image": resized, "boxes": (batch["boxes"] * factor).astype(np.float32)}
