"""YOLOv8x: ultralytics' default recipe (cfg/default.yaml) at scale 'x'."""

from yolojax.configs import base


def get_config():
    config = base.get_config()
    config.model.scale = "x"
    return config
