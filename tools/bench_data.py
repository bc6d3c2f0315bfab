"""Training images/s: yolojax's Grain pipeline beside ultralytics' own training dataloader.

    YOLO_OFFLINE=1 python tools/bench_data.py --data DATA.yaml --imgsz 640 --workers N
        [--batch 16 --batches 20 --rounds 3 --min-images 256 --mosaic-pool batch]
    YOLO_OFFLINE=1 python tools/bench_data.py --synthetic --imgsz 640 --workers N

Both pipelines read the same train split with mosaic and ultralytics' default augmentations
and the same batch size and worker count (ultralytics: build_yolo_dataset +
build_dataloader). Splits with fewer than --min-images images are looped by symlinking
their images/labels into a temporary copy (both pipelines read that copy). Worker start-up
and prefetched batches are excluded (warm-up batches); each round builds, warms up, times
and closes one pipeline after the other (alternating which goes first), so they never run
at the same time; the rate is total images / total time over the rounds. CPU time per
image (all processes, during the timed batches) is printed too: it is robust to other load
on the machine. The line ``speedup: X.XX`` gives yolojax / ultralytics images/s.

``device+ram`` is yolojax with ``augment_on='device'`` reading images that were decoded and
long-side resized into memory before timing (:class:`PredecodedSource`): the host only draws
the parameters, moves the boxes and copies the source images into the batch. Its line gives
the host CPU per image; the pixel work it leaves to the train step is timed apart
(``jit(render_batch)`` on this machine's default JAX backend, one batch at a time).
ultralytics and torch are imported only here, as the oracle.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

from yolojax.data import load_data_yaml, make_train_iterator, yolo_source
from yolojax.data.data_yaml import image_to_label_paths, list_image_files
from yolojax.data.image_io import resize_long_side
from yolojax.data.synthetic import write_synthetic_dataset


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


def yolojax_batches(data_yaml: str, imgsz: int, batch: int, workers: int, mosaic_pool: str):
    batches = make_train_iterator(data_yaml, imgsz=imgsz, batch_size=batch, epochs=1000, seed=0, workers=workers,
                                  mosaic_pool=mosaic_pool, process_index=0, process_count=1)
    return batches.iterator, batches.close


class PredecodedSource:
    """A source whose images were decoded and long-side resized to imgsz up front (held in
    memory); the rest of the source (labels, names, shapes) is the wrapped one's."""

    def __init__(self, source, imgsz: int):
        self._source = source
        self._records = []
        for i in range(len(source)):
            record = dict(source[i])
            record["image"] = resize_long_side(record["image"], imgsz)
            self._records.append(record)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict:
        return self._records[int(index)]

    def __getattr__(self, name: str):
        return getattr(self._source, name)


def device_ram_batches(data_yaml: str, imgsz: int, batch: int, workers: int, mosaic_pool: str):
    """Device-mode batches (parameters + source images, no pixel work) from pre-decoded images."""
    source = PredecodedSource(yolo_source(data_yaml, "train"), imgsz)
    batches = make_train_iterator(source, imgsz=imgsz, batch_size=batch, epochs=1000, seed=0, workers=workers,
                                  mosaic_pool=mosaic_pool, process_index=0, process_count=1, augment_on="device")
    return batches.iterator, batches.close


def device_render_ms(data_yaml: str, imgsz: int, batch: int, mosaic_pool: str,
                     repeats: int = 3) -> tuple[float, float]:
    """(wall, CPU) milliseconds per image of the pixel work of device mode (``jit(render_batch)``,
    compiled first), on JAX's default backend; CPU time is this process's (all its threads)."""
    import jax  # pylint: disable=import-outside-toplevel

    from yolojax.data.device_augment import render_batch  # pylint: disable=import-outside-toplevel

    iterator, close = device_ram_batches(data_yaml, imgsz, batch, 0, mosaic_pool)
    batches = [jax.device_put({k: v for k, v in next(iterator).items() if k.startswith("aug_")})
               for _ in range(repeats + 1)]
    close()
    render = jax.jit(render_batch)
    render(batches[0]).block_until_ready()
    start, cpu_start = time.perf_counter(), time.process_time()
    for b in batches[1:]:
        render(b).block_until_ready()
    images = repeats * batch
    return 1000 * (time.perf_counter() - start) / images, 1000 * (time.process_time() - cpu_start) / images


def ultralytics_batches(data_yaml: str, imgsz: int, batch: int, workers: int):
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics.cfg import get_cfg  # pylint: disable=import-outside-toplevel
    from ultralytics.data import build_dataloader, build_yolo_dataset  # pylint: disable=import-outside-toplevel
    from ultralytics.data.utils import check_det_dataset  # pylint: disable=import-outside-toplevel

    cfg = get_cfg(overrides={"imgsz": imgsz, "batch": batch, "workers": workers, "data": data_yaml})
    data = check_det_dataset(data_yaml)
    dataset = build_yolo_dataset(cfg, data["train"], batch, data, mode="train", stride=32)
    loader = build_dataloader(dataset, batch, workers, shuffle=True, rank=-1)

    def forever():
        while True:
            yield from loader

    return forever(), loader.close


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="ultralytics data.yaml (its train split)")
    parser.add_argument("--synthetic", action="store_true", help="benchmark a generated set of shapes instead")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per pipeline per round")
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

    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        tmp = Path(tmp)
        if args.synthetic:
            source_yaml = str(write_synthetic_dataset(tmp / "synthetic", num_train=64, num_val=1,
                                                      size_range=(480, 800), max_shapes=8))
        else:
            source_yaml = args.data
        data_yaml = looped_copy(source_yaml, args.min_images, tmp / "looped")
        builders = {
            "yolojax": lambda: yolojax_batches(data_yaml, args.imgsz, args.batch, args.workers, args.mosaic_pool),
            "ultralytics": lambda: ultralytics_batches(data_yaml, args.imgsz, args.batch, args.workers),
            "device+ram": lambda: device_ram_batches(data_yaml, args.imgsz, args.batch, args.workers,
                                                     args.mosaic_pool),
        }
        warmup = args.warmup if args.warmup is not None else 4 * args.workers + 2
        seconds = {name: 0.0 for name in builders}
        cpu = {name: 0.0 for name in builders}
        for r in range(args.rounds):
            rates = {}
            for name in sorted(builders, reverse=bool(r % 2)):  # alternate which goes first
                iterator, close = builders[name]()
                time_batches(iterator, warmup)  # start-up, then drain the prefetch buffers
                cpu_start = cpu_seconds()
                dt = time_batches(iterator, args.batches)
                cpu[name] += cpu_seconds() - cpu_start
                close()
                del iterator
                seconds[name] += dt
                rates[name] = args.batches * args.batch / dt
            print(f"round {r}: " + "   ".join(f"{k} {v:7.1f} img/s" for k, v in sorted(rates.items())), flush=True)
        render_ms = device_render_ms(data_yaml, args.imgsz, args.batch, args.mosaic_pool)
    t_ours, t_theirs = seconds["yolojax"], seconds["ultralytics"]
    images = args.rounds * args.batches * args.batch
    rate_ours, rate_theirs = images / t_ours, images / t_theirs
    print(f"data: {args.data or 'synthetic'}  imgsz: {args.imgsz}  batch: {args.batch}  workers: {args.workers}  "
          f"mosaic_pool: {args.mosaic_pool}")
    print(f"yolojax: {rate_ours:.1f} img/s, {1000 * cpu['yolojax'] / images:.1f} CPU ms/img")
    print(f"ultralytics: {rate_theirs:.1f} img/s, {1000 * cpu['ultralytics'] / images:.1f} CPU ms/img")
    print(f"cpu efficiency: {cpu['ultralytics'] / cpu['yolojax']:.2f}  (ultralytics CPU time / yolojax CPU time)")
    print(f"speedup: {rate_ours / rate_theirs:.2f}")
    print(device_lines(cpu["device+ram"], cpu["ultralytics"], images, render_ms))
    return 0


def device_lines(cpu_device: float, cpu_ultralytics: float, images: int, render_ms: tuple[float, float]) -> str:
    """The device+ram report: host CPU per image and per core, beside ultralytics', and the
    pixel work per image left to the train step."""
    import jax  # pylint: disable=import-outside-toplevel

    ms = 1000 * cpu_device / images
    return (f"device+ram: {ms:.2f} ms host CPU per image, {1000 / ms:.0f} img/s per host core "
            f"(images decoded into memory before timing)\n"
            f"device+ram vs ultralytics host CPU per image: {cpu_ultralytics / cpu_device:.1f}x less\n"
            f"device augmentation in the step: {render_ms[0]:.2f} ms per image, {render_ms[1]:.2f} ms CPU "
            f"(jit(render_batch) on {jax.default_backend()})")


if __name__ == "__main__":
    sys.exit(main())
