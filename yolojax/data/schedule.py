"""Which source images go into which batch: per-epoch shuffle, process sharding, padding.

Training: each epoch is a fresh permutation of the N images drawn from (seed, epoch). Global
batch k of an epoch is permutation positions [k*B, (k+1)*B); process p takes the slice
[p*b, (p+1)*b) of it (b = B / process_count), so the global batch does not depend on the
number of processes. An epoch has max(1, N // B) steps (the remainder is dropped); when
N < B positions wrap around the permutation. Every record's randomness comes from a
generator seeded by (seed, epoch, position), independent of workers and processes.

Rect training (ultralytics' ``rect=True``): the images sorted by aspect ratio, batch k of
every epoch the same images (ultralytics turns the shuffle off when the batch shapes differ)
with its own canvas shape.

Validation: images in source order (or sorted by aspect ratio for 'rect' batches), the
last global batch padded with invalid slots.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

_PERMUTATION_STREAM = 0
_RECORD_STREAM = 1


@functools.lru_cache(maxsize=4)
def epoch_permutation(seed: int, epoch: int, num_images: int) -> np.ndarray:
    """int64 (N,) the image order of `epoch`: a permutation drawn from (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch, _PERMUTATION_STREAM])
    order = rng.permutation(num_images)
    order.setflags(write=False)
    return order


def record_rng(seed: int, epoch: int, position: int) -> np.random.Generator:
    """The generator of the record at `position` of `epoch`: every random choice of its sample."""
    return np.random.default_rng([seed, epoch, int(position), _RECORD_STREAM])


def _check_split(global_batch: int, process_index: int, process_count: int) -> int:
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"bad process_index {process_index} / process_count {process_count}")
    if global_batch < 1 or global_batch % process_count:
        raise ValueError(f"batch size {global_batch} must be a positive multiple of process_count {process_count}")
    return global_batch // process_count


@dataclasses.dataclass(frozen=True)
class TrainSchedule:
    """Steps, epochs and the images of each local training batch.

    Attributes:
      num_images: N, images in the source.
      global_batch: B, images per step over all processes.
      epochs: number of epochs.
      seed: shuffle / augmentation seed.
      process_index, process_count: this process and the number of processes.
      order: int64 (N,) a fixed image order used by every epoch (rect training), or None:
        a fresh permutation per epoch.
      batch_shapes_hw: int64 (ceil(N / B), 2) the canvas (H, W) of each batch of an epoch
        (rect training), or None: square.
    """

    num_images: int
    global_batch: int
    epochs: int
    seed: int
    process_index: int = 0
    process_count: int = 1
    order: np.ndarray | None = None
    batch_shapes_hw: np.ndarray | None = None

    def __post_init__(self):
        _check_split(self.global_batch, self.process_index, self.process_count)
        if self.num_images < 1 or self.epochs < 1:
            raise ValueError("need at least one image and one epoch")

    @property
    def local_batch(self) -> int:
        return self.global_batch // self.process_count

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.num_images // self.global_batch)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def positions(self, step: int) -> tuple[int, np.ndarray]:
        """(epoch, int64 (b,) positions within the epoch of this process's slots at `step`)."""
        epoch, k = divmod(int(step), self.steps_per_epoch)
        start = k * self.global_batch + self.process_index * self.local_batch
        return epoch, np.arange(start, start + self.local_batch, dtype=np.int64)

    def image_indices(self, step: int) -> tuple[int, np.ndarray, np.ndarray]:
        """(epoch, positions (b,), source indices (b,)) of this process's batch at `step`."""
        epoch, positions = self.positions(step)
        order = self.order if self.order is not None else epoch_permutation(self.seed, epoch, self.num_images)
        return epoch, positions, order[positions % self.num_images]

    def out_hw(self, step: int, imgsz: int) -> tuple[int, int]:
        """The canvas (h, w) of the batch at ``step``: its rect shape, else (imgsz, imgsz)."""
        if self.batch_shapes_hw is None:
            return imgsz, imgsz
        h, w = self.batch_shapes_hw[int(step) % self.steps_per_epoch]
        return int(h), int(w)


@dataclasses.dataclass(frozen=True)
class ValSchedule:
    """Every image once, in `order`, in global batches; the last one padded.

    Attributes:
      order: int64 (N,) source indices in batch order.
      global_batch: B.
      process_index, process_count: this process and the number of processes.
      batch_shapes_hw: int64 (num_steps, 2) canvas (H, W) per step ('rect'), or None for square.
    """

    order: np.ndarray
    global_batch: int
    process_index: int = 0
    process_count: int = 1
    batch_shapes_hw: np.ndarray | None = None

    def __post_init__(self):
        _check_split(self.global_batch, self.process_index, self.process_count)

    @property
    def local_batch(self) -> int:
        return self.global_batch // self.process_count

    @property
    def num_steps(self) -> int:
        return math.ceil(len(self.order) / self.global_batch)

    def image_indices(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(source indices (b,) with -1 for padding, bool valid (b,)) of this process's slots."""
        start = int(step) * self.global_batch + self.process_index * self.local_batch
        positions = np.arange(start, start + self.local_batch)
        valid = positions < len(self.order)
        indices = np.where(valid, self.order[np.minimum(positions, len(self.order) - 1)], -1)
        return indices.astype(np.int64), valid
