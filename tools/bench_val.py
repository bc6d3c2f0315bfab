"""Validation throughput: yolojax.val beside ultralytics val on the same data and machine.

    python tools/bench_val.py --weights ../shared/data/yolov8n.pt --data ../shared/data/coco8/coco8.yaml \
        [--imgsz 640 --batch 16 --min-images 64 --rect --device cpu]

Images/s cover the whole validation: loading + letterbox, forward, NMS and metrics. The split
is looped through symlinks up to --min-images images (copies in a temporary folder, so both
tools may write label caches). Each tool runs once to warm up (jit compilation, model fusing;
the time of that first call is printed too) and then --rounds timed times, the two tools
alternating so that changes in machine load hit both; the best round counts. Prints both,
mAP50-95 of each and `speedup: X.XX` (yolojax / ultralytics).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("YOLO_OFFLINE", "1")


def _looped_split(data_yaml: Path, min_images: int, root: Path) -> Path:
    """A data.yaml whose val split links the original val images (and labels) at least min_images times."""
    from yolojax.data import image_to_label_paths, list_image_files, load_data_yaml

    spec = load_data_yaml(data_yaml)
    images = list_image_files(spec.splits["val"])
    labels = image_to_label_paths(images)
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    k = 0
    while k < max(min_images, len(images)):
        for im, lb in zip(images, labels):
            stem = f"{k:06d}_{Path(im).stem}"
            os.symlink(os.path.abspath(im), root / "images" / "val" / f"{stem}{Path(im).suffix}")
            if Path(lb).is_file():
                os.symlink(os.path.abspath(lb), root / "labels" / "val" / f"{stem}.txt")
            k += 1
    names = list(spec.names)
    yaml = root / "data.yaml"
    yaml.write_text(f"path: {root}\ntrain: images/val\nval: images/val\nnames:\n"
                    + "".join(f"  {i}: {n!r}\n" for i, n in enumerate(names)))
    return yaml


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--min-images", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rect", action="store_true")
    p.add_argument("--workers", type=int, default=0, help="yolojax data workers")
    p.add_argument("--device", default="cpu", help="ultralytics device (cpu, 0, ...)")
    p.add_argument("--skip-ultralytics", action="store_true")
    args = p.parse_args(argv)

    from yolojax.weights import load_weights
    from yolojax.evaluation.validator import validate

    with tempfile.TemporaryDirectory() as tmp:
        ours_yaml = _looped_split(Path(args.data), args.min_images, Path(tmp) / "ours")
        theirs_yaml = _looped_split(Path(args.data), args.min_images, Path(tmp) / "theirs")
        variables, info = load_weights(args.weights)
        kw = {"imgsz": args.imgsz, "batch": args.batch, "rect": args.rect, "workers": args.workers, "verbose": False}
        runs = {"yolojax": lambda: validate(data=ours_yaml, variables=variables, info=info, **kw)}
        if not args.skip_ultralytics:
            from ultralytics import YOLO

            model = YOLO(args.weights)
            ukw = {"data": str(theirs_yaml), "imgsz": args.imgsz, "batch": args.batch, "conf": 0.001, "iou": 0.7,
                   "plots": False, "device": args.device, "rect": args.rect, "verbose": False,
                   "project": str(Path(tmp) / "ultra")}
            runs["ultralytics"] = lambda: model.val(**ukw)
        first = {name: _timed(run)[0] for name, run in runs.items()}  # warm-up: compiles, fuses
        best = dict.fromkeys(runs, float("inf"))
        results = {}
        for _ in range(args.rounds):  # alternate, so a change in machine load hits both alike
            for name, run in runs.items():
                seconds, results[name] = _timed(run)
                best[name] = min(best[name], seconds)
        n = results["yolojax"]["images"]
        ips = {name: n / seconds for name, seconds in best.items()}
        print(f"yolojax     : {ips['yolojax']:8.2f} images/s  ({n} images, mAP50-95 "
              f"{results['yolojax']['mAP50-95']:.4f}; first call {first['yolojax']:.1f} s with compilation)")
        if "ultralytics" in runs:
            print(f"ultralytics : {ips['ultralytics']:8.2f} images/s  ({n} images, mAP50-95 "
                  f"{results['ultralytics'].box.map:.4f}; first call {first['ultralytics']:.1f} s)")
            print(f"speedup: {ips['yolojax'] / ips['ultralytics']:.2f}")
    return 0


def _timed(run):
    """(seconds, result) of one call."""
    t = time.perf_counter()
    result = run()
    return time.perf_counter() - t, result


if __name__ == "__main__":
    sys.exit(main())
