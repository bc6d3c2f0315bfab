"""YOLO11x: ultralytics' default recipe (cfg/default.yaml) at scale 'x' of yolo11.yaml."""

from yolojax.configs import base


def get_config():
    config = base.get_config()
    config.model.family = "yolo11"
    config.model.scale = "x"
    return config
