"""Box, anchor and NMS operations."""

from yolojax.ops.anchors import bbox2dist, dist2bbox, make_anchors
from yolojax.ops.boxes import bbox_iou, box_area, box_iou, xywh2xyxy, xyxy2xywh

__all__ = [
    "bbox2dist", "dist2bbox", "make_anchors",
    "bbox_iou", "box_area", "box_iou", "xywh2xyxy", "xyxy2xywh",
]
