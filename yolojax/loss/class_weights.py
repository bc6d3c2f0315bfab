"""ultralytics' ``cls_pw`` class weights for the classification BCE (8.4.190,
``models/yolo/detect/train.py``: ``compute_class_weights`` / ``set_class_weights``)."""

from __future__ import annotations

import numpy as np


def class_weights(class_counts: np.ndarray, cls_pw: float) -> tuple[float, ...] | None:
    """Inverse label frequency to the power ``cls_pw``, normalised to mean 1.

    Args:
      class_counts: (nc,) training labels per class (any numeric dtype).
      cls_pw: the power, in [0, 1]; 0 turns weighting off.

    Returns:
      ``nc`` floats ``w_c = (1 / n_c) ** cls_pw / mean`` (a class without labels gets the
      mean of the others' weights before the normalisation), or None when ``cls_pw`` is 0 or
      no label was counted (ultralytics then keeps unit weights).

    Raises:
      ValueError: ``cls_pw`` outside [0, 1].
    """
    if not 0.0 <= cls_pw <= 1.0:
        raise ValueError(f"cls_pw must be in [0, 1], got {cls_pw}")
    counts = np.asarray(class_counts, np.float32)
    if cls_pw == 0.0 or not counts.any():
        return None
    present = counts > 0
    weights = (1.0 / np.where(present, counts, 1.0)) ** cls_pw
    weights = np.where(present, weights, weights[present].mean())
    return tuple(float(w) for w in weights / weights.mean())
