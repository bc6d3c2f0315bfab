"""``labels.jpg``: the training labels at a glance (ultralytics' ``plot_labels`` layout).

Four panels: instances per class (bars in the class colours, counts on them when there are
fewer than 30 classes), up to 500 boxes drawn centred on a 1000 x 1000 canvas (their sizes),
and 2-D histograms (50 bins, white to blue) of box centres (x, y) and sizes (width, height),
all normalised to the image size.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from yolojax.plots import class_color, pyplot

MAX_BOXES_DRAWN = 500  # boxes drawn in the size panel (ultralytics: the first 500)


def plot_labels(boxes_xywh: np.ndarray, classes: np.ndarray, names: Sequence[str],
                path: str | os.PathLike) -> Path:
    """Write labels.jpg.

    Args:
      boxes_xywh: float (T, 4) box centre x, y, width, height normalised to [0, 1].
      classes: int (T,) class ids.
      names: class names (index = id); the histogram has one bar per name.
      path: output file (.jpg).

    Returns:
      ``path``.
    """
    import cv2
    from matplotlib.colors import LinearSegmentedColormap

    plt = pyplot()
    boxes = np.asarray(boxes_xywh, np.float64).reshape(-1, 4)
    classes = np.asarray(classes).reshape(-1).astype(int)
    nc = max(len(names), int(classes.max()) + 1 if len(classes) else 0)
    white_blue = LinearSegmentedColormap.from_list("white_blue", ["white", "blue"])
    fig, axes = plt.subplots(2, 2, figsize=(8, 8), tight_layout=True)
    ax = axes.ravel()
    counts = np.bincount(classes, minlength=nc)
    bars = ax[0].bar(np.arange(nc), counts, width=0.8,
                     color=[tuple(v / 255 for v in class_color(i)) for i in range(nc)])
    ax[0].set_ylabel("instances")
    if nc < 30:
        ax[0].set_xticks(range(nc), [str(n) for n in names][:nc], rotation=90, fontsize=10)
        ax[0].bar_label(bars)
    else:
        ax[0].set_xlabel("classes")
    canvas = np.full((1000, 1000, 3), 255, np.uint8)
    for c, (_, _, bw, bh) in zip(classes[:MAX_BOXES_DRAWN], boxes[:MAX_BOXES_DRAWN]):
        p1 = (int(round((0.5 - bw / 2) * 1000)), int(round((0.5 - bh / 2) * 1000)))
        p2 = (int(round((0.5 + bw / 2) * 1000)), int(round((0.5 + bh / 2) * 1000)))
        cv2.rectangle(canvas, p1, p2, class_color(c), 1)
    ax[1].imshow(canvas)
    ax[1].axis("off")
    ax[2].hist2d(boxes[:, 0], boxes[:, 1], bins=50, cmap=white_blue)
    ax[2].set(xlabel="x", ylabel="y")
    ax[3].hist2d(boxes[:, 2], boxes[:, 3], bins=50, cmap=white_blue)
    ax[3].set(xlabel="width", ylabel="height")
    for a in ax:
        for side in ("top", "right", "left", "bottom"):
            a.spines[side].set_visible(False)
    path = Path(path)
    fig.savefig(path, dpi=200)
    plt.close(fig)
    return path
