"""Box, anchor and NMS operations."""

from yolojax.ops.anchors import bbox2dist, dist2bbox, make_anchors
from yolojax.ops.boxes import bbox_iou, box_area, box_iou, xywh2xyxy, xyxy2xywh
from yolojax.ops.nms import Detections, non_max_suppression

__all__ = [
    "bbox2dist", "dist2bbox", "make_anchors",
    "bbox_iou", "box_area", "box_iou", "xywh2xyxy", "xyxy2xywh",
    "Detections", "non_max_suppression",
]
