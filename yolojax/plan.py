"""``python -m yolojax.plan KEY=VALUE ...``: the same as ``yolojax plan`` (:func:`yolojax.cli.run_plan`).

    python -m yolojax.plan model=yolov8n.pt imgsz=640 batch=64 topology=v5e:2x2 [dtype=bfloat16
        rules=fsdp mesh.data=4 sync_bn=False json=plan.json]

The run's train step compiled for a target without running it (:mod:`yolojax.train.plan`).
"""

import sys

from yolojax.cli import main

if __name__ == "__main__":
    sys.exit(main(["plan", *sys.argv[1:]]))
