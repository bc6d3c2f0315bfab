"""What every detector family's Flax module shares: its attributes, input checks and frozen
BatchNorm layers (ultralytics' ``freeze``)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from yolojax.models.layers import BatchNorm
from yolojax.models.naming import in_frozen_layer, ultralytics_name


class Detector(nn.Module):
    """Base of the family modules (:class:`yolojax.models.yolov8.YOLOv8`,
    :class:`yolojax.models.yolo11.YOLO11`); a subclass implements ``_forward(images, train)``.

    Attributes:
      scale: one of the family's scales ("n", "s", "m", "l", "x").
      num_classes: number of object classes.
      reg_max: DFL bins per box side (16).
      dtype: computation dtype (jnp.bfloat16 for mixed precision); params stay ``param_dtype``.
      bn_axis_name: mapped axis name to average BatchNorm statistics over under pmap/shard_map.
      bn_groups: BatchNorm statistics per this many equal slices of the batch rows (each
        device's rows under jit with the batch over 'data': ``parallel.sync_bn=False``).
      cls_width: hidden width of the head's class branch; None: ultralytics' ``max(P3 width,
        min(num_classes, 100))``. An ultralytics model fine-tuned to another class count keeps
        its source's width (e.g. 80 for yolov8n tuned to 2 classes), so it comes from the
        weights (``info["cls_width"]``).
      frozen: ultralytics ``freeze`` name substrings (:mod:`yolojax.train.freeze`): the
        BatchNorm layers whose ultralytics module name contains one run in eval mode even with
        ``train=True`` (running statistics, never updated), as ultralytics' ``_model_train``
        sets them.

    Call ``model.apply(variables, images, train)`` with ``images`` float (B, H, W, 3) in [0, 1],
    H and W multiples of 32. ``train=False`` returns (B, N, 4 + num_classes) fp32: box centre
    x, y, width, height in input pixels, then sigmoid class scores; N = sum over strides 8,
    16, 32 of (H/s)*(W/s), stride 8 first, row-major within a level. ``train=True`` returns
    the 3 raw head outputs (B, H/s, W/s, 4 * reg_max + num_classes) (pass
    ``mutable=["batch_stats"]``). With "intermediates" also mutable, the Detect head's inputs
    (P3, P4, P5: (B, H/s, W/s, C_s)) come back as ``intermediates["detect_inputs"][0]``.
    Raises ``ValueError`` for an unknown scale or images of another shape.
    """

    scale: str = "n"
    num_classes: int = 80
    reg_max: int = 16
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    bn_axis_name: str | None = None
    bn_groups: int = 1
    cls_width: int | None = None
    frozen: tuple[str, ...] = ()

    def __call__(self, images: jax.Array, train: bool = False):
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be (B, H, W, 3), got shape {images.shape}")
        if images.shape[1] % 32 or images.shape[2] % 32:
            raise ValueError(f"image height and width must be multiples of 32, got {images.shape[1:3]}")
        if not (train and self.frozen):
            return self._forward(images, train)
        with nn.intercept_methods(_frozen_batchnorm(self.frozen)):
            return self._forward(images, train)

    def layer_kwargs(self) -> dict[str, Any]:
        """The BatchNorm and dtype keywords every block of the model takes."""
        return dict(bn_axis_name=self.bn_axis_name, bn_groups=self.bn_groups, dtype=self.dtype,
                    param_dtype=self.param_dtype)


def _frozen_batchnorm(frozen: tuple[str, ...]):
    """A Flax method interceptor calling each BatchNorm of a frozen layer with train=False."""

    def intercept(next_fun, args, kwargs, context):
        module = context.module
        if (context.method_name == "__call__" and isinstance(module, BatchNorm)
                and in_frozen_layer(ultralytics_name(module.path, leaf=False), frozen)):
            args = (args[0], False, *args[2:])
        return next_fun(*args, **kwargs)

    return intercept
