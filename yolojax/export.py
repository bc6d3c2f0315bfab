"""``python -m yolojax.export``: weights to ONNX or to an ultralytics ``.pt`` checkpoint.

    python -m yolojax.export --weights runs/s --format onnx [--out model.onnx --imgsz 640
        --batch 1 --dynamic --opset 18]
    python -m yolojax.export --weights runs/s --format onnx --int8 --data coco8.yaml [--fraction 1.0]
    python -m yolojax.export --weights runs/s --format pt [--out model.pt]

``--int8`` also writes ``<stem>_int8.onnx`` beside the float32 file, calibrated on ``--data``'s
val images (:mod:`yolojax.inference.int8`).

Argument parsing and one call of :func:`yolojax.inference.export` (:mod:`yolojax.inference.exporters`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from yolojax.config import check_arguments
from yolojax.console import OneLineErrorParser, error_line
from yolojax.inference.exporters import DEFAULT_OPSET, FORMATS, default_out, export
from yolojax.runtime import add_compile_cache_argument, start_command


def build_parser() -> OneLineErrorParser:
    p = OneLineErrorParser(prog="python -m yolojax.export",
                           description="Export weights to ONNX (ultralytics' layout) or an ultralytics .pt checkpoint.")
    p.add_argument("--weights", required=True, help="ultralytics .pt, yolojax checkpoint directory or train workdir")
    p.add_argument("--format", default="onnx", choices=FORMATS, help="onnx (default) or pt")
    p.add_argument("--out", default=None, help="output file (default: beside the weights)")
    p.add_argument("--imgsz", type=int, nargs="+", default=None,
                   help="ONNX input size: S or H W (default: the size the weights were trained at, else 640)")
    p.add_argument("--batch", type=int, default=1, help="ONNX batch size")
    p.add_argument("--dynamic", action="store_true", help="ONNX with a dynamic batch dimension")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset")
    p.add_argument("--int8", action="store_true",
                   help="also write <stem>_int8.onnx: static INT8 quantization (onnxruntime) calibrated on --data")
    p.add_argument("--data", default=None, help="data.yaml whose val images calibrate --int8")
    p.add_argument("--fraction", type=float, default=1.0,
                   help="calibration images: a ratio of the val split in (0, 1] or a count > 1 (default 1.0: all)")
    add_compile_cache_argument(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m yolojax.export``; returns the exit status (1 with a one-line error)."""
    args = start_command(build_parser(), argv)
    try:
        check_arguments({"imgsz": args.imgsz, "batch": args.batch, "opset": args.opset})
        if not Path(args.weights).exists():
            raise ValueError(f"weights {args.weights} not found")
        out = export(args.weights, args.format, args.out, imgsz=args.imgsz, batch=args.batch,
                     dynamic=args.dynamic, opset=args.opset, int8=args.int8, data=args.data, fraction=args.fraction)
    except (ValueError, ImportError, OSError) as e:
        print(f"python -m yolojax.export: error: {error_line(e)}", file=sys.stderr)
        return 1
    if args.int8:
        fp32 = Path(args.out) if args.out else default_out(args.weights, args.format)
        print(f"wrote {fp32} ({fp32.stat().st_size / 1e6:.1f} MB, {args.format})")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {args.format}{' int8' if args.int8 else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
