"""Host CPU per training image: yolojax's Grain pipeline beside ultralytics' own training dataloader.

    YOLO_OFFLINE=1 python tools/bench_data.py --data DATA.yaml --imgsz 640 --workers N
        [--modes ultralytics,host,host+ram,device+ram --batch 16 --batches 20 --rounds 3 --min-images 256]
    YOLO_OFFLINE=1 python tools/bench_data.py --synthetic --imgsz 640 --workers N

Every mode reads the same train split with mosaic and ultralytics' default augmentations and
the same batch size and worker count, in one run on one machine. Modes (:data:`MODES`; adding
one is one function and one entry there):

    ultralytics      ultralytics' loader (build_yolo_dataset + build_dataloader), no cache
    ultralytics+ram  the same with cache='ram' (not run unless named in --modes)
    host             yolojax, augmentation on the host CPU (Grain workers)
    host+ram         the same with data.cache='ram' (images decoded and resized once)
    device+ram       yolojax with data.augment_on='device' and data.cache='ram': the host
                     draws the parameters, moves the boxes and copies the cached images into
                     the batch; the pixel work runs in the train step
    device           the same without a cache (not run unless named in --modes)

Splits with fewer than --min-images images are looped by symlinking their images/labels into a
temporary copy (every mode reads that copy). Worker start-up, cache building and prefetched
batches are excluded (warm-up batches); each round builds, warms up, times and closes one mode
after the other (the order rotating from round to round), so they never run at the same time.
The figure that counts is the CPU time of all the mode's processes (this one and its
workers) during the timed batches per image: it is robust to other load on the machine. One
line per mode, in this form:

    MODE: X.XX ms host CPU per image, Y img/s per host core

with the load average (``uptime``) before and after and the wall-clock images/s per round
(which does depend on the load). When a device mode runs, the pixel work it leaves to the
train step is timed apart (``jit(render_batch)`` on this machine's default JAX backend, one
batch at a time). ultralytics and torch are imported only here, as the oracle.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

from yolojax.data import load_data_yaml, make_train_iterator
from yolojax.data.sources.data_yaml import image_to_label_paths, list_image_files
from yolojax.data.sources.synthetic import write_synthetic_dataset


def looped_copy(data_yaml: str, min_images: int, out_dir: Path) -> str:
    """A data.yaml whose train split repeats the original's images (symlinks) to >= min_images."""
    spec = load_data_yaml(data_yaml)
    images = list_image_files(spec.splits["train"])
    labels = image_to_label_paths(images)
    repeats = max(1, -(-min_images // len(images)))
    for split in ("train", "val"):
        (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
        (out_dir / "labels" / split).mkdir(parents=True, exist_ok=True)
    for r in range(repeats):
        for k, (image, label) in enumerate(zip(images, labels)):
            stem = f"r{r:04d}_{k:06d}"
            os.symlink(os.path.abspath(image), out_dir / "images" / "train" / (stem + Path(image).suffix))
            if os.path.isfile(label):
                os.symlink(os.path.abspath(label), out_dir / "labels" / "train" / (stem + ".txt"))
    os.symlink(os.path.abspath(images[0]), out_dir / "images" / "val" / ("v" + Path(images[0]).suffix))
    yaml_path = out_dir / "data.yaml"
    yaml_path.write_text(yaml.safe_dump({"train": "images/train", "val": "images/val",
                                         "names": dict(enumerate(spec.names))}))
    return str(yaml_path)


def yolojax_batches(data_yaml: str, args: argparse.Namespace, cache: str = "", augment_on: str = "host"):
    batches = make_train_iterator(data_yaml, imgsz=args.imgsz, batch_size=args.batch, epochs=1000, seed=0,
                                  workers=args.workers, mosaic_pool=args.mosaic_pool, process_index=0,
                                  process_count=1, cache=cache, augment_on=augment_on)
    return batches.iterator, batches.close


def device_render_ms(data_yaml: str, args: argparse.Namespace, repeats: int = 3) -> tuple[float, float]:
    """(wall, CPU) milliseconds per image of the pixel work of device mode (``jit(render_batch)``,
    compiled first), on JAX's default backend; CPU time is this process's (all its threads)."""
    import jax  # pylint: disable=import-outside-toplevel

    from yolojax.data.device.augment import render_batch  # pylint: disable=import-outside-toplevel

    iterator, close = yolojax_batches(data_yaml, argparse.Namespace(**{**vars(args), "workers": 0}), cache="ram",
                                      augment_on="device")
    batches = [jax.device_put({k: v for k, v in next(iterator).items() if k.startswith("aug_")})
               for _ in range(repeats + 1)]
    close()
    render = jax.jit(render_batch)
    render(batches[0]).block_until_ready()
    start, cpu_start = time.perf_counter(), time.process_time()
    for b in batches[1:]:
        render(b).block_until_ready()
    images = repeats * args.batch
    return 1000 * (time.perf_counter() - start) / images, 1000 * (time.process_time() - cpu_start) / images


def ultralytics_batches(data_yaml: str, args: argparse.Namespace, cache: str | bool = False):
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics.cfg import get_cfg  # pylint: disable=import-outside-toplevel
    from ultralytics.data import build_dataloader, build_yolo_dataset  # pylint: disable=import-outside-toplevel
    from ultralytics.data.utils import check_det_dataset  # pylint: disable=import-outside-toplevel

    cfg = get_cfg(overrides={"imgsz": args.imgsz, "batch": args.batch, "workers": args.workers, "data": data_yaml,
                             "cache": cache})
    data = check_det_dataset(data_yaml)
    dataset = build_yolo_dataset(cfg, data["train"], args.batch, data, mode="train", stride=32)
    loader = build_dataloader(dataset, args.batch, args.workers, shuffle=True, rank=-1)

    def forever():
        while True:
            yield from loader

    return forever(), loader.close


# Mode name -> (data_yaml, args) -> (iterator of batches, close).
MODES: dict[str, Callable[[str, argparse.Namespace], tuple[Iterator, Callable[[], None]]]] = {
    "ultralytics": lambda data_yaml, args: ultralytics_batches(data_yaml, args),
    "ultralytics+ram": lambda data_yaml, args: ultralytics_batches(data_yaml, args, cache="ram"),
    "host": lambda data_yaml, args: yolojax_batches(data_yaml, args),
    "host+ram": lambda data_yaml, args: yolojax_batches(data_yaml, args, cache="ram"),
    "device": lambda data_yaml, args: yolojax_batches(data_yaml, args, augment_on="device"),
    "device+ram": lambda data_yaml, args: yolojax_batches(data_yaml, args, cache="ram", augment_on="device"),
}
DEFAULT_MODES = ("ultralytics", "host", "host+ram", "device+ram")


def time_batches(iterator, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        next(iterator)
    return time.perf_counter() - start


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its live worker processes so far."""
    total = time.process_time()
    ticks = os.sysconf("SC_CLK_TCK")
    for child in multiprocessing.active_children():
        try:
            fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total


def load_average() -> str:
    """``uptime``'s line (its load average), else os.getloadavg()."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def mode_line(mode: str, cpu_seconds_: float, images: int) -> str:
    """``MODE: X.XX ms host CPU per image, Y img/s per host core``."""
    ms = 1000 * cpu_seconds_ / images
    return f"{mode}: {ms:.2f} ms host CPU per image, {1000 / ms:.1f} img/s per host core"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="ultralytics data.yaml (its train split)")
    parser.add_argument("--synthetic", action="store_true", help="benchmark a generated set of shapes instead")
    parser.add_argument("--modes", default=",".join(DEFAULT_MODES),
                        help=f"comma-separated, of {', '.join(MODES)} (default: %(default)s)")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per mode per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed batches first: worker start-up and prefetch buffers (default 4*workers+2)")
    parser.add_argument("--min-images", type=int, default=256, help="loop smaller train splits up to this")
    parser.add_argument("--mosaic-pool", default="batch", choices=("batch", "dataset"))
    args = parser.parse_args(argv)
    if bool(args.data) == args.synthetic:
        parser.exit(2, "error: give exactly one of --data or --synthetic\n")
    if args.data and not Path(args.data).is_file():
        parser.exit(2, f"error: data yaml not found: {args.data}\n")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        parser.exit(2, f"error: unknown mode {unknown[0] if unknown else '(none)'}; modes: {', '.join(MODES)}\n")

    print(f"before: {load_average()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        tmp = Path(tmp)
        if args.synthetic:
            source_yaml = str(write_synthetic_dataset(tmp / "synthetic", num_train=64, num_val=1,
                                                      size_range=(480, 800), max_shapes=8))
        else:
            source_yaml = args.data
        data_yaml = looped_copy(source_yaml, args.min_images, tmp / "looped")
        warmup = args.warmup if args.warmup is not None else 4 * args.workers + 2
        seconds = {mode: 0.0 for mode in modes}
        cpu = {mode: 0.0 for mode in modes}
        for r in range(args.rounds):
            rates = {}
            for mode in modes[r % len(modes):] + modes[:r % len(modes)]:  # rotate which goes first
                iterator, close = MODES[mode](data_yaml, args)
                time_batches(iterator, warmup)  # start-up, then drain the prefetch buffers
                cpu_start = cpu_seconds()
                dt = time_batches(iterator, args.batches)
                cpu[mode] += cpu_seconds() - cpu_start
                close()
                del iterator
                seconds[mode] += dt
                rates[mode] = args.batches * args.batch / dt
            print(f"round {r} (wall clock): " + "   ".join(f"{m} {rates[m]:.1f} img/s" for m in modes), flush=True)
        if any(m.startswith("device") for m in modes):
            render_ms = device_render_ms(data_yaml, args)
    images = args.rounds * args.batches * args.batch
    print(f"data: {args.data or 'synthetic'}  imgsz: {args.imgsz}  batch: {args.batch}  workers: {args.workers}  "
          f"mosaic_pool: {args.mosaic_pool}  images per mode: {images}")
    print(f"after: {load_average()}")
    for mode in modes:
        print(mode_line(mode, cpu[mode], images))
    if "ultralytics" in modes:
        for mode in modes:
            if mode != "ultralytics":
                print(f"{mode} / ultralytics: {cpu['ultralytics'] / cpu[mode]:.2f}x images per host core "
                      f"(wall clock {seconds['ultralytics'] / seconds[mode]:.2f}x)")
    if any(m.startswith("device") for m in modes):
        print(device_render_line(render_ms))
    return 0


def device_render_line(render_ms: tuple[float, float]) -> str:
    """The pixel work per image a device mode leaves to the train step."""
    import jax  # pylint: disable=import-outside-toplevel

    return (f"device augmentation in the step: {render_ms[0]:.2f} ms per image, {render_ms[1]:.2f} ms CPU "
            f"(jit(render_batch) on {jax.default_backend()})")


if __name__ == "__main__":
    sys.exit(main())
