"""The model families yolojax builds, and how each is recognised, described and built.

A family is ultralytics' model yaml (cfg/models/v8/yolov8.yaml, cfg/models/11/yolo11.yaml) as
values: its layer rows and per-scale depth, width and max channels, the Flax module that runs
that graph (layer ``i`` is the submodule ``model_<i>``, every submodule named after
ultralytics' attribute, so a torch state-dict key is a Flax path with its numeric parts joined:
``model.10.m.0.attn.qkv.conv.weight`` -> ``model_10/m_0/attn/qkv/conv/kernel``), and the
module classes a pickled ultralytics model of it holds.

Weights are described by an ``info`` dict (``load_weights``' second value): ``family``
(a key of :data:`FAMILIES`; "yolov8" when absent, as in files written before YOLO11),
``scale``, ``num_classes``, ``reg_max``, ``cls_width`` and, for a pruned YOLOv8, ``widths``.
:func:`model_from_info` builds the module those weights fit.

A new family (YOLO26 next) adds a module of its own under ``yolojax/models/`` (its blocks and
graph, subclassing :class:`yolojax.models.detector.Detector`) and one :class:`Family` entry
here; the converter, the .pt writer, the summary and the trainer read everything else from it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from yolojax.models import yolo11, yolov8
from yolojax.models.detector import Detector
from yolojax.models.scaling import Scale

DEFAULT_FAMILY = "yolov8"


@dataclass(frozen=True)
class Family:
    """One model family (see the module docstring).

    Attributes:
      name: ultralytics' yaml stem, the prefix of its model names ("yolov8" for yolov8n.pt).
      title: how ultralytics prints it ("YOLOv8", "YOLO11": the summary line's name).
      module: the Flax :class:`Detector` subclass.
      scales: scale -> :class:`yolojax.models.scaling.Scale` (depth, width, max_channels).
      layers: the yaml's (from, repeats, module, args) rows, backbone first.
      backbone_rows: how many of ``layers`` form the yaml's ``backbone``.
      strides: the Detect head's strides.
      torch_classes: ultralytics and torch module class names a pickled model may hold.
      marker: the module class only this family's yaml uses (C2f, C3k2).
      prunable: whether per-layer ``widths`` (:mod:`yolojax.models.prune`) apply.
    """

    name: str
    title: str
    module: type[Detector]
    scales: Mapping[str, Scale]
    layers: tuple[tuple[Any, int, str, list], ...]
    backbone_rows: int
    strides: tuple[int, ...]
    torch_classes: frozenset[str]
    marker: str
    prunable: bool = False

    @property
    def detect_layer(self) -> int:
        """Index of the Detect head among ``layers`` (22 for YOLOv8, 23 for YOLO11)."""
        return len(self.layers) - 1

    def scaled_channels(self, scale: str, channels: int) -> int:
        """Output channels of a layer declared with ``channels`` at ``scale``: ultralytics'
        ``make_divisible(min(channels, max_channels) * width, 8)`` (nn/tasks.py parse_model)."""
        return self.scales[scale].channels(channels)

    def scaled_depth(self, scale: str, repeats: int) -> int:
        """Blocks in a layer declared with ``repeats`` at ``scale`` (parse_model's depth gain)."""
        return self.scales[scale].repeats(repeats)

    def default_cls_width(self, scale: str, num_classes: int) -> int:
        """The Detect class branch's hidden width when built for ``num_classes``: ultralytics'
        ``max(ch[0], min(nc, 100))`` with ch[0] the P3 input's width."""
        p3_layer = self.layers[-1][0][0]
        return max(self.scaled_channels(scale, self.layers[p3_layer][3][0]), min(int(num_classes), 100))

    def model_name(self, scale: str) -> str:
        """ultralytics' model name at ``scale``: "yolov8n", "yolo11s"."""
        return f"{self.name}{scale}"


_COMMON_TORCH_CLASSES = frozenset({
    "DetectionModel", "Conv", "Concat", "Bottleneck", "SPPF", "DFL", "Detect",
    "Conv2d", "BatchNorm2d", "SiLU", "MaxPool2d", "Upsample", "Sequential", "ModuleList",
})

FAMILIES: dict[str, Family] = {
    "yolov8": Family(
        name="yolov8", title="YOLOv8", module=yolov8.YOLOv8, scales=yolov8.SCALES, layers=yolov8.LAYERS,
        backbone_rows=yolov8.BACKBONE_ROWS, strides=yolov8.STRIDES,
        torch_classes=_COMMON_TORCH_CLASSES | {"C2f"}, marker="C2f", prunable=True),
    "yolo11": Family(
        name="yolo11", title="YOLO11", module=yolo11.YOLO11, scales=yolo11.SCALES, layers=yolo11.LAYERS,
        backbone_rows=yolo11.BACKBONE_ROWS, strides=yolo11.STRIDES,
        torch_classes=_COMMON_TORCH_CLASSES | {"C3k2", "C3k", "C2PSA", "PSABlock", "Attention", "DWConv",
                                               "Identity"},
        marker="C3k2"),
}

# A model name as ultralytics spells it: yolov8n, yolo11s (".pt", ".yaml" or nothing after).
MODEL_NAME = re.compile(r"(?<![a-z0-9])(yolov8|yolo11)([nsmlx])(?![a-z0-9])", re.IGNORECASE)


def get_family(name: str | None) -> Family:
    """The :class:`Family` called ``name`` (None: :data:`DEFAULT_FAMILY`). Raises
    ``ValueError`` naming the known families for any other name."""
    family = FAMILIES.get(DEFAULT_FAMILY if name is None else str(name))
    if family is None:
        raise ValueError(f"unknown model family {name!r}; expected one of {sorted(FAMILIES)}")
    return family


def family_of(info: Mapping[str, Any]) -> Family:
    """The family of weights described by ``info`` (its "family", default "yolov8")."""
    return get_family(info.get("family"))


def parse_model_name(name: str) -> tuple[Family, str] | None:
    """(family, scale) of a file or model name that spells one ("yolo11n.pt", "yolov8s.yaml",
    "runs/yolo11x"), else None."""
    match = MODEL_NAME.search(str(name))
    return (FAMILIES[match.group(1).lower()], match.group(2).lower()) if match else None


def model_from_info(info: Mapping[str, Any], **kwargs: Any) -> Detector:
    """The Flax module that weights described by ``info`` fit; ``kwargs`` add e.g. dtype,
    bn_axis_name, frozen.

    Raises ``ValueError`` for an unknown family or scale, or per-layer ``widths`` for a family
    that is not prunable.
    """
    family = family_of(info)
    if info["scale"] not in family.scales:
        raise ValueError(f"unknown {family.title} scale {info['scale']!r}; expected one of {sorted(family.scales)}")
    width = info.get("cls_width")
    fields = dict(scale=info["scale"], num_classes=int(info["num_classes"]), reg_max=int(info.get("reg_max", 16)),
                  cls_width=int(width) if width else None)
    if info.get("widths"):
        if not family.prunable:
            raise ValueError(f"per-layer widths (a pruned model) are supported for YOLOv8 only, not {family.title}")
        fields["widths"] = yolov8.widths_key(info["widths"])
    return family.module(**fields, **kwargs)


def model_title(info: Mapping[str, Any]) -> str:
    """How ultralytics names the model of ``info``: "YOLOv8n", "YOLO11s"."""
    return f"{family_of(info).title}{info['scale']}"
