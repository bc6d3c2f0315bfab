"""Weights on disk: reading ultralytics ``.pt`` files safely, converted directories, train
workdirs, and writing ultralytics ``.pt`` checkpoints.

* :func:`load_weights`: variables and model info from any of them (:mod:`.load`);
* :func:`load_ultralytics`: an ultralytics YOLOv8 or YOLO11 ``.pt``, read without torch and without
  running code from the file (:mod:`.ultralytics`, :mod:`.torch_file`, :mod:`.safe_pickle`);
* :func:`save_converted` / :func:`load_converted`: ``python -m yolojax.convert``'s
  directories (:mod:`.converted`);
* :mod:`.workdir`: the checkpoints of a train workdir (layout, complete steps, EMA weights);
* :mod:`.ultralytics_pt`: an ultralytics ``.pt`` written without torch (:mod:`.torch_pickle`).
"""

from yolojax.weights.converted import is_converted_dir, load_converted, save_converted
from yolojax.weights.load import load_weights
from yolojax.weights.ultralytics import count_params, load_ultralytics

__all__ = ["count_params", "is_converted_dir", "load_converted", "load_ultralytics", "load_weights",
           "save_converted"]
