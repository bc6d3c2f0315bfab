"""Knowledge distillation side by side: a student fine-tuned with and without a teacher, by
ultralytics 8.4.190 and by yolojax, on the same data, recipe and machine.

    YOLO_OFFLINE=1 python tools/bench_distill.py --data ../shared/data/coco8/coco8.yaml \
        --student ../shared/data/yolov8n.pt --teacher ../shared/data/yolov8s.pt --epochs 30 --imgsz 320 \
        --set nbs=4 --set warmup_epochs=0

Each of the four runs (ultralytics / yolojax x without / with ``distill_model``) is its own
process, one after another, so no framework's threads disturb another's. Both fine-tune with
the same arguments (ultralytics' defaults otherwise: optimizer=auto, warmup, mosaic, ...;
workers=0, amp off on CPU) and validate the EMA weights after every epoch. Printed: mAP50 and
mAP50-95 after the last epoch and at the best epoch, and the median seconds per train step
after the first (the first compiles in yolojax and warms up in ultralytics), with the
distillation's step-time cost as a ratio. ``--json`` writes the rows.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from yolojax.cli import parse_value


def ultralytics_run(args: argparse.Namespace, teacher: str, out: Path) -> dict:
    """Fine-tune with ultralytics' trainer in this process; per-epoch mAP from its results.csv
    and the train-step seconds from batch callbacks."""
    from ultralytics import YOLO

    model = YOLO(args.student)
    marks: list[float] = []
    model.add_callback("on_train_batch_start", lambda _: marks.append(time.perf_counter()))
    model.add_callback("on_train_batch_end", lambda _: marks.append(time.perf_counter()))
    extra = {"distill_model": teacher, "dis": args.dis} if teacher else {}
    extra.update({k: parse_value(v) for k, v in (kv.split("=", 1) for kv in args.set)})
    model.train(data=args.data, epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, workers=0, device="cpu",
                seed=0, plots=False, project=str(out), name="run", exist_ok=True, verbose=False, **extra)
    with open(out / "run" / "results.csv") as f:
        rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(f)]
    maps = [(float(r["metrics/mAP50(B)"]), float(r["metrics/mAP50-95(B)"])) for r in rows]
    steps = [end - start for start, end in zip(marks[0::2], marks[1::2])]
    return {"maps": maps, "step_s": statistics.median(steps[1:])}


def yolojax_run(args: argparse.Namespace, teacher: str, out: Path) -> dict:
    """Fine-tune with ``yolojax train`` (same keys); per-epoch mAP and step times from metrics.jsonl."""
    keys = [f"model={args.student}", f"data={args.data}", f"epochs={args.epochs}", f"imgsz={args.imgsz}",
            f"batch={args.batch}", "workers=0", "seed=0", "plots=False", f"project={out}", "name=run",
            "exist_ok=True", "log_every_steps=1", "progress=False"]
    if teacher:
        keys += [f"distill_model={teacher}", f"dis={args.dis}"]
    keys += args.set
    subprocess.run([sys.executable, "-m", "yolojax", "train", *keys], check=True)
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    maps = [(r["mAP50"], r["mAP50-95"]) for r in rows if "mAP50-95" in r]
    steps = [args.batch / r["images_per_s"] for r in rows if "loss" in r and r["step"] > 1]
    return {"maps": maps, "step_s": statistics.median(steps)}


def run_side(side: str, teacher: str, args: argparse.Namespace) -> dict:
    """One run in a fresh process: ``python bench_distill.py --side SIDE ...``; returns its JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        command = [sys.executable, __file__, "--side", side, "--teacher-run", teacher, "--result", str(result),
                   "--data", args.data, "--student", args.student, "--epochs", str(args.epochs),
                   "--imgsz", str(args.imgsz), "--batch", str(args.batch), "--dis", str(args.dis), "--out", tmp,
                   *[f"--set={kv}" for kv in args.set]]
        subprocess.run(command, check=True, env={**os.environ, "YOLO_OFFLINE": "1"})
        return json.loads(result.read_text())


def table(rows: list[dict]) -> str:
    """The markdown table of the four runs."""
    lines = ["| framework | teacher | mAP50 (last) | mAP50-95 (last) | mAP50-95 (best epoch) | s / step | "
             "step time vs no teacher |", "|---|---|---|---|---|---|---|"]
    base = {r["side"]: r["step_s"] for r in rows if not r["teacher"]}
    for r in rows:
        last50, last = r["maps"][-1]
        best = max(m for _, m in r["maps"])
        lines.append(f"| {r['side']} | {Path(r['teacher']).name if r['teacher'] else 'none'} | {last50:.3f} | "
                     f"{last:.3f} | {best:.3f} | {r['step_s']:.2f} | {r['step_s'] / base[r['side']]:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--student", required=True)
    parser.add_argument("--teacher", default="")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--dis", type=float, default=6.0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="another train argument for both frameworks, e.g. --set nbs=4 (repeatable)")
    parser.add_argument("--json", default="")
    parser.add_argument("--side", choices=("ultralytics", "yolojax"), help=argparse.SUPPRESS)
    parser.add_argument("--teacher-run", default="", help=argparse.SUPPRESS)
    parser.add_argument("--result", default="", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:  # a worker process: one run
        run = ultralytics_run if args.side == "ultralytics" else yolojax_run
        Path(args.result).write_text(json.dumps(run(args, args.teacher_run, Path(args.out))))
        return
    rows = []
    for side in ("ultralytics", "yolojax"):
        for teacher in ("", args.teacher):
            rows.append({"side": side, "teacher": teacher, **run_side(side, teacher, args)})
            print(json.dumps(rows[-1]), flush=True)
    print(f"uptime: {os.getloadavg()}")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
