"""Eval-forward speed of yolojax beside ultralytics' fused PyTorch model, same inputs.

    YOLO_OFFLINE=1 python tools/bench_forward.py --scales n s --batches 1 8 --imgsz 640

Both models get the same random weights (yolojax converts ultralytics' checkpoint), the
same float32 NHWC/NCHW batch, and run alternately, ``--rounds`` times each; the table shows
median milliseconds per batch and the ratio ultralytics / yolojax (> 1: yolojax is faster).
jit compile time is reported apart. Needs the [dev] extra (torch, ultralytics).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np


def _ultralytics_checkpoint(scale: str, directory: Path) -> tuple[object, Path]:
    """A randomly initialised ultralytics yolov8{scale}, saved as ultralytics saves it."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel(f"yolov8{scale}.yaml", verbose=False)
    path = directory / f"yolov8{scale}-random.pt"
    torch.save({"model": copy.deepcopy(model).half(), "ema": None}, path)
    return model.float().eval(), path


def _time(fn, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", nargs="+", default=["n", "s"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    args = parser.parse_args()

    import torch

    from yolojax.convert import load_ultralytics
    from yolojax.models import yolov8_from_info

    torch.set_num_threads(args.threads)
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; torch {torch.__version__} "
          f"with {torch.get_num_threads()} threads")
    header = f"{'model':8} {'batch':>5} {'compile s':>9} {'yolojax ms':>10} {'ultralytics ms':>14} {'ratio':>6}"
    print(header)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scale in args.scales:
            torch_model, ckpt = _ultralytics_checkpoint(scale, Path(tmp))
            torch_model.fuse(verbose=False)
            variables, info = load_ultralytics(ckpt)
            model = yolov8_from_info(info)
            forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
            variables = jax.device_put(variables)
            for batch in args.batches:
                x = np.random.default_rng(0).random((batch, args.imgsz, args.imgsz, 3), np.float32)
                x_jax = jax.device_put(x)
                x_torch = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
                t0 = time.perf_counter()
                forward(variables, x_jax).block_until_ready()
                compile_s = time.perf_counter() - t0
                jax_times, torch_times = [], []
                with torch.inference_mode():
                    torch_model(x_torch)  # warm-up
                    for _ in range(args.rounds):
                        jax_times += _time(lambda: forward(variables, x_jax).block_until_ready(), 1)
                        torch_times += _time(lambda: torch_model(x_torch), 1)
                jax_ms = 1e3 * statistics.median(jax_times)
                torch_ms = 1e3 * statistics.median(torch_times)
                row = (f"yolov8{scale:2} {batch:>5} {compile_s:>9.1f} {jax_ms:>10.1f} "
                       f"{torch_ms:>14.1f} {torch_ms / jax_ms:>6.2f}")
                print(row, flush=True)
                rows.append(torch_ms / jax_ms)
    print(f"geometric-mean ratio (ultralytics / yolojax): {float(np.exp(np.mean(np.log(rows)))):.2f}")


if __name__ == "__main__":
    main()
