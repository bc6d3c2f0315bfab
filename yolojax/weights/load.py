"""One loader for every source of weights: a .pt, a converted directory, a train workdir."""

from __future__ import annotations

import os
from pathlib import Path

from yolojax.weights.converted import INFO_FILE, VARIABLES_DIR, is_converted_dir, load_converted
from yolojax.weights.ultralytics import Info, Variables, load_ultralytics


def load_weights(path: str | os.PathLike) -> tuple[Variables, Info]:
    """Load detector variables and info (YOLOv8 or YOLO11: ``info["family"]``) from any
    supported source of weights.

    ``path`` is an ultralytics ``.pt``/``.pth`` file (:func:`load_ultralytics`), a
    directory written by :func:`save_converted` (:func:`load_converted`) or a train workdir
    (or its ``checkpoints/``): the EMA weights of its latest complete checkpoint
    (:func:`yolojax.weights.workdir.load_workdir_weights`). Returns the same
    ``(variables, info)`` as :func:`load_ultralytics`; a pruned model's info also has
    ``widths`` (:mod:`yolojax.models.prune`; a workdir records those of the model it trained).
    Raises ``ValueError`` otherwise.
    """
    p = Path(path)
    if p.is_file() and p.suffix.lower() in (".pt", ".pth"):
        return load_ultralytics(p)
    if p.is_dir() and is_converted_dir(p):
        return load_converted(p)
    if p.is_dir():
        from yolojax.weights.workdir import is_train_workdir, load_workdir_weights

        if is_train_workdir(p):  # a train workdir: its latest complete checkpoint's EMA weights
            return load_workdir_weights(p)
    what = "does not exist" if not p.exists() else "is not a supported source of weights"
    raise ValueError(
        f"{path} {what}: expected an ultralytics .pt file or a yolojax checkpoint "
        f"directory (with {INFO_FILE} and {VARIABLES_DIR}/) or a train workdir with a checkpoint"
    )
