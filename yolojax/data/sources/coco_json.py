"""COCO JSON (``instances_*.json`` + an image folder) as a detection source.

The file is checked first (:mod:`yolojax.data.sources.coco_check`: inconsistencies refused in one
line, fixes warned about with counts). Then every image is decoded once (a cached scan), and
yolojax's labels are made as ultralytics' ``convert_coco`` makes YOLO labels: crowd
annotations skipped, ``bbox`` [x, y, w, h] (top-left, pixels) normalised by the image size,
duplicates removed. Two things differ, each reported with counts: boxes are read as pixels
of the decoded image (a ``width``/``height`` in the file that differs from it is warned
about), and a box partly outside its image is clipped to it (one with no area inside is
dropped) instead of making the whole image fail the label check. Unreadable images are
skipped and named. The file itself, with every image and annotation, stays what the COCO
metrics (:mod:`yolojax.evaluation.coco_eval`) score.

Category ids map to contiguous class ids in increasing id order; for COCO itself this is
exactly the 91 -> 80 mapping (``coco91_to_coco80``). ``class_map="minus_one"`` uses
``category_id - 1`` instead (ultralytics' ``cls91to80=False``). Given a model's
``class_names``, categories are matched to them by name instead; names that differ are refused.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from yolojax.data.sources.coco_check import CocoFile, read_coco_file
from yolojax.data.sources.label_scan import (
    CACHE_VERSION,
    ScanReport,
    ScanResult,
    collect_verdicts,
    files_hash,
    load_scan_cache,
    log_report,
    run_scan,
    save_scan_cache,
    verify_array_labels,
)
from yolojax.data.sources.label_table import LabelTable
from yolojax.data.sources.yolo import FileDetectionSource, warn_if_unlabelled

logger = logging.getLogger(__name__)

# The 80 category ids that COCO uses out of 1..90 (ids 12, 26, 29, 30, 45, 66, 68, 69, 71, 83 are unused).
COCO80_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32,
    33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59,
    60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)  # fmt: skip

# A box counts as clipped when it reaches further than this (pixels) outside its image.
_CLIP_TOLERANCE = 0.01


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


def match_categories(categories: list[dict], class_names: Sequence[str],
                     where: str) -> tuple[dict[int, int], str | None]:
    """Category id -> class id by name: each category is the class of ``class_names`` with its name.

    Returns:
      The mapping, and a note when it differs from the increasing-id order (None otherwise).

    Raises:
      ValueError: two categories share a name, or the file's names are not the classes' names.
    """
    ids_of: dict[str, list[int]] = defaultdict(list)
    for c in sorted(categories, key=lambda c: c["id"]):
        ids_of[str(c["name"])].append(c["id"])
    shared = next((name for name, ids in ids_of.items() if len(ids) > 1), None)
    if shared is not None:
        raise ValueError(f"{where}: categories: name {shared!r} is used by ids {ids_of[shared]} "
                         "(categories are matched to the model's classes by name)")
    names = [str(n) for n in class_names]
    if Counter(names) != Counter(list(ids_of)):
        only_file, only_model = sorted(set(ids_of) - set(names)), sorted(set(names) - set(ids_of))
        raise ValueError(
            f"{where}: the categories' names are not the model's class names ({len(ids_of)} categories, "
            f"{len(names)} classes; only in the file: {_first(only_file)}; only in the model: {_first(only_model)}); "
            "to map categories in increasing id order to classes 0..K-1 whatever their names, use "
            "--categories-by-order (val) or class_names=None (coco_json_source)")
    class_of = {name: k for k, name in enumerate(names)}
    mapping = {ids[0]: class_of[name] for name, ids in ids_of.items()}
    moved = [(cid, name) for k, (name, (cid,)) in enumerate(ids_of.items()) if class_of[name] != k]
    if not moved:
        return mapping, None
    cid, name = moved[0]
    return mapping, (f"{where}: categories matched to the model's classes by name: {len(moved)} of {len(names)} "
                     f"are in another order in the file (first: category {cid} {name!r} is class {class_of[name]})")


def _first(items: Sequence[Any], n: int = 5) -> str:
    shown = ", ".join(repr(x) for x in items[:n])
    return (shown + (" ..." if len(items) > n else "")) if items else "none"


@dataclasses.dataclass(frozen=True)
class CocoDataset:
    """A checked COCO JSON file and its readable images as a source.

    Attributes:
      source: the readable images with yolojax's labels (module docstring); ``image_ids`` are the file's.
      file: the checked file: what the COCO metrics score, every image and annotation of it.
      category_ids: class id -> the file's category id.
      label_counts: annotations yolojax's labels changed or left out: {"clipped": partly outside
        their image, "dropped": no area inside it, "duplicates", "crowd"}.
      notes: the warning lines (also logged): the file's fixes, category matching, image sizes, labels.
    """

    source: FileDetectionSource
    file: CocoFile
    category_ids: dict[int, int]
    label_counts: dict[str, int]
    notes: tuple[str, ...]


def open_coco_json(
    annotations_json: str | os.PathLike | CocoFile,
    images_dir: str | os.PathLike,
    class_map: str = "sorted",
    class_names: Sequence[str] | None = None,
    use_cache: bool = True,
) -> CocoDataset:
    """Check a COCO-format annotation file, scan its images (cached) and make yolojax's labels.

    Args:
      annotations_json: e.g. annotations/instances_val2017.json, or the file already read
        (:func:`yolojax.data.sources.coco_check.read_coco_file`).
      images_dir: folder the JSON's ``file_name`` entries are relative to.
      class_map: see :func:`category_mapping`; used when ``class_names`` is None.
      class_names: a model's class names: match the categories to them by name.
      use_cache: read/write ``<json stem>.yolojax-cache.npz`` (decoded image sizes) beside the JSON.

    Raises:
      ValueError: one line naming the file, field and id of an inconsistency (see
        :mod:`yolojax.data.sources.coco_check`), categories that do not match ``class_names``, or no
        readable image.
    """
    coco = read_coco_file(annotations_json)
    data, where = coco.data, coco.where
    match_note = None
    if class_names is None:
        id_to_class, names = category_mapping(data["categories"], class_map)
    else:
        id_to_class, match_note = match_categories(data["categories"], class_names, where)
        names = tuple(str(n) for n in class_names)
    images = sorted(data["images"], key=lambda im: im["id"])
    paths = [str(Path(images_dir) / im["file_name"]) for im in images]
    cache = Path(coco.path).with_name(Path(coco.path).stem + ".yolojax-cache.npz") if coco.path else None
    scan = _scan_images(paths, cache if use_cache else None, Path(where).name)
    shapes = dict(zip(scan.image_paths, scan.shapes_hw.tolist()))
    kept = [(im, path, shapes[path]) for im, path in zip(images, paths) if path in shapes]
    if not kept:
        raise ValueError(f"no readable images for {where} in {images_dir}: " + "; ".join(scan.report.messages[:5]))
    labels, counts, dropped = _labels(kept, data["annotations"], id_to_class)
    notes = [n for n in (match_note, _size_note(kept, where), _labels_note(counts, where)) if n]
    for note in notes:
        logger.warning("%s", note)
    kept_paths = [p for _, p, _ in kept]
    report = _report(scan.report, kept_paths, labels, dropped)
    log_report(report, where)
    warn_if_unlabelled(labels, kept_paths, where, None)
    source = FileDetectionSource(kept_paths, labels, [hw for _, _, hw in kept], names,
                                 image_ids=np.array([im["id"] for im, _, _ in kept], np.int64), report=report)
    category_ids = {cls: cid for cid, cls in id_to_class.items()}
    return CocoDataset(source, coco, category_ids, dict(counts), coco.notes + tuple(notes))


def coco_json_source(
    annotations_json: str | os.PathLike,
    images_dir: str | os.PathLike,
    class_map: str = "sorted",
    use_cache: bool = True,
    class_names: Sequence[str] | None = None,
) -> FileDetectionSource:
    """A COCO-format annotation file and its image folder as a source (:func:`open_coco_json`'s source).

    Returns:
      A :class:`FileDetectionSource` of the readable images; its ``image_ids`` are the COCO image ids.
    """
    return open_coco_json(annotations_json, images_dir, class_map, class_names, use_cache).source


def _scan_images(paths: list[str], cache: Path | None, name: str) -> ScanResult:
    """Decode every image once (or load the unchanged cached result): kept paths and their sizes."""
    key = files_hash(paths, extra=f"{CACHE_VERSION}:coco-images")
    result = load_scan_cache(cache, key) if cache else None
    if result is None:
        no_labels = (np.zeros((0,), np.int32), np.zeros((0, 4), np.float32), 1)
        verdicts = run_scan([(p, *no_labels) for p in paths], verify_array_labels, desc=f"Scanning {name} images")
        result = collect_verdicts(verdicts)
        if cache and result.image_paths:
            save_scan_cache(cache, result, key)
    return result


def _labels(kept: list[tuple[dict, str, list[int]]], annotations: list[dict],
            id_to_class: Mapping[int, int]) -> tuple[LabelTable, Counter, list[str]]:
    """yolojax's labels of the kept images, the counts of changed annotations and a message per dropped one."""
    by_image: dict[int, list[dict]] = defaultdict(list)
    for ann in annotations:
        by_image[ann["image_id"]].append(ann)
    counts: Counter[str] = Counter(clipped=0, dropped=0, duplicates=0, crowd=0)
    boxes, classes, dropped = [], [], []
    for image, path, (h, w) in kept:
        rows = []
        for ann in by_image[image["id"]]:
            if ann["iscrowd"]:
                counts["crowd"] += 1
                continue
            row = _label_row(ann, h, w, id_to_class, counts)
            if row is None:
                dropped.append(f"{path}: annotation id {ann['id']} (bbox {ann['bbox']}) dropped from yolojax's "
                               f"labels: no area inside the {w}x{h} image")
            else:
                rows.append(row)
        unique = np.array(list(dict.fromkeys(rows)), np.float64).reshape(-1, 5)
        counts["duplicates"] += len(rows) - len(unique)
        classes.append(unique[:, 0].astype(np.int32))
        boxes.append(unique[:, 1:].astype(np.float32))
    return LabelTable.from_lists(boxes, classes), counts, dropped


def _label_row(ann: dict, h: int, w: int, id_to_class: Mapping[int, int],
               counts: Counter) -> tuple[float, ...] | None:
    """(class, x1, y1, x2, y2 normalised) of a non-crowd annotation clipped to its image, or None when no
    area is left; counts it as clipped or dropped."""
    x, y, bw, bh = (float(v) for v in ann["bbox"])
    box = np.array([x, y, x + bw, y + bh])
    clipped = box.clip(0, [w, h, w, h])
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        counts["dropped"] += 1
        return None
    counts["clipped"] += int(np.abs(clipped - box).max() > _CLIP_TOLERANCE)
    return (float(id_to_class[ann["category_id"]]), *(clipped / [w, h, w, h]).tolist())


def _size_note(kept: list[tuple[dict, str, list[int]]], where: str) -> str | None:
    """A note when the file's width/height differ from the decoded images'."""
    differ = [(im, hw) for im, _, hw in kept if [im.get("height"), im.get("width")] != hw]
    if not differ:
        return None
    im, (h, w) = differ[0]
    return (f"{where}: {len(differ)} of {len(kept)} images have a width/height in the file other than the decoded "
            f"image's (first: {im['file_name']!r}, {im.get('width')}x{im.get('height')} in the file, {w}x{h} "
            "decoded); their boxes are read as pixels of the decoded image, as the model sees it and as "
            "pycocotools compares them")


def _labels_note(counts: Counter, where: str) -> str | None:
    """A note when yolojax's labels differ from the file's (non-crowd) annotations."""
    parts = [f"{counts['clipped']} boxes partly outside their image clipped to it" if counts["clipped"] else "",
             f"{counts['dropped']} boxes with no area inside their image dropped" if counts["dropped"] else "",
             f"{counts['duplicates']} duplicate boxes removed" if counts["duplicates"] else ""]
    parts = [p for p in parts if p]
    if not parts:
        return None
    return (f"{where}: yolojax's labels (its own mAP, training): {', '.join(parts)}; the COCO metrics "
            "(pycocotools) score every annotation of the file as it is")


def _report(scan: ScanReport, paths: list[str], labels: LabelTable, dropped: list[str]) -> ScanReport:
    """The source's report: the scan's unreadable images, the kept ones without labels, the dropped boxes."""
    empty = tuple(p for p, n in zip(paths, labels.counts()) if n == 0)
    return ScanReport(found=len(paths), missing=0, empty=len(empty), corrupt=scan.corrupt, total=scan.total,
                      corrupt_files=scan.corrupt_files, missing_files=(), empty_files=empty,
                      messages=scan.messages + tuple(dropped))
