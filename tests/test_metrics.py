"""Metric parity with ultralytics' matcher, ap_per_class and DetMetrics (test oracles only)."""

from __future__ import annotations

import os
import types

import numpy as np
import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")

from yolojax.evaluation.metrics import (
    IOU_THRESHOLDS,
    DetectionMetrics,
    ap_per_class,
    box_iou,
    match_predictions,
)

torch = pytest.importorskip("torch")


def _random_image(rng, nc):
    """Ground truth and noisy predictions (some near GT, some random), descending scores."""
    m = int(rng.integers(0, 12))
    xy = rng.uniform(0, 500, size=(m, 2))
    gt = np.concatenate([xy, xy + rng.uniform(10, 150, size=(m, 2))], 1).astype(np.float32)
    gt_cls = rng.integers(0, nc, size=m)
    copies = rng.integers(0, m, size=int(rng.integers(0, 3 * m + 1))) if m else np.zeros(0, int)
    near = gt[copies] + rng.normal(0, 6, size=(len(copies), 4)).astype(np.float32)
    near_cls = np.where(rng.uniform(size=len(copies)) < 0.8, gt_cls[copies], rng.integers(0, nc, len(copies)))
    k = int(rng.integers(0, 10))
    xy = rng.uniform(0, 500, size=(k, 2))
    rand = np.concatenate([xy, xy + rng.uniform(10, 150, size=(k, 2))], 1)
    boxes = np.concatenate([near, rand]).astype(np.float32)
    cls = np.concatenate([near_cls, rng.integers(0, nc, k)]).astype(np.float32)
    conf = rng.uniform(0.001, 1, size=len(boxes)).astype(np.float32)
    order = np.argsort(-conf, kind="stable")
    return boxes[order], conf[order], cls[order], gt, gt_cls.astype(np.float32)


def test_iou_thresholds_match_torch():
    np.testing.assert_array_equal(IOU_THRESHOLDS, torch.linspace(0.5, 0.95, 10).numpy())


def test_metrics_match_ultralytics():
    from ultralytics.engine.validator import BaseValidator
    from ultralytics.utils import metrics as um

    rng = np.random.default_rng(0)
    nc = 6
    names = {i: f"c{i}" for i in range(nc)}
    ours = DetectionMetrics(names)
    theirs = um.DetMetrics(names=names)
    fake_validator = types.SimpleNamespace(iouv=torch.linspace(0.5, 0.95, 10))
    for im in range(40):
        boxes, conf, cls, gt, gt_cls = _random_image(rng, nc)
        ours.update(boxes, conf, cls, gt, gt_cls)
        if len(gt) and len(boxes):
            iou_t = um.box_iou(torch.from_numpy(gt), torch.from_numpy(boxes))
            np.testing.assert_allclose(box_iou(gt, boxes), iou_t.numpy(), rtol=0, atol=1e-7)
            tp = BaseValidator.match_predictions(fake_validator, torch.from_numpy(cls), torch.from_numpy(gt_cls),
                                                 iou_t).numpy()
            np.testing.assert_array_equal(match_predictions(cls, gt_cls, iou_t.numpy()), tp)
        else:
            tp = np.zeros((len(boxes), 10), bool)
        np.testing.assert_array_equal(ours.stats["tp"][-1], tp)
        theirs.update_stats({"tp": tp, "conf": conf, "pred_cls": cls, "target_cls": gt_cls,
                             "target_img": np.unique(gt_cls), "im_name": f"{im}.jpg"})
    theirs.process()
    got = ours.compute()
    mp, mr, map50, map5095 = theirs.mean_results()
    assert abs(got["mAP50"] - map50) < 1e-6
    assert abs(got["mAP50-95"] - map5095) < 1e-6
    assert abs(got["precision"] - mp) < 1e-6
    assert abs(got["recall"] - mr) < 1e-6
    assert 0.05 < got["mAP50"] < 0.99  # a meaningful case
    for i, c in enumerate(theirs.ap_class_index):
        p, r, ap50, ap = theirs.class_result(i)
        row = got["per_class"][names[c]]
        assert abs(row["mAP50"] - ap50) < 1e-6 and abs(row["mAP50-95"] - ap) < 1e-6
        assert abs(row["precision"] - p) < 1e-6 and abs(row["recall"] - r) < 1e-6
        assert row["instances"] == theirs.nt_per_class[c] and row["images"] == theirs.nt_per_image[c]


def test_ap_per_class_direct():
    from ultralytics.utils import metrics as um

    rng = np.random.default_rng(1)
    n = 300
    tp = rng.uniform(size=(n, 10)) < np.linspace(0.7, 0.2, 10)
    conf = rng.uniform(size=n)
    pred_cls = rng.integers(0, 5, n)
    target_cls = rng.integers(0, 6, 120)  # class 5 has labels but no predictions
    res = ap_per_class(tp, conf, pred_cls, target_cls)
    ref = um.ap_per_class(tp, conf, pred_cls, target_cls)
    for a, b in zip((res.tp, res.fp, res.p, res.r, res.f1, res.ap, res.classes), ref[:7]):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)


def test_empty_metrics():
    m = DetectionMetrics(["a", "b"])
    m.update(np.zeros((0, 4)), np.zeros(0), np.zeros(0), np.zeros((0, 4)), np.zeros(0))
    out = m.compute()
    assert out["mAP50"] == 0.0 and out["per_class"] == {}


def test_confusion_matrix_matches_ultralytics():
    from ultralytics.utils import metrics as um

    from yolojax.evaluation.metrics import ConfusionMatrix

    rng = np.random.default_rng(3)
    nc = 5
    ours = ConfusionMatrix(nc, conf=0.25)
    theirs = um.ConfusionMatrix(names={i: str(i) for i in range(nc)})
    for _ in range(30):
        boxes, conf, cls, gt, gt_cls = _random_image(rng, nc)
        ours.update(boxes, conf, cls, gt, gt_cls)
        det = {"bboxes": torch.from_numpy(boxes), "conf": torch.from_numpy(conf), "cls": torch.from_numpy(cls)}
        theirs.process_batch(det, {"bboxes": torch.from_numpy(gt), "cls": torch.from_numpy(gt_cls)}, conf=0.25)
    np.testing.assert_array_equal(ours.matrix, theirs.matrix)
    assert ours.matrix.sum() > 0
