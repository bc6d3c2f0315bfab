"""Random-access detection sources (Grain ``RandomAccessDataSource`` compatible).

Every source has ``__len__`` and ``__getitem__(i)`` returning a record::

    {"image":   uint8 (H, W, 3) RGB, original size,
     "boxes":   float32 (n, 4) x1, y1, x2, y2 normalised by the image width / height,
     "classes": int32 (n,),
     "index":   int, i}

plus ``names`` (class names), ``image_shapes_hw`` (int32 (N, 2) original h, w, or None when
unknown without decoding), ``image_ids`` (int64 (N,), e.g. COCO ids) and ``image_paths``,
and ``has_polygons`` (labels were polygons). Sources are cheap to pickle: Grain copies
them into its worker processes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from yolojax.data.sources.data_yaml import image_to_label_paths, list_image_files, load_data_yaml, split_paths
from yolojax.data.image_io import read_image_file
from yolojax.data.sources.label_scan import ScanReport, scan_yolo_split
from yolojax.data.sources.label_table import LabelTable
from yolojax.data.sources.subset import fraction_count

logger = logging.getLogger(__name__)


class DetectionSource(Protocol):
    """What the pipeline needs from a source."""

    names: tuple[str, ...]
    has_polygons: bool

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @property
    def image_shapes_hw(self) -> np.ndarray | None: ...


class FileDetectionSource:
    """Images on disk with labels held in memory (after a label scan).

    Args:
      image_paths: N image files.
      labels: their boxes (normalised xyxy) and classes.
      shapes_hw: int32 (N, 2) original h, w of each image.
      names: class names.
      image_ids: int64 (N,) ids to report (COCO image ids); default 0..N-1.
      has_polygons: labels came from polygons.
      report: the scan report, kept for callers.
    """

    def __init__(
        self,
        image_paths: Sequence[str],
        labels: LabelTable,
        shapes_hw: np.ndarray,
        names: Sequence[str],
        image_ids: np.ndarray | None = None,
        has_polygons: bool = False,
        report: ScanReport | None = None,
    ):
        if not (len(image_paths) == len(labels) == len(shapes_hw)):
            raise ValueError("image_paths, labels and shapes_hw must have one entry per image")
        self.image_paths = tuple(str(p) for p in image_paths)
        self.labels = labels
        self._shapes_hw = np.asarray(shapes_hw, np.int32).reshape(-1, 2)
        self.names = tuple(names)
        self.image_ids = (
            np.arange(len(self.image_paths), dtype=np.int64) if image_ids is None else np.asarray(image_ids, np.int64)
        )
        self.has_polygons = bool(has_polygons)
        self.report = report

    def __len__(self) -> int:
        return len(self.image_paths)

    def __repr__(self) -> str:
        return f"FileDetectionSource({len(self)} images, {len(self.names)} classes)"

    @property
    def image_shapes_hw(self) -> np.ndarray:
        return self._shapes_hw

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Record ``index`` (module docstring).

        Raises:
          yolojax.data.image_io.UnreadableImageError: the image can no longer be read (moved,
            deleted or damaged since the label scan); an OSError.
        """
        index = int(index)
        image = read_image_file(self.image_paths[index])
        return {
            "image": image,
            "boxes": self.labels.boxes_of(index),
            "classes": self.labels.classes_of(index),
            "index": index,
        }


def warn_if_unlabelled(labels: LabelTable, image_paths: Sequence[str], where: str, split: str | None,
                       example: str = "") -> bool:
    """Warn when not one image of a split has a label: training then learns no objects and
    validation metrics are all zero (ultralytics: "No labels found ... cannot compute
    metrics"). ``example`` may point at where a label was looked for. Returns whether it warned."""
    if len(labels.classes) or not len(image_paths):
        return False
    effect = {"train": "training learns no objects",
              None: "training learns no objects and validation metrics are 0"}.get(
        split, "precision, recall and mAP are 0, as there is nothing to compare the detections with")
    logger.warning("no labels found in %s%s (%d images%s): %s", f"the {split} split of " if split else "", where,
                   len(image_paths), f"; {example}" if example else "", effect)
    return True


def yolo_source(data_yaml: str | os.PathLike, split: str = "train", use_cache: bool = True,
                fraction: float = 1.0) -> FileDetectionSource:
    """The `split` of an ultralytics data.yaml as a source, after the (cached) label scan.

    The scan's summary and every skipped file are logged, and a split without any label is
    warned about (:func:`warn_if_unlabelled`).

    Args:
      data_yaml: path to the data.yaml.
      split: 'train', 'val' or 'test'.
      use_cache: read/write the label scan cache beside the labels.
      fraction: ultralytics' ``fraction``: only the first images of the sorted list, before
        the label scan (:func:`yolojax.data.sources.subset.fraction_count`); 1.0: all.

    Returns:
      A :class:`FileDetectionSource` of the images that passed the scan.

    Raises:
      ValueError: one line naming the yaml and the split: it names no path, a path does not
        exist (:func:`yolojax.data.sources.data_yaml.split_paths`), no image was found or none passed
        the scan; a bad ``fraction``.
    """
    spec = load_data_yaml(data_yaml)
    paths = split_paths(spec, split)
    try:
        image_paths = list_image_files(paths)
    except FileNotFoundError as e:
        raise ValueError(f"{spec.yaml_path}: '{split}:' {e}") from None
    if fraction != 1.0:
        image_paths = image_paths[:fraction_count(fraction, len(image_paths))]
    label_paths = image_to_label_paths(image_paths)
    scan = scan_yolo_split(image_paths, label_paths, spec.num_classes, use_cache=use_cache)
    example = ""
    if scan.report.missing:
        missing = scan.report.missing_files[0]
        example = f"e.g. {missing} has no label file {label_paths[image_paths.index(missing)]}"
    warn_if_unlabelled(scan.labels, scan.image_paths, ", ".join(paths), split, example)
    return FileDetectionSource(scan.image_paths, scan.labels, scan.shapes_hw, spec.names,
                               has_polygons=scan.has_polygons, report=scan.report)
