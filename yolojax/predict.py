"""``python -m yolojax.predict``: boxes on images, videos, folders or globs, annotated copies, JSON.

    python -m yolojax.predict --weights yolov8n.pt --source bus.jpg --out runs/predict
        [--conf 0.25 --iou 0.7 --imgsz 640 --max-det 300 --no-rect --agnostic --vid-stride 1]

Argument parsing and one call of :func:`yolojax.inference.predict` (see there; the Python
API is :class:`yolojax.inference.Predictor`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from yolojax.config import check_arguments
from yolojax.console import OneLineErrorParser, ensure_writable_dir
from yolojax.inference.predictor import predict
from yolojax.runtime import add_compile_cache_argument, start_command


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="python -m yolojax.predict", description="Detect objects in images; write annotated copies "
                "and predictions.json.")
    p.add_argument("--weights", required=True,
                   help="ultralytics .pt, converted checkpoint directory or train workdir")
    p.add_argument("--source", required=True, help="image or video file, folder or glob")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--conf", type=float, default=0.25, help="confidence threshold")
    p.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold")
    p.add_argument("--imgsz", type=int, default=None,
                   help="letterbox size, a multiple of 32 (default: the size the weights were trained at, else 640)")
    p.add_argument("--max-det", type=int, default=300, help="detections per image")
    p.add_argument("--agnostic", action="store_true", help="class-agnostic NMS")
    p.add_argument("--rect", action=argparse.BooleanOptionalAction, default=True,
                   help="minimum padding to a stride multiple, ultralytics' default (--no-rect: square imgsz canvas)")
    add_compile_cache_argument(p)
    p.add_argument("--vid-stride", type=int, default=1, help="videos: predict every n-th frame")
    return p


def _summary(results: Sequence[Mapping[str, Any]], out: str) -> str:
    """``N images[, F frames of V videos], D detections -> OUT/predictions.json``."""
    frames = [r for r in results if "frame" in r]
    videos = f", {len(frames)} frames of {len({r['image'] for r in frames})} videos" if frames else ""
    n = sum(len(r["classes"]) for r in results)
    return f"{len(results) - len(frames)} images{videos}, {n} detections -> {Path(out) / 'predictions.json'}"


def main(argv: Sequence[str] | None = None) -> int:
    args = start_command(build_parser(), argv)
    try:
        check_arguments({"imgsz": args.imgsz, "conf": args.conf, "iou": args.iou, "max_det": args.max_det,
                         "vid_stride": args.vid_stride})
        if not Path(args.weights).exists():
            raise ValueError(f"weights {args.weights} not found")
        ensure_writable_dir(args.out, "--out folder")
        results = predict(args.weights, args.source, args.out, imgsz=args.imgsz, conf=args.conf, iou=args.iou,
                          max_det=args.max_det, agnostic=args.agnostic, rect=args.rect, vid_stride=args.vid_stride)
    except Exception as e:  # noqa: BLE001 - one-line reason for any bad input
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        msg = first if isinstance(e, (ValueError, FileNotFoundError)) and first else f"{type(e).__name__}: {first}"
        print(f"python -m yolojax.predict: error: {msg}", file=sys.stderr)
        return 1
    print(_summary(results, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
