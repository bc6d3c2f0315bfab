"""The YOLOv8 detector (ultralytics' yolov8.yaml) as one Flax Linen module."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from yolojax.models.detector import Detector
from yolojax.models.scaling import Scale
from yolojax.models.layers import SPPF, C2f, Conv, Detect, upsample_nearest_2x


SCALES: dict[str, Scale] = {
    "n": Scale(0.33, 0.25, 1024),
    "s": Scale(0.33, 0.50, 1024),
    "m": Scale(0.67, 0.75, 768),
    "l": Scale(1.00, 1.00, 512),
    "x": Scale(1.00, 1.25, 512),
}

STRIDES = (8, 16, 32)
# ultralytics 8.4.190 cfg/models/v8/yolov8.yaml: (from, repeats, module, args); the first 10
# rows are the backbone.
LAYERS: tuple[tuple[Any, int, str, list], ...] = (
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
NUM_LAYERS = len(LAYERS)  # 23: model.0-9 backbone, 10-21 head, 22 Detect
DETECT_LAYER = NUM_LAYERS - 1
# ultralytics' yolov8.yaml: layer -> declared channels of its 3x3 stride-2 Convs, and
# layer -> (channels, repeats, shortcut) of its C2f blocks; SPPF is layer 9 (1024), Detect 22.
CONV_LAYERS = {0: 64, 1: 128, 3: 256, 5: 512, 7: 1024, 16: 256, 19: 512}
C2F_LAYERS = {2: (128, 3, True), 4: (256, 6, True), 6: (512, 6, True), 8: (1024, 3, True),
              12: (512, 3, False), 15: (256, 3, False), 18: (512, 3, False), 21: (1024, 3, False)}


def scaled_channels(scale: str, channels: int) -> int:
    """Output channels of a layer declared with ``channels`` in yolov8.yaml at ``scale``."""
    return SCALES[scale].channels(channels)


def widths_key(widths: Any) -> tuple[tuple[str, int], ...] | None:
    """``info["widths"]`` ({path: channels} or (path, channels) pairs, or None) as
    :attr:`YOLOv8.widths` takes it: pairs sorted by path, or None when empty."""
    if not widths:
        return None
    return tuple(sorted((str(k), int(v)) for k, v in dict(widths).items()))


def default_widths(scale: str, num_classes: int, reg_max: int = 16, cls_width: int | None = None) -> dict[str, int]:
    """Every output width of an unpruned :class:`YOLOv8`, keyed as :attr:`YOLOv8.widths` keys them.

    Keys: the path of each Conv module under the model ("model_0", "model_2/cv1",
    "model_2/m_0/cv2", "model_9/cv2", "model_22/cv3_0_1", ...) -> its output channels, plus
    "model_<i>/split" per C2f: how many of cv1's outputs form the part that skips the
    Bottlenecks (the rest feed them). The head's last convs (``cv2_<i>_2``, ``cv3_<i>_2``) have
    fixed widths (4 * reg_max, num_classes) and no key.
    """
    ch = lambda c: scaled_channels(scale, c)  # noqa: E731
    widths = {f"model_{i}": ch(c) for i, c in CONV_LAYERS.items()}
    for i, (c, repeats, _) in C2F_LAYERS.items():
        half = int(ch(c) * 0.5)
        widths.update({f"model_{i}/cv1": 2 * half, f"model_{i}/split": half, f"model_{i}/cv2": ch(c)})
        for j in range(scaled_depth(scale, repeats)):
            widths.update({f"model_{i}/m_{j}/cv1": half, f"model_{i}/m_{j}/cv2": half})
    widths.update({"model_9/cv1": ch(1024) // 2, "model_9/cv2": ch(1024)})
    box = max(16, ch(256) // 4, reg_max * 4)
    cls = cls_width or max(ch(256), min(num_classes, 100))
    for i in range(len(STRIDES)):
        for j in (0, 1):
            widths.update({f"model_22/cv2_{i}_{j}": box, f"model_22/cv3_{i}_{j}": cls})
    return widths


def resolve_widths(scale: str, num_classes: int, reg_max: int = 16, cls_width: int | None = None,
                   widths: Any = None) -> dict[str, int]:
    """:func:`default_widths` with ``widths`` (a pruned model's {path: channels} or pairs) in
    place of the defaults they name.

    Raises ``ValueError`` (one line naming the key) for an unknown key, a width below 1, a
    C2f split that leaves either part empty, or a residual C2f (layers 2, 4, 6, 8) whose
    Bottleneck outputs differ in width from the part they are added to.
    """
    resolved = default_widths(scale, num_classes, reg_max, cls_width)
    for key, value in dict(widths or {}).items():
        if key not in resolved:
            raise ValueError(f"widths: unknown key {key!r} for YOLOv8{scale} (e.g. 'model_2/cv1', 'model_2/split')")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"widths[{key!r}]={value!r}: expected a positive int")
        resolved[key] = value
    for i, (_, _, shortcut) in C2F_LAYERS.items():
        cv1, split = resolved[f"model_{i}/cv1"], resolved[f"model_{i}/split"]
        if split >= cv1:
            raise ValueError(f"widths['model_{i}/split']={split} must be below model_{i}/cv1's {cv1} channels")
        bottlenecks = [k for k in resolved if k.startswith(f"model_{i}/m_") and k.endswith("/cv2")]
        if shortcut and any(resolved[k] != cv1 - split for k in bottlenecks):
            raise ValueError(f"widths: model_{i}'s Bottleneck outputs must all be {cv1 - split} channels wide "
                             f"(model_{i}/cv1 minus model_{i}/split): they are added to that part")
    return resolved


def block_widths(widths: dict[str, int], module: str) -> tuple[tuple[str, int], ...]:
    """The entries of ``widths`` under ``module`` ("model_2"), relative to it ("cv1", "m_0/cv2")."""
    prefix = f"{module}/"
    return tuple(sorted((k[len(prefix):], v) for k, v in widths.items() if k.startswith(prefix)))


def scaled_depth(scale: str, repeats: int) -> int:
    """Number of Bottlenecks in a C2f declared with ``repeats`` in yolov8.yaml at ``scale``."""
    return SCALES[scale].repeats(repeats)


class YOLOv8(Detector):
    """YOLOv8 detection model (NHWC); attributes and call as :class:`Detector`, plus:

    Attributes:
      widths: per-layer output widths of a pruned model (:mod:`yolojax.models.prune`):
        (module path, channels) pairs sorted by path, keyed as :func:`default_widths` (e.g.
        ("model_2/cv1", 24), ("model_2/split", 10)); absent paths keep the scale's widths.
        None (the default): every width from ``scale``. Bad keys or values raise ``ValueError``
        (:func:`resolve_widths`).
    """

    widths: tuple[tuple[str, int], ...] | None = None

    @nn.compact
    def _forward(self, images: jax.Array, train: bool):
        if self.scale not in SCALES:
            raise ValueError(f"unknown YOLOv8 scale {self.scale!r}; expected one of {sorted(SCALES)}")
        kw = self.layer_kwargs()
        w = resolve_widths(self.scale, self.num_classes, self.reg_max, self.cls_width, self.widths)

        def conv(i, x):
            return Conv(w[f"model_{i}"], 3, 2, name=f"model_{i}", **kw)(x, train)

        def c2f(i, x):
            _, repeats, shortcut = C2F_LAYERS[i]
            return C2f(w[f"model_{i}/cv2"], scaled_depth(self.scale, repeats), shortcut, name=f"model_{i}",
                       widths=block_widths(w, f"model_{i}"), **kw)(x, train)

        x = images.astype(self.dtype)
        # Backbone.
        x = conv(0, x)  # P1/2
        x = conv(1, x)  # P2/4
        x = c2f(2, x)
        x = conv(3, x)  # P3/8
        p3 = c2f(4, x)
        x = conv(5, p3)  # P4/16
        p4 = c2f(6, x)
        x = conv(7, p4)  # P5/32
        x = c2f(8, x)
        p5 = SPPF(w["model_9/cv2"], 5, hidden=w["model_9/cv1"], name="model_9", **kw)(x, train)
        # Head: top-down then bottom-up path aggregation.
        h4 = c2f(12, jnp.concatenate([upsample_nearest_2x(p5), p4], -1))
        out3 = c2f(15, jnp.concatenate([upsample_nearest_2x(h4), p3], -1))
        out4 = c2f(18, jnp.concatenate([conv(16, out3), h4], -1))
        out5 = c2f(21, jnp.concatenate([conv(19, out4), p5], -1))
        # The Detect head's inputs (layers 15, 18, 21), for feature distillation
        # (yolojax.loss.distill); stored only when "intermediates" is mutable.
        self.sow("intermediates", "detect_inputs", (out3, out4, out5))
        return Detect(self.num_classes, self.reg_max, STRIDES, name="model_22", cls_width=self.cls_width,
                      widths=block_widths(w, "model_22"), **kw)([out3, out4, out5], train)

