"""Eval-forward speed of yolojax beside ultralytics' fused PyTorch model, same inputs.

    YOLO_OFFLINE=1 python tools/bench_forward.py --scales n s --batches 1 8 --imgsz 640 [--family yolo11]

Both models get the same random weights (yolojax converts ultralytics' checkpoint), the
same float32 NHWC/NCHW batch; each runs in its own process (tools/side_by_side.py) and the two
alternate, ``--rounds`` times each; the table shows median milliseconds per batch and the
ratio ultralytics / yolojax (> 1: yolojax is faster). jit compile time is reported apart.
Needs the [dev] extra (torch, ultralytics).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from side_by_side import Worker, alternate, ultralytics_environ
from yolojax.runtime import reexec_with_malloc_tunables


def _ultralytics_checkpoint(name: str, directory: Path) -> Path:
    """A randomly initialised ultralytics model ``name`` (yolov8n, yolo11s ...), saved as
    ultralytics saves it (fp16)."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel(f"{name}.yaml", verbose=False)
    path = directory / f"{name}-random.pt"
    torch.save({"model": model.half(), "ema": None}, path)
    return path


def yolojax_forward(checkpoint: str, batch: int, imgsz: int) -> Callable[[], None]:
    """A closure running yolojax's jitted eval forward (decoded boxes included) on a fixed batch."""
    from yolojax.weights import load_ultralytics
    from yolojax.models import model_from_info

    variables, info = load_ultralytics(checkpoint)
    model = model_from_info(info)
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    variables = jax.device_put(variables)
    x = jax.device_put(np.random.default_rng(0).random((batch, imgsz, imgsz, 3), np.float32))
    return lambda: forward(variables, x).block_until_ready()


def ultralytics_forward(checkpoint: str, batch: int, imgsz: int, threads: int) -> Callable[[], None]:
    """A closure running ultralytics' fused model (inference mode) on the same batch, NCHW."""
    import torch

    torch.set_num_threads(threads)
    model = torch.load(checkpoint, weights_only=False)["model"].float().eval().fuse(verbose=False)
    x = np.random.default_rng(0).random((batch, imgsz, imgsz, 3), np.float32)
    x_torch = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()

    def run() -> None:
        with torch.inference_mode():
            model(x_torch)

    return run


def main() -> None:
    reexec_with_malloc_tunables()  # as yolojax's commands do (the ultralytics worker: see --same-malloc)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="yolov8", choices=["yolov8", "yolo11"])
    parser.add_argument("--scales", nargs="+", default=["n", "s"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument("--same-malloc", action="store_true",
                        help="give ultralytics yolojax's glibc malloc tunables too (default: glibc's defaults)")
    args = parser.parse_args()

    import torch

    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; torch {torch.__version__} with {args.threads} "
          f"threads; each in its own process; load average {os.getloadavg()[0]:.2f}")
    print(f"{'model':8} {'batch':>5} {'compile s':>9} {'yolojax ms':>10} {'ultralytics ms':>14} {'ratio':>6}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scale in args.scales:
            name = f"{args.family}{scale}"
            checkpoint = str(_ultralytics_checkpoint(name, Path(tmp)))
            for batch in args.batches:
                ours = Worker(yolojax_forward, checkpoint, batch, args.imgsz)
                theirs = Worker(ultralytics_forward, checkpoint, batch, args.imgsz, args.threads,
                                environ=ultralytics_environ(args.same_malloc))
                compile_s = ours.first_run_seconds()
                theirs.first_run_seconds()
                jax_s, torch_s = alternate(ours, theirs, args.rounds)
                ours.close()
                theirs.close()
                print(f"{name:8} {batch:>5} {compile_s:>9.1f} {1e3 * jax_s:>10.1f} {1e3 * torch_s:>14.1f} "
                      f"{torch_s / jax_s:>6.2f}", flush=True)
                rows.append(torch_s / jax_s)
    print(f"geometric-mean ratio (ultralytics / yolojax): {float(np.exp(np.mean(np.log(rows)))):.2f}; "
          f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
