"""YOLO11m: ultralytics' default recipe (cfg/default.yaml) at scale 'm' of yolo11.yaml."""

from yolojax.configs import base


def get_config():
    config = base.get_config()
    config.model.family = "yolo11"
    config.model.scale = "m"
    return config
