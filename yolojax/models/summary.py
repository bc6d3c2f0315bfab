"""The one-line model summary ultralytics prints: layers, parameters, gradients, GFLOPs.

    YOLOv8n summary: 129 layers, 3,157,200 parameters, 3,157,184 gradients, 8.9 GFLOPs
    YOLOv8n summary (fused): 72 layers, 3,151,904 parameters, 0 gradients, 8.7 GFLOPs
    YOLO11n summary: 181 layers, 2,624,080 parameters, 2,624,064 gradients, 6.7 GFLOPs
    YOLO11n summary (fused): 100 layers, 2,616,248 parameters, 0 gradients, 6.5 GFLOPs

Ultralytics 8.4.190 (``utils/torch_utils.py`` ``model_info`` / ``get_flops``) prints the first
form when a trainer builds its ``DetectionModel`` (unfused, every parameter trainable but the
frozen DFL projection) and the second when val or predict loads a checkpoint (Conv + BatchNorm
fused, all parameters frozen). Both count GFLOPs at 640 x 640 whatever the run's imgsz
(``info()`` is called with its default), which :data:`SUMMARY_IMGSZ` reproduces. Any family of
:data:`yolojax.models.registry.FAMILIES` (YOLOv8, pruned too, and YOLO11) is counted; the name
is the family's title and scale ("YOLO11s").

The counts are derived from the Flax model's shapes only (``jax.eval_shape``, nothing runs):

* layers: ultralytics counts leaf torch modules, each shared instance once. A ``Conv`` is two
  leaves (conv, bn; fused: one), plus an ``nn.Identity`` of its own when built with
  ``act=False`` (YOLO11's attention qkv, pe and proj and the PSABlock FFN's second Conv; fusing
  keeps it); every other Conv2d (the head's last convs, the DFL projection) one; plus the
  family's parameterless leaves (:func:`parameterless_leaves`: its yaml's nn.Upsample and Concat
  rows, SPPF's one nn.MaxPool2d and the one SiLU instance all Convs share).
* parameters: the Flax params (BatchNorm scale and bias are torch parameters, its running
  statistics are buffers). Fusing folds each BatchNorm's (scale, bias) into one conv bias.
* gradients: trainable parameters: all but the frozen DFL projection (unfused); fusing
  replaces each Conv's conv with a frozen one, so only the head's last convs stay trainable;
  a loaded checkpoint (val / predict) has all parameters frozen: 0.
* GFLOPs: thop's count times 2 / 1e9: per conv, output elements x input channels per group x
  k x k multiply-adds (a depthwise conv: output elements x k x k); per BatchNorm (unfused only),
  4 per input element (normalise and affine); the DFL projection is a 1x1 conv, reg_max
  multiply-adds per box side and anchor; per YOLO11 ``Attention`` its two matmuls
  (ultralytics' ``q^T @ k`` and ``v @ attn^T``: heads x N^2 x (key_dim + head_dim) for N = H x W
  positions), which ultralytics-thop 2.2.3 counts as functional products outside any module
  rule (the yolo11.yaml comments, e.g. 6.6 GFLOPs for n where this prints 6.7, leave them out,
  as an older thop did). SiLU, Identity (zero_ops), softmax, max-pool, nearest upsampling,
  concatenation, residual adds and the box decode count 0.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

from yolojax.models.registry import FAMILIES, Family, model_from_info

SUMMARY_IMGSZ = 640  # ultralytics' model_info default: the summary's GFLOPs are at 640 x 640
# Module fields that change no count: the trace builds the float32, single-device model.
_COUNT_FREE_FIELDS = frozenset({"parent", "name", "dtype", "param_dtype", "bn_axis_name", "bn_groups", "frozen"})
# torch leaf modules without parameters per yaml row of these modules: nn.Upsample, Concat, and
# SPPF's one nn.MaxPool2d (applied three times).
_PARAMETERLESS_PER_ROW = {"nn.Upsample": 1, "Concat": 1, "SPPF": 1}


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    """Counts of one model as ultralytics' ``model_info`` reports them.

    Attributes:
      name: e.g. "YOLOv8n", "YOLO11s" (ultralytics: the model yaml's stem, "yolo" -> "YOLO").
      layers: leaf torch modules of the equivalent ultralytics model.
      parameters, gradients: element counts (gradients: of trainable parameters).
      gflops: 2 x thop multiply-adds / 1e9 at ``imgsz`` x ``imgsz``, batch 1.
      fused: Conv + BatchNorm folded (val / predict) or not (train).
      imgsz: the square input size of ``gflops``.
    """

    name: str
    layers: int
    parameters: int
    gradients: int
    gflops: float
    fused: bool
    imgsz: int

    def line(self) -> str:
        """The summary line in ultralytics' format (GFLOPs to one decimal)."""
        fused = " (fused)" if self.fused else ""
        return (f"{self.name} summary{fused}: {self.layers:,} layers, {self.parameters:,} parameters, "
                f"{self.gradients:,} gradients, {self.gflops:.1f} GFLOPs")


@dataclasses.dataclass(frozen=True)
class _Call:
    """One traced module call: kind "conv" (Conv2d), "bn" (BatchNorm), "identity" (a Conv
    without SiLU, 0 multiply-adds) or "attn" (Attention); its path, output shape and thop
    multiply-adds (BatchNorm: 4 per input element, counted only unfused)."""

    kind: str
    path: tuple[str, ...]
    out: tuple[int, ...]
    macs: int


def family_of_module(model: Any) -> Family:
    """The :class:`Family` whose module ``model`` is an instance of; ``ValueError`` if none."""
    family = next((f for f in FAMILIES.values() if isinstance(model, f.module)), None)
    if family is None:
        raise ValueError(f"no model family builds {type(model).__name__}; expected one of "
                         f"{[f.module.__name__ for f in FAMILIES.values()]}")
    return family


def parameterless_leaves(family: Family) -> int:
    """The family's torch leaf modules without parameters outside its Convs' own Identity: one
    per nn.Upsample and Concat row of its yaml, one nn.MaxPool2d per SPPF, and the nn.SiLU
    instance every Conv shares (YOLOv8: 8, YOLO11: 8)."""
    return 1 + sum(_PARAMETERLESS_PER_ROW.get(module, 0) for _, _, module, _ in family.layers)


def _trace_key(model: Any) -> tuple[tuple[str, Any], ...]:
    """The module's fields that shape it (scale, num_classes, reg_max, cls_width, widths ...)."""
    return tuple((f.name, getattr(model, f.name)) for f in dataclasses.fields(model)
                 if f.name not in _COUNT_FREE_FIELDS)


def _call_macs(module: Any, args: tuple, out: Any) -> tuple[str, int] | None:
    """(kind, multiply-adds) of a call ``module(*args) -> out`` of a counted module (each takes
    its input array first), None for any other module."""
    from yolojax.models.layers import BatchNorm, Conv, Conv2d
    from yolojax.models.yolo11_layers import Attention

    if not isinstance(module, (Conv2d, BatchNorm, Conv, Attention)):
        return None
    x_shape = tuple(args[0].shape)
    if isinstance(module, Conv2d):
        per_output = module.kernel_size ** 2 * (1 if module.depthwise else x_shape[-1])
        return "conv", math.prod(out.shape) * per_output
    if isinstance(module, BatchNorm):
        return "bn", 4 * math.prod(x_shape)
    if isinstance(module, Conv) and not module.act:
        return "identity", 0
    if isinstance(module, Attention):
        b, h, w, dim = x_shape
        head_dim = dim // module.num_heads
        key_dim = int(head_dim * module.attn_ratio)
        return "attn", b * module.num_heads * (h * w) ** 2 * (key_dim + head_dim)
    return None


@functools.lru_cache(maxsize=32)
def _trace_shapes(module_class: type, fields: tuple[tuple[str, Any], ...], imgsz: int) -> tuple[Any, list[_Call]]:
    """Param shapes and the counted module calls (:class:`_Call`) of the float32
    ``module_class(**fields)`` at ``imgsz`` (the counts do not depend on the compute dtype)."""
    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    model = module_class(**dict(fields))
    calls: list[_Call] = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__":
            counted = _call_macs(context.module, args, out)
            if counted:
                calls.append(_Call(counted[0], tuple(context.module.path), tuple(out.shape), counted[1]))
        return out

    def init(rng, x):
        with nn.intercept_methods(record):
            return model.init(rng, x, train=False)

    variables = jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, imgsz, imgsz, 3), jnp.float32))
    return variables, calls


def model_summary(model: Any, *, fused: bool = False, trainable: bool = True,
                  imgsz: int = SUMMARY_IMGSZ) -> ModelSummary:
    """Ultralytics' summary counts of a family module (:class:`yolojax.models.YOLOv8`, pruned
    too, or :class:`yolojax.models.yolo11.YOLO11`).

    Args:
      model: the Flax module (scale, num_classes, reg_max, cls_width, widths as trained).
      fused: count as ultralytics' ``fuse()``d model (val / predict) rather than as built (train).
      trainable: the model as built (a trainer's, or one fused after building); False: a loaded
        checkpoint, whose parameters ultralytics freezes (0 gradients).
      imgsz: square input size for GFLOPs, a multiple of 32; ultralytics prints 640 (default).

    Returns:
      :class:`ModelSummary`; matches ``model_info`` of ultralytics' DetectionModel built from
      yolov8{n,s,m,l,x}.yaml and yolo11{n,s,m,l,x}.yaml (tests/test_summary.py).

    Raises:
      ValueError: a module of no family, or imgsz not a positive multiple of 32 (from the model).
    """
    import jax

    family = family_of_module(model)
    variables, calls = _trace_shapes(type(model), _trace_key(model), imgsz)
    params = variables["params"]
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    n_dfl = math.prod(params[f"model_{family.detect_layer}"]["dfl"]["conv"]["kernel"].shape)
    bn_calls = [c for c in calls if c.kind == "bn"]
    bn_parents = {c.path[:-1] for c in bn_calls}
    plain = [c.path for c in calls if c.kind == "conv" and c.path[:-1] not in bn_parents]  # convs without BatchNorm
    plain_params = sum(math.prod(x.shape) for path in plain for x in jax.tree.leaves(_node(params, path)))
    macs = sum(c.macs for c in calls if c.kind in ("conv", "attn"))
    anchors = sum((imgsz // stride) ** 2 for stride in family.strides)
    macs += 4 * anchors * n_dfl  # the DFL projection: a 1x1 conv, reg_max -> 1 channel per box side
    # + 1: the DFL conv; each Conv built with act=False has an nn.Identity of its own.
    other_leaves = len(plain) + 1 + sum(c.kind == "identity" for c in calls) + parameterless_leaves(family)
    if fused:
        n_params -= sum(c.out[-1] for c in bn_calls)  # each BatchNorm's scale and bias become one conv bias
        layers = len(bn_calls) + other_leaves
        gradients = plain_params if trainable else 0
    else:
        macs += sum(c.macs for c in bn_calls)
        layers = 2 * len(bn_calls) + other_leaves
        gradients = (n_params - n_dfl) if trainable else 0
    return ModelSummary(name=f"{family.title}{model.scale}", layers=layers, parameters=n_params,
                        gradients=gradients, gflops=2 * macs / 1e9, fused=fused, imgsz=imgsz)


def _node(params: Any, path: tuple) -> Any:
    """The params subtree of the module at ``path``."""
    for name in path:
        params = params[name]
    return params


def loaded_summary_line(info: Any) -> str:
    """The summary line ultralytics' val and predict print for loaded weights described by ``info``
    (``load_weights``' info, any family): fused, parameters frozen, GFLOPs at 640, e.g. "YOLOv8n
    summary (fused): 72 layers, 3,151,904 parameters, 0 gradients, 8.7 GFLOPs"."""
    return model_summary(model_from_info(info), fused=True, trainable=False).line()
