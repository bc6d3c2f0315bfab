"""YOLOv8x: ultralytics' default recipe (cfg/default.yaml) at scale 'x'."""

from yolojax.config import base_config


def get_config():
    config = base_config(__file__)
    config.model.scale = "x"
    return config
