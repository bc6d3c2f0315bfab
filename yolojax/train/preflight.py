"""What a train run checks before its first step.

Each refusal is a :class:`yolojax.console.ConfigError` whose message is one line naming the field, file or
directory, raised before the model is built and compiled: a workdir of a run with other
settings, a data.yaml split that names no path or a path that does not exist, a TFDS dataset
not prepared or without the split (checked in well under a second, before any image is read), a workdir that cannot be written, results.png that cannot be drawn, a split in which
no image passes the label scan, an image cache (``data.cache``) without the memory or disk
space it needs (the needed and available figures). The splits are opened once per run (the
label-scan summary and every skipped file are logged once each), and validation reuses the
opened val split (and its image cache).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from yolojax.console import ConfigError

logger = logging.getLogger("yolojax.train")


def check_split_paths(data: Any, splits: tuple[str, ...]) -> None:
    """Every split of ``splits`` exists in ``data`` (a data.yaml's paths, a TFDS dataset's splits:
    :func:`yolojax.data.sources.dataset.check_splits`); reads only the yaml and the file system's
    entries for those paths, or the TFDS dataset's metadata."""
    from yolojax.data.sources.dataset import check_splits

    try:
        check_splits(data, splits)
    except (ImportError, OSError, TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


def open_split(data: Any, split: str, fraction: float = 1.0) -> Any:
    """The ``split`` of ``data`` (a data.yaml or a TFDS dataset) as a source
    (:func:`yolojax.data.sources.dataset.open_split`, only the first images with ``fraction``):
    the label scan runs (or its cache loads), its summary and skipped files are logged, a split
    without labels is warned about."""
    from yolojax.data.sources.dataset import open_split as open_data_split

    try:
        return open_data_split(data, split, fraction=fraction)
    except (OSError, ValueError) as e:
        raise ConfigError(str(e).strip().splitlines()[0]) from None


def check_workdir(workdir: Path, settings: Any) -> dict | None:
    """Refuse (before any work) a workdir whose checkpoints were written with other run-defining
    settings (:func:`yolojax.train.settings.check_resumable`); a missing or unreadable
    config.json only warns. Returns the resumed run's config.json (None for a new run)."""
    from yolojax.train.settings import check_resumable
    from yolojax.weights.workdir import CHECKPOINTS_DIR, latest_complete_step

    if latest_complete_step(workdir / CHECKPOINTS_DIR) is None:
        return None
    try:
        saved = json.loads((workdir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        logger.warning("%s/config.json is missing or unreadable: cannot check the resumed run's settings", workdir)
        return None
    check_resumable(saved, settings.raw, workdir)
    return saved


def check_writable(workdir: Path) -> None:
    """``workdir`` exists (it is created) and a file can be written in it."""
    from yolojax.console import ensure_writable_dir

    try:
        ensure_writable_dir(workdir, "workdir")
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check_plot_output(workdir: Path) -> None:
    """matplotlib draws a figure and saves it as PNG in ``workdir`` (as results.png will be):
    its import and the Agg PNG writer work (pyplot's global backend is left as it is)."""
    probe = workdir / f".yolojax-plot-check-{os.getpid()}.png"
    try:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(1, 1))
        fig.add_subplot().plot([0, 1], [0, 1])
        fig.savefig(probe, dpi=10)
        probe.unlink()
    except Exception as e:  # noqa: BLE001 - any failure means results.png cannot be drawn
        raise ConfigError(f"results.png cannot be drawn in {workdir}: {type(e).__name__}: {e}") from None


def open_image_cache(cache: Any, imgsz: int, train_source: Any, val_source: Any | None) -> tuple[Any, Any | None]:
    """The train (and val) sources with ``data.cache``'s image cache, built now: the room for
    both is checked first (ultralytics' margins) and refused in one line with the needed and
    available figures (:func:`yolojax.data.memory.image_cache.open_image_cache`). ultralytics' trainer
    caches the validation images too."""
    from yolojax.data.memory.image_cache import open_image_cache as open_cache

    sources, names = [train_source], ["train"]
    if val_source is not None:
        sources.append(val_source)
        names.append("val")
    try:
        cached = open_cache(cache, imgsz, sources, names)
    except (OSError, ValueError) as e:
        raise ConfigError(str(e).strip().splitlines()[0]) from None
    return cached[0], cached[1] if val_source is not None else None


def close_image_cache(*sources: Any) -> None:
    """Remove the RAM image cache of each cached source (it also goes when garbage-collected)."""
    for source in sources:
        close = getattr(type(source), "close", None)
        if close is not None:
            close(source)
