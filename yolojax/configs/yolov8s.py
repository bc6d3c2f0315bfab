"""YOLOv8s: ultralytics' default recipe (cfg/default.yaml) at scale 's'."""

from yolojax.configs import base


def get_config():
    config = base.get_config()
    config.model.scale = "s"
    return config
