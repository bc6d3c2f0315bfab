"""YOLOv8l: ultralytics' default recipe (cfg/default.yaml) at scale 'l'."""

from yolojax.config import base_config


def get_config():
    config = base_config(__file__)
    config.model.scale = "l"
    return config
