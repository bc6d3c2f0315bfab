"""Training batch of one step in device mode (``data.augment_on = "device"``): the Grain map
function that draws and boxes every sample as host mode does and ships the source images
and parameters (:mod:`yolojax.data.device.params`) instead of rendered pixels."""

from __future__ import annotations

from typing import Any

from yolojax.data.augment.config import AUGMENT_ON, AugmentConfig
from yolojax.data.batching import pad_labels
from yolojax.data.device.params import pack_batch, source_slots, views_per_sample
from yolojax.data.schedule import TrainSchedule, record_rng
from yolojax.data.sources.yolo import DetectionSource
from yolojax.data.train_batches import BatchImages, TrainBatchBuilder, with_skipped
from yolojax.data.augment.sample import draw_sample, sample_boxes

__all__ = ["AUGMENT_ON", "DeviceBatchBuilder", "check_device_options"]


def check_device_options(aug: AugmentConfig, rect: bool = False, multi_scale: float = 0.0) -> None:
    """Refuse the training options device mode cannot render, before any work.

    The device render (:func:`yolojax.data.device.augment.render_batch`) writes every sample
    at imgsz x imgsz from at most 2 views (mosaic tiles, MixUp) with HSV and flips; it has no
    CutMix paste, no BGR channel swap, and one compiled output shape, so rect batch shapes
    and multi-scale resizes (a new shape per batch) stay host-mode options.

    Raises:
      ValueError: ``rect``, ``multi_scale`` > 0, ``aug.cutmix`` > 0 or ``aug.bgr`` > 0,
        naming the config field.
    """
    refused = [name for name, on in (("rect", rect), ("multi_scale", multi_scale > 0), ("cutmix", aug.cutmix > 0),
                                     ("bgr", aug.bgr > 0)) if on]
    if refused:
        raise ValueError(f"data.augment_on='device' cannot render {', '.join(refused)}: use data.augment_on='host' "
                         f"or turn {'them' if len(refused) > 1 else 'it'} off")


class DeviceBatchBuilder(TrainBatchBuilder):
    """step -> this process's device-mode batch: boxes, classes, mask, num_boxes as in host
    mode (the same draws, the same boxes) and the ``aug_*`` arrays in place of ``image``.

    Args:
      source, schedule, aug, imgsz, max_boxes, mosaic_pool, shared_memory: as
        :class:`yolojax.data.train_batches.TrainBatchBuilder`.
      groups: device groups G of the local batch (one per 'data' shard this process feeds,
        :func:`yolojax.parallel.local_data_shards`); the local batch must divide by it.

    Raises:
      ValueError: the local batch does not split into `groups`.
    """

    def __init__(self, source: DetectionSource, schedule: TrainSchedule, aug: AugmentConfig, imgsz: int,
                 max_boxes: int, mosaic_pool: str = "batch", shared_memory: bool = False, groups: int = 1):
        super().__init__(source, schedule, aug, imgsz, max_boxes, mosaic_pool, shared_memory)
        self.groups = int(groups)
        self.slots = source_slots(schedule.local_batch, self.groups, aug, mosaic_pool)
        self.views = views_per_sample(aug)

    def __call__(self, step: int) -> dict[str, Any]:
        epoch, positions, indices = self.schedule.image_indices(int(step))
        mixing = self.aug.mixing_on(epoch, self.schedule.epochs)
        load = BatchImages(self.source, self.imgsz)
        params, boxes, classes = [], [], []
        for slot, (pos, index) in enumerate(zip(positions, indices)):
            rng = record_rng(self.schedule.seed, epoch, pos)
            p = draw_sample(int(index), lambda i: load(i).size_hw, self._picker(indices, slot), rng, self.aug,
                            self.imgsz, mixing)
            b, c = sample_boxes(p, lambda i: (load(i).boxes, load(i).classes), self.area_thr)
            params.append(p)
            boxes.append(b)
            classes.append(c)
        batch = pack_batch(params, lambda i: load(i).image, self.groups, self.slots, self.views, self.imgsz,
                           self.shared_memory)
        batch.update(pad_labels(boxes, classes, self.max_boxes))
        return with_skipped(batch, load)
