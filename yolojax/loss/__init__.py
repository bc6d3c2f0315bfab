"""ultralytics' v8 detection loss and its task-aligned assigner."""

from yolojax.loss.assigner import Assignment, assign, select_candidates_in_gts
from yolojax.loss.detection import DetectionLoss

__all__ = ["Assignment", "DetectionLoss", "assign", "select_candidates_in_gts"]
