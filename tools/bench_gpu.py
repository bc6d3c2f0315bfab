"""Training throughput on a GPU: yolojax (dtype=auto, device augmentation) beside ultralytics
(amp=True), same model, batch, images and augmentation settings, one process each.

    YOLO_OFFLINE=1 python tools/bench_gpu.py --scales n s --batches 16 64 [--imgsz 640 --steps 30]

Both train from scratch on the same synthetic shapes dataset (written once under --data,
640 px images) with ultralytics' default augmentation. A step is timed from the end of one
optimiser step to the end of the next, so the data pipeline is inside it, for --steps steps
after --warmup (compilation, cuDNN autotuning, loader start). Per run it prints:

* images/s and median step time (ms);
* MFU: the step's FLOPs, as XLA counts them for the yolojax step (the same architecture, so
  the same count for both), over the step time times the chip's dense bfloat16 peak
  (yolojax.parallel.chips);
* peak device memory: ``peak_bytes_in_use`` of jax's allocator, ``torch.cuda.max_memory_reserved``
  for ultralytics (each framework's own pool; on CPU, the process's peak RSS).

Runs on CPU too (small --imgsz), which checks the script, not the speed. Needs the [dev] extra.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def write_dataset(root: Path, images: int) -> Path:
    """The synthetic shapes dataset (yolojax.data.sources.synthetic) at 480-640 px, once."""
    from yolojax.data.sources.synthetic import write_synthetic_dataset

    if (root / "data.yaml").is_file():
        return root / "data.yaml"
    return write_synthetic_dataset(root, num_train=images, num_val=8, size_range=(480, 640), max_shapes=6, seed=0)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def yolojax_run(args: argparse.Namespace) -> dict:
    """Train with yolojax's own set-up (yolojax.train.setup) and time the steps."""
    import jax

    from yolojax.config import load_config
    from yolojax.train.settings import resolve
    from yolojax.train.setup import build_data, build_model, build_step, read_names

    config = load_config(f"yolov8{args.scale}")
    config.data.yaml, config.imgsz, config.batch_size = args.data_yaml, args.imgsz, args.batch
    config.epochs, config.dtype, config.data.augment_on = 1000, "auto", "device"
    config.data.workers, config.val.enabled, config.plots, config.progress = args.workers, False, False, False
    platform = jax.devices()[0].platform
    settings = resolve(config).on_devices(jax.device_count(), 1, platform)
    data = build_data(settings, Path(args.data_yaml), read_names(Path(args.data_yaml), settings), 0, 1)
    model = build_model(settings, data, None, {})
    step = build_step(settings, model, None)
    state, iterator, ends = step.state, data.batches.iterator, []
    flops = None
    for i in range(args.warmup + args.steps):
        batch = step.place(next(iterator))
        if flops is None:
            flops = _step_flops(step.step_fn, state, batch)
        state, metrics = step.step_fn(state, batch)
        jax.block_until_ready(metrics)
        ends.append(time.perf_counter())
    data.batches.close()
    stats = jax.devices()[0].memory_stats() or {}
    return {"step_seconds": _median_step(ends, args.warmup), "flops": flops, "dtype": settings.compute_dtype,
            "peak_bytes": stats.get("peak_bytes_in_use", peak_rss_bytes()), "device": jax.devices()[0].device_kind}


def _step_flops(step_fn, state, batch) -> float | None:
    cost = step_fn.lower(state, batch).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) if cost and "flops" in cost else None


def _median_step(ends: list[float], warmup: int) -> float:
    steps = [b - a for a, b in zip(ends[warmup:], ends[warmup + 1:])]
    return statistics.median(steps)


class _Enough(Exception):
    """Raised from ultralytics' callback once enough steps are timed."""


def ultralytics_run(args: argparse.Namespace) -> dict:
    """``YOLO(yolov8{scale}.yaml).train(amp=True, ...)`` timed by an on_train_batch_end callback."""
    import torch
    from ultralytics import YOLO

    model, ends = YOLO(f"yolov8{args.scale}.yaml"), []

    def on_batch_end(trainer):
        ends.append(time.perf_counter())
        if len(ends) >= args.warmup + args.steps:
            raise _Enough

    model.add_callback("on_train_batch_end", on_batch_end)
    device = 0 if torch.cuda.is_available() else "cpu"
    try:
        model.train(data=args.data_yaml, imgsz=args.imgsz, batch=args.batch, epochs=1000, amp=True, device=device,
                    workers=args.workers, val=False, plots=False, verbose=False, exist_ok=True,
                    project=str(Path(args.data_yaml).parent / "ultralytics_runs"), name=f"{args.scale}_{args.batch}")
    except _Enough:
        pass
    cuda = torch.cuda.is_available()
    return {"step_seconds": _median_step(ends, args.warmup), "flops": None, "dtype": "amp" if cuda else "float32",
            "peak_bytes": torch.cuda.max_memory_reserved() if cuda else peak_rss_bytes(),
            "device": torch.cuda.get_device_name() if cuda else "cpu"}


def run_side(side: str, scale: str, batch: int, args: argparse.Namespace) -> dict:
    """One side in a fresh process (the two never share a device or a thread pool)."""
    cmd = [sys.executable, __file__, "--side", side, "--scales", scale, "--batches", str(batch), "--imgsz",
           str(args.imgsz), "--steps", str(args.steps), "--warmup", str(args.warmup), "--workers", str(args.workers),
           "--data", str(args.data)]
    env = dict(os.environ, YOLO_OFFLINE="1", PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{side} yolov8{scale} batch {batch} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def mfu(flops: float | None, seconds: float, device: str) -> str:
    from yolojax.parallel.chips import chip_for

    chip = chip_for(device)
    if flops is None or chip is None:
        return "n/a"
    return f"{flops / seconds / chip.peak_flops:.1%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", nargs="+", default=["n", "s"])
    parser.add_argument("--batches", nargs="+", type=int, default=[16, 64])
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed first steps")
    parser.add_argument("--workers", type=int, default=8, help="loader processes of each side")
    parser.add_argument("--images", type=int, default=512, help="training images in the synthetic dataset")
    parser.add_argument("--data", type=Path, default=Path("/tmp/yolojax_bench_gpu"), help="dataset folder")
    parser.add_argument("--side", choices=["yolojax", "ultralytics"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.data_yaml = str(write_dataset(args.data, args.images))
    if args.side:
        args.scale, args.batch = args.scales[0], args.batches[0]
        result = (yolojax_run if args.side == "yolojax" else ultralytics_run)(args)
        print(json.dumps(result))
        return
    print(f"{args.imgsz} px, {args.steps} timed steps after {args.warmup}, {args.workers} loader workers each; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'model':8} {'batch':>5} {'side':12} {'dtype':9} {'images/s':>9} {'step ms':>8} {'MFU':>6} "
          f"{'peak GiB':>8}  device")
    for scale in args.scales:
        for batch in args.batches:
            ours = run_side("yolojax", scale, batch, args)
            theirs = run_side("ultralytics", scale, batch, args)
            theirs["flops"] = ours["flops"]  # the same model's step
            for side, r in (("yolojax", ours), ("ultralytics", theirs)):
                print(f"yolov8{scale:2} {batch:>5} {side:12} {r['dtype']:9} {batch / r['step_seconds']:>9.1f} "
                      f"{r['step_seconds'] * 1e3:>8.1f} {mfu(r['flops'], r['step_seconds'], r['device']):>6} "
                      f"{r['peak_bytes'] / 2**30:>8.2f}  {r['device']}", flush=True)
            print(f"  ratio yolojax / ultralytics images/s: {theirs['step_seconds'] / ours['step_seconds']:.2f}")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
