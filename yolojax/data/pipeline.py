"""Grain pipelines for training and validation batches.

Graph: ``MapDataset.range(start_step, num_steps)`` -> ``.map(batch builder)`` (decode,
augment / letterbox, pad to max_boxes; runs in the worker processes) ->
``to_iter_dataset`` (threads, prefetch) -> ``mp_prefetch`` (``workers`` processes; every
array in shared memory named after its worker) -> ``.map`` in the main process (unlinks the
workers' shared memory on arrival, counts and logs boxes beyond a ``max_boxes`` cap, names
images that could no longer be read) -> :class:`yolojax.data.faults.WatchedIterator` (a dead
worker as :class:`yolojax.data.faults.DataWorkerError`). Every batch is a pure function of
(arguments, step), so the iterator state is just the position and restoring it with
``set_state`` continues exactly, with or without worker processes. A state is relative to
the iterator's ``start_step``: restore it into an iterator built with the same arguments.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import cv2
import grain
import numpy as np
from absl import flags

from yolojax.config import check_arguments
from yolojax.data.augment.config import AugmentConfig
from yolojax.data.batching import TruncationReporter, bucket_boxes, label_counts, sample_box_bound, unlink_on_arrival
from yolojax.data.device.batches import AUGMENT_ON, DeviceBatchBuilder, check_device_options
from yolojax.data.faults import SkipReporter, WatchedIterator, skip_reporter_for
from yolojax.data.memory import shm_pool
from yolojax.data.memory.image_cache import CachedSource, open_image_cache
from yolojax.data.augment.letterbox import rect_batch_shapes
from yolojax.data.schedule import TrainSchedule, ValSchedule
from yolojax.data.sources.dataset import open_split
from yolojax.data.sources.tfds import TfdsSpec
from yolojax.data.sources.yolo import DetectionSource
from yolojax.data.train_batches import TrainBatchBuilder
from yolojax.data.val_batches import ValBatchBuilder

logger = logging.getLogger(__name__)

Batch = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Batches:
    """An iterator of batches and its bookkeeping.

    Attributes:
      iterator: Grain ``DatasetIterator`` of batch dicts; ``get_state()`` / ``set_state()``
        (JSON-able dicts) for checkpoints (e.g. ``grain.checkpoint.CheckpointSave(iterator)``);
        ``next`` raises :class:`yolojax.data.faults.DataWorkerError` when a worker process dies.
      start_step: the step of the first batch.
      num_steps: steps in the whole run (the iterator yields num_steps - start_step batches).
      steps_per_epoch: steps per epoch (validation: num_steps).
      source: the images and labels (``names``, ``image_ids``, ``image_paths``).
      schedule: the :class:`TrainSchedule` or :class:`ValSchedule`.
      max_boxes: the box padding M of every batch (None: each validation batch its own).
      truncation: counts of boxes dropped by a ``max_boxes`` cap so far (``images_truncated``,
        ``boxes_dropped``), kept in this (the main) process.
      owns_cache: the iterator made ``source``'s image cache (its ``cache`` argument) and
        :meth:`close` removes it.
      skips: the images skipped so far because they could no longer be read (training).
    """

    iterator: grain.DatasetIterator
    start_step: int
    num_steps: int
    steps_per_epoch: int
    source: DetectionSource
    schedule: TrainSchedule | ValSchedule
    max_boxes: int | None = None
    truncation: TruncationReporter | None = None
    owns_cache: bool = False
    skips: SkipReporter | None = None

    def __iter__(self) -> Iterator[Batch]:
        return self.iterator

    def __next__(self) -> Batch:
        return next(self.iterator)

    def epoch_of(self, step: int) -> int:
        """0-based epoch of a (global) step."""
        return step // self.steps_per_epoch

    def close(self) -> None:
        """Stop worker processes and free the shared memory of the batches they had prefetched
        or left behind (:meth:`yolojax.data.faults.WatchedIterator.close`); idempotent.

        Grain's closed iterator keeps those batches in reference cycles; collecting them
        unlinks their shared memory, which Python's resource_tracker would otherwise report
        at exit as "leaked shared_memory objects" (and unlink itself); so would the blocks of
        a worker that was killed. (Batches a worker built but never sent cannot hold shared
        memory: see :func:`builds_in_shared_memory`.) An image cache the iterator made is
        removed (one passed in stays).
        """
        self.iterator.close()
        if self.owns_cache:
            self.source.close()


def _process_index_and_count(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax  # pylint: disable=import-outside-toplevel

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    return int(process_index), int(process_count)


def _as_source(data: str | os.PathLike | TfdsSpec | DetectionSource, split: str) -> DetectionSource:
    if isinstance(data, (str, os.PathLike, TfdsSpec)):
        return open_split(data, split)
    return data


def _cached(source: DetectionSource, cache: str | bool | None, imgsz: int, split: str) -> tuple[DetectionSource, bool]:
    """(``source`` with its image cache, whether it was made here)."""
    cached = open_image_cache(cache, imgsz, [source], [split])[0]
    return cached, cached is not source and isinstance(cached, CachedSource)


def keep_freed_memory() -> bool:
    """Ask glibc to serve large arrays from its heap and keep freed memory in the process.

    Every sample allocates several image-sized buffers; by default glibc maps each one fresh
    from the kernel and unmaps it when freed, so every buffer is page-faulted in again
    (about a third of a worker's CPU time). Returns False where mallopt is unavailable.
    """
    m_trim_threshold, m_mmap_threshold = -1, -3
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 512 << 20))


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> bool:
    """Have the kernel SIGKILL this process when its parent dies (Linux ``prctl``), so data
    workers never outlive a main process that was killed (SIGKILL, the OOM killer) and keep
    using CPU and shared memory; their blocks then go with Python's resource tracker. Returns
    whether it is set (False where ``prctl`` is unavailable)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0 and os.getppid() != 1
    except (OSError, AttributeError):
        return False


def _init_worker(worker_index: int, worker_count: int) -> None:
    """Worker set-up: one OpenCV thread (the processes are the parallelism), reuse freed memory,
    Ctrl-C left to the main process (a terminal sends it to every process of the group;
    the main process stops the workers, which would otherwise die mid-batch), and death with
    the main process (:func:`die_with_parent`)."""
    del worker_index, worker_count
    cv2.setNumThreads(1)
    keep_freed_memory()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()


def builds_in_shared_memory(workers: int, threads: int) -> bool:
    """Whether the batch builders write their image arrays straight into shared memory.

    Only in worker processes (``workers > 0``) that build one batch at a time
    (``threads <= 1``): batches a worker's thread pool had built ahead would still hold their
    shared memory when the worker stops; the pooled blocks of :mod:`yolojax.data.memory.shm_pool`
    are unlinked by their exiting worker, but the fresh blocks used where pooling is
    unavailable would not be. With more threads the builders use plain arrays and Grain
    copies each batch into shared memory as it sends it.
    """
    return workers > 0 and threads <= 1


def _iterate(builder, start_step: int, num_steps: int, workers: int, threads: int, prefetch: int,
             main_steps: Sequence[Callable[[Batch], Batch]]) -> WatchedIterator:
    if not 0 <= start_step <= num_steps:
        raise ValueError(f"start_step {start_step} outside [0, {num_steps}]")
    batches = grain.MapDataset.range(start_step, num_steps).map(builder)
    # A worker building one batch at a time needs no thread pool: it builds while the main
    # process consumes its queue of ``prefetch`` batches (see builds_in_shared_memory).
    in_thread_buffer = 0 if builds_in_shared_memory(workers, threads) else prefetch
    stream = batches.to_iter_dataset(
        grain.ReadOptions(num_threads=max(1, threads), prefetch_buffer_size=in_thread_buffer))
    if workers > 0:
        if not flags.FLAGS.is_parsed():  # Grain's multiprocessing reads absl flags; use their defaults
            flags.FLAGS.mark_as_parsed()
        if shm_pool.available():  # blocks a killed worker leaves can be found by its pid
            stream = stream.map(shm_pool.in_named_blocks)
            for name in shm_pool.remove_orphaned_blocks():
                logger.warning("removed /dev/shm/%s: shared memory left by a data worker whose run was killed", name)
        stream = stream.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=prefetch),
            worker_init_fn=_init_worker,
        )
        stream = stream.map(unlink_on_arrival)
    for step in main_steps:
        stream = stream.map(step)
    return WatchedIterator(iter(stream), workers)


def train_max_boxes(source: DetectionSource, aug: AugmentConfig, epochs: int, max_boxes: int | None,
                    rect: bool = False) -> int:
    """The training box padding M: `max_boxes` when given (with a warning naming the images whose
    labels exceed it), else from the label scan (:func:`yolojax.data.batching.sample_box_bound`,
    bucketed), so that no box is ever dropped.

    Raises:
      ValueError: no `max_boxes` and a source that cannot count its labels (e.g. TFDS).
    """
    counts = label_counts(source)
    if max_boxes is not None:
        if max_boxes < 1:
            raise ValueError(f"max_boxes must be >= 1, got {max_boxes}")
        if counts is not None and (counts > max_boxes).any():
            over = counts > max_boxes
            logger.warning("max_boxes=%d: %d training images have more labels (up to %d, %d boxes over); boxes "
                           "beyond %d per sample are dropped and counted as they happen", max_boxes, int(over.sum()),
                           int(counts.max()), int((counts[over] - max_boxes).sum()), max_boxes)
        return int(max_boxes)
    if counts is None:
        raise ValueError(f"{type(source).__name__} cannot count its labels without reading every record: "
                         "pass max_boxes")
    mixing = aug.mixing_on(0, epochs) and not rect
    most = int(counts.max()) if len(counts) else 0
    bound = sample_box_bound(most, mosaic=mixing and aug.mosaic > 0, mixup=mixing and aug.mixup > 0,
                             cutmix=mixing and aug.cutmix > 0)
    m = bucket_boxes(bound)
    logger.info("max_boxes=%d from the label scan (at most %d labels per image, at most %d per sample)", m, most,
                bound)
    return m


def train_schedule(source: DetectionSource, batch_size: int, epochs: int, seed: int, process_index: int,
                   process_count: int, imgsz: int, rect: bool) -> TrainSchedule:
    """The training schedule; with ``rect`` ultralytics' ``set_rectangle`` (pad 0.0 for
    training, stride 32) gives the order and the batch shapes, and the order is fixed unless
    every batch has the same shape (ultralytics keeps the shuffle then).

    Raises:
      ValueError: ``rect`` with a source that has no image shapes.
    """
    if not rect:
        return TrainSchedule(len(source), batch_size, epochs, seed, process_index, process_count)
    shapes = source.image_shapes_hw
    if shapes is None:
        raise ValueError("rect training needs the image shapes, which this source does not have")
    order, batch_shapes = rect_batch_shapes(shapes, batch_size, imgsz, stride=32, pad=0.0)
    if (batch_shapes == batch_shapes[0]).all():
        logger.info("rect: every batch is %dx%d; the images are still shuffled", *batch_shapes[0])
        order = None
    return TrainSchedule(len(source), batch_size, epochs, seed, process_index, process_count, order, batch_shapes)


def make_train_iterator(
    data: str | os.PathLike | TfdsSpec | DetectionSource,
    *,
    imgsz: int = 640,
    batch_size: int = 16,
    epochs: int = 1,
    seed: int = 0,
    aug: AugmentConfig | None = None,
    max_boxes: int | None = None,
    workers: int = 0,
    threads: int = 1,
    prefetch: int = 2,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    mosaic_pool: str = "batch",
    cache: str | bool | None = "",
    rect: bool = False,
    multi_scale: float = 0.0,
    augment_on: str = "host",
    augment_groups: int = 1,
) -> Batches:
    """Augmented training batches for `epochs` epochs.

    Args:
      data: a data.yaml path or a TFDS dataset ('tfds:NAME', :class:`TfdsSpec`): its 'train'
        split (:func:`yolojax.data.sources.dataset.open_split`); or a source.
      imgsz: image side in pixels, a multiple of 32.
      batch_size: GLOBAL batch size; each process yields batch_size / process_count images.
      epochs: epochs in the run (close_mosaic counts back from the last one).
      seed: fixes the shuffles and every augmentation.
      aug: augmentation hyperparameters (default: ultralytics' defaults).
      max_boxes: M, box rows per image; None (default): from the label scan, so that no box is
        ever dropped (:func:`train_max_boxes`); a number caps it, and what the cap drops is
        logged and counted (``Batches.truncation``).
      workers: worker processes (0: in this process).
      threads: threads per worker building batches concurrently.
      prefetch: batches buffered per worker.
      start_step: first step to yield (e.g. when resuming without an iterator state).
      process_index, process_count: this JAX process and their number (default: jax's).
      mosaic_pool: mosaic / mixup partners from the same local 'batch' or the whole 'dataset'.
      cache: ultralytics' ``cache``: "" (none), "ram" (images resized to imgsz, in one file
        every worker maps) or "disk" (ultralytics' .npy files beside the images); True means
        "ram" (:mod:`yolojax.data.memory.image_cache`). The batches are the same bit for bit. A
        source already cached is used as it is.
      rect: ultralytics' rect training: images sorted by aspect ratio, each batch its own
        shape (``set_rectangle`` with pad 0), no shuffle when the shapes differ, no mosaic,
        mixup or cutmix (:func:`train_schedule`); host mode only.
      multi_scale: resize each batch to a random stride multiple within imgsz * (1 +- it)
        (:mod:`yolojax.data.augment.multi_scale`); 0: off; host mode only.
      augment_on: 'host' (the images augmented here) or 'device' (the same draws and boxes;
        the source images and parameters shipped instead of ``image``, rendered in the train
        step: :mod:`yolojax.data.device.params`, :func:`yolojax.data.device.augment.render_batch`).
      augment_groups: device mode: 'data' shards this process feeds (the local batch splits
        into that many groups, each shipping its own source images).

    Returns:
      :class:`Batches` of dicts: image uint8 (b, H, W, 3) RGB (H = W = imgsz unless rect or
      multi_scale; device mode: the ``aug_*`` arrays instead), boxes float32 (b, M, 4) xyxy
      pixels, classes int32 (b, M), mask bool (b, M), with b = batch_size / process_count.
      An image that can no longer be read is replaced by the next readable one and named once
      in a WARNING (:class:`yolojax.data.train_batches.BatchImages`); ``next`` raises
      :class:`yolojax.data.faults.UnreadableSplitError` when none can be read, and
      :class:`yolojax.data.faults.DataWorkerError` when a worker process dies.

    Raises:
      ValueError: imgsz not a multiple of 32; an unknown ``augment_on``; device mode with an
        option it cannot render (:func:`check_device_options`).
    """
    check_arguments({"imgsz": imgsz})
    aug = aug or AugmentConfig()
    if augment_on not in AUGMENT_ON:
        raise ValueError(f"augment_on must be one of {AUGMENT_ON}, not {augment_on!r}")
    if augment_on == "device":
        check_device_options(aug, rect, multi_scale)
    source, owns_cache = _cached(_as_source(data, "train"), cache, imgsz, "train")
    process_index, process_count = _process_index_and_count(process_index, process_count)
    schedule = train_schedule(source, batch_size, epochs, seed, process_index, process_count, imgsz, rect)
    if len(source) < batch_size:
        logger.info("%d training images < batch size %d: images repeat within a batch", len(source), batch_size)
    max_boxes = train_max_boxes(source, aug, epochs, max_boxes, rect)
    if augment_on == "device":
        builder = DeviceBatchBuilder(source, schedule, aug, imgsz, max_boxes, mosaic_pool,
                                     builds_in_shared_memory(workers, threads), augment_groups)
    else:
        builder = TrainBatchBuilder(source, schedule, aug, imgsz, max_boxes, mosaic_pool,
                                    shared_memory=builds_in_shared_memory(workers, threads), multi_scale=multi_scale)
    reporter, skips = TruncationReporter(max_boxes), skip_reporter_for(source)
    iterator = _iterate(builder, start_step, schedule.total_steps, workers, threads, prefetch, (reporter, skips))
    return Batches(iterator, start_step, schedule.total_steps, schedule.steps_per_epoch, source, schedule, max_boxes,
                   reporter, owns_cache, skips)


def make_val_iterator(
    data: str | os.PathLike | TfdsSpec | DetectionSource,
    *,
    imgsz: int = 640,
    batch_size: int = 16,
    rect: bool = False,
    stride: int = 32,
    max_boxes: int | None = None,
    workers: int = 0,
    threads: int = 1,
    prefetch: int = 2,
    split: str = "val",
    process_index: int | None = None,
    process_count: int | None = None,
    cache: str | bool | None = "",
) -> Batches:
    """Validation batches covering every image once (the last batch padded, see 'valid').

    Args:
      data: a data.yaml path or a TFDS dataset ('tfds:NAME', :class:`TfdsSpec`): its `split`; or a source.
      imgsz: long side in pixels.
      batch_size: GLOBAL batch size (rect shapes are computed per global batch).
      rect: ultralytics' rectangular batches (images sorted by aspect ratio, one canvas
        shape per batch, stride multiples with 0.5 stride padding), as ultralytics validates
        during training and in ``yolo val`` / ``YOLO(...).val()`` by default (``yolojax.val``
        passes True by default); False: every image letterboxed to imgsz x imgsz
        (ultralytics' ``rect=False``).
      stride: model stride for rect shapes.
      max_boxes: M; None (default): each batch is padded to its own largest label count, so
        every ground-truth box is kept.
      workers, threads, prefetch: as for training.
      split: data.yaml split when `data` is a path.
      process_index, process_count: this JAX process and their number (default: jax's).
      cache: as for training ("ram" caches the images resized to imgsz; ultralytics caches
        the validation images too when training with ``cache``).

    Returns:
      :class:`Batches` of dicts with image, boxes, classes, mask and valid, orig_hw,
      ratio_hw, pad_xy, index (see :class:`yolojax.data.val_batches.ValBatchBuilder`).
    """
    if imgsz % stride:
        raise ValueError(f"imgsz {imgsz} must be a multiple of the stride {stride}")
    source, owns_cache = _cached(_as_source(data, split), cache, imgsz, split)
    process_index, process_count = _process_index_and_count(process_index, process_count)
    shapes = source.image_shapes_hw
    if rect and shapes is None:
        logger.warning("source has no image shapes: square validation batches instead of rect")
        rect = False
    if rect:
        order, batch_shapes = rect_batch_shapes(shapes, batch_size, imgsz, stride=stride, pad=0.5)
    else:
        order, batch_shapes = np.arange(len(source), dtype=np.int64), None
    schedule = ValSchedule(order, batch_size, process_index, process_count, batch_shapes)
    builder = ValBatchBuilder(source, schedule, imgsz, max_boxes,
                              shared_memory=builds_in_shared_memory(workers, threads))
    reporter = TruncationReporter(max_boxes)
    iterator = _iterate(builder, 0, schedule.num_steps, workers, threads, prefetch, (reporter,))
    return Batches(iterator, 0, schedule.num_steps, schedule.num_steps, source, schedule, max_boxes, reporter,
                   owns_cache)
