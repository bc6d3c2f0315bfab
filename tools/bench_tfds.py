"""Reading speed of the same images from YOLO folders and from their TFDS (array_record) copy.

    python tools/bench_tfds.py [--data /work/shared/data/coco8/coco8.yaml] [--repeat 64]
        [--workers 2 --batches 16 --warmup 2 --batch 16 --imgsz 640 --epochs 100 --rounds 3] [--json PATH]

Inputs, made in a temporary folder: a YOLO dataset whose train split holds the --data train
images --repeat times over, as distinct files under new names (``r0000_<stem>.jpg``, ...) with
their label files, like a real dataset (the val split is copied once: the TFDS copy needs it);
and its TFDS copy, written from that data.yaml by ``tools/tfds_from_yolo.build_tfds_copy``
(repeat=1: the TFDS records hold the very same image files' bytes, in the same order). Only the
--data files are read; nothing is written beside them.

Measured for both sources, each measurement in its own fresh Python process (this file run
with ``--measure``), so no page of Python state, reader or worker carries over:

    first open (scan)   the split opened with its label-scan cache removed: every image decoded
                        and checked, the cache written (yolo_source / TfdsDataset.source);
                        yolojax.data and tensorflow_datasets are imported first, untimed, in
                        both sources' processes
    cached open         the split opened again (the scan read from its cache)
    source[i]           records/s of ``source[i]`` over every index once, in one thread, image
                        decode included (``cv2.setNumThreads(1)``; one untimed ``source[0]``
                        first opens the TFDS reader), and the CPU ms of this process per record
    train pipeline      images/s of ``make_train_iterator(..., imgsz, batch, epochs, seed=0,
                        workers)`` (mosaic and ultralytics' default augmentations; --epochs 100
                        keeps close_mosaic's last 10 epochs out of reach): ``next()`` timed over
                        --batches batches after --warmup (2) batches (worker start-up; what the
                        workers prefetched meanwhile, up to 2 batches each, falls in the timed
                        ones), then ``close()``; and the CPU ms per image of this process and
                        its worker processes

Every measurement is repeated --rounds times; each round runs a measurement for one source and
then for the other, the order alternating from round to round. The table shows the median and
the spread (min-max) of each side and the ratio TFDS / folders of the medians (> 1: TFDS
faster for rates, slower for times and CPU). Both sides read from the page cache (the files
were just written): this compares the formats' reading and decoding, not disk speed. Wall-clock
figures depend on the machine's other load: ``uptime`` is printed before and after.
"""

from __future__ import annotations

import argparse
import glob
import json
import multiprocessing
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_TOOLS = Path(__file__).resolve().parent
_REPO = _TOOLS.parent
for _p in (str(_REPO), str(_TOOLS)):  # the checkout's yolojax, and tools/ (tfds_from_yolo)
    if _p not in sys.path:
        sys.path.insert(0, _p)

from bench_data import cpu_seconds, load_average  # noqa: E402 - tools/ is on the path above

SOURCES = ("folders", "tfds")
TFDS_NAME = "bench_tfds_copy"
# (key, row label, format, lower is better): the table's rows, in order.
ROWS = (
    ("first_open_s", "first open (label scan), s", "{:.2f}", True),
    ("cached_open_s", "cached open, s", "{:.3f}", True),
    ("records_per_s", "source[i], records/s (1 thread)", "{:.1f}", False),
    ("record_cpu_ms", "source[i], CPU ms/record", "{:.2f}", True),
    ("images_per_s", "train pipeline, images/s", "{:.1f}", False),
    ("image_cpu_ms", "train pipeline, CPU ms/image (all procs)", "{:.2f}", True),
)


# ----------------------------------------------------------------------------- inputs


def make_inputs(data_yaml: str, repeat: int, root: Path) -> tuple[str, str]:
    """Write the enlarged YOLO dataset and its TFDS copy under ``root``.

    Returns:
      (the YOLO data.yaml, the TFDS data dir holding ``TFDS_NAME``).
    """
    import yaml  # pylint: disable=import-outside-toplevel

    from tfds_from_yolo import build_tfds_copy  # pylint: disable=import-outside-toplevel
    from yolojax.data import (  # pylint: disable=import-outside-toplevel
        image_to_label_paths,
        list_image_files,
        load_data_yaml,
    )

    spec = load_data_yaml(data_yaml)
    folder = root / "yolo"
    for split, copies in (("train", repeat), ("val", 1)):
        images = list_image_files(spec.splits[split])
        labels = image_to_label_paths(images)
        (folder / "images" / split).mkdir(parents=True, exist_ok=True)
        (folder / "labels" / split).mkdir(parents=True, exist_ok=True)
        for r in range(copies):
            for image, label in zip(images, labels):
                stem = f"r{r:04d}_{Path(image).stem}"
                shutil.copyfile(image, folder / "images" / split / (stem + Path(image).suffix))
                if os.path.isfile(label):
                    shutil.copyfile(label, folder / "labels" / split / (stem + ".txt"))
    yolo_yaml = folder / "data.yaml"
    yolo_yaml.write_text(yaml.safe_dump({"path": str(folder), "train": "images/train", "val": "images/val",
                                         "names": dict(enumerate(spec.names))}))
    tfds_dir = root / "tfds"
    build_tfds_copy(yolo_yaml, tfds_dir, name=TFDS_NAME, repeat=1)
    return str(yolo_yaml), str(tfds_dir)


def scan_caches(source: str, yolo_yaml: str, tfds_dir: str) -> list[str]:
    """The label-scan cache files of ``source``'s splits."""
    folder = Path(yolo_yaml).parent / "labels" if source == "folders" else Path(tfds_dir) / TFDS_NAME
    return glob.glob(str(folder / "**" / "*.yolojax-cache.npz"), recursive=True)


# ----------------------------------------------------------------------------- measurements (child processes)


def open_source(source: str, yolo_yaml: str, tfds_dir: str):
    from yolojax.data import TfdsDataset, TfdsSpec, yolo_source  # pylint: disable=import-outside-toplevel

    if source == "folders":
        return yolo_source(yolo_yaml, "train")
    return TfdsDataset(TfdsSpec.parse("tfds:" + TFDS_NAME, data_dir=tfds_dir)).source("train")


def preimport() -> None:
    """Import yolojax.data and tensorflow_datasets (which TfdsDataset imports on first use) before
    any timing, in both sources' processes alike: the open times are then the opens alone."""
    import tensorflow_datasets  # noqa: F401 pylint: disable=import-outside-toplevel,unused-import

    import yolojax.data  # noqa: F401 pylint: disable=import-outside-toplevel,unused-import


def measure_scan(source: str, args: argparse.Namespace) -> dict:
    preimport()
    start = time.perf_counter()
    opened = open_source(source, args.yolo_yaml, args.tfds_dir)
    return {"first_open_s": time.perf_counter() - start, "images": len(opened)}


def measure_records(source: str, args: argparse.Namespace) -> dict:
    import cv2  # pylint: disable=import-outside-toplevel

    cv2.setNumThreads(1)
    preimport()
    start = time.perf_counter()
    opened = open_source(source, args.yolo_yaml, args.tfds_dir)
    cached_open = time.perf_counter() - start
    opened[0]  # pylint: disable=pointless-statement - the TFDS reader opens on first access
    count, nbytes = len(opened), 0
    start, cpu_start = time.perf_counter(), time.process_time()
    for i in range(count):
        nbytes += opened[i]["image"].nbytes
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {"cached_open_s": cached_open, "records_per_s": count / seconds, "record_cpu_ms": 1000 * cpu / count,
            "images": count, "decoded_mb": nbytes / 1e6}


def measure_pipeline(source: str, args: argparse.Namespace) -> dict:
    from yolojax.data import TfdsSpec, make_train_iterator  # pylint: disable=import-outside-toplevel

    data = args.yolo_yaml if source == "folders" else TfdsSpec.parse("tfds:" + TFDS_NAME, data_dir=args.tfds_dir)
    batches = make_train_iterator(data, imgsz=args.imgsz, batch_size=args.batch, epochs=args.epochs, seed=0,
                                  workers=args.workers, process_index=0, process_count=1)
    try:
        for _ in range(args.warmup):
            next(batches)
        worker_processes = len(multiprocessing.active_children())
        start, cpu_start = time.perf_counter(), cpu_seconds()
        for _ in range(args.batches):
            next(batches)
        seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    finally:
        batches.close()
    images = args.batches * args.batch
    return {"images_per_s": images / seconds, "image_cpu_ms": 1000 * cpu / images,
            "worker_processes": worker_processes}


MEASURES = {"scan": measure_scan, "records": measure_records, "pipeline": measure_pipeline}


def run_measure(kind: str, source: str, args: argparse.Namespace, yolo_yaml: str, tfds_dir: str) -> dict:
    """One measurement in a fresh Python process; its result (the last stdout line, JSON)."""
    command = [sys.executable, __file__, "--measure", kind, "--source", source, "--yolo-yaml", yolo_yaml,
               "--tfds-dir", tfds_dir, "--imgsz", str(args.imgsz), "--batch", str(args.batch), "--epochs",
               str(args.epochs), "--workers", str(args.workers), "--batches", str(args.batches),
               "--warmup", str(args.warmup)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.stderr.write(done.stdout + done.stderr)
        raise RuntimeError(f"--measure {kind} --source {source} failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- main


def spread(values: list[float], fmt: str) -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def table(results: dict[str, dict[str, list[float]]]) -> str:
    header = ("measurement", "YOLO folders", "TFDS", "TFDS/folders")
    lines = [header]
    for key, label, fmt, _ in ROWS:
        folders, tfds = results["folders"].get(key), results["tfds"].get(key)
        if not folders or not tfds:
            continue
        ratio = statistics.median(tfds) / statistics.median(folders)
        lines.append((label, spread(folders, fmt), spread(tfds, fmt), f"{ratio:.2f}"))
    widths = [max(len(line[c]) for line in lines) for c in range(len(header))]
    out = ["  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(line, widths)))
           for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="/work/shared/data/coco8/coco8.yaml",
                        help="data.yaml whose train images are repeated (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=64, help="copies of each train image (default: %(default)s)")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=100, help="epochs of the train schedule (mosaic on)")
    parser.add_argument("--workers", type=int, default=2, help="Grain worker processes of the train pipeline")
    parser.add_argument("--batches", type=int, default=16, help="timed train batches (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed train batches first (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="repeats of every measurement")
    parser.add_argument("--measures", default=",".join(MEASURES),
                        help="comma-separated, of %(default)s (default: all)")
    parser.add_argument("--json", help="also write the settings and every figure to this file")
    parser.add_argument("--measure", choices=tuple(MEASURES), help=argparse.SUPPRESS)  # child process modes
    parser.add_argument("--source", choices=SOURCES, help=argparse.SUPPRESS)
    parser.add_argument("--yolo-yaml", help=argparse.SUPPRESS)
    parser.add_argument("--tfds-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.measure:
        print(json.dumps(MEASURES[args.measure](args.source, args)), flush=True)
        return 0

    kinds = [k.strip() for k in args.measures.split(",") if k.strip()]
    if not kinds or any(k not in MEASURES for k in kinds):
        parser.exit(2, f"error: --measures takes a comma-separated list of {', '.join(MEASURES)}\n")
    if args.repeat < 1 or args.rounds < 1 or args.batches < 1:
        parser.exit(2, "error: --repeat, --rounds and --batches must be >= 1\n")
    command = " ".join(shlex.quote(a) for a in ["python", os.path.relpath(__file__)] + sys.argv[1:])
    wall_start = time.perf_counter()
    before = load_average()
    print(f"command: {command}")
    print(f"before: {before}", flush=True)
    results: dict[str, dict[str, list[float]]] = {s: {} for s in SOURCES}
    with tempfile.TemporaryDirectory(prefix="bench_tfds_") as tmp:
        start = time.perf_counter()
        yolo_yaml, tfds_dir = make_inputs(args.data, args.repeat, Path(tmp))
        build_s = time.perf_counter() - start
        images = len(glob.glob(str(Path(yolo_yaml).parent / "images" / "train" / "*")))
        folder_mb = sum(os.path.getsize(f) for f in glob.glob(str(Path(yolo_yaml).parent / "images" / "train" / "*")))
        shards_mb = sum(os.path.getsize(f) for f in glob.glob(str(Path(tfds_dir) / TFDS_NAME / "*" / "*train*")))
        print(f"inputs: {images} train images ({folder_mb / 1e6:.1f} MB of image files; TFDS train shards "
              f"{shards_mb / 1e6:.1f} MB), made in {build_s:.1f} s", flush=True)
        for r in range(args.rounds):
            order = SOURCES if r % 2 == 0 else SOURCES[::-1]
            for kind in kinds:
                for source in order:
                    if kind == "scan":
                        for cache in scan_caches(source, yolo_yaml, tfds_dir):
                            os.remove(cache)
                    for key, value in run_measure(kind, source, args, yolo_yaml, tfds_dir).items():
                        results[source].setdefault(key, []).append(value)
            elapsed = time.perf_counter() - wall_start
            print(f"round {r + 1}/{args.rounds} done ({' then '.join(order)}), {elapsed:.0f} s", flush=True)
    after = load_average()
    wall = time.perf_counter() - wall_start
    print()
    print(f"{images} train images (--repeat {args.repeat}), imgsz {args.imgsz}, batch {args.batch}, "
          f"workers {args.workers}, {args.batches} timed batches, {args.rounds} rounds; median (min-max)")
    print(table(results))
    print(f"before: {before}")
    print(f"after:  {after}")
    print(f"wall time: {wall:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": command, "settings": {k: v for k, v in vars(args).items()
                                                                              if k not in ("measure", "source",
                                                                                           "yolo_yaml", "tfds_dir")},
                                               "images": images, "before": before, "after": after, "wall_s": wall,
                                               "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
