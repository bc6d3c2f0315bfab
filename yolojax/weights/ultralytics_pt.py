"""yolojax YOLOv8 and YOLO11 weights -> an ultralytics checkpoint (.pt) that ``YOLO("model.pt")`` loads.

Written without torch or ultralytics (:mod:`yolojax.weights.torch_pickle`): the file holds what an
official ultralytics checkpoint holds, a dict with ``model``: a pickled
``ultralytics.nn.tasks.DetectionModel`` whose modules (ultralytics' Conv, C2f, Bottleneck,
SPPF, Concat, Detect, DFL; for YOLO11 also C3k2, C3k, C2PSA, PSABlock, Attention, DWConv; and
torch's Conv2d, BatchNorm2d, SiLU, Identity, MaxPool2d, Upsample, Sequential, ModuleList) are
named by global name, with their attributes and float32 tensors. Ultralytics' own loader
(``torch.load``, also with its ``weights_only`` allow-list) rebuilds them; nothing here imports
either package. A YOLOv8 model's layout and attributes are those of ultralytics' released
yolov8n.pt, which every later ultralytics keeps loading; a YOLO11 model's are those ultralytics
8.4.190 builds from yolo11{scale}.yaml (its non-legacy Detect head, whose class branch starts
with depthwise convolutions).

Weights are stored in float32 (ultralytics stores float16; it loads either as float32), so
the checkpoint predicts yolojax's boxes rather than float16-rounded ones.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from yolojax.models.registry import get_family
from yolojax.weights.torch_pickle import Global, Object, Tensor, ordered_dict, parameter, save

STRIDES = (8.0, 16.0, 32.0)
BN_EPS, BN_MOMENTUM = 0.001, 0.03  # torch convention for ultralytics' BatchNorm2d

_CLASSES = {
    "Conv": Global("ultralytics.nn.modules.conv", "Conv"),
    "Concat": Global("ultralytics.nn.modules.conv", "Concat"),
    "C2f": Global("ultralytics.nn.modules.block", "C2f"),
    "Bottleneck": Global("ultralytics.nn.modules.block", "Bottleneck"),
    "C3k2": Global("ultralytics.nn.modules.block", "C3k2"),
    "C3k": Global("ultralytics.nn.modules.block", "C3k"),
    "C2PSA": Global("ultralytics.nn.modules.block", "C2PSA"),
    "PSABlock": Global("ultralytics.nn.modules.block", "PSABlock"),
    "Attention": Global("ultralytics.nn.modules.block", "Attention"),
    "DWConv": Global("ultralytics.nn.modules.conv", "DWConv"),
    "SPPF": Global("ultralytics.nn.modules.block", "SPPF"),
    "DFL": Global("ultralytics.nn.modules.block", "DFL"),
    "Detect": Global("ultralytics.nn.modules.head", "Detect"),
    "DetectionModel": Global("ultralytics.nn.tasks", "DetectionModel"),
    "Conv2d": Global("torch.nn.modules.conv", "Conv2d"),
    "BatchNorm2d": Global("torch.nn.modules.batchnorm", "BatchNorm2d"),
    "SiLU": Global("torch.nn.modules.activation", "SiLU"),
    "Identity": Global("torch.nn.modules.linear", "Identity"),
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


def _conv2d(sd: StateDict, prefix: str, stride: int = 1, requires_grad: bool = True, groups: int = 1) -> Object:
    weight = sd[f"{prefix}.weight"]
    out_c, in_c, kh, kw = weight.shape
    ph, pw = kh // 2, kw // 2
    bias = sd.get(f"{prefix}.bias")
    return _module("Conv2d", attrs={
        "in_channels": in_c * groups, "out_channels": out_c, "kernel_size": (kh, kw), "stride": (stride, stride),
        "padding": (ph, pw), "dilation": (1, 1), "transposed": False, "output_padding": (0, 0), "groups": groups,
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


def _conv(sd: StateDict, prefix: str, stride: int = 1, attrs: Mapping[str, Any] | None = None,
          act: bool = True, depthwise: bool = False, kind: str = "Conv") -> Object:
    """ultralytics ``Conv`` (or its subclass ``kind`` "DWConv"): Conv2d (no bias; ``depthwise``:
    groups = channels) + BatchNorm2d + SiLU (``act``) or Identity."""
    groups = int(sd[f"{prefix}.conv.weight"].shape[0]) if depthwise else 1
    return _module(kind, attrs=attrs, modules={
        "conv": _conv2d(sd, f"{prefix}.conv", stride, groups=groups), "bn": _batchnorm(sd, f"{prefix}.bn"),
        "act": _module("SiLU", attrs={"inplace": True}) if act else _module("Identity")})


def _count(sd: StateDict, prefix: str) -> int:
    """How many numbered children ``prefix.0``, ``prefix.1`` ... the state dict holds."""
    n = 0
    while any(k.startswith(f"{prefix}.{n}.") for k in sd):
        n += 1
    return n


def _bottleneck(sd: StateDict, prefix: str, add: bool) -> Object:
    return _module("Bottleneck", attrs={"add": add}, modules={
        "cv1": _conv(sd, f"{prefix}.cv1"), "cv2": _conv(sd, f"{prefix}.cv2")})


def _c2f(sd: StateDict, prefix: str, shortcut: bool, attrs: Mapping[str, Any]) -> Object:
    hidden = int(sd[f"{prefix}.cv1.conv.weight"].shape[0]) // 2
    bottlenecks = [_bottleneck(sd, f"{prefix}.m.{j}", shortcut) for j in range(_count(sd, f"{prefix}.m"))]
    return _module("C2f", attrs={"c": hidden, **attrs}, modules={
        "cv1": _conv(sd, f"{prefix}.cv1"), "cv2": _conv(sd, f"{prefix}.cv2"),
        "m": _numbered("ModuleList", bottlenecks)})


def _c3k(sd: StateDict, prefix: str) -> Object:
    """ultralytics ``C3k`` (a C3): cv1, cv2, cv3 and a Sequential of shortcut Bottlenecks."""
    bottlenecks = [_bottleneck(sd, f"{prefix}.m.{j}", True) for j in range(_count(sd, f"{prefix}.m"))]
    return _module("C3k", modules={
        "cv1": _conv(sd, f"{prefix}.cv1"), "cv2": _conv(sd, f"{prefix}.cv2"), "cv3": _conv(sd, f"{prefix}.cv3"),
        "m": _numbered("Sequential", bottlenecks)})


def _c3k2(sd: StateDict, prefix: str, attrs: Mapping[str, Any]) -> Object:
    """ultralytics ``C3k2`` (a C2f; shortcut always on): its blocks are C3k where the state dict
    has their cv3 (rows with c3k, every row at scales m/l/x), else Bottlenecks."""
    hidden = int(sd[f"{prefix}.cv1.conv.weight"].shape[0]) // 2
    blocks = [_c3k(sd, block) if f"{block}.cv3.conv.weight" in sd else _bottleneck(sd, block, True)
              for block in (f"{prefix}.m.{j}" for j in range(_count(sd, f"{prefix}.m")))]
    return _module("C3k2", attrs={"c": hidden, **attrs}, modules={
        "cv1": _conv(sd, f"{prefix}.cv1"), "cv2": _conv(sd, f"{prefix}.cv2"),
        "m": _numbered("ModuleList", blocks)})


def _attention(sd: StateDict, prefix: str) -> Object:
    """ultralytics ``Attention`` as ``Attention(dim, num_heads=max(dim // 64, 1), attn_ratio=0.5)``
    builds it: qkv, proj and the depthwise positional conv pe, all without activation."""
    dim = int(sd[f"{prefix}.proj.conv.weight"].shape[0])
    num_heads = max(dim // 64, 1)
    head_dim = dim // num_heads
    key_dim = int(head_dim * 0.5)
    return _module("Attention", attrs={
        "num_heads": num_heads, "head_dim": head_dim, "key_dim": key_dim, "scale": key_dim**-0.5,
    }, modules={"qkv": _conv(sd, f"{prefix}.qkv", act=False), "proj": _conv(sd, f"{prefix}.proj", act=False),
                "pe": _conv(sd, f"{prefix}.pe", act=False, depthwise=True)})


def _c2psa(sd: StateDict, prefix: str, attrs: Mapping[str, Any]) -> Object:
    """ultralytics ``C2PSA``: cv1, cv2 and a Sequential of PSABlocks (attention + feed-forward)."""
    blocks = [
        _module("PSABlock", attrs={"add": True}, modules={
            "attn": _attention(sd, f"{block}.attn"),
            "ffn": _numbered("Sequential", [_conv(sd, f"{block}.ffn.0"), _conv(sd, f"{block}.ffn.1", act=False)])})
        for block in (f"{prefix}.m.{j}" for j in range(_count(sd, f"{prefix}.m")))
    ]
    return _module("C2PSA", attrs={"c": int(sd[f"{prefix}.cv1.conv.weight"].shape[0]) // 2, **attrs}, modules={
        "cv1": _conv(sd, f"{prefix}.cv1"), "cv2": _conv(sd, f"{prefix}.cv2"),
        "m": _numbered("Sequential", blocks)})


def _sppf(sd: StateDict, prefix: str, k: int, attrs: Mapping[str, Any]) -> Object:
    pool = _module("MaxPool2d", attrs={"kernel_size": k, "stride": 1, "padding": k // 2, "dilation": 1,
                                       "return_indices": False, "ceil_mode": False})
    return _module("SPPF", attrs=attrs, modules={
        "cv1": _conv(sd, f"{prefix}.cv1"), "cv2": _conv(sd, f"{prefix}.cv2"), "m": pool})


def _cls_branch(sd: StateDict, prefix: str) -> Object:
    """One level of Detect's cv3: legacy (YOLOv8) Conv, Conv, Conv2d, or ultralytics' current
    (YOLO11) Sequential(DWConv, Conv), Sequential(DWConv, Conv), Conv2d."""
    if f"{prefix}.0.0.conv.weight" not in sd:
        return _numbered("Sequential", [_conv(sd, f"{prefix}.0"), _conv(sd, f"{prefix}.1"),
                                        _conv2d(sd, f"{prefix}.2")])
    stages = [_numbered("Sequential", [_conv(sd, f"{prefix}.{j}.0", depthwise=True, kind="DWConv"),
                                       _conv(sd, f"{prefix}.{j}.1")]) for j in (0, 1)]
    return _numbered("Sequential", [*stages, _conv2d(sd, f"{prefix}.2")])


def _detect(sd: StateDict, prefix: str, attrs: Mapping[str, Any]) -> Object:
    nc = int(sd[f"{prefix}.cv3.0.2.weight"].shape[0])
    reg_max = int(sd[f"{prefix}.dfl.conv.weight"].shape[1])
    box = [_numbered("Sequential", [_conv(sd, f"{prefix}.cv2.{i}.0"), _conv(sd, f"{prefix}.cv2.{i}.1"),
                                    _conv2d(sd, f"{prefix}.cv2.{i}.2")]) for i in range(len(STRIDES))]
    branches = {"cv2": _numbered("ModuleList", box),
                "cv3": _numbered("ModuleList", [_cls_branch(sd, f"{prefix}.cv3.{i}") for i in range(len(STRIDES))])}
    dfl = _module("DFL", attrs={"c1": reg_max},
                  modules={"conv": _conv2d(sd, f"{prefix}.dfl.conv", requires_grad=False)})
    return _module("Detect", attrs={
        "nc": nc, "nl": len(STRIDES), "reg_max": reg_max, "no": nc + 4 * reg_max,
        "stride": Tensor(np.array(STRIDES, np.float32)), "inplace": True, **attrs,
    }, modules={**branches, "dfl": dfl})


def _num_params(sd: StateDict, prefix: str) -> int:
    """Parameters (not buffers) under ``prefix``: parse_model's per-layer ``np``."""
    return sum(int(v.size) for k, v in sd.items()
               if k.startswith(f"{prefix}.") and k.rsplit(".", 1)[1] in ("weight", "bias"))


def _layer(sd: StateDict, index: int, row: tuple, family: str = "yolov8") -> Object:
    source, _, kind, args = row
    cls = _CLASSES[kind]
    prefix = f"model.{index}"
    attrs = {"i": index, "f": source, "type": f"{cls.module}.{cls.name}"}
    if family != "yolov8":  # ultralytics 8.4.190's parse_model also keeps each layer's parameter count
        attrs = {"np": _num_params(sd, prefix), **attrs}
    if kind == "Conv":
        return _conv(sd, prefix, stride=args[2], attrs=attrs)
    if kind == "C2f":
        return _c2f(sd, prefix, shortcut=len(args) > 1 and args[1], attrs=attrs)
    if kind == "C3k2":
        return _c3k2(sd, prefix, attrs=attrs)
    if kind == "C2PSA":
        return _c2psa(sd, prefix, attrs=attrs)
    if kind == "SPPF":  # 8.4.190's SPPF keeps n (3 poolings) and add (no shortcut); yolov8n.pt's has neither
        extra = {} if family == "yolov8" else {"n": 3, "add": False}
        return _sppf(sd, prefix, k=args[1], attrs={**extra, **attrs})
    if kind == "Concat":
        return _module("Concat", attrs={"d": args[0], **attrs})
    if kind == "nn.Upsample":
        return _module("nn.Upsample", attrs={"name": "Upsample", "size": None, "scale_factor": float(args[1]),
                                             "mode": args[2], "align_corners": None,
                                             "recompute_scale_factor": None, **attrs})
    return _detect(sd, prefix, attrs)


def model_yaml(scale: str, num_classes: int, family: str = "yolov8") -> dict[str, Any]:
    """The ``yaml`` dict of an ultralytics ``DetectionModel`` for ``family`` at ``scale``: what
    ultralytics rebuilds the model from (e.g. ``yolo train model=model.pt``). For YOLO11 it equals
    what ultralytics loads yolo11{scale}.yaml to, Upsample's size the string 'None' included.
    Raises ``ValueError`` for an unknown family."""
    arch = get_family(family)
    none = None if family == "yolov8" else "None"  # YAML reads the cfg's `None` as a string
    rows = [[src, n, kind, [none if a is None else a for a in args]] for src, n, kind, args in arch.layers]
    return {"nc": num_classes,
            "scales": {k: [s.depth, s.width, s.max_channels] for k, s in arch.scales.items()},
            "backbone": rows[:arch.backbone_rows], "head": rows[arch.backbone_rows:], "scale": scale,
            "yaml_file": f"{arch.model_name(scale)}.yaml", "channels": 3}


def _silu_not_inplace(node: Object) -> Object:
    """``node`` with every SiLU's ``inplace`` False, as ultralytics 8.4.190 builds them (its
    ``Conv.default_act``); yolov8n.pt's are True. ultralytics' loader sets True on load either way."""
    if node.cls == _CLASSES["SiLU"]:
        node.state["inplace"] = False
    for child in node.state["_modules"].items.values():
        _silu_not_inplace(child)
    return node


def detection_model(variables: Mapping[str, Any], info: Mapping[str, Any]) -> Object:
    """The pickled ``DetectionModel`` (eval mode, float32) of YOLOv8 or YOLO11 ``variables``;
    ``info`` gives family (default yolov8), scale, num_classes and names (index = class id)."""
    family = get_family(info.get("family"))
    sd = variables_to_state_dict(variables)
    layers = [_layer(sd, i, row, family.name) for i, row in enumerate(family.layers)]
    sources = [row[0] for row in family.layers]
    save_layers = sorted({f for i, src in enumerate(sources)
                          for f in ([src] if isinstance(src, int) else src) if f != -1})
    num_classes = int(info["num_classes"])
    model = _module("DetectionModel", attrs={
        "yaml": model_yaml(info["scale"], num_classes, family.name),
        "yaml_file": f"{family.model_name(info['scale'])}.yaml",
        "save": save_layers, "names": {i: str(n) for i, n in enumerate(info["names"])}, "inplace": True,
        "stride": Tensor(np.array(STRIDES, np.float32)), "nc": num_classes, "task": "detect",
    }, modules={"model": _numbered("Sequential", layers)})
    return model if family.name == "yolov8" else _silu_not_inplace(model)


def _checkpoint(variables: Mapping[str, Any], info: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint dict: date, version, license, docs, epoch (-1), best_fitness, ``model``
    (:func:`detection_model`), ema/updates/optimizer (None) and ``train_args`` (task, model
    ("yolov8n.yaml", "yolo11n.yaml" ...) and ``imgsz`` when ``info`` has it: ultralytics
    validates and predicts at it), as ultralytics' released checkpoints hold."""
    model_name = get_family(info.get("family")).model_name(info["scale"])
    train_args: dict[str, Any] = {"task": "detect", "model": f"{model_name}.yaml"}
    if info.get("imgsz"):
        train_args["imgsz"] = int(info["imgsz"])
    return {
        "date": datetime.now().astimezone().isoformat(), "version": f"yolojax {metadata.version('yolojax')}",
        "license": "Apache-2.0", "docs": "https://github.com/yolojax/yolojax", "epoch": -1,
        "best_fitness": None, "model": detection_model(variables, info), "ema": None, "updates": None,
        "optimizer": None, "train_args": train_args,
    }


def save_ultralytics_checkpoint(variables: Mapping[str, Any], info: Mapping[str, Any],
                                out: str | os.PathLike) -> Path:
    """Write YOLOv8 or YOLO11 (``info["family"]``) ``variables`` as an ultralytics checkpoint at
    ``out`` (a .pt file): the dict ultralytics' released checkpoints hold (:func:`_checkpoint`).

    Returns ``out``. Raises ``ValueError`` for variables that are not the family's detector's,
    or a pruned model's (``info["widths"]``: ultralytics' model yaml has no per-layer widths).
    """
    from flax import traverse_util

    if info.get("widths"):
        raise ValueError("a pruned model (per-layer widths) cannot be written as an ultralytics .pt: its model "
                         "yaml has one width per layer and scale; export format=onnx instead")
    from yolojax.weights.ultralytics import check_variables

    flat = {(c, *p): v for c in ("params", "batch_stats")
            for p, v in traverse_util.flatten_dict(dict(variables.get(c, {}))).items()}
    check_variables(flat, info, "variables")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return save(_checkpoint(variables, info), out)
