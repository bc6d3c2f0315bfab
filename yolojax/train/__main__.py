"""``python -m yolojax.train --config configs/yolov8s.py --workdir DIR``: see :mod:`yolojax.train.run`."""

if __name__ == "__main__":
    from yolojax.runtime import reexec_with_hugepage_malloc

    reexec_with_hugepage_malloc()  # before the heavy imports, which a re-exec would repeat
    from yolojax.train.run import main

    main()
