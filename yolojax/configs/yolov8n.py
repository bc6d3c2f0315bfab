"""YOLOv8n: ultralytics' default recipe (cfg/default.yaml) at scale 'n'."""

from yolojax.configs import base


def get_config():
    config = base.get_config()
    config.model.scale = "n"
    return config
