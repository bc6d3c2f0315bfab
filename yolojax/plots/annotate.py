"""Detections drawn on an image: predict's annotated copies and video frames."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np


def _color(c: int) -> tuple[int, int, int]:
    """A distinct BGR colour per class."""
    hue = (c * 0.61803398875) % 1.0
    hsv = np.uint8([[[int(hue * 179), 200, 255]]])
    return tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def annotate(image_rgb: np.ndarray, result: Mapping[str, Any]) -> np.ndarray:
    """BGR uint8 copy of the image with boxes, class names and scores drawn."""
    im = np.ascontiguousarray(image_rgb[..., ::-1])
    lw = max(round(sum(im.shape[:2]) / 2 * 0.003), 2)
    font = max(lw / 3, 0.4)
    for box, score, cls, name in zip(result["boxes_xyxy"], result["scores"], result["classes"], result["names"]):
        x1, y1, x2, y2 = (round(v) for v in box)
        color = _color(int(cls))
        cv2.rectangle(im, (x1, y1), (x2, y2), color, lw, cv2.LINE_AA)
        label = f"{name} {score:.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font, max(lw - 1, 1))
        top = y1 - th - base - 2 if y1 - th - base - 2 >= 0 else y1
        cv2.rectangle(im, (x1, top), (x1 + tw + 2, top + th + base + 2), color, -1, cv2.LINE_AA)
        cv2.putText(im, label, (x1 + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, font, (255, 255, 255),
                    max(lw - 1, 1), cv2.LINE_AA)
    return im
