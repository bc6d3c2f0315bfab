"""Training side by side with ultralytics' trainer (the oracle, run in a subprocess).

* Trajectory, once per model family: fine-tune on all 8 coco8 images (coco8-trainval.yaml) with
  mosaic and every augmentation off, batch = the whole dataset (one step per epoch, so shuffling
  cannot matter), SGD without warmup (nbs = batch: one update per step), fp32, 5 epochs at
  imgsz 320. The first step's loss items agree within 1e-3 relative; every epoch's loss items
  within 1% and mAP50-95 within 0.01 of ultralytics' results.csv; and ultralytics' own run must
  lower every loss item and end above mAP50-95 0.1, else the comparison would show little.
  - YOLOv8 starts from the official yolov8n.pt. Its first-step cls loss differs by ~2e-4
    relative, all of it ultralytics': torch's CPU BCE-with-logits computes (1 - y) x -
    logsigmoid(x), which cancels to 0 for the many confident negatives (x ~ -16, true term
    1e-7); yolojax's log1p form gives the float64 value.
  - YOLO11 has no official weights offline, so the test makes them with ultralytics alone:
    ``YOLO("yolo11n.yaml")`` (its random init, torch seed 0) saved with ``.save``, 10 epochs of
    AdamW on the same 8 images (:data:`YOLO11_PRETRAIN`), then the BatchNorm running statistics
    recomputed on that batch, saved with ``.save`` again: that .pt is both trainers' ``model=``.
    The recomputation matters: the trainer's momentum-0.03 averages lag far behind weights that
    move this fast, and without it the model scores mAP 0 (its train losses notwithstanding).
    With it, it scores mAP50-95 ~0.38 and its losses are still high, so the 5 SGD steps move
    everything (here): the losses rise 4-17% over the first two steps (lr 0.01 after AdamW's
    decayed 4e-5 overshoots) and end below their start; the mAP50-95 goes 0.12 -> 0.27.
* Statistics: default augmentation (mosaic, HSV, flips, scale / translate, close_mosaic) on the
  synthetic shapes, from yolov8n.pt: yolojax's final mAP50 lies within the spread of
  ultralytics' own runs with different seeds.

The ultralytics runs go in a subprocess started before yolojax trains, so they use the core
that XLA's (single-threaded) compilation leaves idle (making the YOLO11 weights comes first,
~20 s). Run time on the project's shared 2-core box with other jobs running (load 5-6), with
a cold XLA compilation cache (compile_cache=auto: ~/.cache/yolojax/jax): trajectory 126 s
(yolov8n) and 202 s (yolo11n) wall, 87 s and 131 s of CPU time (both trainers, compilation
included; 119 s wall and 73 s CPU for yolo11n with a warm cache); the statistics test (load 6-8)
283 s wall, 199 s CPU. So about 2, 3 and 4-5 minutes on an idle 2-core machine.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from shared_data import COCO8, WEIGHTS, needs

pytest.importorskip("ultralytics", reason="ultralytics (the test oracle) not installed")

REPO = Path(__file__).resolve().parents[1]
needs_shared = needs(WEIGHTS, COCO8 / "coco8-trainval.yaml")
needs_weights = needs(WEIGHTS)

NO_AUGMENTATION = {"mosaic": 0.0, "mixup": 0.0, "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0, "translate": 0.0,
                   "scale": 0.0, "fliplr": 0.0, "flipud": 0.0, "degrees": 0.0, "shear": 0.0, "perspective": 0.0,
                   "close_mosaic": 0}

_ULTRALYTICS_SCRIPT = """
import json, sys
from ultralytics import YOLO
for run in json.loads(sys.argv[1]):
    model = run.pop("model")
    YOLO(model).train(**run)
"""

# A run of start_ultralytics(..., script=_PRETRAIN_SCRIPT): the random init of run["model"] (a model
# yaml, torch seed 0) saved to run["init"] and trained with the rest of run; then its last.pt with the
# BatchNorm running statistics recomputed on the (one) training batch, saved to run["out"].
_PRETRAIN_SCRIPT = """
import json, sys, torch
from ultralytics import YOLO
for run in json.loads(sys.argv[1]):
    init, out = run.pop("init"), run.pop("out")
    torch.manual_seed(0)
    YOLO(run.pop("model")).save(init)
    model = YOLO(init)
    model.train(**run)
    batch = model.trainer.preprocess_batch(next(iter(model.trainer.train_loader)))
    tuned = YOLO(str(model.trainer.last))
    norms = [m for m in tuned.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the batches seen: here the one batch
    tuned.model.float().train()
    with torch.no_grad():
        tuned.model(batch["img"].float())
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    tuned.model.eval()
    tuned.save(out)
"""


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children so far."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def start_ultralytics(runs: list[dict], root: Path, script: str = _ULTRALYTICS_SCRIPT) -> subprocess.Popen:
    """ultralytics' ``YOLO(model).train(**run)`` (or ``script``'s steps) for each run, one after the
    other, in a subprocess."""
    common = {"device": "cpu", "workers": 0, "amp": False, "plots": False, "deterministic": True, "verbose": False,
              "exist_ok": True, "project": str(root / "runs")}
    runs = [{**common, **run} for run in runs]
    env = dict(os.environ, YOLO_OFFLINE="1", YOLO_CONFIG_DIR=str(root / "settings"))
    root.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-c", script, json.dumps(runs)], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, timeout: float = 900) -> None:
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out[-4000:]


def results_csv(root: Path, name: str) -> list[dict[str, float]]:
    with (root / "runs" / name / "results.csv").open() as f:
        return [{k.strip(): float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def yolojax_train(workdir: Path, data_yaml: Path, config_name: str = "yolov8n", **fields) -> list[dict]:
    """``python -m yolojax.train`` in this process (configs/<config_name>.py + ``fields``); metrics.jsonl rows."""
    from yolojax.config import load_config
    from yolojax.train.run import train

    config = load_config(config_name)
    config.data.yaml = str(data_yaml)
    config.data.workers = 0
    config.log_every_steps = 1
    config.progress = False
    config.checkpoint.every_steps = 0
    config.checkpoint.keep = 1
    config.checkpoint.keep_best = False
    for key, value in fields.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    train(config, workdir)
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


# YOLO11n's start weights (module docstring): AdamW from ultralytics' random init, the lr decaying
# linearly from 0.004 to 4e-5 over 10 one-batch epochs. Validated after the last epoch only.
YOLO11_PRETRAIN = {"epochs": 10, "imgsz": 320, "batch": 8, "nbs": 8, "optimizer": "AdamW", "lr0": 0.004,
                   "lrf": 0.01, "momentum": 0.9, "weight_decay": 0.0005, "warmup_epochs": 0.0, "seed": 0,
                   "val": False}


def yolo11_start_weights(root: Path, data_yaml: Path) -> Path:
    """yolo11n.pt of the trajectory test, made by ultralytics under ``root`` (module docstring)."""
    out = root / "yolo11n-coco8.pt"
    finish(start_ultralytics([{"model": "yolo11n.yaml", "init": str(root / "yolo11n-init.pt"), "out": str(out),
                               "data": str(data_yaml), "name": "pretrain", **YOLO11_PRETRAIN, **NO_AUGMENTATION}],
                             root, script=_PRETRAIN_SCRIPT))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("model", [pytest.param("yolov8n", marks=needs_shared),
                                   pytest.param("yolo11n", marks=needs(COCO8 / "coco8-trainval.yaml"))])
def test_trajectory_matches_ultralytics_trainer(tmp_path, model):
    """From yolov8n.pt, or from yolo11n weights ultralytics makes first (module docstring), no
    augmentation, batch = all 8 images, SGD without warmup, fp32, 5 epochs at 320.

    The mAP50-95 is that of coco8's 4 val images (also trained on), one value per epoch: it checks
    that validation scores the two trainers' weights alike and that they stay close after 5 steps;
    with 4 images and 17 boxes it cannot resolve differences much below its 0.01 tolerance."""
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    epochs, imgsz, batch = 5, 320, 8
    theirs = shutil.copytree(COCO8, tmp_path / "theirs" / "coco8")  # each trainer writes its own label caches
    ours = shutil.copytree(COCO8, tmp_path / "ours" / "coco8")
    if model == "yolov8n":
        weights = WEIGHTS
    else:
        weights = yolo11_start_weights(tmp_path / "start", theirs / "coco8-trainval.yaml")
    t_start = time.perf_counter() - t0
    recipe = {"epochs": epochs, "imgsz": imgsz, "batch": batch, "optimizer": "SGD", "lr0": 0.01, "lrf": 0.01,
              "momentum": 0.937, "weight_decay": 0.0005, "warmup_epochs": 0.0, "nbs": batch, "seed": 0}
    ultra = start_ultralytics([{"model": str(weights), "data": str(theirs / "coco8-trainval.yaml"), "name": "traj",
                                "val": True, **recipe, **NO_AUGMENTATION}], tmp_path / "theirs")
    try:
        rows = yolojax_train(tmp_path / "ours" / "run", ours / "coco8-trainval.yaml", config_name=model,
                             weights=str(weights), batch_size=recipe.pop("batch"), dtype="float32", **recipe,
                             **NO_AUGMENTATION)
    finally:
        finish(ultra)
    ref = results_csv(tmp_path / "theirs", "traj")
    steps = {r["step"]: r for r in rows if "loss" in r}
    vals = {r["epoch"]: r for r in rows if "mAP50-95" in r}
    assert len(ref) == epochs and sorted(steps) == list(range(1, epochs + 1)) and sorted(vals) == list(range(epochs))
    lines = []
    for e in range(epochs):
        mine, theirs_row = steps[e + 1], ref[e]
        lines.append(f"epoch {e + 1}: " + "  ".join(
            f"{k} {mine[k]:.5f}/{theirs_row[f'train/{k}_loss']:.5f}" for k in ("box", "cls", "dfl"))
            + f"  mAP50-95 {vals[e]['mAP50-95']:.4f}/{theirs_row['metrics/mAP50-95(B)']:.4f}")
    first = "  ".join(f"{k} {abs(steps[1][k] / ref[0][f'train/{k}_loss'] - 1):.1e}" for k in ("box", "cls", "dfl"))
    print(f"\n{model}: yolojax/ultralytics\n" + "\n".join(lines) + f"\nfirst step's relative errors: {first}"
          + f"\n{time.perf_counter() - t0:.0f} s wall ({t_start:.0f} s making the start weights), "
          + f"{_cpu_seconds() - cpu0:.0f} s CPU")
    for e in range(epochs):
        tol = 1e-3 if e == 0 else 1e-2
        for k in ("box", "cls", "dfl"):
            theirs_value = ref[e][f"train/{k}_loss"]
            assert abs(steps[e + 1][k] - theirs_value) <= tol * abs(theirs_value), (e + 1, k, lines[e])
        assert abs(vals[e]["mAP50-95"] - ref[e]["metrics/mAP50-95(B)"]) <= 0.01, lines[e]
    # The comparison means something only if ultralytics' run learns and its weights detect.
    for k in ("box", "cls", "dfl"):
        assert ref[-1][f"train/{k}_loss"] < ref[0][f"train/{k}_loss"], (k, "ultralytics' loss did not decrease")
    assert ref[-1]["metrics/mAP50-95(B)"] > 0.1, "ultralytics' weights must detect for the mAP check to mean much"


# ----------------------------------------------------------------------------------------
# Statistics with default augmentation.
# ----------------------------------------------------------------------------------------

SHAPES = {"num_train": 32, "num_val": 32, "size_range": (96, 160), "max_shapes": 3, "seed": 0}
# ultralytics' defaults (mosaic, HSV, flips, translate, scale; optimizer 'auto': AdamW at
# lr 0.001 here; 3 warmup epochs), but close_mosaic = 2 of the 10 epochs: its default (10)
# would switch mosaic off for the whole run. One optimiser update per batch (nbs = batch).
STATS_RUN = {"epochs": 10, "imgsz": 128, "batch": 16, "nbs": 16, "close_mosaic": 2}
ULTRALYTICS_SEEDS = (0, 1, 2, 3)


def shapes_dataset(root: Path) -> Path:
    from yolojax.data.sources.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(root, **SHAPES)


def stats_ultralytics_runs(data_yaml: Path, seeds=ULTRALYTICS_SEEDS) -> list[dict]:
    """One run per seed, validated after the last epoch only (ultralytics always validates the last epoch)."""
    return [{"model": str(WEIGHTS), "data": str(data_yaml), "name": f"seed{s}", "seed": s, "val": False,
             **STATS_RUN} for s in seeds]


def stats_yolojax_fields(seed: int = 0) -> dict:
    run = dict(STATS_RUN)
    return {"weights": str(WEIGHTS), "seed": seed, "batch_size": run.pop("batch"), "val.every_epochs": run["epochs"],
            **run}


@pytest.mark.slow
@needs_weights
def test_default_augmentation_learns_like_ultralytics(tmp_path):
    """yolov8n.pt fine-tuned on the synthetic shapes with default augmentation: yolojax's final mAP50 lies
    within the spread of ultralytics' runs with seeds 0-3, the spread being their range widened by itself on
    each side ([min - R, max + R]: a fifth run of the same distribution falls outside it ~6% of the time)."""
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    theirs = shapes_dataset(tmp_path / "theirs" / "shapes")
    ours = shapes_dataset(tmp_path / "ours" / "shapes")
    ultra = start_ultralytics(stats_ultralytics_runs(theirs), tmp_path / "theirs")
    try:
        rows = yolojax_train(tmp_path / "ours" / "run", ours, **stats_yolojax_fields(0))
    finally:
        finish(ultra)
    finals = [results_csv(tmp_path / "theirs", f"seed{s}")[-1]["metrics/mAP50(B)"] for s in ULTRALYTICS_SEEDS]
    vals = [r for r in rows if "mAP50" in r]
    assert len(vals) == 1 and vals[0]["epoch"] == STATS_RUN["epochs"] - 1
    mine = vals[0]["mAP50"]
    low, high = min(finals), max(finals)
    spread = high - low
    print(f"\nfinal mAP50: yolojax {mine:.4f}; ultralytics seeds {ULTRALYTICS_SEEDS}: "
          + ", ".join(f"{v:.4f}" for v in finals) + f" (band [{low - spread:.4f}, {high + spread:.4f}])"
          + f"\n{time.perf_counter() - t0:.0f} s wall, {_cpu_seconds() - cpu0:.0f} s CPU")
    assert min(finals) > 0.3, "ultralytics' runs must learn for the comparison to mean anything"
    assert low - spread <= mine <= high + spread
