"""Official COCO box metrics (pycocotools ``COCOeval``) for validation on COCO JSON datasets.

* :func:`boxes_to_original`: xyxy boxes in letterboxed pixels -> original image pixels.
* :func:`coco_detections`: one image's detections as COCO results entries (``image_id``,
  ``category_id`` of the annotation file, ``bbox`` [x, y, w, h] in original pixels, ``score``).
* :func:`class_to_category_ids`: contiguous class id -> the file's category id (the inverse of
  :func:`yolojax.data.coco_json.category_mapping`).
* :func:`coco_evaluate`: ``COCOeval`` (bbox) of a results list against an annotation file;
  returns the 12 standard statistics under :data:`COCO_STAT_NAMES`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from yolojax.data.coco_json import category_mapping

# The order of ``COCOeval.stats``: AP at IoU 0.50:0.95 / 0.50 / 0.75, AP for small / medium / large
# objects, AR with 1 / 10 / 100 detections per image, AR for small / medium / large objects.
COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def boxes_to_original(boxes_xyxy: np.ndarray, ratio_hw: Sequence[float], pad_xy: Sequence[float],
                      orig_hw: Sequence[int]) -> np.ndarray:
    """Letterboxed xyxy boxes -> original pixels, ``(box - pad_xy) / ratio_hw`` per axis, clipped to the image.

    Args:
      boxes_xyxy: float (n, 4) in the letterboxed image's pixels.
      ratio_hw: scale from original to letterboxed pixels (y, x) (a val batch's ``ratio_hw``).
      pad_xy: left, top padding in letterboxed pixels (a val batch's ``pad_xy``).
      orig_hw: original image height, width.

    Returns:
      float32 (n, 4) xyxy in original pixels.
    """
    boxes = np.array(boxes_xyxy, np.float32).reshape(-1, 4)
    ry, rx = (float(v) for v in ratio_hw)
    px, py = (float(v) for v in pad_xy)
    h0, w0 = (float(v) for v in orig_hw)
    boxes[:, [0, 2]] = ((boxes[:, [0, 2]] - px) / rx).clip(0, w0)
    boxes[:, [1, 3]] = ((boxes[:, [1, 3]] - py) / ry).clip(0, h0)
    return boxes


def class_to_category_ids(categories: Sequence[Mapping[str, Any]], class_map: str = "sorted") -> dict[int, int]:
    """Contiguous class id -> category id of a COCO 'categories' list (as the COCO JSON source maps them)."""
    id_to_class, _ = category_mapping(list(categories), class_map)
    return {cls: cat for cat, cls in id_to_class.items()}


def coco_detections(boxes_xyxy: np.ndarray, scores: np.ndarray, classes: np.ndarray, image_id: int,
                    category_ids: Mapping[int, int]) -> list[dict[str, Any]]:
    """One image's detections in COCO results format.

    Args:
      boxes_xyxy: float (n, 4) in original pixels.
      scores: float (n,) confidences.
      classes: int (n,) contiguous class ids.
      image_id: the image's id in the annotation file.
      category_ids: class id -> category id (:func:`class_to_category_ids`).

    Returns:
      [{"image_id", "category_id", "bbox": [x, y, w, h] (top-left corner, pixels, 3 decimals),
      "score" (5 decimals)}, ...]; detections of classes without a category are dropped.
    """
    boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    out = []
    for box, score, cls in zip(xywh.tolist(), np.asarray(scores).reshape(-1).tolist(),
                               np.asarray(classes).reshape(-1).tolist()):
        category = category_ids.get(int(cls))
        if category is not None:
            out.append({"image_id": int(image_id), "category_id": int(category),
                        "bbox": [round(v, 3) for v in box], "score": round(float(score), 5)})
    return out


def load_coco_annotations(annotations: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """A COCO instances file (or its parsed dict) with what ``COCOeval`` needs filled in.

    Annotations without ``area`` get their box area w * h, without ``id`` a unique id, without
    ``iscrowd`` 0. Raises ValueError naming the file when 'images' or 'categories' is missing.
    """
    where = "annotations" if isinstance(annotations, Mapping) else str(annotations)
    if isinstance(annotations, Mapping):
        data = json.loads(json.dumps(annotations))
    else:
        with open(annotations, encoding="utf-8") as f:
            data = json.load(f)
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{where}: COCO JSON needs an '{key}' list")  # noqa: TRY004 - a bad file, not a bad call
    anns = data.setdefault("annotations", [])
    used = {a["id"] for a in anns if "id" in a}
    next_id = max((i for i in used if isinstance(i, int)), default=0) + 1
    for ann in anns:
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
        ann.setdefault("iscrowd", 0)
        if "id" not in ann:
            ann["id"], next_id = next_id, next_id + 1
    return data


def _coco_api(dataset: Mapping[str, Any]):
    from pycocotools.coco import COCO

    api = COCO()
    api.dataset = dict(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    return api


def coco_evaluate(annotations: str | os.PathLike | Mapping[str, Any], detections: str | os.PathLike | list,
                  image_ids: Iterable[int] | None = None) -> tuple[dict[str, float], str]:
    """pycocotools ``COCOeval`` (iouType 'bbox', default parameters) of detections against annotations.

    Args:
      annotations: COCO instances JSON path or dict (see :func:`load_coco_annotations`).
      detections: COCO results list (:func:`coco_detections`) or a path to one as JSON.
      image_ids: evaluate these images only (default: every image of the annotations).

    Returns:
      ({name: value} for :data:`COCO_STAT_NAMES` (-1 where the file has no ground truth in
      that area range), the summary text pycocotools prints).
    """
    from pycocotools.cocoeval import COCOeval

    gt = _coco_api(load_coco_annotations(annotations))
    if not isinstance(detections, list):
        with open(detections, encoding="utf-8") as f:
            detections = json.load(f)
    unknown = {d["image_id"] for d in detections} - set(gt.getImgIds())
    if unknown:
        raise ValueError(f"detections name image ids not in the annotations: {sorted(unknown)[:5]}")
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        if detections:
            dt = gt.loadRes([dict(d) for d in detections])  # loadRes adds fields to the dicts it gets
        else:  # loadRes refuses an empty list; an empty results set scores 0
            dt = _coco_api({"images": gt.dataset["images"], "categories": gt.dataset["categories"],
                            "annotations": []})
        evaluator = COCOeval(gt, dt, iouType="bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted({int(i) for i in image_ids})
        evaluator.evaluate()
        evaluator.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.summarize()
    return dict(zip(COCO_STAT_NAMES, (float(s) for s in evaluator.stats))), summary.getvalue().rstrip()


def write_detections(detections: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write a COCO results list as JSON (creating the folder); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(detections))
    return path
