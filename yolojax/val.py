"""``python -m yolojax.val``: mAP50 and mAP50-95 of weights on a data.yaml split, a TFDS dataset or a COCO JSON.

    python -m yolojax.val --weights yolov8n.pt --data coco8.yaml [--imgsz 640 --batch 16
        --conf 0.001 --iou 0.7 --max-det 300 --no-rect --json OUT.json --plots DIR]
    python -m yolojax.val --weights yolov8n.pt --data tfds:coco/2017 [--tfds-data-dir DIR]
    python -m yolojax.val --weights yolov8n.pt --data instances_val2017.json --images val2017
        [--predictions OUT/predictions.json --categories-by-order ...]

Argument parsing and one call of :func:`yolojax.evaluation.validate` (see there).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from yolojax.config import check_arguments
from yolojax.console import OneLineErrorParser, ensure_writable_dir
from yolojax.evaluation.validator import is_coco_json, json_results, validate
from yolojax.runtime import add_compile_cache_argument, start_command


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="python -m yolojax.val", description="Validate YOLOv8 weights on a data.yaml split "
                "or a COCO JSON (mAP50, mAP50-95 as ultralytics val; COCO JSON: also pycocotools' COCO metrics).")
    p.add_argument("--weights", required=True,
                   help="ultralytics .pt, converted checkpoint directory or train workdir")
    p.add_argument("--data", required=True, help="ultralytics data.yaml, a prepared TFDS dataset (tfds:NAME, e.g. "
                   "tfds:coco/2017), or a COCO instances JSON (with --images)")
    p.add_argument("--tfds-data-dir", default="", metavar="DIR",
                   help="TFDS data: the data dir it was prepared in (default $TFDS_DATA_DIR, else ~/tensorflow_datasets)")
    p.add_argument("--images", default=None, help="COCO JSON data: the folder its file_name entries are in")
    p.add_argument("--imgsz", type=int, default=None,
                   help="image size, a multiple of 32 (default: the size the weights were trained at, else 640)")
    p.add_argument("--batch", type=int, default=16, help="batch size")
    p.add_argument("--conf", type=float, default=0.001, help="confidence threshold")
    p.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=None,
                   help="detections per image (default 300, raised to the most labels of an image, as ultralytics)")
    p.add_argument("--rect", action=argparse.BooleanOptionalAction, default=True,
                   help="rectangular batches, ultralytics' default (--no-rect: square imgsz x imgsz letterboxes)")
    p.add_argument("--split", default="val",
                   help="split: train, val or test (of a TFDS dataset: its train, validation and test splits)")
    p.add_argument("--workers", type=int, default=0, help="data worker processes")
    p.add_argument("--json", default=None, help="write results to this JSON file")
    p.add_argument("--plots", default=None, metavar="DIR",
                   help="write ultralytics' validation plots here: val_batch*_labels/pred.jpg, confusion_matrix*.png, "
                        "Box{P,R,F1,PR}_curve.png")
    p.add_argument("--predictions", default=None, metavar="JSON",
                   help="COCO JSON data: write the detections here in COCO results format")
    p.add_argument("--categories-by-order", action="store_true",
                   help="COCO JSON data: map categories in increasing id order to the model's classes even when "
                        "their names differ (default: match by name, refuse different names)")
    add_compile_cache_argument(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = start_command(build_parser(), argv)
    from yolojax.data.sources.tfds import TfdsSpec, is_tfds

    try:
        if not Path(args.weights).exists():
            raise ValueError(f"weights {args.weights} not found")
        if is_tfds(args.data):
            args.data = TfdsSpec.parse(args.data, data_dir=args.tfds_data_dir)
        elif args.tfds_data_dir:
            raise ValueError("--tfds-data-dir is for a TFDS --data (tfds:NAME)")
        elif not Path(args.data).is_file():
            raise ValueError(f"data file {args.data} not found")
        if args.images is not None and not is_coco_json(args.data):
            raise ValueError("--images is for a COCO JSON --data (a data.yaml names its own image folders)")
        if args.categories_by_order and not is_coco_json(args.data):
            raise ValueError("--categories-by-order is for a COCO JSON --data")
        check_arguments({"imgsz": args.imgsz, "batch": args.batch, "conf": args.conf, "iou": args.iou,
                         "max_det": args.max_det, "workers": args.workers})
        for flag, folder in (("--json", args.json and Path(args.json).parent), ("--plots", args.plots),
                             ("--predictions", args.predictions and Path(args.predictions).parent)):
            if folder:
                ensure_writable_dir(folder, f"{flag} folder")
        results = validate(args.weights, args.data, imgsz=args.imgsz, batch=args.batch, conf=args.conf,
                           iou=args.iou, max_det=args.max_det, rect=args.rect, split=args.split,
                           workers=args.workers, plots_dir=args.plots, images=args.images,
                           predictions_json=args.predictions, categories_by_order=args.categories_by_order)
        if args.json:
            Path(args.json).write_text(json.dumps(json_results(results), indent=2))
    except Exception as e:  # noqa: BLE001 - one-line reason for any bad input
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        msg = first if isinstance(e, (ValueError, FileNotFoundError)) and first else f"{type(e).__name__}: {first}"
        print(f"python -m yolojax.val: error: {msg}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
