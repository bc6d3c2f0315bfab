"""YOLOv8n: ultralytics' default recipe (cfg/default.yaml) at scale 'n'."""

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
    return config
