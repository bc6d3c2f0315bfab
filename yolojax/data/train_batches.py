"""Training batch of one step: the Grain map function run in the worker processes."""

from __future__ import annotations

from typing import Any

import numpy as np

from yolojax.data.augment.config import AugmentConfig
from yolojax.data.batching import new_image_batch, pad_labels
from yolojax.data.faults import SKIPPED_KEY, SkippedImage, UnreadableSplitError
from yolojax.data.memory.image_cache import resized_record
from yolojax.data.augment.multi_scale import draw_size, rescale_batch, scaled_shape
from yolojax.data.schedule import TrainSchedule, record_rng
from yolojax.data.sources.yolo import DetectionSource
from yolojax.data.augment.sample import LoadedImage, draw_sample, render_sample, sample_boxes

MOSAIC_POOLS = ("batch", "dataset")


def load_image(source: DetectionSource, index: int, imgsz: int) -> LoadedImage:
    """Source image `index` as ultralytics' ``load_image`` gives it (decoded, long side resized to
    imgsz, bilinear; from the image cache of a cached source) with its labels.

    Raises:
      OSError: the image cannot be read (e.g. :class:`yolojax.data.image_io.UnreadableImageError`).
    """
    record = resized_record(source, index, imgsz)
    return LoadedImage(record["image"], record["boxes"], record["classes"], int(index))


class BatchImages:
    """source index -> :class:`LoadedImage`, each image read once per batch.

    An image that can no longer be read (moved, deleted or damaged since the label scan; not
    with a RAM cache, which never reads the files again) is replaced by the next readable one
    (index + 1, + 2, ..., wrapping round), and so is every unreadable image passed on the way.
    The choice depends only on the files, so a batch keeps its shape and stays a function of
    its step (a resume is exact). Each replacement is recorded in ``skipped``.

    Args:
      source: the training images and labels.
      imgsz: the long side images are resized to.
    """

    def __init__(self, source: DetectionSource, imgsz: int):
        self.source = source
        self.imgsz = int(imgsz)
        self.loaded: dict[int, LoadedImage] = {}
        self.skipped: list[SkippedImage] = []

    def __call__(self, index: int) -> LoadedImage:
        """Image `index` (or the image in its place).

        Raises:
          UnreadableSplitError: not one image of the source can be read.
        """
        index = int(index)
        if index not in self.loaded:
            self._load(index)
        return self.loaded[index]

    def _load(self, index: int) -> None:
        unreadable: list[tuple[int, OSError]] = []
        n = len(self.source)
        for j in ((index + k) % n for k in range(n)):
            if j in self.loaded:
                image = self.loaded[j]
                break
            try:
                image = load_image(self.source, j, self.imgsz)
                break
            except OSError as e:
                unreadable.append((j, e))
        else:
            j, e = unreadable[0]
            raise UnreadableSplitError(f"no image of the train split can be read any more ({n} images, e.g. "
                                       f"{self._path(j, e)}: {_reason(e)}): moved or deleted during the run?")
        for j, e in unreadable:
            self.skipped.append(SkippedImage(j, self._path(j, e), _reason(e), image.index, self._path(image.index)))
            self.loaded[j] = image
        self.loaded[index] = image

    def _path(self, index: int, error: OSError | None = None) -> str:
        path = getattr(error, "path", None)
        paths = getattr(self.source, "image_paths", None)
        return str(path or (paths[index] if paths is not None else f"image {index}"))


def _reason(error: OSError) -> str:
    return getattr(error, "reason", None) or error.strerror or str(error)


def with_skipped(batch: dict[str, Any], images: BatchImages) -> dict[str, Any]:
    """``batch`` with the records of the images it skipped (none: as it is), for
    :class:`yolojax.data.faults.SkipReporter` in the main process."""
    if images.skipped:
        batch[SKIPPED_KEY] = tuple(images.skipped)
    return batch


class TrainBatchBuilder:
    """step -> this process's training batch (DESIGN.md's format, plus 'num_boxes', and
    'skipped_images' when an image could not be read: :class:`BatchImages`).

    Args:
      source: the images and labels.
      schedule: which images each step uses.
      aug: augmentation hyperparameters.
      imgsz: output side in pixels (a multiple of 32).
      max_boxes: M.
      mosaic_pool: where mosaic / mixup partners come from: 'batch' (the other images of the
        same local batch, drawn without replacement: every image is decoded once per batch) or
        'dataset' (uniform over the whole source, like ultralytics with cache='ram').
      shared_memory: allocate the image batch in shared memory (set when the builder runs in
        Grain worker processes: saves copying the batch once more).
      multi_scale: ultralytics' ``multi_scale`` (:mod:`yolojax.data.augment.multi_scale`); 0: off.

    With a rect schedule (``schedule.batch_shapes_hw``) each batch has its rect shape and
    mosaic, mixup and cutmix are off (ultralytics' dataset with ``rect``).
    """

    def __init__(
        self,
        source: DetectionSource,
        schedule: TrainSchedule,
        aug: AugmentConfig,
        imgsz: int,
        max_boxes: int,
        mosaic_pool: str = "batch",
        shared_memory: bool = False,
        multi_scale: float = 0.0,
    ):
        if mosaic_pool not in MOSAIC_POOLS:
            raise ValueError(f"mosaic_pool must be one of {MOSAIC_POOLS}, not {mosaic_pool!r}")
        self.source = source
        self.schedule = schedule
        self.aug = aug
        self.imgsz = int(imgsz)
        self.max_boxes = int(max_boxes)
        self.mosaic_pool = mosaic_pool
        self.shared_memory = shared_memory
        self.multi_scale = float(multi_scale)
        self.area_thr = 0.01 if getattr(source, "has_polygons", False) else 0.1

    def _picker(self, indices: np.ndarray, slot: int):
        n = len(self.source)
        if self.mosaic_pool == "dataset":
            return lambda rng, k: [int(i) for i in rng.integers(0, n, k)]
        others = np.delete(indices, slot)

        def pick(rng: np.random.Generator, k: int) -> list[int]:
            if len(others) >= k:
                return [int(i) for i in rng.choice(others, k, replace=False)]
            return [int(i) for i in rng.choice(indices, k, replace=True)]

        return pick

    def __call__(self, step: int) -> dict[str, Any]:
        epoch, positions, indices = self.schedule.image_indices(int(step))
        rect = self.schedule.batch_shapes_hw is not None
        mixing = self.aug.mixing_on(epoch, self.schedule.epochs) and not rect
        out_hw = self.schedule.out_hw(int(step), self.imgsz)
        load = BatchImages(self.source, self.imgsz)
        images = new_image_batch((len(indices), *out_hw, 3), self.shared_memory)
        labels_of = lambda i: (load(i).boxes, load(i).classes)  # noqa: E731
        boxes, classes = [], []
        for slot, (pos, index) in enumerate(zip(positions, indices)):
            rng = record_rng(self.schedule.seed, epoch, pos)
            params = draw_sample(int(index), lambda i: load(i).size_hw, self._picker(indices, slot), rng, self.aug,
                                 self.imgsz, mixing, out_hw=out_hw, labels_of=labels_of, area_thr=self.area_thr)
            b, c = sample_boxes(params, labels_of, self.area_thr)
            render_sample(params, lambda i: load(i).image, out=images[slot])
            boxes.append(b)
            classes.append(c)
        batch = {"image": images}
        batch.update(pad_labels(boxes, classes, self.max_boxes))
        if self.multi_scale > 0:
            size = draw_size(self.schedule.seed, int(step), self.imgsz, self.multi_scale)
            new_hw = scaled_shape(out_hw, size)
            if new_hw != out_hw:
                batch = rescale_batch(batch, new_hw, new_image_batch((len(indices), *new_hw, 3), self.shared_memory))
        return with_skipped(batch, load)
