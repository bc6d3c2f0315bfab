"""YOLOv8m: ultralytics' default recipe (cfg/default.yaml) at scale 'm'."""

from yolojax.configs import base


def get_config():
    config = base.get_config()
    config.model.scale = "m"
    return config
