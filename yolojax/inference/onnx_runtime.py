"""Run an exported YOLOv8 or YOLO11 ONNX detector with onnxruntime, in yolojax's model contract.

    from yolojax.inference.onnx_runtime import OnnxDetector
    from yolojax.inference.predictor import Predictor
    detector = OnnxDetector("yolov8n.onnx")
    results = Predictor(model_fn=detector, info=detector.info)(["bus.jpg"])

:class:`OnnxDetector` reads the layout that ultralytics' ONNX export writes and
:mod:`yolojax.export` writes too: input ``images`` float32 (B, 3, H, W) RGB in [0, 1],
output ``output0`` float32 (B, 4 + nc, N), and ultralytics' metadata properties (``names``,
``imgsz``, ``batch``, ``stride``). Called on (B, H, W, 3) images it returns what
``YOLOv8.apply(..., train=False)`` returns, (B, N, 4 + nc), so val and predict take it as
their ``model_fn`` in place of the Flax model.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

INSTALL_HINT = "pip install 'yolojax[export]'"


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(f"running ONNX models needs onnxruntime: {INSTALL_HINT}") from None
    return onnxruntime


def _fixed(dim: Any) -> int | None:
    """An ONNX dimension: its size when fixed, None when symbolic (dynamic)."""
    return dim if isinstance(dim, int) and dim > 0 else None


class OnnxDetector:
    """An exported detector (YOLOv8 or YOLO11) run by an onnxruntime ``InferenceSession``.

    Args:
      path: the .onnx file (yolojax's or ultralytics' export of a detection model).
      providers: onnxruntime execution providers (default: CPU).

    Attributes:
      info: ``{"names": list[str], "num_classes": int, "reg_max": 16, "scale": str}``; names
        from the file's ``names`` metadata (else "0", "1", ...), scale from its description
        ("" when unknown).
      batch: the model's fixed batch size, or None when dynamic.
      input_hw: the model's fixed (H, W), or None when dynamic.

    Raises:
      ImportError: onnxruntime is not installed (one line saying what to install).
      ValueError: the file is not a detector with one (B, 3, H, W) input and a (B, 4 + nc, N)
        output.
    """

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] = ("CPUExecutionProvider",)):
        ort = _import_onnxruntime()
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise ValueError(f"ONNX model {self.path} does not exist")
        try:
            self.session = ort.InferenceSession(self.path, providers=list(providers))
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for unreadable files
            raise ValueError(f"{self.path}: onnxruntime cannot load it ({' '.join(str(e).split())[:200]})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[1] != 3:
            raise ValueError(f"{self.path}: expected one (B, 3, H, W) image input, got "
                             f"{[(i.name, i.shape) for i in inputs]}")
        if len(outputs[0].shape) != 3 or not isinstance(outputs[0].shape[1], int) or outputs[0].shape[1] <= 4:
            raise ValueError(f"{self.path}: expected a (B, 4 + nc, N) detection output, got {outputs[0].shape}")
        self.input_name = inputs[0].name
        self.batch = _fixed(inputs[0].shape[0])
        h, w = _fixed(inputs[0].shape[2]), _fixed(inputs[0].shape[3])
        self.input_hw = (h, w) if h and w else None
        num_classes = outputs[0].shape[1] - 4
        metadata = self.session.get_modelmeta().custom_metadata_map
        names = _names_from_metadata(metadata.get("names"), num_classes, self.path)
        description = metadata.get("description", "")
        from yolojax.models.registry import parse_model_name

        family, scale = parse_model_name(description) or (None, "")
        self.info = {"names": names, "num_classes": num_classes, "reg_max": 16, "scale": scale,
                     "family": family.name if family else None}
        if self.input_hw is not None and self.input_hw[0] == self.input_hw[1]:
            self.info["imgsz"] = self.input_hw[0]  # the exported size: predict defaults to it, as ultralytics

    def __call__(self, images_nhwc: np.ndarray) -> np.ndarray:
        """float32 (B, H, W, 3) RGB in [0, 1] -> float32 (B, N, 4 + nc): xywh in input pixels,
        then class scores, as ``YOLOv8.apply(..., train=False)``. A fixed-batch model runs
        the images in chunks of its batch (the last chunk padded with zeros, dropped after)."""
        images = np.asarray(images_nhwc, np.float32)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be (B, H, W, 3), got shape {images.shape}")
        if self.input_hw is not None and images.shape[1:3] != self.input_hw:
            raise ValueError(f"{self.path} takes {self.input_hw[0]}x{self.input_hw[1]} images (exported "
                             f"imgsz), got {images.shape[1]}x{images.shape[2]}")
        images_nchw = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
        chunk = self.batch or len(images_nchw)
        outs = []
        for start in range(0, len(images_nchw), chunk):
            part = images_nchw[start:start + chunk]
            n = len(part)
            if n < chunk:
                part = np.concatenate([part, np.zeros((chunk - n, *part.shape[1:]), np.float32)])
            outs.append(self.session.run(None, {self.input_name: part})[0][:n])
        return np.concatenate(outs).transpose(0, 2, 1)


def _names_from_metadata(value: str | None, num_classes: int, source: str) -> list[str]:
    """ultralytics' ``names`` metadata (a dict literal {id: name}) -> a list indexed by class id."""
    if value is None:
        return [str(i) for i in range(num_classes)]
    try:
        names = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        raise ValueError(f"{source}: unreadable 'names' metadata {value[:80]!r}") from None
    if isinstance(names, dict):
        names = [names.get(i, str(i)) for i in range(num_classes)]
    if not isinstance(names, list) or len(names) != num_classes:
        raise ValueError(f"{source}: 'names' metadata does not give {num_classes} class names")
    return [str(n) for n in names]
