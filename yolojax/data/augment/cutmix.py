"""ultralytics' ``CutMix`` (8.4.190, data/augment.py) for detection samples.

After Mosaic + RandomPerspective and MixUp, with probability ``cutmix``, a second view (its
own mosaic check and warp, like MixUp's) is drawn; three candidate rectangles are drawn
(each: ``lam ~ Beta(1, 1)``, side ``int(size * sqrt(1 - lam))``, a uniform integer centre);
one that covers no part of the sample's boxes (intersection over box area 0) is chosen
uniformly, and the partner's boxes covering at least ``ioa_thr`` (0.1; 0.01 with polygon
labels) of their own area inside it are kept, clipped to it. The rectangle's pixels are
copied from the partner. No free rectangle, or no partner box in it: the sample is unchanged
(the draws are still made).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

CUTMIX_BETA = 1.0  # ultralytics' CutMix(beta=1.0, num_areas=3)
CUTMIX_AREAS = 3


@dataclasses.dataclass(frozen=True)
class CutMixParams:
    """One CutMix: the partner view, the chosen rectangle and the partner boxes it keeps.

    Attributes:
      view: the partner's ViewParams (:mod:`yolojax.data.augment.sample`).
      area: float32 (4,) x1, y1, x2, y2 output pixels (whole numbers), or None when skipped.
      keep: int64 (k,) rows of the partner's boxes pasted with the rectangle.
    """

    view: Any
    area: np.ndarray | None
    keep: np.ndarray


def bbox_ioa(box1: np.ndarray, box2: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Intersection of each ``box1`` (n, 4) with each ``box2`` (m, 4) over the area of the
    ``box2`` (ultralytics' ``bbox_ioa``); xyxy; returns (n, m)."""
    b1x1, b1y1, b1x2, b1y2 = np.asarray(box1).T
    b2x1, b2y1, b2x2, b2y2 = np.asarray(box2).T
    inter = (np.minimum(b1x2[:, None], b2x2) - np.maximum(b1x1[:, None], b2x1)).clip(0) * (
        np.minimum(b1y2[:, None], b2y2) - np.maximum(b1y1[:, None], b2y1)).clip(0)
    return inter / ((b2x2 - b2x1) * (b2y2 - b2y1) + eps)


def draw_cut_area(rng: Any, width: int, height: int) -> tuple[int, int, int, int]:
    """ultralytics' ``CutMix._rand_bbox``: Beta(1, 1) ratio, then the centre x, y; clipped xyxy."""
    lam = rng.beta(CUTMIX_BETA, CUTMIX_BETA)
    cut_ratio = np.sqrt(1.0 - lam)
    cut_w, cut_h = int(width * cut_ratio), int(height * cut_ratio)
    cx, cy = rng.integers(width), rng.integers(height)
    return (int(np.clip(cx - cut_w // 2, 0, width)), int(np.clip(cy - cut_h // 2, 0, height)),
            int(np.clip(cx + cut_w // 2, 0, width)), int(np.clip(cy + cut_h // 2, 0, height)))


def draw_cutmix(rng: Any, view: Any, boxes: np.ndarray, partner_boxes: np.ndarray, out_hw: tuple[int, int],
                ioa_thr: float = 0.1) -> CutMixParams:
    """The rectangle and kept partner boxes (ultralytics' ``CutMix.get_params``).

    Args:
      rng: the record's generator (beta, 2 integers per candidate, then a choice).
      view: the partner's view (already drawn).
      boxes: float32 (n, 4) the sample's boxes so far (output pixels, xyxy).
      partner_boxes: float32 (m, 4) the partner view's boxes (output pixels, xyxy).
      out_hw: the sample's (h, w).
      ioa_thr: share of a partner box that must lie inside the rectangle.
    """
    h, w = out_hw
    areas = np.asarray([draw_cut_area(rng, w, h) for _ in range(CUTMIX_AREAS)], np.float32)
    free = np.nonzero(bbox_ioa(areas, np.asarray(boxes, np.float32).reshape(-1, 4)).sum(axis=1) <= 0)[0]
    none = np.zeros(0, np.int64)
    if len(free) == 0:
        return CutMixParams(view, None, none)
    area = areas[rng.choice(free)]
    ioa = bbox_ioa(area[None], np.asarray(partner_boxes, np.float32).reshape(-1, 4))[0]
    keep = np.nonzero(ioa >= ioa_thr)[0]
    if len(keep) == 0:
        return CutMixParams(view, None, none)
    return CutMixParams(view, area, keep.astype(np.int64))


def cutmix_boxes(params: CutMixParams, partner_boxes: np.ndarray) -> np.ndarray:
    """float32 (k, 4) the kept partner boxes clipped to the rectangle (ultralytics shifts them
    by the rectangle's corner, clips to its size and shifts back)."""
    if params.area is None:
        return np.zeros((0, 4), np.float32)
    x1, y1, x2, y2 = params.area.astype(np.int32)
    shift = np.array([x1, y1, x1, y1], np.float32)
    boxes = np.asarray(partner_boxes, np.float32).reshape(-1, 4)[params.keep] - shift
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, x2 - x1)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, y2 - y1)
    return boxes + shift


def paste_area(image: np.ndarray, partner: np.ndarray, params: CutMixParams) -> None:
    """Copy the rectangle of ``partner`` into ``image`` (in place; nothing when skipped)."""
    if params.area is not None:
        x1, y1, x2, y2 = params.area.astype(np.int32)
        image[y1:y2, x1:x2] = partner[y1:y2, x1:x2]
