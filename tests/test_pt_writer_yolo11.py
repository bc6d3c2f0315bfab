"""The .pt writer (yolojax.weights.ultralytics_pt) for YOLO11: a model ultralytics 8.4.190 built
from yolo11{n,m}.yaml (3 classes, random weights and BatchNorm statistics), taken to yolojax
variables and written back without torch, loads in ultralytics (also through its weights_only
allow-list) as the very module tree ultralytics saves, and predicts what the source model does."""

from __future__ import annotations

import os

os.environ.setdefault("YOLO_OFFLINE", "1")

import importlib.resources
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import ultralytics
from ultralytics.nn.tasks import DetectionModel, torch_safe_load

from yolojax.weights.ultralytics import torch_key_to_flax, unflatten_tree
from yolojax.weights.ultralytics_pt import save_ultralytics_checkpoint

NAMES = ["cat", "dog", "bird"]
IMGSZ = 320


def _source_model(scale: str) -> DetectionModel:
    """yolo11{scale} with 3 classes at random weights, BatchNorm weights and statistics, eval mode,
    with the attributes ultralytics' trainer gives it (names, nc)."""
    torch.manual_seed(0)
    model = DetectionModel(f"yolo11{scale}.yaml", nc=len(NAMES), verbose=False).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(1 + 0.2 * torch.randn(n, generator=gen))
                m.bias.copy_(0.2 * torch.randn(n, generator=gen))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
        for branch in model.model[-1].cv3:
            branch[-1].bias.zero_()  # class scores near 0.5: predict keeps many boxes to compare
    model.names, model.nc = dict(enumerate(NAMES)), len(NAMES)
    return model


def _variables(model: torch.nn.Module) -> dict:
    """yolojax variables from ``model``'s state dict (4-D weights (O, I, kH, kW) -> (kH, kW, I, O))."""
    flat = {}
    for key, value in model.state_dict().items():
        array = value.numpy()
        path = torch_key_to_flax(key, array.ndim)
        if path is not None:
            flat[path] = array.transpose(2, 3, 1, 0) if array.ndim == 4 else array
    return unflatten_tree(flat)


def _bus() -> tuple[Path, torch.Tensor]:
    """ultralytics' bus.jpg and it resized to IMGSZ x IMGSZ as a (1, 3, H, W) RGB float tensor."""
    path = Path(str(importlib.resources.files("ultralytics") / "assets" / "bus.jpg"))
    image = cv2.resize(cv2.imread(str(path)), (IMGSZ, IMGSZ))[:, :, ::-1]
    return path, torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].float() / 255


def _assert_same_modules(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    """Every submodule has the same class and the same ``__dict__`` (attributes, parameters,
    buffers, children); ultralytics shares one SiLU among its Convs, the writer does not."""
    pairs = zip(ours.named_modules(remove_duplicate=False), theirs.named_modules(remove_duplicate=False), strict=True)
    for (name, a), (name_b, b) in pairs:
        assert (name, type(a)) == (name_b, type(b))
        assert vars(a).keys() == vars(b).keys(), name
        for key, value in vars(a).items():
            other = vars(b)[key]
            if key in ("_parameters", "_buffers"):
                assert value.keys() == other.keys(), f"{name}.{key}"
                for k, t in value.items():
                    assert (t is None) == (other[k] is None), f"{name}.{k}"
                    if t is not None:
                        assert t.dtype == other[k].dtype and torch.equal(t, other[k]), f"{name}.{k}"
                        assert t.requires_grad == other[k].requires_grad, f"{name}.{k}"
            elif key == "_modules":
                assert value.keys() == other.keys(), name
            elif isinstance(value, torch.Tensor):
                assert torch.equal(value, other), f"{name}.{key}"
            else:
                assert value == other, f"{name}.{key}: {value!r} != {other!r}"


@pytest.mark.parametrize("scale", ["n", "m"])  # m: C3k in every C3k2
def test_yolo11_pt_loads_in_ultralytics_as_it_saves_it(scale, tmp_path):
    """Written YOLO11 checkpoint == the one ultralytics saves: module tree through the weights_only
    loader, raw outputs on bus.jpg, predicted boxes, yaml, names, nc and stride."""
    source = _source_model(scale)
    reference = tmp_path / "ultralytics.pt"  # as ultralytics' trainer saves it (float32 here)
    torch.save({"model": source, "train_args": {"task": "detect", "model": f"yolo11{scale}.yaml"}}, reference)
    info = {"family": "yolo11", "scale": scale, "num_classes": len(NAMES), "names": NAMES, "reg_max": 16}
    ours = save_ultralytics_checkpoint(_variables(source), info, tmp_path / "yolojax.pt")

    ckpt = torch_safe_load(str(ours), safe_only=True)[0]
    assert ckpt["train_args"] == {"task": "detect", "model": f"yolo11{scale}.yaml"}
    safe_ours, safe_theirs = ckpt["model"], torch_safe_load(str(reference), safe_only=True)[0]["model"]
    assert safe_ours.yaml == safe_theirs.yaml == source.yaml
    assert safe_ours.yaml["nc"] == len(NAMES) and safe_ours.yaml_file == f"yolo11{scale}.yaml"
    _assert_same_modules(safe_ours.model, safe_theirs.model)
    for attr in ("save", "names", "nc", "inplace"):
        assert getattr(safe_ours, attr) == getattr(safe_theirs, attr), attr
    assert torch.equal(safe_ours.stride, safe_theirs.stride)

    yolo, yolo_ref = ultralytics.YOLO(str(ours)), ultralytics.YOLO(str(reference))
    assert yolo.names == dict(enumerate(NAMES)) and yolo.task == "detect"
    assert yolo.model.yaml == source.yaml and yolo.model.stride.tolist() == [8.0, 16.0, 32.0]
    path, image = _bus()
    with torch.no_grad():
        expected = source(image)[0]
        np.testing.assert_allclose(yolo.model.eval()(image)[0].numpy(), expected.numpy(), atol=1e-4)
        np.testing.assert_allclose(safe_ours.eval()(image)[0].numpy(), expected.numpy(), atol=1e-4)
    mine, theirs = (y.predict(str(path), imgsz=IMGSZ, verbose=False)[0].boxes for y in (yolo, yolo_ref))
    assert len(theirs) > 0
    np.testing.assert_array_equal(mine.cls.numpy(), theirs.cls.numpy())
    np.testing.assert_allclose(mine.xyxy.numpy(), theirs.xyxy.numpy(), atol=1e-3)
    np.testing.assert_allclose(mine.conf.numpy(), theirs.conf.numpy(), atol=1e-5)
