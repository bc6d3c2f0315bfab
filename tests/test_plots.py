"""The plots' data and file names against ultralytics 8.4.190 (oracle), and the images written.

The plotting code takes arrays, whatever the model; a YOLO11 run's plots are checked in
tests/test_step_cache.py, YOLO11 validation's in tests/test_val_predict.py."""

from __future__ import annotations

import os

import numpy as np
import pytest

from yolojax.evaluation.metrics import ap_per_class, smooth
from yolojax.plots.batches import plot_batch
from yolojax.plots.curves import plot_confusion, plot_curves
from yolojax.plots.labels import plot_labels
from yolojax.train.plots import train_plot_steps
from yolojax.evaluation.plots import ValidationPlots

os.environ.setdefault("YOLO_OFFLINE", "1")
torch = pytest.importorskip("torch")
um = pytest.importorskip("ultralytics.utils.metrics")

NC = 4
NAMES = ["cat", "dog", "car", "tree"]


def _image_detections(rng):
    """Ground truth and detections (some near the ground truth, some anywhere), descending scores."""
    m = int(rng.integers(0, 8))
    xy = rng.uniform(0, 200, size=(m, 2))
    gt = np.concatenate([xy, xy + rng.uniform(10, 60, size=(m, 2))], 1).astype(np.float32)
    gt_cls = rng.integers(0, NC, size=m).astype(np.float32)
    near = gt + rng.normal(0, 4, size=gt.shape).astype(np.float32)
    near_cls = np.where(rng.uniform(size=m) < 0.8, gt_cls, rng.integers(0, NC, m))
    k = int(rng.integers(0, 5))
    xy = rng.uniform(0, 200, size=(k, 2))
    boxes = np.concatenate([near, np.concatenate([xy, xy + 30], 1)]).astype(np.float32)
    cls = np.concatenate([near_cls, rng.integers(0, NC, k)]).astype(np.float32)
    conf = rng.uniform(0.001, 1, size=len(boxes)).astype(np.float32)
    order = np.argsort(-conf, kind="stable")
    return boxes[order], conf[order], cls[order], gt, gt_cls


def _val_batch(rng, b=3, d=12, mgt=8):
    """A val batch dict (yolojax batch format) with its padded detections, and the per-image lists."""
    batch = {"image": rng.integers(0, 255, size=(b, 224, 256, 3), dtype=np.uint8),
             "boxes": np.zeros((b, mgt, 4), np.float32), "classes": np.zeros((b, mgt), np.int32),
             "mask": np.zeros((b, mgt), bool), "valid": np.array([True] * (b - 1) + [False]),
             "index": np.arange(b)}
    boxes, scores, classes = np.zeros((b, d, 4), np.float32), np.zeros((b, d), np.float32), np.zeros((b, d))
    count, images = np.zeros(b, int), []
    for s in range(b):
        pb, pc, pk, gb, gk = _image_detections(rng)
        n, m = min(len(pb), d), len(gb)
        boxes[s, :n], scores[s, :n], classes[s, :n], count[s] = pb[:n], pc[:n], pk[:n], n
        batch["boxes"][s, :m], batch["classes"][s, :m], batch["mask"][s, :m] = gb, gk, True
        if batch["valid"][s]:
            images.append((pb[:n], pc[:n], pk[:n], gb, gk))
    return batch, (boxes, scores, classes, count), images


def test_confusion_matrix_of_validation_plots_equals_ultralytics(tmp_path):
    """Counts through ValidationPlots (padding slots and rows ignored) equal ultralytics' ConfusionMatrix
    fed as its DetectionValidator feeds it (its val conf, 0.001, and IoU 0.45)."""
    rng = np.random.default_rng(0)
    plots = ValidationPlots(tmp_path, NAMES, conf=0.001)
    theirs = um.ConfusionMatrix(names=dict(enumerate(NAMES)))
    for i in range(8):
        batch, dets, images = _val_batch(rng)
        plots.add_batch(i, batch, *dets)
        for pb, pc, pk, gb, gk in images:
            det = {"bboxes": torch.from_numpy(pb), "conf": torch.from_numpy(pc), "cls": torch.from_numpy(pk)}
            theirs.process_batch(det, {"bboxes": torch.from_numpy(gb), "cls": torch.from_numpy(gk)}, conf=0.001)
    np.testing.assert_array_equal(plots.confusion.matrix, theirs.matrix)
    assert plots.confusion.matrix[:NC, :NC].trace() > 0 and plots.confusion.matrix[NC].sum() > 0
    names = sorted(p.name for p in plots.written)
    assert names == sorted(f"val_batch{i}_{k}.jpg" for i in range(3) for k in ("labels", "pred"))
    written = plots.finish({"ap_result": _ap_result(np.random.default_rng(1))[0]})
    their_dir = tmp_path / "ultralytics"
    their_dir.mkdir()
    for normalize in (True, False):
        theirs.plot(normalize=normalize, save_dir=their_dir)
    expected = {p.name for p in their_dir.iterdir()} | {f"Box{k}_curve.png" for k in ("P", "R", "F1", "PR")}
    assert {p.name for p in written} >= expected
    assert all(p.stat().st_size > 5000 for p in written)


def _ap_result(rng):
    tps, confs, pcls, tcls = [], [], [], []
    for _ in range(20):
        pb, pc, pk, gb, gk = _image_detections(rng)
        iou = um.box_iou(torch.from_numpy(gb), torch.from_numpy(pb)).numpy() if len(gb) and len(pb) else None
        tp = np.zeros((len(pb), 10), bool)
        if iou is not None:
            from yolojax.evaluation.metrics import match_predictions

            tp = match_predictions(pk, gk, iou)
        tps.append(tp), confs.append(pc), pcls.append(pk), tcls.append(gk)
    args = (np.concatenate(tps), np.concatenate(confs), np.concatenate(pcls), np.concatenate(tcls))
    return ap_per_class(*args), args


def test_curve_data_equal_ultralytics_ap_per_class(tmp_path):
    """The curves yolojax plots are ultralytics' ap_per_class curves, and the files have its names."""
    ours, args = _ap_result(np.random.default_rng(2))
    their_dir = tmp_path / "ultralytics"
    their_dir.mkdir()
    theirs = um.ap_per_class(*args, plot=True, save_dir=their_dir, names=dict(enumerate(NAMES)), prefix="Box")
    _, _, p, r, f1, ap, classes, p_curve, r_curve, f1_curve, x, prec_values = theirs
    np.testing.assert_array_equal(ours.classes, classes)
    for a, b in ((ours.p_curve, p_curve), (ours.r_curve, r_curve), (ours.f1_curve, f1_curve), (ours.x, x),
                 (ours.prec_values, prec_values), (ours.ap, ap), (ours.p, p), (ours.r, r), (ours.f1, f1)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    curves = {"F1": ours.f1_curve, "P": ours.p_curve, "R": ours.r_curve}
    means = {k: smooth(v.mean(0), 0.1) for k, v in curves.items()}
    written = plot_curves(ours.x, ours.prec_values, ours.ap[:, 0], curves, means, [NAMES[c] for c in ours.classes],
                          tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in their_dir.iterdir())


def test_labels_and_batch_mosaic_images(tmp_path):
    import cv2

    rng = np.random.default_rng(3)
    xywh = np.concatenate([rng.uniform(0.2, 0.8, (60, 2)), rng.uniform(0.05, 0.4, (60, 2))], 1)
    path = plot_labels(xywh, rng.integers(0, NC, 60), NAMES, tmp_path / "labels.jpg")
    assert cv2.imread(str(path)).shape == (1600, 1600, 3)  # 8 x 8 inches at 200 dpi
    images = rng.integers(0, 255, size=(5, 96, 128, 3), dtype=np.uint8)
    boxes = [np.array([[10, 10, 60, 50]], np.float32)] * 5
    out = plot_batch(images, boxes, [np.array([1])] * 5, tmp_path / "b.jpg", NAMES)
    assert cv2.imread(str(out)).shape == (2 * 96, 3 * 128, 3)  # 3 per row, the empty third row left out
    confusion = ValidationPlots(tmp_path / "empty", NAMES, conf=0.25).confusion
    assert [p.name for p in plot_confusion(confusion.matrix, NAMES, tmp_path)] == [
        "confusion_matrix_normalized.png", "confusion_matrix.png"]  # an all-zero matrix still draws


def test_train_plot_steps_are_ultralytics_plot_idx():
    """ultralytics' trainer: plot_idx = [0, 1, 2] + (epochs - close_mosaic) * nb + [0, 1, 2] with close_mosaic."""
    assert train_plot_steps(3, 1, 3, 9) == [0, 1, 2, 6, 7, 8]
    assert train_plot_steps(100, 10, 5, 500) == [0, 1, 2, 450, 451, 452]
    assert train_plot_steps(5, 10, 3, 15) == [0, 1, 2]      # mosaic closed from the start: nothing more
    assert train_plot_steps(100, 0, 5, 500) == [0, 1, 2]    # close_mosaic=0: mosaic stays
    assert train_plot_steps(10, 1, 1, 2) == [0, 1]          # a run shorter than three steps
