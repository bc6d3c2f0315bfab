"""YOLO11n: ultralytics' default recipe (cfg/default.yaml) at scale 'n' of yolo11.yaml."""

from yolojax.configs import base


def get_config():
    config = base.get_config()
    config.model.family = "yolo11"
    config.model.scale = "n"
    return config
