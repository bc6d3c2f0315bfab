"""Ultralytics' 4-image ``Mosaic``: four images around a random centre of a 2s x 2s canvas.

The centre (xc, yc) is drawn uniformly in [s/2, 3s/2) (ultralytics' border -s/2); image 0
goes top-left of it, 1 top-right, 2 bottom-left, 3 bottom-right, each cropped at the canvas
edge. The canvas is later warped back to s x s by :func:`yolojax.data.augment.affine.warp_layers` (which
builds only the part of the canvas that the warp reads).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import cv2
import numpy as np

from yolojax.data.augment.letterbox import PAD_VALUE


@dataclasses.dataclass(frozen=True)
class Tile:
    """Where one image lands: canvas[ya1:ya2, xa1:xa2] = image[yb1:yb2, xb1:xb2].

    pad_x, pad_y: offset from image pixels to canvas pixels (may be negative).
    """

    xa1: int
    ya1: int
    xa2: int
    ya2: int
    xb1: int
    yb1: int
    xb2: int
    yb2: int

    @property
    def pad_x(self) -> int:
        return self.xa1 - self.xb1

    @property
    def pad_y(self) -> int:
        return self.ya1 - self.yb1


def mosaic_centre(rng: np.random.Generator, imgsz: int) -> tuple[int, int]:
    """(xc, yc) canvas pixels, each int(uniform(s/2, 3s/2)) (yc is drawn first, like ultralytics)."""
    border = -imgsz // 2
    yc = int(rng.uniform(-border, 2 * imgsz + border))
    xc = int(rng.uniform(-border, 2 * imgsz + border))
    return xc, yc


def mosaic_tiles(shapes_hw: Sequence[tuple[int, int]], centre_xy: tuple[int, int], imgsz: int) -> list[Tile]:
    """Placement of four (h, w) images around `centre_xy` on a (2s, 2s) canvas."""
    xc, yc = centre_xy
    s2 = 2 * imgsz
    tiles = []
    for i, (h, w) in enumerate(shapes_hw):
        if i == 0:
            xa1, ya1, xa2, ya2 = max(xc - w, 0), max(yc - h, 0), xc, yc
            xb1, yb1, xb2, yb2 = w - (xa2 - xa1), h - (ya2 - ya1), w, h
        elif i == 1:
            xa1, ya1, xa2, ya2 = xc, max(yc - h, 0), min(xc + w, s2), yc
            xb1, yb1, xb2, yb2 = 0, h - (ya2 - ya1), min(w, xa2 - xa1), h
        elif i == 2:
            xa1, ya1, xa2, ya2 = max(xc - w, 0), yc, xc, min(s2, yc + h)
            xb1, yb1, xb2, yb2 = w - (xa2 - xa1), 0, w, min(ya2 - ya1, h)
        else:
            xa1, ya1, xa2, ya2 = xc, yc, min(xc + w, s2), min(s2, yc + h)
            xb1, yb1, xb2, yb2 = 0, 0, min(w, xa2 - xa1), min(ya2 - ya1, h)
        tiles.append(Tile(xa1, ya1, xa2, ya2, xb1, yb1, xb2, yb2))
    return tiles


def full_tile(shape_hw: tuple[int, int]) -> Tile:
    """A single (h, w) image as the whole canvas."""
    h, w = int(shape_hw[0]), int(shape_hw[1])
    return Tile(0, 0, w, h, 0, 0, w, h)


def paste_layers(
    images: Sequence[np.ndarray],
    tiles: Sequence[Tile],
    canvas_hw: tuple[int, int],
    region: tuple[int, int, int, int] | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """uint8 canvas filled with 114 and the image crops placed by `tiles` (ultralytics' ``img4``).

    Args:
      images: per layer, uint8 (h, w, 3) at its canvas size.
      tiles: per layer, its placement.
      canvas_hw: (H, W) of the canvas.
      region: (x0, y0, x1, y1): build only canvas[y0:y1, x0:x1] (the same pixels).
      out: uint8 (H, W, 3 or 4) whole canvas to build the region in (returned; elsewhere left
        as it is). With 4 channels the images fill the first 3 (the 4th is filler: a 4-channel
        warp is OpenCV's vectorised path, the same values per channel). Default: a new array
        of the region alone.
    """
    x0, y0, x1, y1 = region if region is not None else (0, 0, canvas_hw[1], canvas_hw[0])
    if out is None:
        canvas, ox, oy = np.full((y1 - y0, x1 - x0, 3), PAD_VALUE, np.uint8), x0, y0
    else:
        canvas, ox, oy = out, 0, 0
        canvas[y0:y1, x0:x1] = PAD_VALUE
    for image, t in zip(images, tiles):
        xa1, ya1, xa2, ya2 = max(t.xa1, x0), max(t.ya1, y0), min(t.xa2, x1), min(t.ya2, y1)
        if xa2 <= xa1 or ya2 <= ya1:
            continue
        xb1, yb1 = xa1 - t.pad_x, ya1 - t.pad_y
        dst = canvas[ya1 - oy : ya2 - oy, xa1 - ox : xa2 - ox]
        src = image[yb1 : yb1 + ya2 - ya1, xb1 : xb1 + xa2 - xa1]
        if dst.shape[2] == 4:
            cv2.cvtColor(src, cv2.COLOR_RGB2RGBA, dst=dst)
        else:
            dst[...] = src
    return canvas


def mosaic_boxes(
    boxes_norm: Sequence[np.ndarray],
    classes: Sequence[np.ndarray],
    shapes_hw: Sequence[tuple[int, int]],
    tiles: Sequence[Tile],
    imgsz: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes of the four images in canvas pixels, clipped to the canvas, zero-area ones dropped.

    Args:
      boxes_norm: per image, float32 (n_i, 4) xyxy normalised by that image's w, h.
      classes: per image, int32 (n_i,).
      shapes_hw: per image, (h, w) in pixels.
      tiles: the placements.
      imgsz: s (the canvas is 2s).

    Returns:
      float32 (n, 4) xyxy canvas pixels, int32 (n,) classes, int32 (n,) image (tile) of each box.
    """
    parts, owners = [], []
    for k, (b, (h, w), t) in enumerate(zip(boxes_norm, shapes_hw, tiles)):
        scale = np.array([w, h, w, h], np.float32)
        offset = np.array([t.pad_x, t.pad_y, t.pad_x, t.pad_y], np.float32)
        b = np.asarray(b, np.float32).reshape(-1, 4)
        parts.append(b * scale + offset)
        owners.append(np.full(len(b), k, np.int32))
    boxes = np.concatenate(parts, 0)
    cls = np.concatenate([np.asarray(c, np.int32).reshape(-1) for c in classes], 0)
    owner = np.concatenate(owners, 0)
    boxes = boxes.clip(0, 2 * imgsz)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[keep], cls[keep], owner[keep]
