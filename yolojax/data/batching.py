"""Fixed-shape batches (DESIGN.md's batch format), the box padding M and the count of boxes over it.

Training pads every image's labels to M = ``max_boxes`` rows. By default M comes from the
dataset's label scan: the most boxes one training sample can hold (the most labels of an
image; x4 with mosaic, as ultralytics sizes its auto-batch; x2 more with mixup), rounded up
to a bucket (16, 32, 64, ...), so no box is ever dropped and one M serves the whole run and
most datasets of a kind. A cap the user sets is reported: at start (the images over it) and
as boxes are dropped. Validation pads each batch to its own largest count (nothing dropped).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from grain.multiprocessing import SharedMemoryArray

from yolojax.data.memory import shm_pool

logger = logging.getLogger(__name__)

NUM_BOXES_KEY = "num_boxes"  # per image box count before truncation; removed in the main process


def new_image_batch(shape: tuple[int, ...], shared_memory: bool) -> np.ndarray:
    """uint8 array for a batch of images (contents arbitrary: every pixel gets written); in
    shared memory when built in a worker process.

    Grain passes a ``SharedMemoryArray`` to the main process without copying it; a worker's
    blocks are reused once the main process has freed their batch
    (:mod:`yolojax.data.memory.shm_pool`), else each batch is a fresh block the main process unlinks.
    """
    if shared_memory:
        return shm_pool.pooled_array(shape, np.uint8) if shm_pool.available() else SharedMemoryArray(shape, np.uint8)
    return np.empty(shape, np.uint8)


MIN_BUCKET = 16


def bucket_boxes(n: int, minimum: int = MIN_BUCKET) -> int:
    """The box padding for at most `n` boxes: the smallest of minimum, 2 minimum, 4 minimum, ... >= n."""
    n = max(int(n), 1)
    return max(int(minimum), int(minimum) * 2 ** max(0, math.ceil(math.log2(n / minimum))))


def label_counts(source: Any) -> np.ndarray | None:
    """int64 (N,) labels per image of a source from its label scan (``source.labels``) or its
    ``box_counts()``; None when the source cannot tell without reading every record."""
    labels = getattr(source, "labels", None)
    if labels is not None and callable(getattr(labels, "counts", None)):
        return np.asarray(labels.counts(), np.int64)
    counts = getattr(source, "box_counts", None)
    return np.asarray(counts(), np.int64) if callable(counts) else None


def sample_box_bound(max_labels: int, mosaic: bool, mixup: bool, cutmix: bool = False) -> int:
    """The most boxes one training sample can hold when no image has more than `max_labels`:
    a mosaic holds 4 images' boxes, mixup and cutmix add a view each (cropping and the
    candidate filter only drop)."""
    return int(max_labels) * (4 if mosaic else 1) * (1 + int(mixup) + int(cutmix))


def pad_labels(
    boxes_xyxy: Sequence[np.ndarray], classes: Sequence[np.ndarray], max_boxes: int | None
) -> dict[str, np.ndarray]:
    """Pad (or truncate) per-image labels to `max_boxes` rows.

    Args:
      boxes_xyxy: per image float (n_i, 4) xyxy pixels.
      classes: per image int (n_i,).
      max_boxes: M; None: the batch's largest n_i (at least 1), nothing truncated.

    Returns:
      boxes float32 (B, M, 4) (padded rows zero), classes int32 (B, M) (padded 0),
      mask bool (B, M), num_boxes int32 (B,) = n_i before truncation.
    """
    b = len(boxes_xyxy)
    if max_boxes is None:
        max_boxes = max([len(c) for c in classes] + [1])
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
    """Main-process step: take over the shared memory of every array a worker handed over.

    A worker's pooled block (:mod:`yolojax.data.memory.shm_pool`) becomes a plain array over this
    process's own mapping, which hands the block back to the worker when it is freed; any
    other block is unlinked now (the name goes, the pages stay mapped until the array is
    freed). Grain would unlink it when the array is freed, but an array still referenced at
    exit (JAX on CPU keeps the buffers of arrays placed from it until the backend shuts down)
    is never unlinked, and Python's resource_tracker then reports "leaked shared_memory objects".
    """
    out = {}
    for key, value in batch.items():
        if isinstance(value, SharedMemoryArray) and getattr(value, "_unlink_on_del", False):
            value._unlink_on_del = False  # pylint: disable=protected-access - Grain would unlink it (again)
            if shm_pool.is_pooled(value):
                value = shm_pool.adopt(value)
            else:
                value.shm.unlink()
        out[key] = value
    return out


class TruncationReporter:
    """Main-process step: counts and logs boxes beyond the batch's padding, and drops the count key.

    Logs the first truncation and then every 100th batch with one, with running totals
    (``images_truncated``, ``boxes_dropped``).
    """

    def __init__(self, max_boxes: int | None = None):
        self.max_boxes = max_boxes
        self.images_truncated = 0
        self.boxes_dropped = 0
        self._batches_truncated = 0

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        counts = batch.pop(NUM_BOXES_KEY, None)
        if counts is not None:
            limit = batch["mask"].shape[1]
            over = np.asarray(counts) - limit
            if (over > 0).any():
                self.images_truncated += int((over > 0).sum())
                self.boxes_dropped += int(over[over > 0].sum())
                if self._batches_truncated % 100 == 0:
                    logger.warning(
                        "images with more than max_boxes=%d boxes were truncated: %d images, %d boxes dropped so far",
                        limit, self.images_truncated, self.boxes_dropped,
                    )
                self._batches_truncated += 1
        return batch
