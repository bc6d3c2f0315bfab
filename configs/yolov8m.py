"""YOLOv8m: ultralytics' default recipe (cfg/default.yaml) at scale 'm'."""

from yolojax.config import base_config


def get_config():
    config = base_config(__file__)
    config.model.scale = "m"
    return config
