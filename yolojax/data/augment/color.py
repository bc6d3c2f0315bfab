"""Ultralytics' ``RandomHSV`` and the horizontal / vertical flips (draws, pixels and boxes apart)."""

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


def hsv_gains(rng: np.random.Generator, hgain: float, sgain: float, vgain: float) -> np.ndarray | None:
    """float64 (3,) gains drawn uniformly in [-1, 1] * (hgain, sgain, vgain) (one draw of 3, as
    ultralytics), or None without drawing when every gain is 0."""
    if not (hgain or sgain or vgain):
        return None
    return rng.uniform(-1, 1, 3) * np.array([hgain, sgain, vgain])


def random_hsv_with(image_rgb: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """Apply drawn HSV `gains` to uint8 (H, W, 3) RGB in place (also returned).

    OpenCV's 8-bit HSV (hue in [0, 180)); converting from RGB gives the same HSV as
    ultralytics' BGR conversion of the same pixels.
    """
    hue, sat, val = cv2.split(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2HSV))
    lut = hsv_lut(gains)[0]
    # One table per plane, as ultralytics does: the same values as one 3-channel LUT, which
    # OpenCV does not vectorise (~0.2 ms less per 640 x 640 image).
    hsv = cv2.merge([cv2.LUT(plane, lut[:, k].copy()) for k, plane in enumerate((hue, sat, val))])
    cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB, dst=image_rgb)
    return image_rgb


def random_hsv(image_rgb: np.ndarray, rng: np.random.Generator, hgain: float, sgain: float, vgain: float) -> np.ndarray:
    """Random hue / saturation / value change of a uint8 (H, W, 3) RGB image (in place, also returned)."""
    gains = hsv_gains(rng, hgain, sgain, vgain)
    return image_rgb if gains is None else random_hsv_with(image_rgb, gains)


def flip_lr_boxes(boxes_xyxy: np.ndarray, width: float) -> np.ndarray:
    """(n, 4) xyxy pixel boxes mirrored left-right in an image `width` wide (a new array)."""
    boxes = np.array(boxes_xyxy, copy=True)
    boxes[:, 0], boxes[:, 2] = width - boxes_xyxy[:, 2], width - boxes_xyxy[:, 0]
    return boxes


def flip_ud_boxes(boxes_xyxy: np.ndarray, height: float) -> np.ndarray:
    """(n, 4) xyxy pixel boxes mirrored top-bottom in an image `height` high (a new array)."""
    boxes = np.array(boxes_xyxy, copy=True)
    boxes[:, 1], boxes[:, 3] = height - boxes_xyxy[:, 3], height - boxes_xyxy[:, 1]
    return boxes


def flip_lr(image: np.ndarray, boxes_xyxy: np.ndarray | None = None):
    """Mirror a (H, W, 3) image left-right in place; with boxes, return (image, mirrored boxes)."""
    cv2.flip(image, 1, dst=image)
    return image if boxes_xyxy is None else (image, flip_lr_boxes(boxes_xyxy, image.shape[1]))


def flip_ud(image: np.ndarray, boxes_xyxy: np.ndarray | None = None):
    """Mirror a (H, W, 3) image top-bottom in place; with boxes, return (image, mirrored boxes)."""
    cv2.flip(image, 0, dst=image)
    return image if boxes_xyxy is None else (image, flip_ud_boxes(boxes_xyxy, image.shape[0]))
