"""``python -m yolojax.prune``: structured channel pruning of YOLOv8 weights into a converted directory.

    python -m yolojax.prune --weights yolov8n.pt --ratio 0.3 [--method bn_scale|l1 --out DIR
        --data coco8.yaml --imgsz 640]

Removes ``--ratio`` of the model's channels (:mod:`yolojax.models.prune`: ``bn_scale`` ranks
by BatchNorm |gamma| over the whole network, ``l1`` by filter L1 norm within each layer) and
writes the smaller model as a converted directory (default: beside the weights,
``<stem>_pruned<percent>``) that every ``model=``/``--weights`` accepts; with ``--data`` it
then validates it (mAP50-95 before any fine-tuning). Argument parsing and the calls of
:func:`prune_weights` (and :func:`yolojax.evaluation.validate`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from yolojax.config import check_arguments
from yolojax.console import OneLineErrorParser, error_line
from yolojax.models.prune import METHODS, check_prune_args
from yolojax.runtime import add_compile_cache_argument, start_command


def default_out(weights: str, ratio: float) -> Path:
    """``<weights without suffix>_pruned<percent>`` beside the weights, e.g. yolov8n_pruned30."""
    p = Path(weights)
    return p.with_name(f"{p.stem if p.is_file() else p.name}_pruned{round(ratio * 100)}")


def check_prune_command(weights: str, ratio: float, method: str, out: Path, data: str | None) -> None:
    """Refuse bad input before any work, in one line (``ValueError``): the ratio or method, missing
    weights or data file, an ``out`` that exists and is not a converted directory."""
    check_prune_args(ratio, method)
    if not Path(weights).exists():
        raise ValueError(f"weights {weights} not found")
    if data is not None and not Path(data).is_file():
        raise ValueError(f"data file {data} not found")
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / "info.json").is_file())):
        raise ValueError(f"out={out} exists and is not a yolojax checkpoint directory; refusing to overwrite it")


def prune_weights(weights: str, ratio: float, method: str = "bn_scale", out: str | None = None) -> tuple[Path, str]:
    """Load ``weights`` (:func:`yolojax.weights.load_weights`), prune ``ratio`` of their channels
    by ``method`` (:func:`yolojax.models.prune.prune`) and save them at ``out`` (default
    :func:`default_out`) as a converted directory. Returns (that directory, a one-line summary:
    channels, parameters and GFLOPs at 640 before and after). Raises ``ValueError`` in one line
    for bad input, before loading."""
    from yolojax.models import model_from_info, model_title
    from yolojax.models.prune import prune
    from yolojax.models.summary import model_summary
    from yolojax.weights import load_weights, save_converted

    check_prune_args(ratio, method)
    out_dir = Path(out) if out else default_out(weights, ratio)
    check_prune_command(weights, ratio, method, out_dir, None)
    variables, info = load_weights(weights)
    pruned, pruned_info = prune(variables, info, ratio, method)
    written = save_converted(pruned, pruned_info, out_dir)
    before, after = (model_summary(model_from_info(i), fused=True) for i in (info, pruned_info))
    line = (f"{model_title(info)} pruned ({method}, ratio {ratio:g}): {before.parameters:,} -> "
            f"{after.parameters:,} parameters, {before.gflops:.1f} -> {after.gflops:.1f} GFLOPs (fused, 640)")
    return written, line


def prune_and_validate(weights: str, ratio: float, method: str = "bn_scale", out: str | None = None,
                       data: str | None = None, imgsz: int | None = None) -> Path:
    """The prune command: input checked (:func:`check_prune_command`) before any work,
    :func:`prune_weights`, its summary line printed, then with ``data`` the pruned model
    validated (:func:`yolojax.evaluation.validate`, at ``imgsz`` or the weights'). Returns the
    directory written. Raises ``ValueError`` in one line for bad input."""
    check_prune_args(ratio, method)
    out_dir = Path(out) if out else default_out(weights, ratio)
    check_prune_command(weights, ratio, method, out_dir, data)
    written, line = prune_weights(weights, ratio, method, str(out_dir))
    print(f"wrote {written}: {line}")
    if data:
        from yolojax.evaluation import validate

        validate(str(written), data, imgsz=imgsz)
    return written


def build_parser() -> OneLineErrorParser:
    p = OneLineErrorParser(prog="python -m yolojax.prune",
                           description="Structured channel pruning: remove whole output channels of YOLOv8 weights.")
    p.add_argument("--weights", required=True, help="ultralytics .pt, yolojax checkpoint directory or train workdir")
    p.add_argument("--ratio", type=float, required=True, help="fraction of the channels to remove, in [0, 1)")
    p.add_argument("--method", default="bn_scale", choices=METHODS,
                   help="bn_scale (default: BatchNorm |gamma|, one global threshold) or l1 (filter L1 norm, per layer)")
    p.add_argument("--out", default=None, help="output directory (default: <weights>_pruned<percent> beside them)")
    p.add_argument("--data", default=None, help="data.yaml to validate the pruned model on (optional)")
    p.add_argument("--imgsz", type=int, default=None, help="--data validation image size (default: the weights')")
    add_compile_cache_argument(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m yolojax.prune``; returns the exit status (1 with a one-line error)."""
    args = start_command(build_parser(), argv)
    try:
        check_arguments({"imgsz": args.imgsz})
        prune_and_validate(args.weights, args.ratio, args.method, args.out, args.data, args.imgsz)
    except (ValueError, ImportError, OSError) as e:
        print(f"python -m yolojax.prune: error: {error_line(e)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
