"""The model summary line equals ultralytics 8.4.190's model_info for YOLOv8 n/s/m/l/x (nc=80),
as a trainer builds the model (unfused) and as it is fused, counted by ultralytics itself on its
DetectionModel built from yolov8{n,s,m,l,x}.yaml (no weights)."""

from __future__ import annotations

import os

import pytest

from yolojax.models import YOLOv8
from yolojax.models.summary import SUMMARY_IMGSZ, loaded_summary_line, model_summary

os.environ.setdefault("YOLO_OFFLINE", "1")


def _ultralytics_info(scale: str, fused: bool) -> tuple[int, int, int, float]:
    pytest.importorskip("thop")
    tasks = pytest.importorskip("ultralytics.nn.tasks")
    from ultralytics.utils.torch_utils import model_info

    model = tasks.DetectionModel(f"yolov8{scale}.yaml", nc=80, verbose=False)
    if fused:
        model.fuse(verbose=False)
    return model_info(model, imgsz=SUMMARY_IMGSZ)


@pytest.mark.parametrize("scale", ["n", "s", "m", "l", "x"])
def test_summary_equals_ultralytics_model_info(scale):
    model = YOLOv8(scale=scale, num_classes=80)
    for fused in (False, True):
        ours = model_summary(model, fused=fused)
        layers, params, grads, gflops = _ultralytics_info(scale, fused)
        assert (ours.layers, ours.parameters, ours.gradients) == (layers, params, grads), (scale, fused)
        assert ours.gflops == pytest.approx(gflops, rel=1e-9), (scale, fused)
        assert f"{ours.gflops:.1f}" == f"{gflops:.1f}"


def test_summary_lines_as_ultralytics_prints_them():
    """The issue's line for a trainer's YOLOv8n; val/predict of loaded weights: fused, 0 gradients (a
    loaded checkpoint's parameters are frozen), GFLOPs at 640 whatever the run's imgsz."""
    model = YOLOv8(scale="n", num_classes=80)
    assert model_summary(model).line() == ("YOLOv8n summary: 129 layers, 3,157,200 parameters, "
                                           "3,157,184 gradients, 8.9 GFLOPs")
    info = {"scale": "n", "num_classes": 80, "reg_max": 16}
    assert loaded_summary_line(info) == ("YOLOv8n summary (fused): 72 layers, 3,151,904 parameters, 0 gradients, "
                                         "8.7 GFLOPs")
    assert model_summary(model, imgsz=320).gflops == pytest.approx(2.2137728e0, rel=1e-9)  # ultralytics imgsz=320
