"""``python -m yolojax.train --config configs/yolov8s.py --workdir DIR``: see :mod:`yolojax.train.run`."""

if __name__ == "__main__":
    from yolojax.runtime import reexec_with_malloc_tunables

    reexec_with_malloc_tunables()  # before the heavy imports, which a re-exec would repeat
    from yolojax.train.run import main

    main()
