"""YOLOv8l: ultralytics' default recipe (cfg/default.yaml) at scale 'l'."""

from yolojax.configs import base


def get_config():
    config = base.get_config()
    config.model.scale = "l"
    return config
