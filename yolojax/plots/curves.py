"""Validation curves and confusion matrices under ultralytics 8.4.190's file names.

* ``BoxPR_curve.png``: precision against recall at IoU 0.5 per class (legend with AP50 when
  there are fewer than 21 classes, else grey lines) and their mean ("all classes", mAP@0.5);
* ``BoxP_curve.png``, ``BoxR_curve.png``, ``BoxF1_curve.png``: precision, recall, F1 against
  confidence per class, and the mean smoothed as ultralytics smooths it (box filter over 10%
  of the points), labelled with its maximum and the confidence there;
* ``confusion_matrix.png`` (counts) and ``confusion_matrix_normalized.png`` (each true-class
  column divided by its sum): rows predicted class, columns true class, last row / column
  "background"; cells under 0.005 are left blank; values are written in the cells when there
  are fewer than 30 rows.

The arrays come from the evaluation (:func:`yolojax.evaluation.metrics.ap_per_class`,
:class:`yolojax.evaluation.metrics.ConfusionMatrix`, :class:`yolojax.evaluation.plots.ValidationPlots`):
this module only draws them.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from yolojax.plots import pyplot

PREFIX = "Box"  # ultralytics' DetMetrics prefix of the curve files


CURVES = (("F1", "F1"), ("P", "Precision"), ("R", "Recall"))  # file stem, y-axis label


def plot_curves(x: np.ndarray, prec_values: np.ndarray, ap50: np.ndarray, curves: Mapping[str, np.ndarray],
                means: Mapping[str, np.ndarray], labels: Sequence[str], out_dir: str | os.PathLike) -> list[Path]:
    """Write BoxPR_curve.png, BoxF1_curve.png, BoxP_curve.png, BoxR_curve.png into ``out_dir``.

    Args:
      x: (1000,) the recall grid of the PR curves and the confidence grid of the others.
      prec_values: (C, 1000) precision against recall at IoU 0.5, one row per class drawn.
      ap50: (C,) each class's AP at IoU 0.5 (the PR legend).
      curves: "F1", "P", "R" -> (C, 1000) against confidence.
      means: "F1", "P", "R" -> (1000,) the "all classes" line (ultralytics draws the mean
        smoothed, :func:`yolojax.evaluation.metrics.smooth`).
      labels: the C class names.

    Returns:
      the written paths (none when there is no class, as ultralytics).
    """
    if not len(labels):
        return []
    out_dir = Path(out_dir)
    written = [_plot_pr(x, np.asarray(prec_values), np.asarray(ap50), list(labels), out_dir / f"{PREFIX}PR_curve.png")]
    for stem, ylabel in CURVES:
        written.append(_plot_metric(x, curves[stem], means[stem], list(labels), ylabel,
                                    out_dir / f"{PREFIX}{stem}_curve.png"))
    return written


def _plot_pr(x: np.ndarray, py: np.ndarray, ap50: np.ndarray, labels: list[str], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 6), tight_layout=True)
    for i, label in enumerate(labels):
        if len(labels) < 21:
            ax.plot(x, py[i], linewidth=1, label=f"{label} {ap50[i]:.3f}")
        else:
            ax.plot(x, py[i], linewidth=1, color="grey")
    ax.plot(x, py.mean(0), linewidth=3, color="blue", label=f"all classes {ap50.mean():.3f} mAP@0.5")
    ax.set(xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1), title="Precision-Recall Curve")
    ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
    fig.savefig(path, dpi=250)
    plt.close(fig)
    return path


def _plot_metric(x: np.ndarray, curve: np.ndarray, mean: np.ndarray, labels: list[str], ylabel: str,
                 path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 6), tight_layout=True)
    for i, label in enumerate(labels):
        if len(labels) < 21:
            ax.plot(x, curve[i], linewidth=1, label=label)
        else:
            ax.plot(x, curve[i], linewidth=1, color="grey")
    ax.plot(x, mean, linewidth=3, color="blue", label=f"all classes {mean.max():.2f} at {x[mean.argmax()]:.3f}")
    ax.set(xlabel="Confidence", ylabel=ylabel, xlim=(0, 1), ylim=(0, 1), title=f"{ylabel}-Confidence Curve")
    ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
    fig.savefig(path, dpi=250)
    plt.close(fig)
    return path


def plot_confusion(matrix: np.ndarray, names: Sequence[str], out_dir: str | os.PathLike) -> list[Path]:
    """Write confusion_matrix_normalized.png and confusion_matrix.png into ``out_dir``.

    Args:
      matrix: (nc + 1, nc + 1) counts, rows predicted class, columns true class, index nc
        background (:class:`yolojax.evaluation.metrics.ConfusionMatrix`'s ``matrix``).

    Returns:
      the two paths.
    """
    return [_plot_matrix(np.asarray(matrix), names, normalize, Path(out_dir)) for normalize in (True, False)]


def _plot_matrix(matrix: np.ndarray, names: Sequence[str], normalize: bool, out_dir: Path) -> Path:
    plt = pyplot()
    array = matrix / (matrix.sum(0, keepdims=True) + 1e-9) if normalize else matrix.astype(float)
    array = np.where(array < 0.005, np.nan, array)
    labels = [*map(str, names), "background"]
    n = len(labels)
    fig, ax = plt.subplots(figsize=(12, 9))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an all-zero matrix is all NaN
        im = ax.imshow(array, cmap="Blues", vmin=0.0, interpolation="none")
        if n < 30:
            threshold = 0.45 * (1 if normalize else np.nanmax(array) if np.isfinite(array).any() else 1)
            for (i, j), v in np.ndenumerate(array):
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.2f}" if normalize else f"{int(v)}", ha="center", va="center", fontsize=10,
                            color="white" if v > threshold else "black")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.05)
    size = max(6, 12 - 0.1 * n)
    title = "Confusion Matrix Normalized" if normalize else "Confusion Matrix"
    ax.set_xlabel("True", fontsize=size, labelpad=10)
    ax.set_ylabel("Predicted", fontsize=size, labelpad=10)
    ax.set_title(title, fontsize=size, pad=20)
    if n < 100:
        ax.set_xticks(range(n), labels, fontsize=max(6, 15 - 0.1 * n), rotation=90)
        ax.set_yticks(range(n), labels, fontsize=max(6, 15 - 0.1 * n))
    for side in ("left", "right", "bottom", "top"):
        ax.spines[side].set_visible(False)
    fig.subplots_adjust(left=0.1, right=0.84, top=0.94, bottom=max(0.12, 0.25 - 0.001 * n))
    path = out_dir / f"{title.lower().replace(' ', '_')}.png"
    fig.savefig(path, dpi=250)
    plt.close(fig)
    return path
