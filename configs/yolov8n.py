"""YOLOv8n: ultralytics' default recipe (cfg/default.yaml) at scale 'n'."""

from yolojax.config import base_config


def get_config():
    config = base_config(__file__)
    config.model.scale = "n"
    return config
