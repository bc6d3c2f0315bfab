"""yolojax YOLOv8 weights -> an ultralytics checkpoint (.pt) that ``YOLO("model.pt")`` loads.

Written without torch or ultralytics (:mod:`yolojax.weights.torch_pickle`): the file holds what an
official ultralytics YOLOv8 checkpoint holds, a dict with ``model``: a pickled
``ultralytics.nn.tasks.DetectionModel`` whose modules (ultralytics' Conv, C2f, Bottleneck,
SPPF, Concat, Detect, DFL and torch's Conv2d, BatchNorm2d, SiLU, MaxPool2d, Upsample,
Sequential, ModuleList) are named by global name, with their attributes and float32
tensors. Ultralytics' own loader (``torch.load``, also with its ``weights_only`` allow-list)
rebuilds them; nothing here imports either package. The module layout and attributes are
those of ultralytics' released yolov8n.pt, which every later ultralytics keeps loading.

Weights are stored in float32 (ultralytics stores float16; it loads either as float32), so
the checkpoint predicts yolojax's boxes rather than float16-rounded ones.
"""

from __future__ import annotations

from importlib import metadata

import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from yolojax.weights.torch_pickle import Global, Object, Tensor, ordered_dict, parameter, save

# ultralytics' cfg/models/v8/yolov8.yaml (the architecture of yolojax.models.YOLOv8):
# (from, repeats, module, args); the first 10 rows are the backbone.
YOLOV8_LAYERS: tuple[tuple[Any, int, str, list], ...] = (
    (-1, 1, "Conv", [64, 3, 2]), (-1, 1, "Conv", [128, 3, 2]), (-1, 3, "C2f", [128, True]),
    (-1, 1, "Conv", [256, 3, 2]), (-1, 6, "C2f", [256, True]), (-1, 1, "Conv", [512, 3, 2]),
    (-1, 6, "C2f", [512, True]), (-1, 1, "Conv", [1024, 3, 2]), (-1, 3, "C2f", [1024, True]),
    (-1, 1, "SPPF", [1024, 5]),
    (-1, 1, "nn.Upsample", [None, 2, "nearest"]), ([-1, 6], 1, "Concat", [1]), (-1, 3, "C2f", [512]),
    (-1, 1, "nn.Upsample", [None, 2, "nearest"]), ([-1, 4], 1, "Concat", [1]), (-1, 3, "C2f", [256]),
    (-1, 1, "Conv", [256, 3, 2]), ([-1, 12], 1, "Concat", [1]), (-1, 3, "C2f", [512]),
    (-1, 1, "Conv", [512, 3, 2]), ([-1, 9], 1, "Concat", [1]), (-1, 3, "C2f", [1024]),
    ([15, 18, 21], 1, "Detect", ["nc"]),
)
BACKBONE_ROWS = 10
STRIDES = (8.0, 16.0, 32.0)
BN_EPS, BN_MOMENTUM = 0.001, 0.03  # torch convention for ultralytics' BatchNorm2d

_CLASSES = {
    "Conv": Global("ultralytics.nn.modules.conv", "Conv"),
    "Concat": Global("ultralytics.nn.modules.conv", "Concat"),
    "C2f": Global("ultralytics.nn.modules.block", "C2f"),
    "Bottleneck": Global("ultralytics.nn.modules.block", "Bottleneck"),
    "SPPF": Global("ultralytics.nn.modules.block", "SPPF"),
    "DFL": Global("ultralytics.nn.modules.block", "DFL"),
    "Detect": Global("ultralytics.nn.modules.head", "Detect"),
    "DetectionModel": Global("ultralytics.nn.tasks", "DetectionModel"),
    "Conv2d": Global("torch.nn.modules.conv", "Conv2d"),
    "BatchNorm2d": Global("torch.nn.modules.batchnorm", "BatchNorm2d"),
    "SiLU": Global("torch.nn.modules.activation", "SiLU"),
    "MaxPool2d": Global("torch.nn.modules.pooling", "MaxPool2d"),
    "nn.Upsample": Global("torch.nn.modules.upsampling", "Upsample"),
    "Sequential": Global("torch.nn.modules.container", "Sequential"),
    "ModuleList": Global("torch.nn.modules.container", "ModuleList"),
}
_HOOK_DICTS = ("_backward_pre_hooks", "_backward_hooks", "_forward_hooks", "_forward_hooks_with_kwargs",
               "_forward_hooks_always_called", "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs",
               "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
               "_load_state_dict_post_hooks")

StateDict = dict[str, np.ndarray]


def variables_to_state_dict(variables: Mapping[str, Any]) -> StateDict:
    """yolojax YOLOv8 variables -> ultralytics' state dict (torch keys, float32 numpy).

    The inverse of :func:`yolojax.weights.ultralytics.state_dict_to_variables`: ``params/model_22/cv2_0_2/
    kernel`` (kH, kW, I, O) -> ``model.22.cv2.0.2.weight`` (O, I, kH, kW); BatchNorm scale/bias
    -> weight/bias, batch_stats mean/var -> running_mean/running_var. Raises ``ValueError``
    for a variable with no torch key.
    """
    from flax import traverse_util

    from yolojax.weights.ultralytics import torch_key_to_flax

    leaf_names = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
                  "var": "running_var"}
    sd: StateDict = {}
    for collection in ("params", "batch_stats"):
        for path, value in traverse_util.flatten_dict(dict(variables.get(collection, {}))).items():
            array = np.asarray(value, np.float32)
            key = ".".join([*(p.replace("_", ".") for p in path[:-1]), leaf_names.get(path[-1], path[-1])])
            if torch_key_to_flax(key, array.ndim) != (collection, *path):
                raise ValueError(f"variable {collection}/{'/'.join(path)} has no ultralytics state-dict key")
            sd[key] = np.ascontiguousarray(array.transpose(3, 2, 0, 1) if path[-1] == "kernel" else array)
    return sd


def _module(kind: str, attrs: Mapping[str, Any] | None = None, modules: Mapping[str, Object] | None = None,
            parameters: Mapping[str, Any] | None = None, buffers: Mapping[str, Any] | None = None) -> Object:
    """A pickled torch ``nn.Module`` of class ``_CLASSES[kind]`` in eval mode: its ``__dict__``."""
    state = {"training": False, "_parameters": ordered_dict(parameters), "_buffers": ordered_dict(buffers),
             "_non_persistent_buffers_set": set(), "_is_full_backward_hook": None,
             **{name: ordered_dict() for name in _HOOK_DICTS}, **(attrs or {}), "_modules": ordered_dict(modules)}
    return Object(_CLASSES[kind], state)


def _numbered(kind: str, modules: list[Object]) -> Object:
    return _module(kind, modules={str(i): m for i, m in enumerate(modules)})


def _conv2d(sd: StateDict, prefix: str, stride: int = 1, requires_grad: bool = True) -> Object:
    weight = sd[f"{prefix}.weight"]
    out_c, in_c, kh, kw = weight.shape
    ph, pw = kh // 2, kw // 2
    bias = sd.get(f"{prefix}.bias")
    return _module("Conv2d", attrs={
        "in_channels": in_c, "out_channels": out_c, "kernel_size": (kh, kw), "stride": (stride, stride),
        "padding": (ph, pw), "dilation": (1, 1), "transposed": False, "output_padding": (0, 0), "groups": 1,
        "padding_mode": "zeros", "_reversed_padding_repeated_twice": (pw, pw, ph, ph),
    }, parameters={"weight": parameter(weight, requires_grad),
                   "bias": None if bias is None else parameter(bias, requires_grad)})


def _batchnorm(sd: StateDict, prefix: str) -> Object:
    return _module("BatchNorm2d", attrs={
        "num_features": int(sd[f"{prefix}.weight"].shape[0]), "eps": BN_EPS, "momentum": BN_MOMENTUM,
        "affine": True, "track_running_stats": True,
    }, parameters={"weight": parameter(sd[f"{prefix}.weight"]), "bias": parameter(sd[f"{prefix}.bias"])},
        buffers={"running_mean": Tensor(sd[f"{prefix}.running_mean"]),
                 "running_var": Tensor(sd[f"{prefix}.running_var"]),
                 "num_batches_tracked": Tensor(np.zeros((), np.int64))})


def _conv(sd: StateDict, prefix: str, stride: int = 1, attrs: Mapping[str, Any] | None = None) -> Object:
    """ultralytics ``Conv``: Conv2d (no bias) + BatchNorm2d + SiLU."""
    return _module("Conv", attrs=attrs, modules={
        "conv": _conv2d(sd, f"{prefix}.conv", stride), "bn": _batchnorm(sd, f"{prefix}.bn"),
        "act": _module("SiLU", attrs={"inplace": True})})


def _count(sd: StateDict, prefix: str) -> int:
    """How many numbered children ``prefix.0``, ``prefix.1`` ... the state dict holds."""
    n = 0
    while any(k.startswith(f"{prefix}.{n}.") for k in sd):
        n += 1
    return n


def _c2f(sd: StateDict, prefix: str, shortcut: bool, attrs: Mapping[str, Any]) -> Object:
    hidden = int(sd[f"{prefix}.cv1.conv.weight"].shape[0]) // 2
    bottlenecks = [
        _module("Bottleneck", attrs={"add": shortcut}, modules={
            "cv1": _conv(sd, f"{prefix}.m.{j}.cv1"), "cv2": _conv(sd, f"{prefix}.m.{j}.cv2")})
        for j in range(_count(sd, f"{prefix}.m"))
    ]
    return _module("C2f", attrs={"c": hidden, **attrs}, modules={
        "cv1": _conv(sd, f"{prefix}.cv1"), "cv2": _conv(sd, f"{prefix}.cv2"),
        "m": _numbered("ModuleList", bottlenecks)})


def _sppf(sd: StateDict, prefix: str, k: int, attrs: Mapping[str, Any]) -> Object:
    pool = _module("MaxPool2d", attrs={"kernel_size": k, "stride": 1, "padding": k // 2, "dilation": 1,
                                       "return_indices": False, "ceil_mode": False})
    return _module("SPPF", attrs=attrs, modules={
        "cv1": _conv(sd, f"{prefix}.cv1"), "cv2": _conv(sd, f"{prefix}.cv2"), "m": pool})


def _detect(sd: StateDict, prefix: str, attrs: Mapping[str, Any]) -> Object:
    nc = int(sd[f"{prefix}.cv3.0.2.weight"].shape[0])
    reg_max = int(sd[f"{prefix}.dfl.conv.weight"].shape[1])
    branches = {
        name: _numbered("ModuleList", [
            _numbered("Sequential", [_conv(sd, f"{prefix}.{name}.{i}.0"), _conv(sd, f"{prefix}.{name}.{i}.1"),
                                     _conv2d(sd, f"{prefix}.{name}.{i}.2")])
            for i in range(len(STRIDES))])
        for name in ("cv2", "cv3")
    }
    dfl = _module("DFL", attrs={"c1": reg_max},
                  modules={"conv": _conv2d(sd, f"{prefix}.dfl.conv", requires_grad=False)})
    return _module("Detect", attrs={
        "nc": nc, "nl": len(STRIDES), "reg_max": reg_max, "no": nc + 4 * reg_max,
        "stride": Tensor(np.array(STRIDES, np.float32)), "inplace": True, **attrs,
    }, modules={**branches, "dfl": dfl})


def _layer(sd: StateDict, index: int, row: tuple) -> Object:
    source, _, kind, args = row
    cls = _CLASSES[kind]
    attrs = {"i": index, "f": source, "type": f"{cls.module}.{cls.name}"}
    prefix = f"model.{index}"
    if kind == "Conv":
        return _conv(sd, prefix, stride=args[2], attrs=attrs)
    if kind == "C2f":
        return _c2f(sd, prefix, shortcut=len(args) > 1 and args[1], attrs=attrs)
    if kind == "SPPF":
        return _sppf(sd, prefix, k=args[1], attrs=attrs)
    if kind == "Concat":
        return _module("Concat", attrs={"d": args[0], **attrs})
    if kind == "nn.Upsample":
        return _module("nn.Upsample", attrs={"name": "Upsample", "size": None, "scale_factor": float(args[1]),
                                             "mode": args[2], "align_corners": None,
                                             "recompute_scale_factor": None, **attrs})
    return _detect(sd, prefix, attrs)


def model_yaml(scale: str, num_classes: int) -> dict[str, Any]:
    """The ``yaml`` dict of an ultralytics ``DetectionModel`` for YOLOv8 at ``scale``: what
    ultralytics rebuilds the model from (e.g. ``yolo train model=model.pt``)."""
    from yolojax.models.yolov8 import SCALES

    rows = [[src, n, kind, list(args)] for src, n, kind, args in YOLOV8_LAYERS]
    return {"nc": num_classes,
            "scales": {k: [s.depth, s.width, s.max_channels] for k, s in SCALES.items()},
            "backbone": rows[:BACKBONE_ROWS], "head": rows[BACKBONE_ROWS:], "scale": scale,
            "yaml_file": f"yolov8{scale}.yaml", "channels": 3}


def detection_model(variables: Mapping[str, Any], info: Mapping[str, Any]) -> Object:
    """The pickled ``DetectionModel`` (eval mode, float32) of YOLOv8 ``variables``; ``info``
    gives scale, num_classes and names (index = class id)."""
    sd = variables_to_state_dict(variables)
    layers = [_layer(sd, i, row) for i, row in enumerate(YOLOV8_LAYERS)]
    sources = [row[0] for row in YOLOV8_LAYERS]
    save_layers = sorted({f for i, src in enumerate(sources)
                          for f in ([src] if isinstance(src, int) else src) if f != -1})
    num_classes = int(info["num_classes"])
    return _module("DetectionModel", attrs={
        "yaml": model_yaml(info["scale"], num_classes), "yaml_file": f"yolov8{info['scale']}.yaml",
        "save": save_layers, "names": {i: str(n) for i, n in enumerate(info["names"])}, "inplace": True,
        "stride": Tensor(np.array(STRIDES, np.float32)), "nc": num_classes, "task": "detect",
    }, modules={"model": _numbered("Sequential", layers)})


def save_ultralytics_checkpoint(variables: Mapping[str, Any], info: Mapping[str, Any],
                                out: str | os.PathLike) -> Path:
    """Write YOLOv8 ``variables`` as an ultralytics checkpoint at ``out`` (a .pt file).

    The dict holds date, version, license, docs, epoch (-1), best_fitness, ``model``
    (:func:`detection_model`), ema/updates/optimizer (None) and ``train_args`` (task, model,
    and ``imgsz`` when ``info`` has it: ultralytics validates and predicts at it), as
    ultralytics' released checkpoints do. Returns ``out``. Raises ``ValueError`` for
    variables that are not a YOLOv8 detector's, or a pruned model's (``info["widths"]``:
    ultralytics' model yaml has no per-layer widths).
    """
    from flax import traverse_util

    if info.get("widths"):
        raise ValueError("a pruned model (per-layer widths) cannot be written as an ultralytics .pt: its model "
                         "yaml has one width per layer and scale; export format=onnx instead")
    __version__ = metadata.version("yolojax")
    from yolojax.weights.ultralytics import check_variables

    flat = {(c, *p): v for c in ("params", "batch_stats")
            for p, v in traverse_util.flatten_dict(dict(variables.get(c, {}))).items()}
    check_variables(flat, info, "variables")
    train_args = {"task": "detect", "model": f"yolov8{info['scale']}.yaml"}
    if info.get("imgsz"):
        train_args["imgsz"] = int(info["imgsz"])
    checkpoint = {
        "date": datetime.now().astimezone().isoformat(), "version": f"yolojax {__version__}",
        "license": "Apache-2.0", "docs": "https://github.com/yolojax/yolojax", "epoch": -1,
        "best_fitness": None, "model": detection_model(variables, info), "ema": None, "updates": None,
        "optimizer": None, "train_args": train_args,
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return save(checkpoint, out)
