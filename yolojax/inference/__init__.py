"""Running a detector: prediction on files and arrays, exports, and the ONNX runtime backend.

* :class:`Predictor` / :func:`predict`: letterbox, model, NMS, boxes in original pixels,
  annotated copies (:mod:`.predictor`);
* :func:`export`: ONNX in ultralytics' layout (jax2onnx) or an ultralytics ``.pt``
  (:mod:`.exporters`);
* :class:`OnnxDetector`: an exported model run by onnxruntime in place of the Flax model
  (:mod:`.onnx_runtime`).
"""

from yolojax.inference.exporters import export
from yolojax.inference.onnx_runtime import OnnxDetector
from yolojax.inference.predictor import Predictor, predict

__all__ = ["OnnxDetector", "Predictor", "export", "predict"]
