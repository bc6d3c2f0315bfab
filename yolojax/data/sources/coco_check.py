"""A COCO instances file checked before anything runs on it, and put in the form pycocotools needs.

:func:`read_coco_file` reads the file (or takes its parsed dict) and returns a :class:`CocoFile`:

* Refused with a ``ValueError`` of one line naming the file, the field and the id: the file is
  not a JSON object; no ``images`` or ``categories`` list; an image or category whose ``id`` is
  not an integer or is used twice; two images with one ``file_name``; an image without a
  ``file_name`` string; a category without ``name``; an annotation whose ``image_id`` or
  ``category_id`` is not in the file; a ``bbox`` that is not four finite numbers; an
  annotation with neither a bbox nor a polygon or RLE segmentation to take one from.
* Fixed, with one warning line per kind giving its count: annotation ids that are not unique
  positive integers are renumbered 1..N in file order (pycocotools' COCOeval reads an id of 0
  as "no match" and keeps one annotation per id, so such ids silently change its numbers);
  an annotation without a bbox gets the extents of its segmentation (the polygon's minimum
  and maximum x and y, or ``pycocotools.mask.toBbox`` of an RLE), as converters do.
* Filled in silently: ``annotations`` (none), ``area`` (the box's width * height) and
  ``iscrowd`` (0).

Annotation ids carry no meaning for box metrics, so renumbering them leaves every COCO
number as pycocotools gives on the file with valid ids. Image and category ids are kept:
detections refer to them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import reprlib
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

_REPR = reprlib.Repr()
_REPR.maxlist, _REPR.maxstring = 8, 60


@dataclasses.dataclass(frozen=True)
class CocoFile:
    """A checked COCO instances file.

    Attributes:
      data: the file's dict with the fixes of the module docstring applied; what COCOeval is given.
      path: the file it was read from, or None for a dict.
      notes: one warning line per kind of fix, with its count (also logged).
    """

    data: dict[str, Any]
    path: str | None
    notes: tuple[str, ...]

    @property
    def where(self) -> str:
        """The file's path, or 'annotations' for a dict, to start messages with."""
        return self.path or "annotations"


def read_coco_file(annotations: str | os.PathLike | Mapping[str, Any] | CocoFile) -> CocoFile:
    """Read, check and fix a COCO instances file (see the module docstring); a CocoFile is returned as is.

    Args:
      annotations: a path to the JSON, its parsed dict (left unchanged: a copy is checked) or a CocoFile.

    Raises:
      ValueError: one line naming the file, the field and the id of the first inconsistency refused.
    """
    if isinstance(annotations, CocoFile):
        return annotations
    if isinstance(annotations, Mapping):
        path, data = None, json.loads(json.dumps(annotations))
    else:
        path = str(annotations)
        data = _load_json(path)
    notes = check_coco(data, path or "annotations")
    for note in notes:
        logger.warning("%s", note)
    return CocoFile(data, path, tuple(notes))


def check_coco(data: Any, where: str) -> list[str]:
    """Check ``data`` (a parsed COCO instances file) and fix it in place.

    Args:
      data: the parsed file.
      where: the file's name, to start messages with.

    Returns:
      One warning line per kind of fix applied (empty when the file needed none).

    Raises:
      ValueError: the first inconsistency that is refused (module docstring), in one line.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{where}: a COCO instances file is a JSON object, not {type(data).__name__}")
    images = _objects(data, "images", where)
    categories = _objects(data, "categories", where)
    data.setdefault("annotations", [])
    annotations = _objects(data, "annotations", where)
    image_ids = _unique_integer_ids(images, "images", "file_name", where)
    category_ids = _unique_integer_ids(categories, "categories", "name", where)
    _unique_file_names(images, where)
    for k, ann in enumerate(annotations):
        _check_reference(ann, k, "image_id", image_ids, "images", where)
        _check_reference(ann, k, "category_id", category_ids, "categories", where)
    notes = [_fill_boxes(annotations, where), _renumber_annotations(annotations, where)]
    for ann in annotations:
        ann.setdefault("area", float(ann["bbox"][2]) * float(ann["bbox"][3]))
        ann.setdefault("iscrowd", 0)
    return [n for n in notes if n]


def _load_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def _objects(data: dict, field: str, where: str) -> list[dict]:
    """``data[field]``, which must be a list of JSON objects."""
    entries = data.get(field)
    if not isinstance(entries, list):
        raise ValueError(f"{where}: a COCO instances file needs a '{field}' list")
    for k, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: {field}[{k}] is {_REPR.repr(entry)}, not an object")
    return entries


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _unique_integer_ids(entries: list[dict], field: str, label_key: str, where: str) -> set[int]:
    """The entries' ids, which must be integers used once; each entry must have ``label_key``."""
    first: dict[int, int] = {}
    for k, entry in enumerate(entries):
        value = entry.get("id")
        if not _is_integer(value):
            raise ValueError(f"{where}: {field}[{k}]: id {_REPR.repr(value)} is not an integer "
                             f"(renumber the file's {field} with integer ids)")
        if label_key not in entry:
            raise ValueError(f"{where}: {field}[{k}] (id {value}) has no '{label_key}'")
        if value in first:
            twins = ", ".join(repr(entries[i][label_key]) for i in (first[value], k))
            raise ValueError(f"{where}: {field}: id {value} is used twice ({twins})")
        first[value] = k
    return set(first)


def _unique_file_names(images: list[dict], where: str) -> None:
    first: dict[str, int] = {}
    for k, image in enumerate(images):
        name = image["file_name"]
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: images[{k}] (id {image['id']}): file_name {_REPR.repr(name)} is not a file name")
        if name in first:
            raise ValueError(f"{where}: images: file_name {name!r} is used by ids {first[name]} and {image['id']}")
        first[name] = image["id"]


def _describe(k: int, ann: dict) -> str:
    """How messages name annotation ``k``: its index, and its id when it has one."""
    return f"annotations[{k}] (id {_REPR.repr(ann['id'])})" if "id" in ann else f"annotations[{k}]"


def _check_reference(ann: dict, k: int, key: str, known: set[int], field: str, where: str) -> None:
    if key not in ann:
        raise ValueError(f"{where}: {_describe(k, ann)} has no {key}")
    value = ann[key]
    if not (_is_integer(value) and value in known):
        raise ValueError(f"{where}: {_describe(k, ann)}: {key} {_REPR.repr(value)} is not an id in '{field}'")


def _fill_boxes(annotations: list[dict], where: str) -> str | None:
    """Check every bbox and give annotations without one their segmentation's extents; returns a note."""
    derived = []
    for k, ann in enumerate(annotations):
        if "bbox" in ann:
            _check_bbox(ann["bbox"], k, ann, where)
        else:
            ann["bbox"] = segmentation_box(ann.get("segmentation"), f"{where}: {_describe(k, ann)}")
            derived.append(k)
    if not derived:
        return None
    return (f"{where}: {len(derived)} annotations have no bbox; each got the extents of its segmentation "
            f"(first: {_describe(derived[0], annotations[derived[0]])})")


def _check_bbox(bbox: Any, k: int, ann: dict, where: str) -> None:
    valid = (isinstance(bbox, list) and len(bbox) == 4
             and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox))
    if not valid:
        raise ValueError(f"{where}: {_describe(k, ann)}: bbox {_REPR.repr(bbox)} is not [x, y, width, height]")


def segmentation_box(segmentation: Any, who: str) -> list[float]:
    """[x, y, width, height] enclosing a COCO segmentation: polygons (a list of [x1, y1, x2, y2, ...]
    lists, or one such list) or an RLE ({"counts", "size"}, compressed or not).

    Raises:
      ValueError: starting with ``who``, when there is no usable segmentation.
    """
    if isinstance(segmentation, dict):
        return _rle_box(segmentation, who)
    points = _polygon_points(segmentation)
    if points is None:
        raise ValueError(f"{who} has no bbox, and no polygon or RLE segmentation to take one from "
                         f"(segmentation {_REPR.repr(segmentation)})")
    (x1, y1), (x2, y2) = points.min(0), points.max(0)
    return [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]


def _polygon_points(segmentation: Any) -> np.ndarray | None:
    """float64 (n, 2) points of polygon lists, or None when they are not usable polygons."""
    if not isinstance(segmentation, list) or not segmentation:
        return None
    polygons = segmentation if all(isinstance(p, list) for p in segmentation) else [segmentation]
    try:
        values = np.concatenate([np.asarray(p, np.float64).reshape(-1) for p in polygons])
    except (TypeError, ValueError):
        return None
    if values.size == 0 or values.size % 2 or not np.isfinite(values).all():
        return None
    return values.reshape(-1, 2)


def _rle_box(rle: dict, who: str) -> list[float]:
    from pycocotools import mask as mask_utils

    try:
        if isinstance(rle.get("counts"), list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(rle, *rle["size"])
        return [float(v) for v in mask_utils.toBbox(rle)]
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise ValueError(f"{who} has no bbox, and its RLE segmentation cannot be read ({e})") from e


def _renumber_annotations(annotations: list[dict], where: str) -> str | None:
    """Renumber annotation ids 1..N unless they are unique positive integers; returns a note with counts."""
    problems: Counter[str] = Counter()
    seen = set()
    for ann in annotations:
        value = ann.get("id")
        if "id" not in ann:
            problems["missing"] += 1
        elif not _is_integer(value):
            problems["not an integer"] += 1
        elif value < 1:
            problems["below 1"] += 1
        elif value in seen:
            problems["used before"] += 1
        if _is_integer(value):
            seen.add(value)
    if not problems:
        return None
    for i, ann in enumerate(annotations, 1):
        ann["id"] = i
    counts = ", ".join(f"{n} {kind}" for kind, n in problems.items())
    return (f"{where}: annotation ids renumbered 1..{len(annotations)}: pycocotools needs unique positive "
            f"integers (it reads id 0 as 'no match' and keeps one annotation per id); ids {counts}")
