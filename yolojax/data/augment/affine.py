"""Ultralytics' ``RandomPerspective``: random affine / perspective warp of an image and its boxes.

The warp M = T @ S @ R @ P @ C maps input pixels to output pixels: C moves the input
centre to the origin, P adds perspective, R rotates (``degrees``) and scales (1 +- ``scale``),
S shears (``shear`` degrees), T moves to a random point within +-``translate`` of the output
centre. Boxes are warped by their 4 corners, clipped to the output and filtered by
:func:`box_candidates`.

The input is a canvas of layers: one image, or the four images of a mosaic placed by
:class:`yolojax.data.augment.mosaic.Tile`, each already resized to its long-side size (ultralytics'
``load_image``). The pixels are ultralytics' exactly: the canvas is warped with
``cv2.warpAffine`` (``cv2.warpPerspective`` with perspective), bilinear, border 114, by the
same call. An affine warp of a mosaic fills only the part of the canvas the warp reads; a
single image is warped as it is, without a canvas.

The three steps are separate pure functions, as :mod:`yolojax.data.augment.sample` uses them:
:func:`random_affine_matrix` draws, :func:`transform_boxes` moves the boxes and
:func:`warp_layers` does the pixel work.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np

from yolojax.data.augment.letterbox import PAD_VALUE
from yolojax.data.augment.mosaic import Tile, paste_layers

_BORDER = (PAD_VALUE,) * 4  # 4 values: OpenCV tiles borderValue in blocks of 4


def random_affine_matrix(
    rng: np.random.Generator,
    in_hw: tuple[int, int],
    out_wh: tuple[int, int],
    degrees: float = 0.0,
    translate: float = 0.1,
    scale: float = 0.5,
    shear: float = 0.0,
    perspective: float = 0.0,
) -> tuple[np.ndarray, float]:
    """Draw a warp like ultralytics' ``_compute_affine_matrix`` (8 uniform draws, its order).

    Args:
      rng: the record's generator.
      in_hw: (h, w) of the input image in pixels.
      out_wh: (w, h) of the output image in pixels.
      degrees, translate, scale, shear, perspective: ultralytics' hyperparameters.

    Returns:
      M: float32 (3, 3) input pixels -> output pixels.
      s: the drawn scale factor.
    """
    c = np.eye(3, dtype=np.float32)
    c[0, 2] = -in_hw[1] / 2
    c[1, 2] = -in_hw[0] / 2
    p = np.eye(3, dtype=np.float32)
    p[2, 0] = rng.uniform(-perspective, perspective)
    p[2, 1] = rng.uniform(-perspective, perspective)
    r = np.eye(3, dtype=np.float32)
    angle = rng.uniform(-degrees, degrees)
    s = rng.uniform(1 - scale, 1 + scale)
    r[:2] = cv2.getRotationMatrix2D(angle=angle, center=(0, 0), scale=s)
    sh = np.eye(3, dtype=np.float32)
    sh[0, 1] = math.tan(rng.uniform(-shear, shear) * math.pi / 180)
    sh[1, 0] = math.tan(rng.uniform(-shear, shear) * math.pi / 180)
    t = np.eye(3, dtype=np.float32)
    t[0, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * out_wh[0]
    t[1, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * out_wh[1]
    return t @ sh @ r @ p @ c, float(s)


def _output(out: np.ndarray | None, out_wh: tuple[int, int]) -> np.ndarray:
    shape = (out_wh[1], out_wh[0], 3)
    if out is None:
        return np.empty(shape, np.uint8)
    if out.shape != shape or out.dtype != np.uint8:
        raise ValueError(f"out must be uint8 {shape}, not {out.dtype} {out.shape}")
    return out


def warp_image(
    image: np.ndarray, m: np.ndarray, out_wh: tuple[int, int], perspective: bool, out: np.ndarray | None = None
) -> np.ndarray:
    """Warp uint8 (h, w, 3) by float (3, 3) `m` into (out_h, out_w, 3) (`out` if given), bilinear, border 114
    (ultralytics' ``RandomPerspective.apply_image``)."""
    out = _output(out, out_wh)
    if perspective:
        return cv2.warpPerspective(image, m, dsize=out_wh, dst=out, borderValue=_BORDER)
    return cv2.warpAffine(image, m[:2], dsize=out_wh, dst=out, borderValue=_BORDER)


def inverse_affine(m: np.ndarray) -> np.ndarray:
    """float64 (2, 3) inverse of the affine part of `m` (output pixels -> input pixels)."""
    a = np.asarray(m, np.float64)[:2]
    d = a[0, 0] * a[1, 1] - a[0, 1] * a[1, 0]
    d = 1.0 / d if d != 0 else 0.0
    a11, a22, a12, a21 = a[1, 1] * d, a[0, 0] * d, -a[0, 1] * d, -a[1, 0] * d
    b1 = -a11 * a[0, 2] - a12 * a[1, 2]
    b2 = -a21 * a[0, 2] - a22 * a[1, 2]
    return np.array([[a11, a12, b1], [a21, a22, b2]], np.float64)


def affine_footprint(inverse: np.ndarray, out_wh: tuple[int, int], in_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the input pixels a bilinear affine warp into `out_wh` reads, clipped to
    the (h, w) input (x1, y1 exclusive; x1 <= x0 when it reads none)."""
    w, h = out_wh
    corners = np.array([[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1]], np.float64)
    src = corners @ inverse.T
    x0 = min(max(math.floor(src[:, 0].min()) - 1, 0), in_hw[1])
    y0 = min(max(math.floor(src[:, 1].min()) - 1, 0), in_hw[0])
    x1 = min(max(math.floor(src[:, 0].max()) + 3, 0), in_hw[1])
    y1 = min(max(math.floor(src[:, 1].max()) + 3, 0), in_hw[0])
    return x0, y0, x1, y1


def warp_layers(
    images: list[np.ndarray],
    tiles: list[Tile],
    canvas_hw: tuple[int, int],
    m: np.ndarray,
    out_wh: tuple[int, int],
    perspective: bool,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """The pixel work of one view: the canvas of layers warped by `m` (ultralytics' Mosaic canvas +
    ``RandomPerspective.apply_image``, the same pixels).

    For an affine warp of a mosaic only the part of the canvas the warp reads is filled (an
    uninitialised canvas elsewhere, never read), and the canvas is warped with the same call.
    The canvas has a 4th (filler) channel where that gives the same pixels
    (:func:`rgba_warp_is_exact`): OpenCV's bilinear warp of 3-channel uint8 images is not
    vectorised and the 4-channel one is (about 2.5x faster), with the same arithmetic per channel.

    Args:
      images: per layer, uint8 (h, w, 3) at its long-side-resized size.
      tiles: per layer, its place on the canvas.
      canvas_hw: (h, w) of the canvas (for one layer covering it: that image).
      m: float32 (3, 3) canvas pixels -> output pixels.
      out_wh: output (w, h).
      perspective: warp with ``cv2.warpPerspective``.
      out: optional uint8 (out_h, out_w, 3) to write into.
    """
    return _warp_layers(images, tiles, canvas_hw, m, out_wh, perspective, out, 4 if rgba_warp_is_exact() else 3)


def _warp_layers(images: list[np.ndarray], tiles: list[Tile], canvas_hw: tuple[int, int], m: np.ndarray,
                 out_wh: tuple[int, int], perspective: bool, out: np.ndarray | None, channels: int) -> np.ndarray:
    if len(images) == 1 and tuple(images[0].shape[:2]) == tuple(canvas_hw):
        canvas = images[0] if channels == 3 else cv2.cvtColor(images[0], cv2.COLOR_RGB2RGBA)
    else:
        canvas = np.empty((*canvas_hw, channels), np.uint8)
        if perspective:
            paste_layers(images, tiles, canvas_hw, out=canvas)
        else:
            x0, y0, x1, y1 = affine_footprint(inverse_affine(m), out_wh, canvas_hw)
            if x1 > x0 and y1 > y0:
                paste_layers(images, tiles, canvas_hw, region=(x0, y0, x1, y1), out=canvas)
            else:  # the warp reads none of the canvas
                canvas[:1, :1] = PAD_VALUE
    if channels == 3:
        return warp_image(canvas, m, out_wh, perspective, out)
    out = _output(out, out_wh)
    if perspective:
        warped = cv2.warpPerspective(canvas, m, dsize=out_wh, borderValue=_BORDER)
    else:
        warped = cv2.warpAffine(canvas, m[:2], dsize=out_wh, borderValue=_BORDER)
    cv2.cvtColor(warped, cv2.COLOR_RGBA2RGB, dst=out)
    return out


@functools.cache
def rgba_warp_is_exact() -> bool:
    """Whether warping through a 4-channel canvas gives exactly the 3-channel warp's pixels here
    (checked once per process on random mosaics and single images, affine and perspective, with
    this OpenCV; else every warp is 3-channel)."""
    from yolojax.data.augment.mosaic import full_tile, mosaic_centre, mosaic_tiles  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng(0)
    s = 64
    for perspective in (0.0, 0.002):
        for degrees in (0.0, 30.0):
            sizes = [tuple(int(x) for x in rng.integers(24, s + 1, 2)) for _ in range(4)]
            images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
            tiles = mosaic_tiles(sizes, mosaic_centre(rng, s), s)
            m, _ = random_affine_matrix(rng, (2 * s, 2 * s), (s, s), degrees=degrees, translate=0.2, scale=0.5,
                                        shear=5.0, perspective=perspective)
            args = (images, tiles, (2 * s, 2 * s), m, (s, s), bool(perspective))
            single = ([images[0]], [full_tile(sizes[0])], sizes[0], m, (s, s), bool(perspective))
            for a in (args, single):
                if not np.array_equal(_warp_layers(*a, None, 3), _warp_layers(*a, None, 4)):
                    return False
    return True


def warp_boxes(boxes_xyxy: np.ndarray, m: np.ndarray, perspective: bool) -> np.ndarray:
    """float32 (n, 4) xyxy pixels -> the (n, 4) xyxy boxes enclosing their 4 warped corners."""
    n = len(boxes_xyxy)
    if n == 0:
        return np.zeros((0, 4), np.float32)
    xy = np.ones((n * 4, 3), dtype=np.float32)
    xy[:, :2] = boxes_xyxy[:, [0, 1, 2, 3, 0, 3, 2, 1]].reshape(n * 4, 2)
    xy = xy @ m.T
    xy = (xy[:, :2] / xy[:, 2:3] if perspective else xy[:, :2]).reshape(n, 8)
    x, y = xy[:, [0, 2, 4, 6]], xy[:, [1, 3, 5, 7]]
    return np.stack([x.min(1), y.min(1), x.max(1), y.max(1)], 1).astype(np.float32)


def clip_boxes(boxes_xyxy: np.ndarray, width: float, height: float) -> np.ndarray:
    """Clip (n, 4) xyxy boxes to [0, width] x [0, height] (a new array)."""
    out = boxes_xyxy.copy()
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out


def box_candidates(
    before_xyxy: np.ndarray,
    after_xyxy: np.ndarray,
    wh_thr: float = 2,
    ar_thr: float = 100,
    area_thr: float = 0.1,
    eps: float = 1e-16,
) -> np.ndarray:
    """bool (n,): boxes that stay wider and taller than `wh_thr` pixels, keep more than
    `area_thr` of their (scaled) area and have an aspect ratio below `ar_thr`."""
    w1, h1 = before_xyxy[:, 2] - before_xyxy[:, 0], before_xyxy[:, 3] - before_xyxy[:, 1]
    w2, h2 = after_xyxy[:, 2] - after_xyxy[:, 0], after_xyxy[:, 3] - after_xyxy[:, 1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def transform_boxes(
    boxes_xyxy: np.ndarray,
    classes: np.ndarray,
    m: np.ndarray,
    s: float,
    out_wh: tuple[int, int],
    perspective: bool,
    area_thr: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """The box work of one warp (ultralytics' ``RandomPerspective.apply_instances``): warp by the
    corners, clip to the output, keep the :func:`box_candidates` (against the boxes scaled by `s`).

    Args:
      boxes_xyxy: float32 (n, 4) canvas pixels.
      classes: int32 (n,).
      m: float32 (3, 3) canvas pixels -> output pixels.
      s: the drawn scale.
      out_wh: output (w, h).
      perspective: divide by the warped w.
      area_thr: candidate filter area ratio (ultralytics: 0.1, or 0.01 with polygon labels).

    Returns:
      float32 (k, 4) clipped xyxy output pixels and int32 (k,) classes.
    """
    boxes = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
    new_boxes = clip_boxes(warp_boxes(boxes, m, perspective), out_wh[0], out_wh[1])
    keep = box_candidates(boxes * np.float32(s), new_boxes, area_thr=area_thr)
    return new_boxes[keep], np.asarray(classes, np.int32).reshape(-1)[keep]
