"""Scoring detections: ultralytics' metrics, COCO evaluation, the validator and its plots.

* :func:`validate`: mAP50 / mAP50-95 of weights (or a ``model_fn``) on a data.yaml split or a
  COCO JSON, as ultralytics val computes them (:mod:`.validator`);
* :class:`DetectionMetrics`, :class:`ConfusionMatrix`, :func:`ap_per_class` (:mod:`.metrics`);
* pycocotools' COCOeval over a COCO file (:mod:`.coco_eval`);
* :class:`ValidationPlots`: what ultralytics' validator plots (:mod:`.plots`).
"""

from yolojax.evaluation.metrics import ConfusionMatrix, DetectionMetrics, ap_per_class
from yolojax.evaluation.validator import format_table, json_results, validate

__all__ = ["ConfusionMatrix", "DetectionMetrics", "ap_per_class", "format_table", "json_results", "validate"]
