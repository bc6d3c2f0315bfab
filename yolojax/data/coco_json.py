"""COCO JSON (``instances_*.json`` + an image folder) as a detection source.

Annotations follow ultralytics' ``convert_coco``: crowd annotations (``iscrowd``) are
skipped, ``bbox`` [x, y, w, h] (top-left, pixels) becomes a normalised box, boxes with
w <= 0 or h <= 0 are dropped and duplicates removed. Category ids map to contiguous class
ids in increasing id order; for COCO itself this is exactly the 91 -> 80 mapping
(``coco91_to_coco80``). ``class_map="minus_one"`` uses ``category_id - 1`` instead
(ultralytics' ``cls91to80=False``).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from yolojax.data.label_scan import (
    CACHE_VERSION,
    collect_verdicts,
    files_hash,
    load_scan_cache,
    log_report,
    run_scan,
    save_scan_cache,
    verify_array_labels,
)
from yolojax.data.sources import FileDetectionSource

# The 80 category ids that COCO uses out of 1..90 (ids 12, 26, 29, 30, 45, 66, 68, 69, 71, 83 are unused).
COCO80_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32,
    33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59,
    60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)  # fmt: skip


def coco91_to_coco80(category_id: int) -> int | None:
    """COCO category id (1..90) -> contiguous class id (0..79); None for the unused ids."""
    try:
        return COCO80_CATEGORY_IDS.index(int(category_id))
    except ValueError:
        return None


def category_mapping(categories: list[dict], class_map: str = "sorted") -> tuple[dict[int, int], tuple[str, ...]]:
    """Category id -> class id, and class names, from a COCO 'categories' list.

    Args:
      categories: [{"id": int, "name": str}, ...].
      class_map: 'sorted' (ids in increasing order -> 0..K-1; COCO's 91 -> 80) or
        'minus_one' (class = id - 1; names padded with 'class_i' where ids are unused).
    """
    by_id = {int(c["id"]): str(c["name"]) for c in categories}
    if class_map == "sorted":
        ids = sorted(by_id)
        return {cid: i for i, cid in enumerate(ids)}, tuple(by_id[cid] for cid in ids)
    if class_map == "minus_one":
        top = max(by_id) if by_id else 0
        return {cid: cid - 1 for cid in by_id}, tuple(by_id.get(i + 1, f"class_{i}") for i in range(top))
    raise ValueError(f"class_map must be 'sorted' or 'minus_one', not {class_map!r}")


def annotations_per_image(data: dict, id_to_class: dict[int, int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """image id -> (classes int32 (n,), boxes float32 (n, 4) normalised centre xywh), crowd skipped."""
    sizes = {int(im["id"]): (float(im["width"]), float(im["height"])) for im in data["images"]}
    grouped: dict[int, list[list[float]]] = defaultdict(list)
    for ann in data.get("annotations", []):
        if ann.get("iscrowd", False):
            continue
        image_id = int(ann["image_id"])
        w, h = sizes[image_id]
        box = np.array(ann["bbox"], dtype=np.float64)
        box[:2] += box[2:] / 2
        box[[0, 2]] /= w
        box[[1, 3]] /= h
        if box[2] <= 0 or box[3] <= 0:
            continue
        grouped[image_id].append([id_to_class[int(ann["category_id"])], *box.tolist()])
    out = {}
    for image_id, rows in grouped.items():
        rows = np.array(list(dict.fromkeys(map(tuple, rows))), dtype=np.float64)
        out[image_id] = (rows[:, 0].astype(np.int32), rows[:, 1:].astype(np.float32))
    return out


def coco_json_source(
    annotations_json: str | os.PathLike,
    images_dir: str | os.PathLike,
    class_map: str = "sorted",
    use_cache: bool = True,
) -> FileDetectionSource:
    """A COCO-format annotation file and its image folder as a source, after a (cached) scan.

    Args:
      annotations_json: e.g. annotations/instances_val2017.json.
      images_dir: folder the JSON's ``file_name`` entries are relative to.
      class_map: see :func:`category_mapping`.
      use_cache: read/write ``<json stem>.yolojax-cache.npz`` beside the JSON.

    Returns:
      A :class:`FileDetectionSource` whose ``image_ids`` are the COCO image ids.
    """
    annotations_json = Path(annotations_json)
    with open(annotations_json, encoding="utf-8") as f:
        data = json.load(f)
    id_to_class, names = category_mapping(data.get("categories", []), class_map)
    images = sorted(data["images"], key=lambda im: int(im["id"]))
    image_paths = [str(Path(images_dir) / im["file_name"]) for im in images]
    path_to_id = {p: int(im["id"]) for p, im in zip(image_paths, images)}

    cache = annotations_json.with_name(annotations_json.stem + ".yolojax-cache.npz")
    key = files_hash([str(annotations_json)] + image_paths, extra=f"{CACHE_VERSION}:coco:{class_map}")
    result = load_scan_cache(cache, key) if use_cache else None
    where = f"{cache} (cached)" if result is not None else str(annotations_json)
    if result is None:
        labels = annotations_per_image(data, id_to_class)
        empty = (np.zeros((0,), np.int32), np.zeros((0, 4), np.float32))
        tasks = [(p, *labels.get(int(im["id"]), empty), len(names)) for p, im in zip(image_paths, images)]
        result = collect_verdicts(run_scan(tasks, verify_array_labels, desc=f"Scanning {annotations_json.name}"))
        if use_cache and result.image_paths:
            save_scan_cache(cache, result, key)
    log_report(result.report, where)
    if not result.image_paths:
        raise ValueError(f"no valid images for {annotations_json}: " + "; ".join(result.report.messages[:5]))
    image_ids = np.array([path_to_id[p] for p in result.image_paths], np.int64)
    return FileDetectionSource(result.image_paths, result.labels, result.shapes_hw, names,
                               image_ids=image_ids, report=result.report)
