"""``python -m yolojax.train --config configs/yolov8s.py --workdir DIR``: see :mod:`yolojax.train.run`."""

from yolojax.train.run import main

if __name__ == "__main__":
    main()
