"""YOLO11s: ultralytics' default recipe (cfg/default.yaml) at scale 's' of yolo11.yaml."""

from yolojax.configs import base


def get_config():
    config = base.get_config()
    config.model.family = "yolo11"
    config.model.scale = "s"
    return config
