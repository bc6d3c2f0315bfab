"""A detector as one function: ``(variables, uint8 images) -> Detections`` (model and NMS).

The Flax model and the fixed-shape NMS (:func:`yolojax.ops.non_max_suppression`) run in one
jit-compiled function, or an external model (an exported file run by onnxruntime) runs
outside jit with the NMS inside. Validation and prediction both call it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np


def make_predict_fn(info: Mapping[str, Any], conf: float, iou: float, max_det: int, max_nms: int = 30000,
                    multi_label: bool = True, agnostic: bool = False, model_fn: Callable | None = None):
    """jit-compiled ``(variables, uint8 images (B, H, W, 3)) -> Detections`` (model + NMS).

    The same model and settings give the same function object, so its compiled executables
    (one per input shape) serve every later validation, e.g. one per training epoch.
    ``model_fn`` replaces the Flax model (variables are then ignored): float32 (B, H, W, 3)
    images in [0, 1] -> (B, N, 4 + nc) predictions, e.g. a
    :class:`yolojax.inference.onnx_runtime.OnnxDetector`; it runs outside jit, NMS inside.
    """
    if model_fn is not None:
        return _external_predict_fn(model_fn, float(conf), float(iou), int(max_det), int(max_nms),
                                    bool(multi_label), bool(agnostic))
    from yolojax.models.yolov8 import widths_key

    cls_width = int(info["cls_width"]) if info.get("cls_width") else None
    return _predict_fn(str(info.get("family") or "yolov8"), str(info["scale"]), int(info["num_classes"]), int(info.get("reg_max", 16)), cls_width,
                       widths_key(info.get("widths")),
                       float(conf), float(iou), int(max_det), int(max_nms), bool(multi_label), bool(agnostic))


@functools.lru_cache(maxsize=8)
def _predict_fn(family: str, scale: str, num_classes: int, reg_max: int, cls_width: int | None,
                widths: tuple[tuple[str, int], ...] | None, conf: float, iou: float,
                max_det: int, max_nms: int, multi_label: bool, agnostic: bool):
    import jax

    from yolojax.models.registry import model_from_info
    from yolojax.ops import non_max_suppression

    model = model_from_info({"family": family, "scale": scale, "num_classes": num_classes, "reg_max": reg_max,
                             "cls_width": cls_width, "widths": widths})

    @jax.jit
    def predict(variables, images):
        out = model.apply(variables, images.astype(jax.numpy.float32) / 255.0, train=False)
        return non_max_suppression(out, conf, iou, agnostic=agnostic, multi_label=multi_label, max_det=max_det,
                                   max_nms=max_nms)

    return predict


def _external_predict_fn(model_fn: Callable, conf: float, iou: float, max_det: int, max_nms: int,
                         multi_label: bool, agnostic: bool):
    import jax

    from yolojax.ops import non_max_suppression

    nms = jax.jit(lambda out: non_max_suppression(out, conf, iou, agnostic=agnostic, multi_label=multi_label,
                                                  max_det=max_det, max_nms=max_nms))

    def predict(variables, images):
        return nms(model_fn(np.asarray(images).astype(np.float32) / 255.0))

    return predict
