"""The model summary line equals ultralytics 8.4.190's model_info for YOLOv8 and YOLO11 n/s/m/l/x
(nc=80, and one other class count), as a trainer builds the model (unfused), as it is fused, and
as val / predict print loaded weights (fused, parameters frozen), counted by ultralytics itself on
its DetectionModel built from yolov8{s}.yaml / yolo11{s}.yaml (no weights)."""

from __future__ import annotations

import logging
import os

import pytest

from yolojax.models import YOLOv8
from yolojax.models.summary import SUMMARY_IMGSZ, loaded_summary_line, model_summary
from yolojax.models.yolo11 import YOLO11

os.environ.setdefault("YOLO_OFFLINE", "1")


def _ultralytics_model(yaml: str, nc: int = 80, fused: bool = False, frozen: bool = False):
    """ultralytics' DetectionModel of ``yaml`` as a trainer builds it, or fused, or (``frozen``)
    with every parameter frozen as a loaded checkpoint's is."""
    pytest.importorskip("thop")
    tasks = pytest.importorskip("ultralytics.nn.tasks")
    model = tasks.DetectionModel(yaml, nc=nc, verbose=False)
    if fused:
        model.fuse(verbose=False)
    for p in model.parameters() if frozen else ():
        p.requires_grad = False
    return model


def _ultralytics_info(model) -> tuple[tuple[int, int, int, float], str]:
    """model_info's (layers, parameters, gradients, GFLOPs) and the summary line it logs."""
    from ultralytics.utils import LOGGER
    from ultralytics.utils.torch_utils import model_info

    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())
    level = LOGGER.level
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)
    try:
        counts = model_info(model, imgsz=SUMMARY_IMGSZ)
    finally:
        LOGGER.removeHandler(handler)
        LOGGER.setLevel(level)
    return counts, next(line for line in lines if " summary" in line)


def _assert_equal(ours, counts, line, label):
    layers, params, grads, gflops = counts
    assert (ours.layers, ours.parameters, ours.gradients) == (layers, params, grads), label
    assert ours.gflops == pytest.approx(gflops, rel=1e-9), label
    assert ours.line() == line, label


@pytest.mark.parametrize("scale", ["n", "s", "m", "l", "x"])
def test_summary_equals_ultralytics_model_info(scale):
    model = YOLOv8(scale=scale, num_classes=80)
    for fused in (False, True):
        counts, line = _ultralytics_info(_ultralytics_model(f"yolov8{scale}.yaml", fused=fused))
        _assert_equal(model_summary(model, fused=fused), counts, line, (scale, fused))


@pytest.mark.parametrize("scale", ["n", "s", "m", "l", "x"])
def test_yolo11_summary_equals_ultralytics_model_info(scale):
    """YOLO11 adds depthwise convs, Convs without SiLU (an nn.Identity leaf each), the attention's
    two matmuls (which ultralytics-thop counts) and its own Upsample / Concat leaves."""
    model = YOLO11(scale=scale, num_classes=80)
    for fused in (False, True):
        counts, line = _ultralytics_info(_ultralytics_model(f"yolo11{scale}.yaml", fused=fused))
        _assert_equal(model_summary(model, fused=fused), counts, line, (scale, fused))


def test_yolo11_summary_other_class_count_and_loaded_line():
    """nc=3 (the class branch's width then is the P3 width), as built, fused, and as val/predict
    print loaded weights: fused with every parameter frozen."""
    model = YOLO11(scale="n", num_classes=3)
    for fused in (False, True):
        counts, line = _ultralytics_info(_ultralytics_model("yolo11n.yaml", nc=3, fused=fused))
        _assert_equal(model_summary(model, fused=fused), counts, line, fused)
    counts, line = _ultralytics_info(_ultralytics_model("yolo11s.yaml", nc=3, fused=True, frozen=True))
    _assert_equal(model_summary(YOLO11(scale="s", num_classes=3), fused=True, trainable=False), counts, line, "frozen")
    assert loaded_summary_line({"family": "yolo11", "scale": "s", "num_classes": 3, "reg_max": 16}) == line


def test_summary_lines_as_ultralytics_prints_them():
    """The issue's line for a trainer's YOLOv8n; val/predict of loaded weights: fused, 0 gradients (a
    loaded checkpoint's parameters are frozen), GFLOPs at 640 whatever the run's imgsz."""
    model = YOLOv8(scale="n", num_classes=80)
    assert model_summary(model).line() == ("YOLOv8n summary: 129 layers, 3,157,200 parameters, "
                                           "3,157,184 gradients, 8.9 GFLOPs")
    info = {"scale": "n", "num_classes": 80, "reg_max": 16}
    assert loaded_summary_line(info) == ("YOLOv8n summary (fused): 72 layers, 3,151,904 parameters, 0 gradients, "
                                         "8.7 GFLOPs")
    assert loaded_summary_line({**info, "family": "yolo11"}) == (
        "YOLO11n summary (fused): 100 layers, 2,616,248 parameters, 0 gradients, 6.5 GFLOPs")
    assert model_summary(model, imgsz=320).gflops == pytest.approx(2.2137728e0, rel=1e-9)  # ultralytics imgsz=320
