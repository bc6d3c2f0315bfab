"""Quickstart: YOLOv8n on yolojax's built-in synthetic shapes dataset (6 classes).

    python -m yolojax.train --config configs/quickstart.py --workdir runs/quick

The dataset (96 train / 16 val images) is written once to datasets/yolojax-shapes in YOLO
format, so this runs offline on any machine; a few minutes on a laptop CPU.
"""

import importlib.util
import os


def _base():
    spec = importlib.util.spec_from_file_location("yolojax_configs_base", os.path.join(os.path.dirname(__file__), "base.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config():
    config = _base().get_config()
    config.model.scale = "n"
    config.data.synthetic.root = "datasets/yolojax-shapes"
    config.data.synthetic.num_train = 96
    config.data.synthetic.num_val = 16
    config.data.workers = 2
    config.imgsz = 192
    config.batch_size = 8
    config.epochs = 8
    config.close_mosaic = 2
    config.log_every_steps = 2
    config.checkpoint.every_steps = 0
    config.checkpoint.keep = 2
    return config
