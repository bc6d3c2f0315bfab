"""Batch mosaics: ultralytics' ``train_batch*.jpg`` and ``val_batch*_{labels,pred}.jpg``.

Up to 16 images of a batch tiled on a grid ceil(sqrt(n)) images wide on a white background, the grid scaled down to at most 1920 pixels a side; each tile framed in white,
with its file name (when known) in black on white at its top left, and its boxes drawn in their class colour
with the class name (and for predictions the confidence; predictions at or below 0.25 are
left out, as ultralytics' ``plot_images`` does).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from yolojax.plots import class_color

MAX_TILES = 16       # ultralytics plot_images' max_subplots
MAX_SIZE = 1920      # ultralytics plot_images' max_size (pixels per side of the whole grid)
CONF_THRES = 0.25    # ultralytics plot_images' conf_thres for predictions


def plot_batch(images: np.ndarray, boxes: Sequence[np.ndarray], classes: Sequence[np.ndarray],
               path: str | os.PathLike, names: Mapping[int, str] | Sequence[str] | None = None,
               scores: Sequence[np.ndarray] | None = None, files: Sequence[str] | None = None) -> Path:
    """Write a mosaic of ``images`` with their boxes to ``path`` (a .jpg).

    Args:
      images: uint8 (B, H, W, 3) RGB, all of one size (a batch).
      boxes: per image float (n_i, 4) xyxy in pixels of its image.
      classes: per image int (n_i,) class ids.
      names: class names (list or {id: name}); None: the ids are written.
      scores: per image (n_i,) confidences: the boxes are predictions (only those > 0.25 drawn,
        labelled "name 0.87"); None: ground truth.
      files: per image its file path (its base name is written on the tile).

    Returns:
      ``path``. Raises OSError when OpenCV cannot write it.
    """
    import cv2

    images = np.asarray(images)[:MAX_TILES]
    n, h, w = images.shape[:3]
    per_side = math.ceil(math.sqrt(n))
    scale = min(1.0, MAX_SIZE / (per_side * max(h, w)))
    th, tw = math.ceil(h * scale), math.ceil(w * scale)
    rows = math.ceil(n / per_side)  # a short batch leaves no empty rows
    canvas = np.full((rows * th, per_side * tw, 3), 255, np.uint8)
    lw = max(1, round(min(th, tw) / 200))
    font = max(0.35, min(th, tw) / 900)
    for i in range(n):
        y0, x0 = (i // per_side) * th, (i % per_side) * tw
        tile = cv2.resize(images[i], (tw, th), interpolation=cv2.INTER_AREA) if scale < 1 else images[i].copy()
        b = np.asarray(boxes[i], np.float32).reshape(-1, 4) * scale
        c = np.asarray(classes[i]).reshape(-1).astype(int)
        s = None if scores is None else np.asarray(scores[i], np.float32).reshape(-1)
        keep = np.ones(len(c), bool) if s is None else s > CONF_THRES
        for j in np.flatnonzero(keep):
            label = _name(names, c[j]) + ("" if s is None else f" {s[j]:.1f}")
            _draw_box(tile, b[j], label, class_color(c[j]), lw, font)
        canvas[y0:y0 + th, x0:x0 + tw] = tile
        cv2.rectangle(canvas, (x0, y0), (x0 + tw - 1, y0 + th - 1), (255, 255, 255), 2)
        if files is not None:
            name = Path(files[i]).name[:40]
            (nw, nh), base = cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, font, 1)
            cv2.rectangle(canvas, (x0 + 2, y0 + 2), (x0 + nw + 8, y0 + nh + base + 6), (255, 255, 255), -1)
            cv2.putText(canvas, name, (x0 + 5, y0 + nh + 4), cv2.FONT_HERSHEY_SIMPLEX, font, (0, 0, 0), 1,
                        cv2.LINE_AA)
    path = Path(path)
    if not cv2.imwrite(str(path), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR)):
        raise OSError(f"OpenCV could not write {path}")
    return path


def _name(names: Mapping[int, str] | Sequence[str] | None, c: int) -> str:
    if names is None:
        return str(c)
    try:
        return str(names[c])
    except (KeyError, IndexError):
        return str(c)


def _draw_box(tile: np.ndarray, box: np.ndarray, label: str, color: tuple[int, int, int], lw: int,
              font: float) -> None:
    """Draw one box and its label (on the class colour, above the box; black text on light colours, else
    white) on ``tile`` (RGB)."""
    import cv2

    x1, y1, x2, y2 = (int(round(v)) for v in box)
    cv2.rectangle(tile, (x1, y1), (x2, y2), color, lw, cv2.LINE_AA)
    (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font, 1)
    top = y1 - th - base - 2 if y1 - th - base - 2 >= 0 else y1
    cv2.rectangle(tile, (x1, top), (x1 + tw + 2, top + th + base + 2), color, -1, cv2.LINE_AA)
    light = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] > 160  # luma: dark text on light colours
    cv2.putText(tile, label, (x1 + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, font,
                (0, 0, 0) if light else (255, 255, 255), 1, cv2.LINE_AA)
