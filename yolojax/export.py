"""``python -m yolojax.export``: weights to ONNX or to an ultralytics ``.pt`` checkpoint.

    python -m yolojax.export --weights runs/s --format onnx [--out model.onnx --imgsz 640
        --batch 1 --dynamic --opset 18]
    python -m yolojax.export --weights runs/s --format pt [--out model.pt]

Argument parsing and one call of :func:`yolojax.inference.export` (:mod:`yolojax.inference.exporters`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from yolojax.config import check_arguments
from yolojax.console import OneLineErrorParser, configure_logging, error_line
from yolojax.inference.exporters import DEFAULT_OPSET, FORMATS, export
from yolojax.runtime import enable_compilation_cache, reexec_with_malloc_tunables


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
    p.add_argument("--compile-cache", default="auto", metavar="DIR|auto|off",
                   help="persistent XLA compilation cache (auto: ~/.cache/yolojax/jax)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m yolojax.export``; returns the exit status (1 with a one-line error)."""
    if argv is None:
        reexec_with_malloc_tunables()
    args = build_parser().parse_args(argv)
    enable_compilation_cache(args.compile_cache)
    configure_logging()
    try:
        check_arguments({"imgsz": args.imgsz, "batch": args.batch, "opset": args.opset})
        if not Path(args.weights).exists():
            raise ValueError(f"weights {args.weights} not found")
        out = export(args.weights, args.format, args.out, imgsz=args.imgsz, batch=args.batch,
                     dynamic=args.dynamic, opset=args.opset)
    except (ValueError, ImportError, OSError) as e:
        print(f"python -m yolojax.export: error: {error_line(e)}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {args.format})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
