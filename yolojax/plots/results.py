"""``results.png``: a training run's losses, learning rate and validation metrics against the step."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from yolojax.plots import pyplot


def plot_results(rows: Sequence[Mapping[str, Any]], out_path: str | os.PathLike) -> Path:
    """Draw a run's curves into ``out_path`` (PNG) and return it.

    Args:
      rows: metrics.jsonl's rows: per-step rows with ``step`` and ``loss``, ``box``, ``cls``,
        ``dfl``, ``lr``; per-validation rows with ``epoch``, ``step`` and ``mAP50``,
        ``mAP50-95``, ``precision``, ``recall`` (None values are skipped).
    """
    plt = pyplot()
    steps = [r for r in rows if "loss" in r]
    epochs = [r for r in rows if "epoch" in r]
    val_keys = [k for k in ("mAP50", "mAP50-95", "precision", "recall") if any(k in r for r in epochs)]
    panels = ["loss", "box", "cls", "dfl", "lr"] + val_keys
    cols = 5
    rows_n = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.2 * cols, 2.8 * rows_n), squeeze=False)
    for ax, key in zip(axes.flat, panels):
        src = steps if key in ("loss", "box", "cls", "dfl", "lr") else epochs
        xs = [r["step"] for r in src if r.get(key) is not None]
        ys = [r[key] for r in src if r.get(key) is not None]
        ax.plot(xs, ys, marker="." if len(xs) < 30 else None)
        ax.set_title(key)
        ax.set_xlabel("step")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return Path(out_path)
