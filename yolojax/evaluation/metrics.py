"""Detection metrics exactly as ultralytics val computes them (NumPy, host side).

* :func:`match_predictions`: greedy matching of predictions (descending confidence) to
  unclaimed ground truth of the same class, separately at each IoU threshold 0.50:0.05:0.95
  (ultralytics' ``BaseValidator.match_predictions`` without scipy).
* :func:`ap_per_class` / :func:`compute_ap`: precision-recall curves per class, AP by
  101-point interpolation (COCO), precision and recall at the confidence of maximal mean F1.
* :class:`DetectionMetrics`: accumulates per-image statistics; ``results()`` gives precision,
  recall, mAP50, mAP50-95 overall and per class.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10, dtype=np.float32)
_AP_X = np.linspace(0, 1, 101)
_CURVE_X = np.linspace(0, 1, 1000)


def box_iou(boxes1: np.ndarray, boxes2: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Pairwise IoU (N, M) of xyxy boxes in float32, ``inter / (a1 + a2 - inter + eps)``."""
    a = np.asarray(boxes1, np.float32)[:, None, :]
    b = np.asarray(boxes2, np.float32)[None, :, :]
    wh = np.clip(np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2]), 0, None)
    inter = wh[..., 0] * wh[..., 1]
    wh1, wh2 = a[..., 2:] - a[..., :2], b[..., 2:] - b[..., :2]
    return inter / (wh1[..., 0] * wh1[..., 1] + wh2[..., 0] * wh2[..., 1] - inter + np.float32(eps))


def match_predictions(
    pred_classes: np.ndarray, true_classes: np.ndarray, iou: np.ndarray, thresholds: np.ndarray = IOU_THRESHOLDS
) -> np.ndarray:
    """Which predictions are true positives at each IoU threshold.

    Args:
      pred_classes: (N,) predicted classes, in descending confidence order.
      true_classes: (M,) ground-truth classes.
      iou: (M, N) IoU of ground truth (rows) with predictions (columns).
      thresholds: (T,) IoU thresholds.

    Returns:
      bool (N, T): prediction j is correct at threshold t.
    """
    pred_classes, true_classes = np.asarray(pred_classes), np.asarray(true_classes)
    thresholds = np.asarray(thresholds)
    t = len(thresholds)
    correct = np.zeros((pred_classes.shape[0], t), dtype=bool)
    iou = np.asarray(iou) * (true_classes[:, None] == pred_classes[None, :])
    claimed = np.zeros((iou.shape[0], t), dtype=bool)
    cols = np.arange(t)
    for j in np.flatnonzero((iou >= thresholds.min()).any(0)):
        available = np.where(claimed, 0, iou[:, j, None])  # (M, T) IoU with unclaimed targets
        k = available.argmax(0)
        correct[j] = available[k, cols] >= thresholds
        claimed[k, cols] |= correct[j]
    return correct


def compute_ap(recall: np.ndarray, precision: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AP of one precision-recall curve by 101-point interpolation; also the envelope and recall."""
    mrec = np.concatenate(([0.0], recall, [recall[-1] if len(recall) else 1.0], [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0], [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    ap = np.trapezoid(np.interp(_AP_X, mrec, mpre), _AP_X)
    return float(ap), mpre, mrec


def smooth(y: np.ndarray, f: float = 0.05) -> np.ndarray:
    """Box-filter ``y`` (1-D) over a window of ``f`` of its length (odd, edges padded with the end
    values); ultralytics' ``smooth``, used to pick the max-F1 confidence and in the curve plots."""
    nf = round(len(y) * f * 2) // 2 + 1
    p = np.ones(nf // 2)
    yp = np.concatenate((p * y[0], y, p * y[-1]), 0)
    return np.convolve(yp, np.ones(nf) / nf, mode="valid")


@dataclasses.dataclass
class APResult:
    """Per-class results of :func:`ap_per_class` (rows follow ``classes``).

    Attributes:
      classes: int (C,) classes that have ground truth, ascending.
      tp, fp: (C,) true / false positive counts at the max-F1 confidence.
      p, r, f1: (C,) precision, recall, F1 at the max-F1 confidence.
      ap: (C, T) AP at each IoU threshold.
      p_curve, r_curve, f1_curve: (C, 1000) against confidence ``x``.
      x: (1000,) confidence grid.
      prec_values: (C, 1000) precision against recall ``x`` at IoU 0.5 (the PR curve).
    """

    classes: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    p: np.ndarray
    r: np.ndarray
    f1: np.ndarray
    ap: np.ndarray
    p_curve: np.ndarray
    r_curve: np.ndarray
    f1_curve: np.ndarray
    x: np.ndarray
    prec_values: np.ndarray


def ap_per_class(
    tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray, eps: float = 1e-16
) -> APResult:
    """Average precision per class (ultralytics' ``ap_per_class``).

    Args:
      tp: bool (N, T) correctness of each prediction at each IoU threshold.
      conf: (N,) confidences.
      pred_cls: (N,) predicted classes.
      target_cls: (M,) classes of all ground-truth boxes.
    """
    tp, conf, pred_cls = np.asarray(tp), np.asarray(conf), np.asarray(pred_cls)
    order = np.argsort(-conf)
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]
    classes, nt = np.unique(np.asarray(target_cls), return_counts=True)
    nc = classes.shape[0]
    x = _CURVE_X
    ap = np.zeros((nc, tp.shape[1]))
    p_curve, r_curve = np.zeros((nc, 1000)), np.zeros((nc, 1000))
    prec_values = []
    for ci, c in enumerate(classes):
        sel = pred_cls == c
        n_l, n_p = nt[ci], sel.sum()
        if n_p == 0 or n_l == 0:
            prec_values.append(np.zeros_like(x))
            continue
        fpc = (1 - tp[sel]).cumsum(0)
        tpc = tp[sel].cumsum(0)
        recall = tpc / (n_l + eps)
        r_curve[ci] = np.interp(-x, -conf[sel], recall[:, 0], left=0)
        precision = tpc / (tpc + fpc)
        p_curve[ci] = np.interp(-x, -conf[sel], precision[:, 0], left=1)
        for j in range(tp.shape[1]):
            ap[ci, j], mpre, mrec = compute_ap(recall[:, j], precision[:, j])
            if j == 0:
                prec_values.append(np.interp(x, mrec, mpre))
    prec_values = np.array(prec_values) if prec_values else np.zeros((1, 1000))
    f1_curve = 2 * p_curve * r_curve / (p_curve + r_curve + eps)
    i = smooth(f1_curve.mean(0), 0.1).argmax() if nc else 0
    p, r, f1 = p_curve[:, i], r_curve[:, i], f1_curve[:, i]
    tp_count = (r * nt).round()
    fp_count = (tp_count / (p + eps) - tp_count).round()
    return APResult(classes.astype(int), tp_count, fp_count, p, r, f1, ap, p_curve, r_curve, f1_curve, x, prec_values)


class DetectionMetrics:
    """Accumulates per-image matches and computes ultralytics' detection metrics.

    Args:
      names: class names (index = class id).
      thresholds: IoU thresholds (default 0.50:0.05:0.95).
    """

    def __init__(self, names: Sequence[str] | Mapping[int, str], thresholds: np.ndarray = IOU_THRESHOLDS):
        self.names = dict(names) if isinstance(names, Mapping) else dict(enumerate(names))
        self.thresholds = np.asarray(thresholds)
        self.clear()

    def clear(self) -> None:
        self.stats: dict[str, list[np.ndarray]] = {"tp": [], "conf": [], "pred_cls": [], "target_cls": [],
                                                    "target_img": []}
        self.seen = 0

    def update(self, pred_boxes: np.ndarray, pred_scores: np.ndarray, pred_classes: np.ndarray,
               gt_boxes: np.ndarray, gt_classes: np.ndarray) -> None:
        """Add one image: predictions (descending score) and ground truth, xyxy in the same pixels."""
        pred_boxes = np.asarray(pred_boxes, np.float32).reshape(-1, 4)
        pred_classes = np.asarray(pred_classes).reshape(-1).astype(np.float32)
        pred_scores = np.asarray(pred_scores, np.float32).reshape(-1)
        gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
        gt_classes = np.asarray(gt_classes).reshape(-1).astype(np.float32)
        if len(gt_classes) == 0 or len(pred_classes) == 0:
            tp = np.zeros((len(pred_classes), len(self.thresholds)), bool)
        else:
            tp = match_predictions(pred_classes, gt_classes, box_iou(gt_boxes, pred_boxes), self.thresholds)
        self.seen += 1
        self.stats["tp"].append(tp)
        self.stats["conf"].append(pred_scores)
        self.stats["pred_cls"].append(pred_classes)
        self.stats["target_cls"].append(gt_classes)
        self.stats["target_img"].append(np.unique(gt_classes))

    def merge(self, other: DetectionMetrics) -> None:
        """Add another accumulator's statistics (e.g. from another process)."""
        for k in self.stats:
            self.stats[k].extend(other.stats[k])
        self.seen += other.seen

    def compute(self) -> dict[str, Any]:
        """Overall and per-class results.

        Returns:
          dict with precision, recall, mAP50, mAP50-95, mAP75, fitness (overall means over
          classes with ground truth, as ultralytics), images, instances, per_class {name:
          {images, instances, precision, recall, mAP50, mAP50-95}}, and ``ap_result``
          (:class:`APResult`, for curves).
        """
        nc = len(self.names)
        stats = {k: (np.concatenate(v, 0) if v else np.zeros((0, len(self.thresholds)) if k == "tp" else 0))
                 for k, v in self.stats.items()}
        res = ap_per_class(stats["tp"], stats["conf"], stats["pred_cls"], stats["target_cls"])
        nt_class = np.bincount(stats["target_cls"].astype(int), minlength=nc)
        nt_image = np.bincount(stats["target_img"].astype(int), minlength=nc)
        ap50 = res.ap[:, 0] if len(res.ap) else np.zeros(0)
        ap = res.ap.mean(1) if len(res.ap) else np.zeros(0)
        mean = lambda a: float(a.mean()) if len(a) else 0.0
        per_class = {}
        for i, c in enumerate(res.classes):
            per_class[self.names.get(int(c), str(int(c)))] = {
                "class": int(c), "images": int(nt_image[c]), "instances": int(nt_class[c]),
                "precision": float(res.p[i]), "recall": float(res.r[i]),
                "mAP50": float(ap50[i]), "mAP50-95": float(ap[i]),
            }
        return {
            "precision": mean(res.p), "recall": mean(res.r), "mAP50": mean(ap50), "mAP50-95": mean(ap),
            "mAP75": mean(res.ap[:, 5]) if len(res.ap) else 0.0, "fitness": mean(ap),
            "images": int(self.seen), "instances": int(nt_class.sum()), "per_class": per_class,
            "ap_result": res,
        }


class ConfusionMatrix:
    """Detection confusion matrix as ultralytics val builds it (rows: predicted class, columns: true
    class; index nc is background). Per image, detections above ``conf`` claim, in descending
    confidence order, their best ground truth with IoU > ``iou_thres`` (class-agnostic, one to one).
    """

    def __init__(self, nc: int, conf: float = 0.25, iou_thres: float = 0.45):
        self.nc, self.conf, self.iou_thres = int(nc), float(conf), float(iou_thres)
        self.matrix = np.zeros((self.nc + 1, self.nc + 1))

    def update(self, pred_boxes, pred_scores, pred_classes, gt_boxes, gt_classes) -> None:
        pred_boxes = np.asarray(pred_boxes, np.float32).reshape(-1, 4)
        pred_scores = np.asarray(pred_scores, np.float32).reshape(-1)
        pred_classes = np.asarray(pred_classes).reshape(-1).astype(int)
        gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
        gt_classes = np.asarray(gt_classes).reshape(-1).astype(int)
        bg = self.nc
        if len(gt_classes) == 0:
            for dc in pred_classes[pred_scores > self.conf]:
                self.matrix[dc, bg] += 1
            return
        if len(pred_classes) == 0:
            for gc in gt_classes:
                self.matrix[bg, gc] += 1
            return
        keep = pred_scores > self.conf
        pred_boxes, pred_scores, pred_classes = pred_boxes[keep], pred_scores[keep], pred_classes[keep]
        iou = box_iou(gt_boxes, pred_boxes)
        gt_match = np.full(len(gt_classes), -1)
        cand = np.flatnonzero((iou > self.iou_thres).any(0))
        for d in cand[np.argsort(-pred_scores[cand], kind="stable")]:
            g = iou[:, d].argmax()
            if iou[g, d] > self.iou_thres:
                gt_match[g] = d
                iou[g] = 0
        for g, gc in enumerate(gt_classes):
            d = gt_match[g]
            self.matrix[pred_classes[d] if d >= 0 else bg, gc] += 1
        matched = set(gt_match[gt_match >= 0].tolist())
        for d, dc in enumerate(pred_classes):
            if d not in matched:
                self.matrix[dc, bg] += 1
