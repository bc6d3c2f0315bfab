"""One augmented training sample, composed like ultralytics' ``v8_transforms``, in three steps.

Ultralytics' order: Mosaic (probability ``mosaic``) -> random perspective to imgsz x imgsz
(to the batch's rect shape with ``rect``) -> MixUp (probability ``mixup``, with a second
mosaic + perspective view) -> CutMix (probability ``cutmix``, a third view,
:mod:`yolojax.data.augment.cutmix`) -> HSV -> flip up-down -> flip left-right -> channel swap to BGR
(probability ``bgr``, ultralytics' ``Format``). Without mosaic (or after ``close_mosaic``) the single image,
resized to imgsz on its long side, goes through the same random perspective (its centre to
the drawn point near the output centre: a half-pixel shift where the padding is odd).

The steps are pure functions of their inputs, so the pixel step can run elsewhere (e.g. on
device) with the same parameters:

(a) :func:`draw_sample` draws every random parameter from the record's generator, in
    ultralytics' order of draws (including the checks ultralytics draws for transforms that
    are off: MixUp's, CutMix's and the BGR swap's), needing only the images' sizes (and,
    when CutMix applies, their labels: its choice depends on the boxes);
(b) :func:`sample_boxes` moves the labels with those parameters (no pixels);
(c) :func:`render_sample` does the pixel work with those parameters.

Given the same draws and the same (long-side-resized) images, the pixels are ultralytics'
and the boxes agree to float32 rounding (tests/test_data_parity.py drives ultralytics'
transforms and these with the same draws).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from yolojax.data.augment.affine import random_affine_matrix, transform_boxes, warp_layers
from yolojax.data.augment.config import AugmentConfig
from yolojax.data.augment.color import flip_lr, flip_lr_boxes, flip_ud, flip_ud_boxes, hsv_gains, random_hsv_with
from yolojax.data.augment.cutmix import CutMixParams, cutmix_boxes, draw_cutmix, paste_area
from yolojax.data.augment.mosaic import Tile, full_tile, mosaic_boxes, mosaic_centre, mosaic_tiles


@dataclasses.dataclass(frozen=True)
class LoadedImage:
    """A source image after ultralytics' ``load_image`` (long side resized to imgsz) and its labels.

    Attributes:
      image: uint8 (h, w, 3) RGB, the long side resized to imgsz (bilinear, ultralytics' size).
      boxes: float32 (n, 4) xyxy normalised by the image width / height.
      classes: int32 (n,).
      index: source index.
    """

    image: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray
    index: int

    @property
    def size_hw(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])


@dataclasses.dataclass(frozen=True)
class ViewParams:
    """One mosaic (or single image) and its random perspective warp.

    Attributes:
      indices: source images, in tile order (1, or 4 for a mosaic).
      sizes_hw: their (h, w) after the long-side resize.
      tiles: their places on the canvas.
      canvas_hw: (h, w) of the canvas the warp reads (2s x 2s for a mosaic, else the image).
      matrix: float32 (3, 3) canvas pixels -> output pixels.
      scale: the drawn scale (for the box candidate filter).
      perspective: warp projectively (perspective != 0).
    """

    indices: tuple[int, ...]
    sizes_hw: tuple[tuple[int, int], ...]
    tiles: tuple[Tile, ...]
    canvas_hw: tuple[int, int]
    matrix: np.ndarray
    scale: float
    perspective: bool

    @property
    def is_mosaic(self) -> bool:
        return len(self.indices) > 1


@dataclasses.dataclass(frozen=True)
class SampleParams:
    """Every random choice of one training sample.

    Attributes:
      out_hw: (imgsz, imgsz), or the batch's rect shape.
      views: the primary view, and with MixUp the second one.
      mix_ratio: MixUp's r ~ Beta(32, 32), the primary view's weight (1.0 without MixUp).
      hsv_gains: float64 (3,) hue / saturation / value gains, or None (all HSV gains 0).
      flip_ud, flip_lr: the flips.
      cutmix: the CutMix (its view, rectangle, kept boxes), or None.
      bgr: the image is fed with its channels swapped (RGB -> BGR).
    """

    out_hw: tuple[int, int]
    views: tuple[ViewParams, ...]
    mix_ratio: float
    hsv_gains: np.ndarray | None
    flip_ud: bool
    flip_lr: bool
    cutmix: CutMixParams | None = None
    bgr: bool = False

    @property
    def source_indices(self) -> tuple[int, ...]:
        cut = self.cutmix.view.indices if self.cutmix is not None else ()
        return tuple(i for v in self.views for i in v.indices) + tuple(cut)


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


SizeOf = Callable[[int], tuple[int, int]]
LabelsOf = Callable[[int], tuple[np.ndarray, np.ndarray]]
ImageOf = Callable[[int], np.ndarray]
PartnerPicker = Callable[[np.random.Generator, int], list[int]]
Loader = Callable[[int], LoadedImage]


# ----------------------------------------------------------------------------------------
# (a) Parameters.
# ----------------------------------------------------------------------------------------


def _applies(rng: np.random.Generator, p: float) -> bool:
    """Ultralytics' ``if random.uniform(0, 1) > p: skip`` (one draw, also when p is 0)."""
    return not rng.uniform(0, 1) > p


def draw_view(index: int, size_of: SizeOf, pick: PartnerPicker, rng: np.random.Generator, aug: AugmentConfig,
              imgsz: int, p_mosaic: float, out_hw: tuple[int, int] | None = None) -> ViewParams:
    """Mosaic (its check, partners and centre) then the perspective warp's 8 draws, to
    ``out_hw`` (default imgsz x imgsz)."""
    out_h, out_w = out_hw or (imgsz, imgsz)
    if _applies(rng, p_mosaic):
        indices = (int(index), *(int(i) for i in pick(rng, 3)))
        sizes = tuple(tuple(size_of(i)) for i in indices)
        tiles = tuple(mosaic_tiles(sizes, mosaic_centre(rng, imgsz), imgsz))
        canvas_hw = (2 * imgsz, 2 * imgsz)
    else:
        indices = (int(index),)
        sizes = (tuple(size_of(index)),)
        tiles = (full_tile(sizes[0]),)
        canvas_hw = sizes[0]
    m, s = random_affine_matrix(rng, canvas_hw, (out_w, out_h), degrees=aug.degrees, translate=aug.translate,
                                scale=aug.scale, shear=aug.shear, perspective=aug.perspective)
    return ViewParams(indices, sizes, tiles, canvas_hw, m, s, bool(aug.perspective))


def draw_sample(index: int, size_of: SizeOf, pick: PartnerPicker, rng: np.random.Generator, aug: AugmentConfig,
                imgsz: int, mixing: bool, out_hw: tuple[int, int] | None = None, labels_of: LabelsOf | None = None,
                area_thr: float = 0.1) -> SampleParams:
    """(a) Every random parameter of the sample of source image `index`, in ultralytics' order of draws.

    Args:
      index: the primary source index.
      size_of: source index -> (h, w) after the long-side resize to imgsz (no pixels needed).
      pick: (rng, k) -> k source indices for mosaic / mixup / cutmix partners.
      rng: this record's generator; the only randomness used.
      aug: hyperparameters.
      imgsz: the mosaic size, and the output side unless ``out_hw`` is given.
      mixing: False in the last close_mosaic epochs (and with rect training): no mosaic,
        mixup or cutmix (their checks are still drawn, as ultralytics draws them with
        probability 0).
      out_hw: the output (h, w) (a rect batch's shape); default (imgsz, imgsz).
      labels_of: source index -> labels as for :func:`sample_boxes`; needed only when a
        CutMix applies (its rectangle must avoid the boxes).
      area_thr: the candidate filter ratio (0.1; 0.01 with polygons), also CutMix's share.

    Raises:
      ValueError: a CutMix applies and ``labels_of`` is None.
    """
    out_hw = tuple(out_hw or (imgsz, imgsz))
    p_mosaic = aug.mosaic if mixing else 0.0
    views = [draw_view(index, size_of, pick, rng, aug, imgsz, p_mosaic, out_hw)]
    mix_ratio = 1.0
    if _applies(rng, aug.mixup if mixing else 0.0):
        other = int(pick(rng, 1)[0])
        views.append(draw_view(other, size_of, pick, rng, aug, imgsz, p_mosaic, out_hw))
        mix_ratio = float(rng.beta(32.0, 32.0))
    cut = None
    if _applies(rng, aug.cutmix if mixing else 0.0):
        if labels_of is None:
            raise ValueError("cutmix needs labels_of (its rectangle avoids the sample's boxes)")
        other = int(pick(rng, 1)[0])
        view = draw_view(other, size_of, pick, rng, aug, imgsz, p_mosaic, out_hw)
        boxes = np.concatenate([view_boxes(v, labels_of, out_hw, area_thr)[0] for v in views])
        cut = draw_cutmix(rng, view, boxes, view_boxes(view, labels_of, out_hw, area_thr)[0], out_hw, area_thr)
    gains = hsv_gains(rng, aug.hsv_h, aug.hsv_s, aug.hsv_v)
    flip_ud_ = bool(rng.random() < aug.flipud)
    flip_lr_ = bool(rng.random() < aug.fliplr)
    bgr = _applies(rng, aug.bgr)  # ultralytics' Format keeps BGR unless uniform(0, 1) > bgr
    return SampleParams(out_hw, tuple(views), mix_ratio, gains, flip_ud_, flip_lr_, cut, bgr)


# ----------------------------------------------------------------------------------------
# (b) Boxes.
# ----------------------------------------------------------------------------------------


def view_boxes(view: ViewParams, labels_of: LabelsOf, out_hw: tuple[int, int],
               area_thr: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """A view's labels in output pixels: placed on the canvas, warped, clipped, filtered."""
    labels = [labels_of(i) for i in view.indices]
    if view.is_mosaic:
        boxes, classes, _ = mosaic_boxes([b for b, _ in labels], [c for _, c in labels], view.sizes_hw,
                                         view.tiles, out_hw[0])
    else:
        h, w = view.sizes_hw[0]
        boxes = np.asarray(labels[0][0], np.float32).reshape(-1, 4) * np.array([w, h, w, h], np.float32)
        classes = np.asarray(labels[0][1], np.int32).reshape(-1)
    return transform_boxes(boxes, classes, view.matrix, view.scale, (out_hw[1], out_hw[0]), view.perspective,
                           area_thr)


def sample_boxes(params: SampleParams, labels_of: LabelsOf, area_thr: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """(b) The sample's boxes: float32 (n, 4) xyxy output pixels and int32 (n,) classes.

    Args:
      params: from :func:`draw_sample`.
      labels_of: source index -> (float32 (n, 4) normalised xyxy boxes, int32 (n,) classes).
      area_thr: candidate filter area ratio (0.1; 0.01 for polygon labels like ultralytics).
    """
    parts = [view_boxes(v, labels_of, params.out_hw, area_thr) for v in params.views]
    if params.cutmix is not None and params.cutmix.area is not None:
        partner_boxes, partner_classes = view_boxes(params.cutmix.view, labels_of, params.out_hw, area_thr)
        parts.append((cutmix_boxes(params.cutmix, partner_boxes), partner_classes[params.cutmix.keep]))
    boxes = np.concatenate([b for b, _ in parts]).astype(np.float32)
    classes = np.concatenate([c for _, c in parts]).astype(np.int32)
    h, w = params.out_hw
    if params.flip_ud:
        boxes = flip_ud_boxes(boxes, h)
    if params.flip_lr:
        boxes = flip_lr_boxes(boxes, w)
    return boxes, classes


# ----------------------------------------------------------------------------------------
# (c) Pixels.
# ----------------------------------------------------------------------------------------


def render_view(view: ViewParams, image_of: ImageOf, out_hw: tuple[int, int],
                out: np.ndarray | None = None) -> np.ndarray:
    """A view's pixels: its (long-side-resized) images on the canvas, warped to `out_hw`."""
    images = [image_of(i) for i in view.indices]
    for image, size in zip(images, view.sizes_hw):
        if tuple(image.shape[:2]) != tuple(size):
            raise ValueError(f"image of shape {image.shape[:2]} where the parameters were drawn for {size}")
    return warp_layers(images, list(view.tiles), view.canvas_hw, view.matrix, (out_hw[1], out_hw[0]),
                       view.perspective, out)


def render_sample(params: SampleParams, image_of: ImageOf, out: np.ndarray | None = None) -> np.ndarray:
    """(c) The sample's pixels: uint8 (h, w, 3) of ``params.out_hw``, RGB (BGR when
    ``params.bgr``) (`out` if given).

    Args:
      params: from :func:`draw_sample`.
      image_of: source index -> uint8 (h, w, 3) RGB resized to its size in the parameters.
      out: optional uint8 (imgsz, imgsz, 3) to build the image in (e.g. a slot of the batch).
    """
    image = render_view(params.views[0], image_of, params.out_hw, out)
    if len(params.views) > 1:
        image2 = render_view(params.views[1], image_of, params.out_hw)
        r = params.mix_ratio
        image[...] = (image * r + image2 * (1 - r)).astype(np.uint8)  # ultralytics' MixUp.apply_image
    if params.cutmix is not None and params.cutmix.area is not None:
        paste_area(image, render_view(params.cutmix.view, image_of, params.out_hw), params.cutmix)
    if params.hsv_gains is not None:
        random_hsv_with(image, params.hsv_gains)
    if params.flip_ud:
        flip_ud(image)
    if params.flip_lr:
        flip_lr(image)
    if params.bgr:
        image[...] = image[..., ::-1].copy()
    return image


# ----------------------------------------------------------------------------------------
# All three.
# ----------------------------------------------------------------------------------------


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
    """Build the augmented sample of source image `index`: (a), (b) and (c) in turn.

    Args:
      index: the primary source index.
      load: source index -> LoadedImage (resized image and labels).
      pick: (rng, k) -> k source indices for mosaic / mixup partners.
      rng: this record's generator; the only randomness used.
      aug: hyperparameters.
      imgsz: output side in pixels.
      mixing: False in the last close_mosaic epochs: no mosaic and no mixup.
      area_thr: candidate filter area ratio (0.1; 0.01 for polygon labels like ultralytics).
      out: optional uint8 (imgsz, imgsz, 3) to build the image in (e.g. a slot of the batch).
    """
    labels_of = lambda i: (load(i).boxes, load(i).classes)  # noqa: E731
    params = draw_sample(index, lambda i: load(i).size_hw, pick, rng, aug, imgsz, mixing, labels_of=labels_of,
                         area_thr=area_thr)
    boxes, classes = sample_boxes(params, labels_of, area_thr)
    image = render_sample(params, lambda i: load(i).image, out)
    return Sample(image, boxes, classes, params.source_indices)
