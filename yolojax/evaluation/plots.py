"""The plots of one validation (``python -m yolojax.val --plots DIR``, and a run's final one).

ultralytics' DetectionValidator with ``plots=True`` writes, into its save_dir: the first three
batches as ``val_batch{i}_labels.jpg`` (ground truth) and ``val_batch{i}_pred.jpg``
(detections above 0.25), the confusion matrix of every image (detections above the val
``conf``, matched at IoU 0.45; :class:`yolojax.evaluation.metrics.ConfusionMatrix`) as
``confusion_matrix{,_normalized}.png``, and the Box P / R / F1 / PR curves.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from yolojax.evaluation.metrics import ConfusionMatrix, smooth
from yolojax.plots import guarded
from yolojax.plots.batches import plot_batch
from yolojax.plots.curves import plot_confusion, plot_curves

PLOTTED_BATCHES = 3  # ultralytics plots val batches 0, 1, 2


class ValidationPlots:
    """Collects what a validation's plots need, and writes them into ``out_dir``.

    Args:
      out_dir: folder for the files (created).
      names: class names (index = class id).
      conf: the validation's confidence threshold; the confusion matrix counts detections above
        it, as ultralytics 8.4.190 passes its val ``conf`` (0.001 by default) to it.
      image_paths: the source's image files (index = a batch's ``index``), for the tile names.
    """

    def __init__(self, out_dir: str | os.PathLike, names: Sequence[str], conf: float,
                 image_paths: Sequence[str] | None = None):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.names = list(names)
        self.image_paths = image_paths
        self.confusion = ConfusionMatrix(len(self.names), conf=conf)
        self.written: list[Path] = []

    def add_batch(self, batch_index: int, batch: Mapping[str, np.ndarray], boxes: np.ndarray, scores: np.ndarray,
                  classes: np.ndarray, count: np.ndarray) -> None:
        """One val batch and its detections (B, D, 4) xyxy letterboxed pixels, (B, D) scores and classes, (B,)
        counts: updates the confusion matrix; batches 0-2 are drawn."""
        slots = np.flatnonzero(batch["valid"])
        gts = [(batch["boxes"][s][batch["mask"][s]], batch["classes"][s][batch["mask"][s]]) for s in slots]
        dets = [(boxes[s, :int(count[s])], scores[s, :int(count[s])], classes[s, :int(count[s])]) for s in slots]
        for (gb, gc), (db, ds, dc) in zip(gts, dets):
            self.confusion.update(db, ds, dc, gb, gc)
        if batch_index >= PLOTTED_BATCHES or not len(slots):
            return
        files = None
        if self.image_paths is not None and "index" in batch:
            files = [self.image_paths[int(batch["index"][s])] for s in slots]
        images = np.asarray(batch["image"])[slots]
        for kind, extra in (("labels", {}), ("pred", {"scores": [d[1] for d in dets]})):
            path = self.out_dir / f"val_batch{batch_index}_{kind}.jpg"
            source = gts if kind == "labels" else [(d[0], d[2]) for d in dets]
            out = guarded(path.name, plot_batch, images, [b for b, _ in source], [c for _, c in source], path,
                          self.names, files=files, **extra)
            self.written += [out] if out is not None else []

    def finish(self, results: Mapping[str, Any]) -> list[Path]:
        """Write the curves (from ``results["ap_result"]``) and confusion matrices; returns every file written."""
        res = results["ap_result"]
        labels = [str(self.names[c]) if c < len(self.names) else str(c) for c in res.classes]
        curves = {"F1": res.f1_curve, "P": res.p_curve, "R": res.r_curve}
        # ultralytics draws each mean curve smoothed, as it smooths F1 to pick the confidence
        means = {k: smooth(np.asarray(v).mean(0), 0.1) for k, v in curves.items()} if len(labels) else {}
        ap50 = res.ap[:, 0] if len(labels) else np.zeros(0)
        for name, fn, args in (
                ("Box curves", plot_curves, (res.x, res.prec_values, ap50, curves, means, labels, self.out_dir)),
                ("confusion matrix", plot_confusion, (self.confusion.matrix, self.names, self.out_dir))):
            self.written += guarded(name, fn, *args) or []
        return list(self.written)
