"""The one-line model summary ultralytics prints: layers, parameters, gradients, GFLOPs.

    YOLOv8n summary: 129 layers, 3,157,200 parameters, 3,157,184 gradients, 8.9 GFLOPs
    YOLOv8n summary (fused): 72 layers, 3,151,904 parameters, 0 gradients, 8.7 GFLOPs

Ultralytics 8.4.190 (``utils/torch_utils.py`` ``model_info`` / ``get_flops``) prints the first
form when a trainer builds its ``DetectionModel`` (unfused, every parameter trainable but the
frozen DFL projection) and the second when val or predict loads a checkpoint (Conv + BatchNorm
fused, all parameters frozen). Both count GFLOPs at 640 x 640 whatever the run's imgsz
(``info()`` is called with its default), which :data:`SUMMARY_IMGSZ` reproduces.

The counts are derived from the Flax model's shapes only (``jax.eval_shape``, nothing runs):

* layers: ultralytics counts leaf torch modules, each shared instance once. A ``Conv`` is two
  leaves (conv, bn; fused: one); every other Conv2d (the head's last convs, the DFL projection)
  one; plus :data:`PARAMETERLESS_LEAVES` (2 Upsample, 4 Concat, SPPF's MaxPool2d and the one
  SiLU instance all Convs share).
* parameters: the Flax params (BatchNorm scale and bias are torch parameters, its running
  statistics are buffers). Fusing folds each BatchNorm's (scale, bias) into one conv bias.
* gradients: trainable parameters: all but the frozen DFL projection (unfused); fusing
  replaces each Conv's conv with a frozen one, so only the head's last convs stay trainable;
  a loaded checkpoint (val / predict) has all parameters frozen: 0.
* GFLOPs: thop's count times 2 / 1e9: per conv, output elements x input channels x k x k
  multiply-adds; per BatchNorm (unfused only), 4 per input element (normalise and affine);
  the DFL projection is a 1x1 conv, reg_max multiply-adds per box side and anchor; SiLU,
  max-pool, nearest upsampling, concatenation and the box decode count 0.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

from yolojax.models.yolov8 import STRIDES

SUMMARY_IMGSZ = 640  # ultralytics' model_info default: the summary's GFLOPs are at 640 x 640
# YOLOv8's torch leaf modules without parameters (ultralytics' yolov8.yaml): 2 nn.Upsample,
# 4 Concat, SPPF's nn.MaxPool2d and the nn.SiLU instance shared by every Conv.
PARAMETERLESS_LEAVES = 2 + 4 + 1 + 1


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    """Counts of one model as ultralytics' ``model_info`` reports them.

    Attributes:
      name: e.g. "YOLOv8n" (ultralytics: the model yaml's stem, "yolo" -> "YOLO").
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


@functools.lru_cache(maxsize=16)
def _trace_shapes(scale: str, num_classes: int, reg_max: int, cls_width: int | None, widths: Any,
                  imgsz: int) -> tuple[Any, list[tuple[str, tuple, tuple, tuple]]]:
    """Param shapes and, per Conv2d / BatchNorm call, (kind, module path, in shape, out shape), of
    the float32 YOLOv8 so described (the counts do not depend on the compute dtype)."""
    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    from yolojax.models.layers import BatchNorm, Conv2d
    from yolojax.models.yolov8 import YOLOv8

    model = YOLOv8(scale=scale, num_classes=num_classes, reg_max=reg_max, cls_width=cls_width, widths=widths)
    calls: list[tuple[str, tuple, tuple, tuple]] = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name == "__call__" and isinstance(module, (Conv2d, BatchNorm)):
            kind = "conv" if isinstance(module, Conv2d) else "bn"
            calls.append((kind, tuple(module.path), tuple(args[0].shape), tuple(out.shape)))
        return out

    def init(rng, x):
        with nn.intercept_methods(record):
            return model.init(rng, x, train=False)

    variables = jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, imgsz, imgsz, 3), jnp.float32))
    return variables, calls


def model_summary(model: Any, *, fused: bool = False, trainable: bool = True,
                  imgsz: int = SUMMARY_IMGSZ) -> ModelSummary:
    """Ultralytics' summary counts of a :class:`yolojax.models.YOLOv8`.

    Args:
      model: the Flax YOLOv8 module (scale, num_classes, reg_max, cls_width, widths as trained).
      fused: count as ultralytics' ``fuse()``d model (val / predict) rather than as built (train).
      trainable: the model as built (a trainer's, or one fused after building); False: a loaded
        checkpoint, whose parameters ultralytics freezes (0 gradients).
      imgsz: square input size for GFLOPs, a multiple of 32; ultralytics prints 640 (default).

    Returns:
      :class:`ModelSummary`; matches ``model_info`` of ultralytics' DetectionModel built from
      yolov8{n,s,m,l,x}.yaml (tests/test_summary.py).

    Raises:
      ValueError: imgsz not a positive multiple of 32 (from the model).
    """
    import jax

    variables, calls = _trace_shapes(model.scale, model.num_classes, model.reg_max, model.cls_width, model.widths,
                                     imgsz)
    params = variables["params"]
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    n_dfl = math.prod(params["model_22"]["dfl"]["conv"]["kernel"].shape)
    bn_calls = [c for c in calls if c[0] == "bn"]
    bn_parents = {path[:-1] for _, path, _, _ in bn_calls}
    conv_calls = [c for c in calls if c[0] == "conv"]
    plain = [path for _, path, _, _ in conv_calls if path[:-1] not in bn_parents]  # convs without BatchNorm
    plain_params = sum(math.prod(x.shape) for path in plain for x in jax.tree.leaves(_node(params, path)))
    macs = sum(math.prod(out) * inp[-1] * _kernel_area(params, path) for _, path, inp, out in conv_calls)
    anchors = sum((imgsz // stride) ** 2 for stride in STRIDES)
    macs += 4 * anchors * n_dfl  # the DFL projection: a 1x1 conv, reg_max -> 1 channel per box side
    bn_channels = sum(out[-1] for _, _, _, out in bn_calls)
    if fused:
        n_params -= bn_channels  # each BatchNorm's scale and bias become one conv bias
        layers = len(bn_calls) + len(plain) + 1 + PARAMETERLESS_LEAVES  # + 1: the DFL conv
        gradients = plain_params if trainable else 0
    else:
        macs += sum(4 * math.prod(inp) for _, _, inp, _ in bn_calls)
        layers = 2 * len(bn_calls) + len(plain) + 1 + PARAMETERLESS_LEAVES
        gradients = (n_params - n_dfl) if trainable else 0
    return ModelSummary(name=f"YOLOv8{model.scale}", layers=layers, parameters=n_params, gradients=gradients,
                        gflops=2 * macs / 1e9, fused=fused, imgsz=imgsz)


def _node(params: Any, path: tuple) -> Any:
    """The params subtree of the module at ``path``."""
    for name in path:
        params = params[name]
    return params


def _kernel_area(params: Any, path: tuple) -> int:
    """k x k of the conv kernel of the Conv2d module at ``path``."""
    kh, kw = _node(params, path)["kernel"].shape[:2]
    return kh * kw


def loaded_summary_line(info: Any) -> str:
    """The summary line ultralytics' val and predict print for loaded weights described by ``info``
    (``load_weights``' info): fused, parameters frozen, GFLOPs at 640, e.g. "YOLOv8n summary (fused):
    72 layers, 3,151,904 parameters, 0 gradients, 8.7 GFLOPs"."""
    from yolojax.models.yolov8 import yolov8_from_info

    return model_summary(yolov8_from_info(info), fused=True, trainable=False).line()
