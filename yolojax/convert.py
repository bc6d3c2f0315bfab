"""``python -m yolojax.convert IN.pt OUT_DIR``: an ultralytics YOLOv8 ``.pt`` -> a yolojax
checkpoint directory (:mod:`yolojax.weights.converted`), read without torch or ultralytics
(:mod:`yolojax.weights.ultralytics`).

``from yolojax.convert import load_ultralytics`` is the converter's documented entry point
(DESIGN.md's converter contract); it lives in :mod:`yolojax.weights`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from yolojax.models.registry import model_title
from yolojax.weights import count_params, load_ultralytics, save_converted

__all__ = ["load_ultralytics", "main"]


def main(argv: list[str] | None = None) -> int:
    """``python -m yolojax.convert IN.pt OUT_DIR``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m yolojax.convert",
        description="Convert an ultralytics YOLOv8 detection .pt checkpoint into a yolojax "
        "checkpoint directory (Orbax variables + info.json). Reads the .pt without torch or "
        "ultralytics and never executes code from it.",
    )
    parser.add_argument("input", help="ultralytics .pt checkpoint (e.g. yolov8s.pt)")
    parser.add_argument(
        "out_dir",
        help="output directory; created, or replaced if it holds a previous conversion",
    )
    args = parser.parse_args(argv)
    try:
        if not Path(args.input).is_file():
            missing = not Path(args.input).exists()
            raise ValueError(f"{args.input} {'does not exist' if missing else 'is not a file'}")
        variables, info = load_ultralytics(args.input)
        out = save_converted(variables, info, args.out_dir)
    except (ValueError, OSError) as e:
        print(f"python -m yolojax.convert: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    print(
        f"wrote {out}: {model_title(info)}, {info['num_classes']} classes, "
        f"reg_max {info['reg_max']}, {count_params(variables):,} parameters"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
