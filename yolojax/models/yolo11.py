"""The YOLO11 detector (ultralytics' cfg/models/11/yolo11.yaml) as one Flax Linen module."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from yolojax.models.detector import Detector
from yolojax.models.layers import SPPF, Conv, Detect, upsample_nearest_2x
from yolojax.models.scaling import Scale
from yolojax.models.yolo11_layers import C2PSA, C3k2

# ultralytics 8.4.190 cfg/models/11/yolo11.yaml: scales [depth, width, max_channels].
SCALES: dict[str, Scale] = {
    "n": Scale(0.50, 0.25, 1024),
    "s": Scale(0.50, 0.50, 1024),
    "m": Scale(0.50, 1.00, 512),
    "l": Scale(1.00, 1.00, 512),
    "x": Scale(1.00, 1.50, 512),
}

STRIDES = (8, 16, 32)
# ultralytics 8.4.190 cfg/models/11/yolo11.yaml: (from, repeats, module, args); the first 11
# rows are the backbone. For scales m, l, x ultralytics' parse_model sets every C3k2's c3k
# argument to True (nn/tasks.py), whatever the row says.
LAYERS: tuple[tuple[Any, int, str, list], ...] = (
    (-1, 1, "Conv", [64, 3, 2]), (-1, 1, "Conv", [128, 3, 2]), (-1, 2, "C3k2", [256, False, 0.25]),
    (-1, 1, "Conv", [256, 3, 2]), (-1, 2, "C3k2", [512, False, 0.25]), (-1, 1, "Conv", [512, 3, 2]),
    (-1, 2, "C3k2", [512, True]), (-1, 1, "Conv", [1024, 3, 2]), (-1, 2, "C3k2", [1024, True]),
    (-1, 1, "SPPF", [1024, 5]), (-1, 2, "C2PSA", [1024]),
    (-1, 1, "nn.Upsample", [None, 2, "nearest"]), ([-1, 6], 1, "Concat", [1]), (-1, 2, "C3k2", [512, False]),
    (-1, 1, "nn.Upsample", [None, 2, "nearest"]), ([-1, 4], 1, "Concat", [1]), (-1, 2, "C3k2", [256, False]),
    (-1, 1, "Conv", [256, 3, 2]), ([-1, 13], 1, "Concat", [1]), (-1, 2, "C3k2", [512, False]),
    (-1, 1, "Conv", [512, 3, 2]), ([-1, 10], 1, "Concat", [1]), (-1, 2, "C3k2", [1024, True]),
    ([16, 19, 22], 1, "Detect", ["nc"]),
)
BACKBONE_ROWS = 11
NUM_LAYERS = len(LAYERS)  # 24: model.0-10 backbone, 11-22 head, 23 Detect
DETECT_LAYER = NUM_LAYERS - 1


def uses_c3k(scale: str, row_c3k: bool) -> bool:
    """Whether a C3k2 row builds C3k blocks: ultralytics' parse_model forces it for m, l, x."""
    return scale in ("m", "l", "x") or row_c3k


class YOLO11(Detector):
    """YOLO11 detection model (NHWC); attributes and call as :class:`Detector`. Layer ``i`` of
    yolo11.yaml is the submodule ``model_<i>``; the Detect head (``model_23``) is ultralytics'
    non-legacy one, with a depthwise-separable class branch."""

    @nn.compact
    def _forward(self, images: jax.Array, train: bool):
        if self.scale not in SCALES:
            raise ValueError(f"unknown YOLO11 scale {self.scale!r}; expected one of {sorted(SCALES)}")
        kw = self.layer_kwargs()
        scale = SCALES[self.scale]
        ch = scale.channels

        def conv(i, x):
            return Conv(ch(LAYERS[i][3][0]), 3, 2, name=f"model_{i}", **kw)(x, train)

        def c3k2(i, x):
            _, repeats, _, args = LAYERS[i]
            return C3k2(features=ch(args[0]), n=scale.repeats(repeats),
                        c3k=uses_c3k(self.scale, len(args) > 1 and args[1]),
                        expansion=args[2] if len(args) > 2 else 0.5, name=f"model_{i}", **kw)(x, train)

        x = images.astype(self.dtype)
        # Backbone.
        x = c3k2(2, conv(1, conv(0, x)))  # P2/4
        p3 = c3k2(4, conv(3, x))  # P3/8
        p4 = c3k2(6, conv(5, p3))  # P4/16
        x = c3k2(8, conv(7, p4))  # P5/32
        x = SPPF(ch(1024), 5, name="model_9", **kw)(x, train)
        p5 = C2PSA(features=ch(1024), n=scale.repeats(LAYERS[10][1]), name="model_10", **kw)(x, train)
        # Head: top-down then bottom-up path aggregation.
        h4 = c3k2(13, jnp.concatenate([upsample_nearest_2x(p5), p4], -1))
        out3 = c3k2(16, jnp.concatenate([upsample_nearest_2x(h4), p3], -1))
        out4 = c3k2(19, jnp.concatenate([conv(17, out3), h4], -1))
        out5 = c3k2(22, jnp.concatenate([conv(20, out4), p5], -1))
        # The Detect head's inputs (layers 16, 19, 22), for feature distillation.
        self.sow("intermediates", "detect_inputs", (out3, out4, out5))
        return Detect(self.num_classes, self.reg_max, STRIDES, cls_width=self.cls_width, legacy=False,
                      name=f"model_{DETECT_LAYER}", **kw)([out3, out4, out5], train)
