"""Quickstart: YOLOv8n on yolojax's built-in synthetic shapes dataset (6 classes).

    python -m yolojax.train --config configs/quickstart.py --workdir runs/quick

The dataset (96 train / 16 val images) is written once to datasets/yolojax-shapes in YOLO
format, so this runs offline on any machine: about 3 minutes on a 2-core CPU, reaching
mAP50 ~0.5 on the shapes' validation images.
"""

from yolojax.configs import base


def get_config():
    config = base.get_config()
    config.model.scale = "n"
    config.data.synthetic.root = "datasets/yolojax-shapes"
    config.data.synthetic.num_train = 96
    config.data.synthetic.num_val = 16
    config.data.workers = 2
    config.imgsz = 192
    config.batch_size = 8
    config.epochs = 12
    config.warmup_epochs = 1.0
    # One optimiser update per batch: with 96 images the nominal batch of 64 would give only
    # 12 updates per 8-image-batch run, too few to learn anything in a quickstart.
    config.nbs = 8
    config.close_mosaic = 2
    config.log_every_steps = 2
    config.checkpoint.every_steps = 0
    config.checkpoint.keep = 2
    return config
