"""Flax Linen YOLOv8 modules."""

from yolojax.models.layers import DFL, SPPF, BatchNorm, Bottleneck, C2f, Conv, Detect
from yolojax.models.yolov8 import (SCALES, STRIDES, YOLOv8, default_cls_width, default_widths, scaled_channels,
                                   scaled_depth, yolov8_from_info)

__all__ = [
    "DFL", "SPPF", "BatchNorm", "Bottleneck", "C2f", "Conv", "Detect",
    "SCALES", "STRIDES", "YOLOv8", "default_cls_width", "default_widths", "scaled_channels", "scaled_depth", "yolov8_from_info",
]
