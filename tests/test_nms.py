"""NMS parity with ultralytics' non_max_suppression (test oracle only)."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")

from yolojax.ops import non_max_suppression


def _random_predictions(seed: int, batch: int = 3, n: int = 400, nc: int = 12) -> np.ndarray:
    """(B, N, 4 + nc) xywh + scores with heavy overlap: boxes jittered around a few centres."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(50, 590, size=(batch, 15, 2))
    pick = rng.integers(0, 15, size=(batch, n))
    xy = np.take_along_axis(centres, pick[..., None], axis=1) + rng.normal(0, 12, size=(batch, n, 2))
    wh = rng.uniform(10, 160, size=(batch, n, 2))
    # Distinct scores (no exact ties); mostly small, some large, so the thresholds matter.
    scores = rng.uniform(0, 1, size=(batch, n, nc)) ** 3
    return np.concatenate([xy, wh, scores], axis=-1).astype(np.float32)


def _ultralytics_nms(pred: np.ndarray, **kw):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")  # ultralytics then uses torchvision.ops.nms (fast, its usual path)
    nms = pytest.importorskip("ultralytics.utils.nms")
    out = nms.non_max_suppression(torch.from_numpy(pred).permute(0, 2, 1).contiguous(), max_time_img=1e6, **kw)
    return [o.numpy() for o in out]


def _assert_same(ours, theirs):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape, (a.shape, b.shape)
        # Same kept detections in the same (descending score) order.
        np.testing.assert_array_equal(a[:, 5], b[:, 5])
        np.testing.assert_allclose(a[:, 4], b[:, 4], rtol=0, atol=0)
        np.testing.assert_allclose(a[:, :4], b[:, :4], rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    "kw",
    [
        {"conf_thres": 0.25, "iou_thres": 0.45},
        {"conf_thres": 0.1, "iou_thres": 0.7, "agnostic": True},
        {"conf_thres": 0.05, "iou_thres": 0.6, "multi_label": True},
        {"conf_thres": 0.001, "iou_thres": 0.7, "multi_label": True, "max_det": 50},
        {"conf_thres": 0.2, "iou_thres": 0.5, "max_det": 7},
        {"conf_thres": 0.01, "iou_thres": 0.5, "max_nms": 60},
    ],
)
def test_nms_matches_ultralytics(kw):
    pred = _random_predictions(seed=len(str(kw)))
    theirs = _ultralytics_nms(pred, **kw)
    ours = non_max_suppression(pred, **kw).to_list()
    _assert_same(ours, theirs)
    assert sum(len(t) for t in theirs) > 0


def test_nms_classes_filter_and_empty():
    pred = _random_predictions(seed=5, batch=2, n=100, nc=6)
    pred[1, :, 4:] = 0.0  # second image: nothing above threshold
    theirs = _ultralytics_nms(pred, conf_thres=0.2, iou_thres=0.5, classes=[1, 4])
    ours = non_max_suppression(pred, conf_thres=0.2, iou_thres=0.5, classes=[1, 4])
    _assert_same(ours.to_list(), theirs)
    assert int(ours.count[1]) == 0
    assert ours.boxes.shape == (2, 300, 4) and ours.classes.dtype == np.int32


def test_nms_rejects_bad_thresholds():
    with pytest.raises(ValueError):
        non_max_suppression(np.zeros((1, 10, 6), np.float32), conf_thres=1.5)
