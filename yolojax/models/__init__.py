"""Flax Linen detectors by family (YOLOv8, YOLO11) and the registry that describes them."""

from yolojax.models.layers import DFL, SPPF, BatchNorm, Bottleneck, C2f, Conv, Detect
from yolojax.models.registry import (FAMILIES, Family, family_of, get_family, model_from_info, model_title,
                                     parse_model_name)
from yolojax.models.yolo11 import YOLO11
from yolojax.models.yolov8 import SCALES, STRIDES, YOLOv8, default_widths, scaled_channels, scaled_depth

__all__ = [
    "DFL", "SPPF", "BatchNorm", "Bottleneck", "C2f", "Conv", "Detect",
    "FAMILIES", "Family", "family_of", "get_family", "model_from_info", "model_title", "parse_model_name",
    "YOLO11", "SCALES", "STRIDES", "YOLOv8", "default_widths", "scaled_channels", "scaled_depth",
]
