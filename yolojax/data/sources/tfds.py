"""TFDS detection datasets (e.g. 'coco/2017') through ``tfds.data_source`` (random access).

Needs the optional ``tensorflow-datasets`` package (``pip install yolojax[tfds]``). The
dataset must already be prepared in ``data_dir`` in the array_record format. Features used:
an image (uint8 (H, W, 3)) and an objects sequence with ``bbox`` (TFDS ``BBox``: ymin, xmin,
ymax, xmax normalised), ``label`` (class id) and optionally ``is_crowd`` (skipped, like
ultralytics' COCO converter).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _import_tfds():
    try:
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise ImportError("TFDS sources need tensorflow-datasets: pip install 'yolojax[tfds]'") from e
    return tfds


class TfdsSource:
    """A TFDS split as a detection source (see :mod:`yolojax.data.sources.yolo` for the record format).

    Args:
      name: TFDS builder name, e.g. 'coco/2017'.
      split: e.g. 'train', 'validation'.
      data_dir: TFDS data dir (default: TFDS's).
      image_key: image feature.
      objects_key: objects sequence feature.
      bbox_key, label_key, crowd_key: features inside `objects_key`.
      names: class names; default: the label feature's names.
    """

    has_polygons = False

    def __init__(
        self,
        name: str,
        split: str,
        data_dir: str | None = None,
        image_key: str = "image",
        objects_key: str = "objects",
        bbox_key: str = "bbox",
        label_key: str = "label",
        crowd_key: str = "is_crowd",
        names: Sequence[str] | None = None,
    ):
        tfds = _import_tfds()
        self._source = tfds.data_source(name, split=split, data_dir=data_dir)
        self._keys = (image_key, objects_key, bbox_key, label_key, crowd_key)
        if names is None:
            names = self._source.dataset_info.features[objects_key][label_key].names
        self.names = tuple(str(n) for n in names)
        self.image_ids = None

    def __len__(self) -> int:
        return len(self._source)

    def __repr__(self) -> str:
        return f"TfdsSource({len(self)} images, {len(self.names)} classes)"

    @property
    def image_shapes_hw(self) -> None:
        """Unknown without decoding every image (so no 'rect' validation batches)."""
        return None

    def __getitem__(self, index: int) -> dict[str, Any]:
        return record_from_example(self._source[int(index)], int(index), len(self.names), *self._keys)


def record_from_example(
    example: dict,
    index: int,
    num_classes: int,
    image_key: str = "image",
    objects_key: str = "objects",
    bbox_key: str = "bbox",
    label_key: str = "label",
    crowd_key: str = "is_crowd",
) -> dict[str, Any]:
    """A TFDS example -> a source record; crowd, empty and out-of-range objects dropped, boxes clipped to [0, 1]."""
    image = np.asarray(example[image_key], np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    objects = example[objects_key]
    bbox = np.asarray(objects[bbox_key], np.float32).reshape(-1, 4)
    labels = np.asarray(objects[label_key]).reshape(-1)
    n = min(len(bbox), len(labels))
    keep = np.ones(n, bool)
    if crowd_key in objects:
        crowd = np.asarray(objects[crowd_key]).reshape(-1)
        n = min(n, len(crowd))
        keep = ~crowd[:n].astype(bool)
    boxes = bbox[:n][:, [1, 0, 3, 2]].clip(0, 1)  # ymin, xmin, ymax, xmax -> x1, y1, x2, y2
    classes = labels[:n].astype(np.int32)
    keep &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & (classes >= 0) & (classes < num_classes)
    return {"image": image, "boxes": boxes[keep], "classes": classes[keep], "index": index}
