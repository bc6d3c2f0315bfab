"""ultralytics' dataset selection options: ``fraction`` (which training images), ``classes``
(which labels) and ``single_cls`` (one class), as ultralytics 8.4.190's ``BaseDataset``
applies them (``get_img_files``, ``update_labels``)."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import Any

import numpy as np

from yolojax.data.sources.label_table import LabelTable

SINGLE_CLASS_NAMES = ("item",)  # ultralytics' trainer names the one class of single_cls "item"


def fraction_count(fraction: float, num_images: int) -> int:
    """How many of ``num_images`` (sorted) images ``fraction`` keeps: a ratio in (0, 1] keeps
    ``max(1, round(N * fraction))`` (Python's round, as ultralytics), a value > 1 is a count
    (at most N).

    Raises:
      ValueError: ``fraction`` <= 0, or > 1 and not a whole number.
    """
    if not fraction > 0:
        raise ValueError(f"fraction must be > 0 (a ratio in (0, 1] or an image count), got {fraction}")
    if fraction > 1:
        if fraction != int(fraction):
            raise ValueError(f"fraction > 1 is an image count and must be a whole number, got {fraction}")
        return min(int(fraction), num_images)
    return max(1, round(num_images * fraction))


def parse_classes(value: Any, num_classes: int | None) -> list[int] | None:
    """``classes`` as given (config string, int or list) -> class ids, or None (keep all).

    ``""`` / None -> None; ``0`` or ``"0"`` -> [0]; ``"[0, 2]"`` or ``"0,2"`` -> [0, 2].

    Raises:
      ValueError: one line naming ``classes``: not integers, or an id outside [0, num_classes)
        (``num_classes`` None: a negative id).
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            value = ast.literal_eval(text if text.startswith("[") else f"[{text}]")
        except (ValueError, SyntaxError):
            raise ValueError(f"classes must be a class id or a list of ids, got {text!r}") from None
    ids = [value] if isinstance(value, int) else list(value) if isinstance(value, (list, tuple)) else None
    if ids is None or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ValueError(f"classes must be a class id or a list of ids, got {value!r}")
    if num_classes is None:
        if any(i < 0 for i in ids):
            raise ValueError(f"classes must be class ids >= 0, got {ids}")
        return ids
    bad = [i for i in ids if not 0 <= i < num_classes]
    if bad:
        raise ValueError(f"classes {bad} outside the dataset's {num_classes} classes [0, {num_classes - 1}]")
    return ids


def filter_labels(labels: LabelTable, classes: Sequence[int] | None, single_cls: bool) -> LabelTable:
    """ultralytics' ``update_labels``: keep only the boxes of ``classes`` (None: all); with
    ``single_cls`` every kept class becomes 0. Images keep their place (an image may be left
    without boxes)."""
    keep = np.ones(len(labels.classes), bool) if classes is None else np.isin(labels.classes, np.asarray(classes))
    kept_before = np.concatenate([[0], np.cumsum(keep)]).astype(np.int64)  # kept rows before each row
    offsets = kept_before[labels.offsets]
    cls = labels.classes[keep]
    if single_cls:
        cls = np.zeros_like(cls)
    return LabelTable(labels.boxes_xyxy[keep], cls.astype(np.int32), offsets)


def select_labels(source: Any, classes: Sequence[int] | None, single_cls: bool) -> Any:
    """``source`` with :func:`filter_labels` applied (itself when nothing is filtered), its
    ``names`` replaced by ``("item",)`` with ``single_cls``.

    Raises:
      ValueError: ``source`` holds no label table (e.g. TFDS) while a filter is asked for.
    """
    if classes is None and not single_cls:
        return source
    labels = getattr(source, "labels", None)
    if not isinstance(labels, LabelTable):
        raise ValueError(f"{type(source).__name__} has no label table: classes / single_cls need a YOLO or COCO "
                         "source")
    import copy

    out = copy.copy(source)
    out.labels = filter_labels(labels, classes, single_cls)
    if single_cls:
        out.names = SINGLE_CLASS_NAMES
    return out
