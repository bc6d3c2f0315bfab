"""A compact, picklable store of per-image box labels (one flat array plus offsets)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class LabelTable:
    """Boxes and classes of N images, stored flat (CSR style).

    Attributes:
      boxes_xyxy: float32 (T, 4) x1, y1, x2, y2 normalised by the image width/height.
      classes: int32 (T,) class ids.
      offsets: int64 (N + 1,); image i owns rows offsets[i]:offsets[i + 1].
    """

    boxes_xyxy: np.ndarray
    classes: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def boxes_of(self, index: int) -> np.ndarray:
        """float32 (n, 4) normalised xyxy boxes of image `index` (a copy)."""
        return self.boxes_xyxy[self.offsets[index] : self.offsets[index + 1]].copy()

    def classes_of(self, index: int) -> np.ndarray:
        """int32 (n,) class ids of image `index` (a copy)."""
        return self.classes[self.offsets[index] : self.offsets[index + 1]].copy()

    def counts(self) -> np.ndarray:
        """int64 (N,) number of boxes per image."""
        return np.diff(self.offsets)

    @classmethod
    def from_lists(cls, boxes: Sequence[np.ndarray], classes: Sequence[np.ndarray]) -> LabelTable:
        """Pack per-image arrays: boxes[i] float (n_i, 4) normalised xyxy, classes[i] int (n_i,)."""
        sizes = np.array([len(c) for c in classes], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        flat_boxes = (
            np.concatenate([np.asarray(b, np.float32).reshape(-1, 4) for b in boxes])
            if len(boxes)
            else np.zeros((0, 4), np.float32)
        )
        flat_classes = (
            np.concatenate([np.asarray(c, np.int32).reshape(-1) for c in classes])
            if len(classes)
            else np.zeros((0,), np.int32)
        )
        return cls(flat_boxes.astype(np.float32), flat_classes.astype(np.int32), offsets)

    def select(self, indices: Sequence[int]) -> LabelTable:
        """The table of images `indices` (in that order)."""
        return LabelTable.from_lists([self.boxes_of(i) for i in indices], [self.classes_of(i) for i in indices])


def xywh_to_xyxy(boxes_xywh: np.ndarray) -> np.ndarray:
    """(n, 4) centre x, centre y, width, height -> (n, 4) x1, y1, x2, y2 (same units)."""
    boxes_xywh = np.asarray(boxes_xywh, np.float32).reshape(-1, 4)
    half = boxes_xywh[:, 2:] / 2
    return np.concatenate([boxes_xywh[:, :2] - half, boxes_xywh[:, :2] + half], axis=1)
