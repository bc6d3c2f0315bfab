"""The plots of a finished training run (``config.plots``, ultralytics' ``plots=True``).

Into the run directory, as ultralytics' trainer writes them into its save_dir:

* ``labels.jpg``: the training split's labels (:mod:`yolojax.plots.labels`);
* ``train_batch0.jpg`` .. ``train_batch2.jpg``: the first three training batches of the run
  (process 0's share), rebuilt from the seed exactly as the run drew them, and as ultralytics
  the first three after mosaic closes (``train_batch{(epochs - close_mosaic) * steps per
  epoch + 0..2}.jpg``, :func:`train_plot_steps`), each only if the run reached it (ultralytics
  plots them as it trains);
* the final validation's plots (:mod:`yolojax.evaluation.plots`) from the best checkpoint
  (``checkpoints_best/``) when there is one, else the given final weights, as ultralytics'
  final evaluation validates best.pt.

Each plot that fails is named in a warning; none fails the run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from yolojax.plots import guarded
from yolojax.plots.batches import plot_batch
from yolojax.plots.labels import plot_labels

logger = logging.getLogger(__name__)

TRAIN_BATCHES = 3  # ultralytics' trainer plots batches 0, 1, 2


def write_run_plots(settings: Any, workdir: str | os.PathLike, train_source: Any, max_boxes: int, val_source: Any,
                    variables: Any, info: Mapping[str, Any], steps_done: int) -> list[Path]:
    """Write labels.jpg, train_batch*.jpg and (with ``val_source``) the validation plots into ``workdir``.

    Args:
      settings: the run's :class:`yolojax.train.settings.Settings`.
      train_source: the training source the run used (its ``labels``, a LabelTable, for labels.jpg).
      max_boxes: the run's box padding M (``Batches.max_boxes``).
      val_source: the validation source, or None (no validation plots).
      variables: the final weights ({"params", "batch_stats"}, host arrays).
      info: the model's info (scale, num_classes, names, reg_max, cls_width).
      steps_done: the steps the run trained (train batches beyond it are not plotted).

    Returns:
      the files written.
    """
    workdir = Path(workdir)
    names = list(info["names"])
    written = [guarded("labels.jpg", _labels_plot, train_source, names, workdir / "labels.jpg")]
    written += guarded("train_batch*.jpg", _train_batches, settings, train_source, max_boxes, names, workdir,
                       steps_done) or []
    if val_source is not None:
        written += guarded("validation plots", _validation_plots, settings, workdir, val_source, variables,
                           info) or []
    return [p for p in written if p is not None]


def _labels_plot(source: Any, names: list[str], path: Path) -> Path:
    labels = source.labels
    xyxy = np.asarray(labels.boxes_xyxy, np.float64).reshape(-1, 4)
    xywh = np.concatenate([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], axis=1)
    return plot_labels(xywh, labels.classes, names, path)


def train_plot_steps(epochs: int, close_mosaic: int, steps_per_epoch: int, num_steps: int) -> list[int]:
    """The 0-based steps whose batches ultralytics' trainer plots (its ``plot_idx``): 0, 1, 2, and with
    ``close_mosaic`` the first three of the epochs without mosaic, ``(epochs - close_mosaic) *
    steps_per_epoch + 0..2``; only steps of the run (< ``num_steps``)."""
    steps = set(range(TRAIN_BATCHES))
    if close_mosaic:
        base = (epochs - close_mosaic) * steps_per_epoch
        steps |= {base + k for k in range(TRAIN_BATCHES)}
    return sorted(s for s in steps if 0 <= s < num_steps)


def _train_batches(settings: Any, source: Any, max_boxes: int, names: list[str], workdir: Path,
                   steps_done: int) -> list[Path]:
    """The run's batches of :func:`train_plot_steps` before ``steps_done``, drawn again (same seed,
    no workers, :func:`yolojax.train.setup.train_iterator`) and plotted as ``train_batch{step}.jpg``.
    They are rendered on the host: device mode draws the same samples and pixels (docs/data.md)
    but ships parameters instead of images."""
    import jax

    from yolojax.train.setup import train_iterator

    def batches_from(step: int):
        return train_iterator(settings, source, start_step=step, max_boxes=max_boxes, workers=0, prefetch=1,
                              augment_on="host", process_index=0, process_count=jax.process_count())

    first = batches_from(0)
    first.close()
    num_steps = min(first.num_steps, steps_done)
    written, batches, next_step = [], None, None
    try:
        for step in train_plot_steps(settings.epochs, settings.close_mosaic, first.steps_per_epoch, num_steps):
            if step != next_step:  # a new run of consecutive steps
                if batches is not None:
                    batches.close()
                batches = batches_from(step)
            b = next(batches.iterator)
            next_step = step + 1
            mask = np.asarray(b["mask"])
            written.append(plot_batch(b["image"], [bx[m] for bx, m in zip(b["boxes"], mask)],
                                      [c[m] for c, m in zip(b["classes"], mask)], workdir / f"train_batch{step}.jpg",
                                      names))
    finally:
        if batches is not None:
            batches.close()
    return written


def _validation_plots(settings: Any, workdir: Path, val_source: Any, variables: Any,
                      info: Mapping[str, Any]) -> list[Path]:
    from yolojax.train.setup import validate_ema
    from yolojax.weights import load_weights
    from yolojax.weights.workdir import BEST_DIR, latest_complete_step

    if latest_complete_step(workdir / BEST_DIR) is not None:
        variables, info = load_weights(workdir / BEST_DIR)
    return [Path(p) for p in validate_ema(settings, val_source, variables, info, plots_dir=workdir)["plots"]]
