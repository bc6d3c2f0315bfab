"""ultralytics' ``freeze`` argument: which layers keep their parameters and BatchNorm statistics.

ultralytics 8.4.190 (``BaseTrainer._setup_train``) freezes every parameter whose name contains
``model.{x}.`` for each ``x`` of ``freeze`` (an int N: layers 0..N-1; a list: layer indices or
names such as ``"22.cv2"``), plus ``.dfl`` always: their ``requires_grad`` is off (no
gradient, no weight decay, no optimiser step), and ``_model_train`` puts their BatchNorm
modules in eval mode, so those normalise with their running statistics and never update
them. yolojax names a parameter like ultralytics' state dict (``model_22/cv2_0_0/conv/kernel``
is ``model.22.cv2.0.0.conv.weight``) and matches the same substrings; the model runs the
BatchNorm of frozen layers in eval mode (``YOLOv8(frozen=...)``).
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import Any

from flax import traverse_util

from yolojax.models.naming import in_frozen_layer, ultralytics_name

ALWAYS_FROZEN = (".dfl",)  # ultralytics' always_freeze_names


def parse_freeze(value: Any) -> list[int | str]:
    """``freeze`` as given (config string, int or list) -> a list of layer indices / names.

    ``""`` / None / 0 -> []; ``10`` or ``"10"`` -> [0, ..., 9]; ``"[0, 1, '22.cv2']"``,
    ``"0,1,22.cv2"`` or a list -> those items.

    Raises:
      ValueError: one line naming ``freeze`` for a negative count or an item that is neither
        an int nor a string.
    """
    if value is None or value == "" or value is False:
        return []
    if isinstance(value, str):
        text = value.strip()
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = [part.strip() for part in text.strip("[]").split(",") if part.strip()]
    if isinstance(value, bool):
        raise ValueError(f"freeze must be a layer count or a list of layers, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"freeze must be >= 0, got {value}")
        return list(range(value))
    if isinstance(value, (list, tuple)):
        items = []
        for item in value:
            if isinstance(item, str) and item.strip().lstrip("-").isdigit():
                item = int(item)
            if isinstance(item, bool) or not isinstance(item, (int, str)):
                raise ValueError(f"freeze items must be layer indices or names, got {item!r}")
            items.append(item)
        return items
    raise ValueError(f"freeze must be a layer count or a list of layers, got {value!r}")


def frozen_layer_names(value: Any) -> tuple[str, ...]:
    """The name substrings ultralytics freezes for ``freeze``: ``model.{x}.`` per item, and ``.dfl``."""
    return tuple(f"model.{x}." for x in parse_freeze(value)) + ALWAYS_FROZEN


def frozen_mask(params: Any, frozen: Sequence[str]) -> Any:
    """A pytree like ``params`` of bools: True for each parameter whose ultralytics name
    (:func:`yolojax.models.naming.ultralytics_name`) contains one of ``frozen``."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({p: in_frozen_layer(ultralytics_name(p), frozen) for p in flat})


def check_frozen(params: Any, frozen: Sequence[str], value: Any) -> int:
    """Returns the number of frozen parameter arrays.

    Raises:
      ValueError: ``freeze`` leaves no parameter to train (ultralytics refuses this too).
    """
    flat = traverse_util.flatten_dict(params)
    count = sum(in_frozen_layer(ultralytics_name(p), frozen) for p in flat)
    if count == len(flat):
        raise ValueError(f"freeze={value} freezes the whole model: no parameter is left to train")
    return count
