"""Pretrained weights into a model to fine-tune, as ultralytics 8.4.190 loads them.

Ultralytics' trainer builds the model for the dataset's class count and names, then
``DetectionModel.load(weights)``:

1. When the pretrained Detect head reads the same input widths (the same scale) but its
   class branch (cv3) is another width, it replaces the new model's cv3 by a copy of the
   pretrained one: the class branch keeps the pretrained hidden width (e.g. 80 for yolov8n
   fine-tuned to 2 classes, where a fresh model has 64) and weights; its last conv is new
   when the class count differs, with the class-prior bias.
2. ``cls_remap`` (on by default): rows of the class convs' weights and biases are copied by
   class name (case-insensitive, stripped) where the dataset's names match pretrained names,
   also when the counts match but the order differs; other rows keep their fresh values.
   Placeholder names ("0", "1", ...) on either side turn it off.
3. Every other array of the same name and shape is copied (``intersect_dicts``).

:func:`finetune_cls_width` is step 1's width (build the model with it), and
:func:`transfer_pretrained` steps 2 and 3 into the fresh variables of :func:`init_variables`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flax import traverse_util



def init_variables(model: Any, seed: int) -> dict:
    """Fresh ``{"params", "batch_stats"}`` of a detector module as numpy arrays.

    Initialised under ``jit`` from an "rbg" key: XLA compiles the initialisers of a YOLOv8's
    ~250 arrays several times faster than from the default threefry key (yolov8n on a 2-core
    CPU: ~20 s instead of ~75 s). The shapes do not depend on the input size, so a 32 x 32
    input serves.
    """
    import jax
    import jax.numpy as jnp

    init = jax.jit(lambda key: model.init(key, jnp.zeros((1, 32, 32, 3), jnp.float32), train=False))
    variables = jax.device_get(init(jax.random.key(seed, impl="rbg")))
    return {k: variables[k] for k in ("params", "batch_stats")}


_CLS_LAST = re.compile(r"^cv3_(\d+)_2$")


def detect_head(params: Mapping[str, Any]) -> str | None:
    """The name of the Detect layer among ``params``' modules ("model_22" in YOLOv8, "model_23"
    in YOLO11): the one holding the DFL projection. None when there is none."""
    return next((name for name, node in params.items() if isinstance(node, Mapping) and "dfl" in node), None)


def _head_in_widths(params: Mapping[str, Any]) -> list[int]:
    """Input widths of the box branch's first convs (ultralytics' ``[m[0].conv.in_channels for m in head.cv2]``)."""
    head = params.get(detect_head(params), {})
    widths, i = [], 0
    while f"cv2_{i}_0" in head:
        widths.append(int(np.shape(head[f"cv2_{i}_0"]["conv"]["kernel"])[2]))
        i += 1
    return widths


def pretrained_cls_width(params: Mapping[str, Any]) -> int | None:
    """Hidden width of a Detect head's class branch (the input width of its last conv ``cv3_0_2``)."""
    try:
        return int(np.shape(params[detect_head(params)]["cv3_0_2"]["kernel"])[2])
    except (KeyError, TypeError, IndexError):
        return None


def finetune_cls_width(fresh_in_widths: Sequence[int], pretrained: Mapping[str, Any]) -> int | None:
    """The class-branch width of the model to fine-tune: the pretrained one when its head reads
    the same input widths as the new model's (`fresh_in_widths`), else None (the default width)."""
    params = pretrained.get("params", {})
    if list(fresh_in_widths) and _head_in_widths(params) == list(fresh_in_widths):
        return pretrained_cls_width(params)
    return None


def head_in_widths(family: str, scale: str) -> list[int]:
    """The Detect head's input widths (P3, P4, P5) of ``family`` ("yolov8", "yolo11") at ``scale``:
    the scaled widths of the layers its yaml row reads."""
    from yolojax.models.registry import get_family

    f = get_family(family)
    return [f.scaled_channels(scale, f.layers[i][3][0]) for i in f.layers[f.detect_layer][0]]


def _norm(name: Any) -> str:
    return str(name).strip().lower()


def _placeholder(names: Sequence[Any]) -> bool:
    return all(str(i) == str(n) for i, n in enumerate(names))


def class_index(src_names: Sequence[Any] | None, dst_names: Sequence[Any] | None) -> np.ndarray | None:
    """int (nc_dst,): the pretrained class of each dataset class by name (-1: none), or None when
    ultralytics' ``_remap_cls_by_names`` does nothing (no names, placeholder names, no match, or
    the same names in the same order)."""
    if not src_names or not dst_names or _placeholder(src_names) or _placeholder(dst_names):
        return None
    lookup = {}
    for k, v in enumerate(src_names):
        lookup[_norm(v)] = k  # a later duplicate wins, as in ultralytics' dict comprehension
    idx = np.array([lookup.get(_norm(n), -1) for n in dst_names], np.int64)
    if not (idx >= 0).any() or (len(src_names) == len(dst_names) and np.array_equal(idx, np.arange(len(dst_names)))):
        return None
    return idx


def transfer_pretrained(
    fresh: Mapping[str, Any],
    pretrained: Mapping[str, Any],
    src_names: Sequence[Any] | None = None,
    dst_names: Sequence[Any] | None = None,
    cls_remap: bool = True,
) -> tuple[dict, int, list[str], int]:
    """Ultralytics' weight loading into ``fresh`` variables ({"params", "batch_stats"}).

    Args:
      fresh: the new model's variables (built with :func:`finetune_cls_width`'s width).
      pretrained: the pretrained variables.
      src_names: the pretrained model's class names.
      dst_names: the dataset's class names.
      cls_remap: copy class rows by name (ultralytics' ``cls_remap``).

    Returns:
      (variables as float32 numpy, arrays copied whole, paths kept fresh, class arrays remapped by name).
    """
    idx = class_index(src_names, dst_names) if cls_remap else None
    nc = len(dst_names) if dst_names else None
    out, copied, kept, remapped = {}, 0, [], 0
    head = detect_head(fresh["params"])
    for col in ("params", "batch_stats"):
        flat = {p: np.asarray(v, np.float32) for p, v in traverse_util.flatten_dict(fresh[col]).items()}
        src = traverse_util.flatten_dict(pretrained.get(col, {}))
        for path, value in flat.items():
            other = src.get(path)
            is_cls = (col == "params" and len(path) == 3 and path[0] == head and _CLS_LAST.match(path[1])
                      and value.shape[-1] == nc)
            if idx is not None and is_cls and other is not None and np.shape(other)[:-1] == value.shape[:-1]:
                valid = idx >= 0
                rows = np.array(value, copy=True)
                rows[..., valid] = np.asarray(other, np.float32)[..., idx[valid]]
                flat[path] = rows
                remapped += 1
            elif other is not None and tuple(np.shape(other)) == tuple(value.shape):
                flat[path] = np.asarray(other, np.float32)
                copied += 1
            else:
                kept.append("/".join((col,) + path))
        out[col] = traverse_util.unflatten_dict(flat)
    return out, copied, kept, remapped
