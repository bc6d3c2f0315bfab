"""bfloat16 compute trains like float32 (the Precision contract of DESIGN.md).

The same fine-tune as tests/test_train_parity.py's trajectory (yolov8n.pt on the 8 coco8
images, no augmentation, one step per epoch, SGD without warmup, 5 epochs at imgsz 320) runs
in float32 and in bfloat16 (float32 parameters, optimiser, EMA, BatchNorm statistics and loss).

How close is close: this 5-step fine-tune at lr0 0.01 amplifies any perturbation. A float32
run whose initial weights are scaled by (1 + 2e-3 N(0, 1)), one bfloat16 rounding, ends up to
4.8 % away per loss item and 0.016 mAP50-95 away from the unperturbed run (2-core CPU,
2026-12-06); bfloat16 computes with that rounding at every layer and lands up to 5.3 % and
0.041 away (docs/train.md, "Precision"). mAP50-95 over coco8's 8 images cannot resolve 0.01
here, so the test bounds the loss items by 6 % per epoch and the final mAP50-95 by 0.05:
bounds at that noise, which a run that learns differently (not just rounds differently)
leaves. The
8-device bfloat16 equivalence and the float32 gradient all-reduce are in tests/test_parallel.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from shared_data import COCO8, WEIGHTS, needs
from test_train_parity import NO_AUGMENTATION, yolojax_train

LOSS_TOLERANCE = 0.06  # relative, per epoch and loss item
MAP_TOLERANCE = 0.05


@pytest.mark.slow
@needs(WEIGHTS, COCO8 / "coco8-trainval.yaml")
def test_bfloat16_finetune_follows_float32(tmp_path):
    recipe = dict(weights=str(WEIGHTS), epochs=5, imgsz=320, batch_size=8, optimizer="SGD", lr0=0.01, lrf=0.01,
                  momentum=0.937, weight_decay=0.0005, warmup_epochs=0.0, nbs=8, seed=0, **NO_AUGMENTATION)
    runs, seconds = {}, {}
    for dtype in ("float32", "bfloat16"):
        t0 = time.perf_counter()
        runs[dtype] = yolojax_train(tmp_path / dtype, COCO8 / "coco8-trainval.yaml", dtype=dtype, **recipe)
        seconds[dtype] = time.perf_counter() - t0
    steps = {d: {r["step"]: r for r in rows if "loss" in r} for d, rows in runs.items()}
    maps = {d: [r["mAP50-95"] for r in rows if "mAP50-95" in r] for d, rows in runs.items()}
    lines = [f"epoch {e}: " + "  ".join(f"{k} {steps['float32'][e][k]:.5f}/{steps['bfloat16'][e][k]:.5f}"
                                        for k in ("box", "cls", "dfl")) for e in range(1, 6)]
    print("\nfloat32/bfloat16\n" + "\n".join(lines) + f"\nmAP50-95 {maps['float32']} / {maps['bfloat16']}"
          f"\n{seconds['float32']:.0f} s / {seconds['bfloat16']:.0f} s")
    assert sorted(steps["bfloat16"]) == list(range(1, 6)) and len(maps["bfloat16"]) == 5
    for e in range(1, 6):
        for k in ("box", "cls", "dfl"):
            f32, bf16 = steps["float32"][e][k], steps["bfloat16"][e][k]
            assert abs(bf16 - f32) <= LOSS_TOLERANCE * abs(f32), (e, k, lines[e - 1])
    assert abs(maps["bfloat16"][-1] - maps["float32"][-1]) <= MAP_TOLERANCE, (maps["float32"], maps["bfloat16"])
    config = Path(tmp_path / "bfloat16" / "config.json").read_text()
    assert '"dtype": "bfloat16"' in config
