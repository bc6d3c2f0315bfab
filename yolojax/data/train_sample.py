"""One augmented training sample, composed like ultralytics' ``v8_transforms``.

Mosaic (probability ``mosaic``) -> random perspective to imgsz x imgsz -> MixUp (probability
``mixup``, with a second mosaic + perspective view) -> HSV -> flip up-down -> flip left-right.
Without mosaic (or after ``close_mosaic``) the single image, resized to imgsz on its long
side, goes through the same random perspective. Every random choice uses the record's
``np.random.Generator``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from yolojax.data.affine import random_perspective
from yolojax.data.augment_config import AugmentConfig
from yolojax.data.color import flip_lr, flip_ud, random_hsv
from yolojax.data.mosaic import full_tile, mosaic_boxes, mosaic_centre, mosaic_tiles


@dataclasses.dataclass(frozen=True)
class LoadedImage:
    """A decoded image, the size it has after the long-side resize to imgsz, and its labels.

    The resize itself is left to the warp, which resamples once from the decoded pixels.

    Attributes:
      image: uint8 (h0, w0, 3) RGB as decoded.
      size_hw: (h, w) after resizing the long side to imgsz (ultralytics' load_image size).
      boxes: float32 (n, 4) xyxy normalised by the image width / height.
      classes: int32 (n,).
      index: source index.
    """

    image: np.ndarray
    size_hw: tuple[int, int]
    boxes: np.ndarray
    classes: np.ndarray
    index: int


@dataclasses.dataclass(frozen=True)
class Sample:
    """A finished training sample.

    Attributes:
      image: uint8 (imgsz, imgsz, 3) RGB.
      boxes: float32 (n, 4) xyxy pixels, inside the image, positive area.
      classes: int32 (n,).
      source_indices: the source images it was made of (1, 4, or more with mixup).
    """

    image: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray
    source_indices: tuple[int, ...]


Loader = Callable[[int], LoadedImage]
PartnerPicker = Callable[[np.random.Generator, int], list[int]]


def _view(
    index: int, load: Loader, pick: PartnerPicker, rng: np.random.Generator, aug: AugmentConfig,
    imgsz: int, mixing: bool, area_thr: float, out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, ...]]:
    """Mosaic (or the single image) followed by the random perspective warp to (imgsz, imgsz)."""
    primary = load(index)
    if mixing and not rng.uniform(0, 1) > aug.mosaic:
        parts = [primary] + [load(i) for i in pick(rng, 3)]
        shapes = [p.size_hw for p in parts]
        tiles = mosaic_tiles(shapes, mosaic_centre(rng, imgsz), imgsz)
        boxes, classes, box_layer = mosaic_boxes([p.boxes for p in parts], [p.classes for p in parts], shapes,
                                                 tiles, imgsz)
        canvas_hw = (2 * imgsz, 2 * imgsz)
    else:
        parts = [primary]
        h, w = primary.size_hw
        tiles, canvas_hw = [full_tile((h, w))], (h, w)
        boxes = primary.boxes * np.array([w, h, w, h], np.float32)
        classes, box_layer = primary.classes, np.zeros(len(primary.classes), np.int32)
    image, boxes, classes = random_perspective(
        [p.image for p in parts], [p.size_hw for p in parts], tiles, canvas_hw, boxes, box_layer, classes, rng,
        (imgsz, imgsz), degrees=aug.degrees, translate=aug.translate, scale=aug.scale, shear=aug.shear,
        perspective=aug.perspective, area_thr=area_thr, out=out,
    )
    used = tuple(p.index for p in parts)
    return image, boxes, classes, used


def train_sample(
    index: int,
    load: Loader,
    pick: PartnerPicker,
    rng: np.random.Generator,
    aug: AugmentConfig,
    imgsz: int,
    mixing: bool,
    area_thr: float = 0.1,
    out: np.ndarray | None = None,
) -> Sample:
    """Build the augmented sample of source image `index`.

    Args:
      index: the primary source index.
      load: source index -> LoadedImage.
      pick: (rng, k) -> k source indices for mosaic / mixup partners.
      rng: this record's generator; the only randomness used.
      aug: hyperparameters.
      imgsz: output side in pixels.
      mixing: False in the last close_mosaic epochs: no mosaic and no mixup.
      area_thr: candidate filter area ratio (0.1; 0.01 for polygon labels like ultralytics).
      out: optional uint8 (imgsz, imgsz, 3) to build the image in (e.g. a slot of the batch).
    """
    image, boxes, classes, used = _view(index, load, pick, rng, aug, imgsz, mixing, area_thr, out)
    if mixing and aug.mixup > 0 and not rng.uniform(0, 1) > aug.mixup:
        other = pick(rng, 1)[0]
        image2, boxes2, classes2, used2 = _view(other, load, pick, rng, aug, imgsz, mixing, area_thr)
        r = rng.beta(32.0, 32.0)
        image[...] = (image * r + image2 * (1 - r)).astype(np.uint8)
        boxes, classes, used = np.concatenate([boxes, boxes2]), np.concatenate([classes, classes2]), used + used2
    image = random_hsv(image, rng, aug.hsv_h, aug.hsv_s, aug.hsv_v)
    if rng.random() < aug.flipud:
        image, boxes = flip_ud(image, boxes)
    if rng.random() < aug.fliplr:
        image, boxes = flip_lr(image, boxes)
    return Sample(image, boxes.astype(np.float32), classes.astype(np.int32), used)
