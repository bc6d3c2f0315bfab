"""Validation batch of one step: long-side resize then letterbox, like ultralytics' val loader."""

from __future__ import annotations

from typing import Any

import numpy as np

from yolojax.data.batching import new_image_batch, pad_labels
from yolojax.data.memory.image_cache import resized_record
from yolojax.data.augment.letterbox import PAD_VALUE, apply_letterbox, letterbox_boxes, letterbox_params
from yolojax.data.schedule import ValSchedule
from yolojax.data.sources.yolo import DetectionSource


class ValBatchBuilder:
    """step -> this process's validation batch.

    Keys: DESIGN.md's image / boxes / classes / mask, and
      valid     bool    (B,)    False for padding slots of the last batch
      orig_hw   int32   (B, 2)  original image height, width
      ratio_hw  float32 (B, 2)  scale from original pixels to `image` pixels (y, x)
      pad_xy    float32 (B, 2)  left, top padding in `image` pixels
      index     int32   (B,)    source index (-1 for padding)
    so original = (letterboxed - pad_xy) / ratio_hw per axis.

    Args:
      source: the images and labels.
      schedule: order and (rect) batch shapes.
      imgsz: long side in pixels; canvas is (imgsz, imgsz) unless the schedule has shapes.
      max_boxes: M; None: each batch padded to its own largest label count (nothing dropped).
      shared_memory: allocate the image batch in shared memory (in Grain worker processes).
    """

    def __init__(self, source: DetectionSource, schedule: ValSchedule, imgsz: int, max_boxes: int | None = None,
                 shared_memory: bool = False):
        self.source = source
        self.schedule = schedule
        self.imgsz = int(imgsz)
        self.max_boxes = None if max_boxes is None else int(max_boxes)
        self.shared_memory = shared_memory

    def canvas_hw(self, step: int) -> tuple[int, int]:
        shapes = self.schedule.batch_shapes_hw
        if shapes is None:
            return self.imgsz, self.imgsz
        return int(shapes[step][0]), int(shapes[step][1])

    def __call__(self, step: int) -> dict[str, Any]:
        indices, valid = self.schedule.image_indices(int(step))
        out_h, out_w = self.canvas_hw(int(step))
        b = len(indices)
        images = new_image_batch((b, out_h, out_w, 3), self.shared_memory)
        orig_hw = np.zeros((b, 2), np.int32)
        ratio_hw = np.zeros((b, 2), np.float32)
        pad_xy = np.zeros((b, 2), np.float32)
        boxes, classes = [], []
        for slot, (index, ok) in enumerate(zip(indices, valid)):
            if not ok:
                images[slot] = PAD_VALUE
                boxes.append(np.zeros((0, 4), np.float32))
                classes.append(np.zeros((0,), np.int32))
                continue
            record = resized_record(self.source, int(index), self.imgsz)  # from the image cache if any
            h0, w0 = record["orig_hw"]
            image = record["image"]
            h, w = image.shape[:2]
            lb = letterbox_params((h, w), (out_h, out_w), scaleup=False)
            apply_letterbox(image, lb, out=images[slot])
            boxes.append(letterbox_boxes(record["boxes"], (h, w), lb))
            classes.append(record["classes"])
            orig_hw[slot] = (h0, w0)
            ratio_hw[slot] = (h / h0 * lb.ratio, w / w0 * lb.ratio)
            pad_xy[slot] = (lb.left, lb.top)
        batch = {"image": images}
        batch.update(pad_labels(boxes, classes, self.max_boxes))
        batch.update(valid=valid.astype(bool), orig_hw=orig_hw, ratio_hw=ratio_hw, pad_xy=pad_xy,
                     index=indices.astype(np.int32))
        return batch
