"""Official COCO box metrics (pycocotools ``COCOeval``) for validation on COCO JSON datasets.

* :func:`boxes_to_original`: xyxy boxes in letterboxed pixels -> original image pixels.
* :func:`coco_detections`: one image's detections as COCO results entries (``image_id``,
  ``category_id`` of the annotation file, ``bbox`` [x, y, w, h] in original pixels, ``score``).
* :func:`class_to_category_ids`: contiguous class id -> the file's category id (the inverse of
  :func:`yolojax.data.sources.coco_json.category_mapping`).
* :func:`load_coco_annotations`: the annotation file checked and fixed for ``COCOeval``
  (:mod:`yolojax.data.sources.coco_check`).
* :func:`coco_evaluate`: ``COCOeval`` (bbox) of a results list against an annotation file;
  returns the 12 standard statistics under :data:`COCO_STAT_NAMES`.
* :func:`unscored_images_note`: which images of the file a validation could not predict.
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

from yolojax.data.sources.coco_check import CocoFile, read_coco_file
from yolojax.data.sources.coco_json import category_mapping

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


def load_coco_annotations(annotations: str | os.PathLike | Mapping[str, Any] | CocoFile) -> dict[str, Any]:
    """A COCO instances file (or its parsed dict) checked and put in the form ``COCOeval`` needs.

    See :mod:`yolojax.data.sources.coco_check`: annotation ids that are not unique positive integers are
    renumbered, missing boxes taken from the segmentation, missing ``area`` (box w * h) and
    ``iscrowd`` (0) filled in, each fix warned about with its count.

    Raises:
      ValueError: one line naming the file, the field and the id of an inconsistency it refuses.
    """
    return read_coco_file(annotations).data


def unscored_images_note(coco: CocoFile, image_ids_seen: Iterable[int]) -> str | None:
    """A note naming the file's images that got no detections because they were never predicted
    (unreadable), with how many annotations they hold; None when every image was predicted."""
    seen = set(image_ids_seen)
    unseen = [im for im in coco.data["images"] if im["id"] not in seen]
    if not unseen:
        return None
    ids = {im["id"] for im in unseen}
    objects = sum(1 for a in coco.data["annotations"] if a["image_id"] in ids and not a["iscrowd"])
    return (f"{coco.where}: the COCO metrics cover all {len(coco.data['images'])} images of the file; "
            f"{len(unseen)} could not be read (first: {unseen[0]['file_name']!r}) and have no detections, "
            f"so their {objects} annotations count as missed")


def _coco_api(dataset: Mapping[str, Any]):
    from pycocotools.coco import COCO

    api = COCO()
    api.dataset = dict(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    return api


def coco_evaluate(annotations: str | os.PathLike | Mapping[str, Any] | CocoFile, detections: str | os.PathLike | list,
                  image_ids: Iterable[int] | None = None) -> tuple[dict[str, float], str]:
    """pycocotools ``COCOeval`` (iouType 'bbox', default parameters) of detections against annotations.

    Args:
      annotations: COCO instances JSON path, its dict or the checked file (see :func:`load_coco_annotations`).
      detections: COCO results list (:func:`coco_detections`) or a path to one as JSON.
      image_ids: evaluate these images only (default: every image of the annotations).

    Returns:
      ({name: value} for :data:`COCO_STAT_NAMES` (-1 where the file has no ground truth in
      that area range), the summary text pycocotools prints).
    """
    from pycocotools.cocoeval import COCOeval

    gt = _coco_api(read_coco_file(annotations).data)
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
