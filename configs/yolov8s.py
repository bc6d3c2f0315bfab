"""YOLOv8s: ultralytics' default recipe (cfg/default.yaml) at scale 's'."""

from yolojax.config import base_config


def get_config():
    config = base_config(__file__)
    config.model.scale = "s"
    return config
