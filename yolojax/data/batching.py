"""Fixed-shape batches (DESIGN.md's batch format) and the count of boxes over max_boxes."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from grain.multiprocessing import SharedMemoryArray

logger = logging.getLogger(__name__)

NUM_BOXES_KEY = "num_boxes"  # per image box count before truncation; removed in the main process


def new_image_batch(shape: tuple[int, ...], shared_memory: bool) -> np.ndarray:
    """uint8 array for a batch of images; in Grain's shared memory when built in a worker process.

    Grain passes a ``SharedMemoryArray`` to the main process without copying it (the main
    process unlinks it when the batch is freed); other arrays are copied into shared memory.
    """
    if shared_memory:
        return SharedMemoryArray(shape, np.uint8)
    return np.empty(shape, np.uint8)


def pad_labels(
    boxes_xyxy: Sequence[np.ndarray], classes: Sequence[np.ndarray], max_boxes: int
) -> dict[str, np.ndarray]:
    """Pad (or truncate) per-image labels to `max_boxes` rows.

    Args:
      boxes_xyxy: per image float (n_i, 4) xyxy pixels.
      classes: per image int (n_i,).
      max_boxes: M.

    Returns:
      boxes float32 (B, M, 4) (padded rows zero), classes int32 (B, M) (padded 0),
      mask bool (B, M), num_boxes int32 (B,) = n_i before truncation.
    """
    b = len(boxes_xyxy)
    out_boxes = np.zeros((b, max_boxes, 4), np.float32)
    out_classes = np.zeros((b, max_boxes), np.int32)
    mask = np.zeros((b, max_boxes), bool)
    num_boxes = np.zeros((b,), np.int32)
    for i, (bx, cl) in enumerate(zip(boxes_xyxy, classes)):
        n = len(cl)
        k = min(n, max_boxes)
        out_boxes[i, :k] = np.asarray(bx, np.float32).reshape(-1, 4)[:k]
        out_classes[i, :k] = np.asarray(cl, np.int32).reshape(-1)[:k]
        mask[i, :k] = True
        num_boxes[i] = n
    return {"boxes": out_boxes, "classes": out_classes, "mask": mask, NUM_BOXES_KEY: num_boxes}


def unlink_on_arrival(batch: dict[str, Any]) -> dict[str, Any]:
    """Main-process step: unlink the shared memory of every array a worker handed over.

    The name goes now and the pages stay mapped until the array is freed (POSIX shm). Grain
    would unlink it when the array is freed, but an array still referenced at exit (JAX on
    CPU keeps the buffers of arrays placed from it until the backend shuts down) is never
    unlinked, and Python's resource_tracker then reports "leaked shared_memory objects".
    """
    for value in batch.values():
        if isinstance(value, SharedMemoryArray) and getattr(value, "_unlink_on_del", False):
            value.shm.unlink()
            value._unlink_on_del = False  # pylint: disable=protected-access - Grain would unlink it again
    return batch


class TruncationReporter:
    """Main-process step: logs images with more than max_boxes boxes and drops the count key.

    Logs the first truncation and then every 100th batch with one, with running totals.
    """

    def __init__(self, max_boxes: int):
        self.max_boxes = max_boxes
        self.images_truncated = 0
        self.boxes_dropped = 0
        self._batches_truncated = 0

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        counts = batch.pop(NUM_BOXES_KEY, None)
        if counts is not None:
            over = np.asarray(counts) - self.max_boxes
            if (over > 0).any():
                self.images_truncated += int((over > 0).sum())
                self.boxes_dropped += int(over[over > 0].sum())
                if self._batches_truncated % 100 == 0:
                    logger.warning(
                        "images with more than max_boxes=%d boxes were truncated: %d images, %d boxes dropped so far",
                        self.max_boxes, self.images_truncated, self.boxes_dropped,
                    )
                self._batches_truncated += 1
        return batch
