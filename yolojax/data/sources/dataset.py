"""The dataset a ``data=`` names, whatever its kind: an ultralytics data.yaml (YOLO folders) or a
prepared TFDS dataset ('tfds:NAME' or a :class:`yolojax.data.sources.tfds.TfdsSpec`).

Train, val, the pipeline and the plan ask here for the class names (metadata only), check that
the splits they need exist (in well under a second, before any image is read), and open a
split as a source (after its cached label scan).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Union

from yolojax.data.sources.tfds import TfdsDataset, TfdsSpec, as_tfds_spec, is_tfds

Data = Union[str, os.PathLike, TfdsSpec]


@functools.lru_cache(maxsize=8)
def _tfds_dataset(spec: TfdsSpec) -> TfdsDataset:
    return TfdsDataset(spec)


def describe(data: Data) -> str:
    """How messages name ``data``: the data.yaml's path, or 'tfds:NAME'."""
    return str(as_tfds_spec(data)) if is_tfds(data) else str(data)


def pinned(data: Data) -> Data:
    """``data`` as it resolves now: a TFDS dataset named with the version it reads (the newest
    prepared one when its name gives none: 'tfds:coco/2017' -> 'tfds:coco/2017:1.1.0'), so a
    resumed run keeps reading it when a newer version is prepared; a data.yaml as it is.

    Raises:
      ValueError: a TFDS dataset that cannot serve (:class:`yolojax.data.sources.tfds.TfdsDataset`).
    """
    if not is_tfds(data):
        return data
    spec = as_tfds_spec(data)
    version = os.path.basename(_tfds_dataset(spec).directory.rstrip("/"))
    return dataclasses.replace(spec, name=f"{spec.name.partition(':')[0]}:{version}")


def dataset_names(data: Data) -> tuple[str, ...]:
    """The class names of ``data``: the data.yaml's ``names``, or the TFDS label feature's.

    Raises:
      ValueError, TypeError, OSError: the yaml or the TFDS dataset cannot serve (one line).
      ImportError: a TFDS dataset without tensorflow-datasets installed.
    """
    if is_tfds(data):
        return _tfds_dataset(as_tfds_spec(data)).names
    from yolojax.data.sources.data_yaml import load_data_yaml  # pylint: disable=import-outside-toplevel

    return load_data_yaml(data).names


def check_splits(data: Data, splits: tuple[str, ...]) -> None:
    """Every split of ``splits`` ('train', 'val', 'test') exists in ``data``: the data.yaml's paths
    (:func:`yolojax.data.sources.data_yaml.split_paths`) or the TFDS dataset's splits.

    Raises:
      ValueError: one line naming the field and what is missing.
    """
    if is_tfds(data):
        dataset = _tfds_dataset(as_tfds_spec(data))
        for split in splits:
            dataset.check_split(split)
        return
    from yolojax.data.sources.data_yaml import load_data_yaml, split_paths  # pylint: disable=import-outside-toplevel

    spec = load_data_yaml(data)
    for split in splits:
        split_paths(spec, split)


def open_split(data: Data, split: str, fraction: float = 1.0) -> Any:
    """ultralytics' ``split`` of ``data`` as a source: :func:`yolojax.data.sources.yolo.yolo_source`
    or :meth:`yolojax.data.sources.tfds.TfdsDataset.source` (the scan summary and every skipped
    image logged; ``fraction``: only the first images)."""
    if is_tfds(data):
        return _tfds_dataset(as_tfds_spec(data)).source(split, fraction)
    from yolojax.data.sources.yolo import yolo_source  # pylint: disable=import-outside-toplevel

    return yolo_source(data, split, fraction=fraction)
