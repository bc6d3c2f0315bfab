"""A fine-tune with data.augment_on='device' trains like host mode: yolojax.train's run on
coco8 from yolov8n.pt, the same seed in both modes. The draws and boxes are the same and the
pixels within +-1, so every step's loss agrees closely and the final mAP is host mode's
within run-to-run noise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from yolojax.config import load_config
from shared_data import SHARED, WEIGHTS, needs

REPO = Path(__file__).resolve().parents[1]
COCO8 = SHARED / "coco8" / "coco8-trainval.yaml"


def finetune(workdir: Path, augment_on: str) -> list[dict]:
    """yolojax.train's run in this process (one JAX process: the validation compiles once)."""
    from yolojax.train.run import train

    config = load_config("yolov8n")
    config.data.yaml, config.weights = str(COCO8), str(SHARED / "yolov8n.pt")
    config.imgsz, config.epochs, config.close_mosaic, config.batch_size = 160, 3, 1, 8
    config.data.workers, config.progress, config.log_every_steps = 0, False, 1
    config.val.every_epochs, config.checkpoint.keep_best, config.checkpoint.async_save = 3, False, False
    config.compile_cache = "off"
    config.data.augment_on = augment_on
    train(config, workdir)
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@needs(WEIGHTS, COCO8)
@pytest.mark.slow
def test_device_mode_finetune_matches_host_mode(tmp_path):
    host = finetune(tmp_path / "host", "host")
    device = finetune(tmp_path / "device", "device")
    host_steps = [r for r in host if "loss" in r]
    device_steps = [r for r in device if "loss" in r]
    assert [r["step"] for r in host_steps] == [r["step"] for r in device_steps] and len(host_steps) == 3
    for a, b in zip(host_steps, device_steps):  # mosaic epochs, then one without (close_mosaic=1)
        for part in ("box", "cls", "dfl"):
            assert b[part] == pytest.approx(a[part], rel=2e-3), (a, b)
    host_map = [r for r in host if "mAP50-95" in r][-1]
    device_map = [r for r in device if "mAP50-95" in r][-1]
    assert host_map["mAP50-95"] > 0.3  # the pretrained skill kept: the fine-tune did not break the model
    assert device_map["mAP50-95"] == pytest.approx(host_map["mAP50-95"], abs=0.02)
    assert device_map["mAP50"] == pytest.approx(host_map["mAP50"], abs=0.02)
