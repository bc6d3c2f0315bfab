"""Ultralytics' ``RandomHSV`` and the horizontal / vertical flips."""

from __future__ import annotations

import cv2
import numpy as np


def hsv_lut(gains: np.ndarray) -> np.ndarray:
    """uint8 (1, 256, 3) lookup table for hue / saturation / value for drawn `gains` (3,) in [-1, 1]*gain."""
    x = np.arange(0, 256, dtype=np.float64)
    lut_hue = ((x + gains[0] * 180) % 180).astype(np.uint8)
    lut_sat = np.clip(x * (gains[1] + 1), 0, 255).astype(np.uint8)
    lut_val = np.clip(x * (gains[2] + 1), 0, 255).astype(np.uint8)
    lut_sat[0] = 0  # keep grey pixels grey (ultralytics >= 8.3.79)
    return np.stack((lut_hue, lut_sat, lut_val), -1).reshape(1, 256, 3)


def random_hsv(image_rgb: np.ndarray, rng: np.random.Generator, hgain: float, sgain: float, vgain: float) -> np.ndarray:
    """Random hue / saturation / value change of a uint8 (H, W, 3) RGB image (in place, also returned).

    Gains are drawn uniformly in [-1, 1] * (hgain, sgain, vgain); OpenCV's 8-bit HSV (hue in
    [0, 180)). Converting from RGB gives the same HSV as ultralytics' BGR conversion of the
    same pixels.
    """
    if not (hgain or sgain or vgain):
        return image_rgb
    gains = rng.uniform(-1, 1, 3) * np.array([hgain, sgain, vgain])
    hsv = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2HSV)
    cv2.LUT(hsv, hsv_lut(gains), dst=hsv)
    cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB, dst=image_rgb)
    return image_rgb


def flip_lr(image: np.ndarray, boxes_xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror a (H, W, 3) image left-right (in place) and its (n, 4) xyxy pixel boxes (a new array)."""
    w = image.shape[1]
    boxes = boxes_xyxy.copy()
    boxes[:, 0], boxes[:, 2] = w - boxes_xyxy[:, 2], w - boxes_xyxy[:, 0]
    return cv2.flip(image, 1, dst=image), boxes


def flip_ud(image: np.ndarray, boxes_xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror a (H, W, 3) image top-bottom (in place) and its (n, 4) xyxy pixel boxes (a new array)."""
    h = image.shape[0]
    boxes = boxes_xyxy.copy()
    boxes[:, 1], boxes[:, 3] = h - boxes_xyxy[:, 3], h - boxes_xyxy[:, 1]
    return cv2.flip(image, 0, dst=image), boxes
