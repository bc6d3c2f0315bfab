"""The plots ultralytics writes in a run directory, drawn with matplotlib and OpenCV.

This package only draws: it takes arrays and names and writes image files, and imports
nothing from data, evaluation or train (the callers collect what is drawn:
:mod:`yolojax.evaluation.plots`, :mod:`yolojax.train.plots`).

* :mod:`yolojax.plots.batches`: ``train_batch{0,1,2}.jpg``, ``val_batch{0,1,2}_labels.jpg``,
  ``val_batch{0,1,2}_pred.jpg``: a mosaic of a batch's images with boxes and class labels;
* :mod:`yolojax.plots.labels`: ``labels.jpg``: class histogram, box sizes, centre and size
  distributions of the training labels;
* :mod:`yolojax.plots.curves`: ``BoxP_curve.png``, ``BoxR_curve.png``, ``BoxF1_curve.png``,
  ``BoxPR_curve.png``, ``confusion_matrix.png``, ``confusion_matrix_normalized.png``
  (ultralytics 8.4.190's file names);
* :mod:`yolojax.plots.results`: ``results.png``, a run's loss, lr and validation curves;
* :mod:`yolojax.plots.annotate`: detections drawn on an image (predict's annotated copies).

A plot never fails a run: :func:`guarded` logs a warning naming the plot instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


def guarded(name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``; any exception is logged as a warning naming plot ``name``, and
    None returned (a plot must never fail a run)."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - any plotting failure only loses that plot
        logger.warning("plot %s not written: %s: %s", name, type(e).__name__, e)
        return None


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def class_color(c: int) -> tuple[int, int, int]:
    """RGB 0-255 colour of class ``c``: matplotlib's tab20 palette, cycled."""
    import matplotlib

    r, g, b, _ = matplotlib.colormaps["tab20"](int(c) % 20)
    return int(r * 255), int(g * 255), int(b * 255)


__all__ = ["guarded", "pyplot", "class_color"]
