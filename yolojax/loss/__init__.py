"""ultralytics' v8 detection loss and its task-aligned assigner."""

from yolojax.loss.assigner import Assignment, assign, assign_bucketed, box_buckets, select_candidates_in_gts
from yolojax.loss.detection import DetectionLoss

__all__ = ["Assignment", "DetectionLoss", "assign", "assign_bucketed", "box_buckets", "select_candidates_in_gts"]
