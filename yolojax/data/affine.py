"""Ultralytics' ``RandomPerspective``: random affine / perspective warp of an image and its boxes.

The warp M = T @ S @ R @ P @ C maps input pixels to output pixels: C moves the input
centre to the origin, P adds perspective, R rotates (``degrees``) and scales (1 +- ``scale``),
S shears (``shear`` degrees), T moves to a random point within +-``translate`` of the output
centre. Boxes are warped by their 4 corners, clipped to the output and filtered by
:func:`box_candidates`.

The input is a canvas of layers (one image, or the four images of a mosaic placed by
:class:`yolojax.data.mosaic.Tile`), each image placed at its long-side-resized size. With
ultralytics' defaults (degrees = shear = perspective = 0) the warp is a scale and a
translation: each layer's visible part is then cut from the image as decoded and resized
once, straight into the output with ``cv2.resize``, without the long-side resize or the
mosaic canvas (about 3x faster than ``cv2.warpAffine`` of the canvas). The crops snap the
drawn translation to whole canvas pixels and the scale to whole output pixels (under one
pixel either way); boxes follow each layer's realised transform exactly, so pixels and
labels stay consistent. Other settings build the canvas and warp it like ultralytics.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from yolojax.data.image_io import resize_to
from yolojax.data.letterbox import PAD_VALUE
from yolojax.data.mosaic import Tile, paste_layers


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
    """Draw a warp like ultralytics' ``_compute_affine_matrix``.

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
    """Warp uint8 (h, w, 3) by float (3, 3) `m` into (out_h, out_w, 3) (`out` if given), bilinear, border 114."""
    border = (PAD_VALUE,) * 4
    out = _output(out, out_wh)
    if perspective:
        return cv2.warpPerspective(image, m, dsize=out_wh, dst=out, borderValue=border)
    return cv2.warpAffine(image, m[:2], dsize=out_wh, dst=out, borderValue=border)


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


def is_scale_translate(degrees: float, shear: float, perspective: float) -> bool:
    """Whether the warp reduces to a scale and a translation (the fast path)."""
    return degrees == 0 and shear == 0 and perspective == 0


def _span(s: float, offset: float, lo: int, hi: int, n_out: int) -> tuple[int, int, int, int] | None:
    """Integer canvas span [c0, c1) within [lo, hi) and output span [o0, o1) for x_out = s * x + offset."""
    c0 = min(max(round(max(lo, -offset / s)), lo), hi)
    c1 = min(max(round(min(hi, (n_out - offset) / s)), lo), hi)
    o0 = min(max(round(s * c0 + offset), 0), n_out)
    o1 = min(max(round(s * c1 + offset), 0), n_out)
    if c1 <= c0 or o1 <= o0:
        return None
    return c0, c1, o0, o1


def _axis_plan(
    s: float, offset: float, tile_lo: int, tile_hi: int, pad: int, f: float, n_image: int, n_out: int
) -> tuple[int, int, int, int, float, float] | None:
    """One axis of a layer: image span [i0, i1) resized onto output span [o0, o1).

    Canvas coordinates x_c = pad + f * x_image (f: the long-side resize factor); the warp is
    x_out = s * x_c + offset. Returns (i0, i1, o0, o1, gain, shift) with the realised
    x_out = gain * x_c + shift, or None when the layer does not show on this axis.
    """
    span = _span(s, offset, tile_lo, tile_hi, n_out)
    if span is None:
        return None
    c0, c1, o0, o1 = span
    i0 = min(max(round((c0 - pad) / f), 0), n_image)
    i1 = min(max(round((c1 - pad) / f), 0), n_image)
    if i1 <= i0:
        return None
    g = (o1 - o0) / (i1 - i0)
    return i0, i1, o0, o1, g / f, o0 - g * (pad / f + i0)


def scale_translate_layers(
    images: list[np.ndarray],
    sizes_hw: list[tuple[int, int]],
    tiles: list[Tile],
    boxes_xyxy: np.ndarray,
    box_layer: np.ndarray,
    s: float,
    offset_xy: tuple[float, float],
    out_wh: tuple[int, int],
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """x_out = s * x_canvas + offset for layered images, as per-layer crops + one bilinear resize.

    Each layer's image is placed on the canvas at size `sizes_hw` (the long-side resize); the
    crop is cut from the image as decoded and resized once, straight to the output.

    Args:
      images: per layer, uint8 (h0, w0, 3) as decoded.
      sizes_hw: per layer, its (h, w) on the canvas.
      tiles: per layer, its place on the canvas (in canvas-size pixels).
      boxes_xyxy: float32 (n, 4) canvas pixels.
      box_layer: int (n,) layer of each box.
      s: scale.
      offset_xy: (x, y) offset in output pixels.
      out_wh: output (w, h).
      out: optional uint8 (out_h, out_w, 3) to write the image into.

    Returns:
      uint8 (out_h, out_w, 3) (114 where no layer lands) and float32 (n, 4) boxes under each
      layer's realised transform (not clipped).
    """
    out_w, out_h = out_wh
    out = _output(out, out_wh)
    out[...] = PAD_VALUE
    boxes_out = (boxes_xyxy * np.float32(s) + np.array([*offset_xy, *offset_xy], np.float32)).astype(np.float32)
    for k, (image, (h, w), t) in enumerate(zip(images, sizes_hw, tiles)):
        h0, w0 = image.shape[:2]
        plan_x = _axis_plan(s, offset_xy[0], t.xa1, t.xa2, t.pad_x, w / w0, w0, out_w)
        plan_y = _axis_plan(s, offset_xy[1], t.ya1, t.ya2, t.pad_y, h / h0, h0, out_h)
        if plan_x is None or plan_y is None:
            continue
        ix0, ix1, ox0, ox1, gx, bx = plan_x
        iy0, iy1, oy0, oy1, gy, by = plan_y
        cv2.resize(image[iy0:iy1, ix0:ix1], (ox1 - ox0, oy1 - oy0), dst=out[oy0:oy1, ox0:ox1],
                   interpolation=cv2.INTER_LINEAR)
        mine = box_layer == k
        boxes_out[mine] = boxes_xyxy[mine] * np.array([gx, gy, gx, gy], np.float32) + np.array(
            [bx, by, bx, by], np.float32)
    return out, boxes_out


def random_perspective(
    images: list[np.ndarray],
    sizes_hw: list[tuple[int, int]],
    tiles: list[Tile],
    canvas_hw: tuple[int, int],
    boxes_xyxy: np.ndarray,
    box_layer: np.ndarray,
    classes: np.ndarray,
    rng: np.random.Generator,
    out_wh: tuple[int, int],
    degrees: float = 0.0,
    translate: float = 0.1,
    scale: float = 0.5,
    shear: float = 0.0,
    perspective: float = 0.0,
    area_thr: float = 0.1,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Warp a canvas of layers and its boxes; drop boxes that fail the candidate filter.

    Args:
      images: per layer, uint8 (h0, w0, 3) as decoded.
      sizes_hw: per layer, its (h, w) on the canvas (after the long-side resize).
      tiles: per layer, its place on the canvas (one full tile for a single image).
      canvas_hw: (h, w) of the canvas in pixels (the warp's input).
      boxes_xyxy: float32 (n, 4) canvas pixels.
      box_layer: int (n,) layer of each box.
      classes: int32 (n,).
      rng: the record's generator.
      out_wh: output (w, h) in pixels.
      degrees, translate, scale, shear, perspective: ultralytics' hyperparameters.
      area_thr: candidate filter area ratio (ultralytics: 0.1, or 0.01 with polygon labels).
      out: optional uint8 (out_h, out_w, 3) to write the image into.

    Returns:
      uint8 (out_h, out_w, 3) image, float32 (k, 4) clipped xyxy pixel boxes, int32 (k,) classes.
    """
    m, s = random_affine_matrix(rng, canvas_hw, out_wh, degrees, translate, scale, shear, perspective)
    boxes = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
    if is_scale_translate(degrees, shear, perspective):
        warped, new_boxes = scale_translate_layers(images, sizes_hw, tiles, boxes, np.asarray(box_layer), s,
                                                   (float(m[0, 2]), float(m[1, 2])), out_wh, out)
    else:
        resized = [resize_to(image, size) for image, size in zip(images, sizes_hw)]
        canvas = resized[0] if len(resized) == 1 else paste_layers(resized, tiles, canvas_hw)
        warped = warp_image(canvas, m, out_wh, bool(perspective), out)
        new_boxes = warp_boxes(boxes, m, bool(perspective))
    new_boxes = clip_boxes(new_boxes, out_wh[0], out_wh[1])
    keep = box_candidates(boxes * np.float32(s), new_boxes, area_thr=area_thr)
    return warped, new_boxes[keep], np.asarray(classes, np.int32)[keep]
