"""ultralytics' v8 detection loss, its task-aligned assigner, and feature distillation."""

from yolojax.loss.assigner import Assignment, assign, assign_bucketed, box_buckets, select_candidates_in_gts
from yolojax.loss.detection import DetectionLoss
from yolojax.loss.distill import (Distillation, DistillationLoss, Projector, feature_widths, teacher_weights,
                                  weighted_l2)

__all__ = ["Assignment", "DetectionLoss", "Distillation", "DistillationLoss", "Projector", "assign", "assign_bucketed",
           "box_buckets", "feature_widths", "select_candidates_in_gts", "teacher_weights", "weighted_l2"]
