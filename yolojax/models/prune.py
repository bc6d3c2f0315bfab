"""Structured channel pruning of a YOLOv8: whole output channels of its Convs removed.

The channels of the model fall into *units*, sets of channels that must be kept or removed
together; each unit has one keep mask. A unit is made by its *producers* (Convs whose
BatchNorm outputs those channels) and read by its *consumers* (Convs whose kernels take them
as input, at an offset in a concatenation). :func:`channel_graph` derives the units from
YOLOv8's wiring:

* a plain Conv's output is one unit, read by the next layer(s): the neck's upsample + concat
  and the Detect inputs (layers 15, 18, 21, each read by the next neck Conv, its C2f
  neighbour's concat and two Detect branches) are consumers at their concat offsets;
* a C2f's cv1 output is two units, the part that skips the Bottlenecks ([:split]) and the
  part that feeds them ([split:]); pruning moves the split (``widths["model_i/split"]``);
* in a residual C2f (backbone layers 2, 4, 6, 8) the second part and every Bottleneck's cv2
  output are added together, so they are one unit with several producers;
* SPPF's cv1 output is read four times by cv2 (itself and three max pools, concatenated);
* Detect's hidden Convs (cv2_i_0/1, cv3_i_0/1) are units; its last Convs (box and class
  outputs) and the DFL are only consumers and keep every output.

Ranking (:func:`select_channels`): ``bn_scale`` (network slimming) ranks each channel by its
BatchNorm |gamma| over the whole network, one global threshold; ``l1`` ranks by the L1 norm
of the output filter within each unit (filter norms of layers with different fan-in do not
compare). A unit made by several producers takes the largest score of its producers. Every
unit keeps at least :func:`min_keep` channels, so no layer vanishes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from yolojax.models.yolov8 import C2F_LAYERS, resolve_widths

METHODS = ("bn_scale", "l1")
# A removed channel whose |gamma| exceeds this carried more than a constant: the model will
# lose accuracy until fine-tuned (ultralytics' released weights: yolov8n's lowest 5% are 0.2-0.5).
SPARSE_GAMMA = 0.05

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ChannelGraph:
    """The units of a YOLOv8's channels.

    Attributes:
      sizes: unit name -> its channel count.
      producers: unit name -> ((Conv module path, offset of the unit in that Conv's output), ...).
      inputs: Conv module path -> the unit names its input is the concatenation of, in order
        (a unit may appear several times); the image-reading model_0 reads none.
    """

    sizes: dict[str, int]
    producers: dict[str, tuple[tuple[str, int], ...]]
    inputs: dict[str, tuple[str, ...]]


def channel_graph(widths: Mapping[str, int]) -> ChannelGraph:
    """The :class:`ChannelGraph` of a YOLOv8 with ``widths`` (a full table:
    :func:`yolojax.models.yolov8.resolve_widths`), mirroring ``YOLOv8._forward``'s wiring."""
    sizes: dict[str, int] = {}
    producers: dict[str, list[tuple[str, int]]] = {}
    inputs: dict[str, tuple[str, ...]] = {}

    def produce(unit: str, path: str, offset: int, size: int) -> None:
        sizes.setdefault(unit, size)
        producers.setdefault(unit, []).append((path, offset))

    def conv(path: str, src: tuple[str, ...]) -> tuple[str, ...]:
        inputs[path] = src
        produce(path, path, 0, widths[path])
        return (path,)

    def c2f(i: int, src: tuple[str, ...]) -> tuple[str, ...]:
        p, shortcut = f"model_{i}", C2F_LAYERS[i][2]
        inputs[f"{p}/cv1"] = src
        split, cv1 = widths[f"{p}/split"], widths[f"{p}/cv1"]
        produce(f"{p}/cv1:0", f"{p}/cv1", 0, split)
        produce(f"{p}/cv1:1", f"{p}/cv1", split, cv1 - split)
        parts, last, j = [f"{p}/cv1:0", f"{p}/cv1:1"], f"{p}/cv1:1", 0
        while f"{p}/m_{j}/cv1" in widths:
            m = f"{p}/m_{j}"
            conv(f"{m}/cv1", (last,))
            inputs[f"{m}/cv2"] = (f"{m}/cv1",)
            if shortcut:  # y = x + cv2(cv1(x)): cv2's output joins the unit it is added to
                produce(f"{p}/cv1:1", f"{m}/cv2", 0, widths[f"{m}/cv2"])
            else:
                produce(f"{m}/cv2", f"{m}/cv2", 0, widths[f"{m}/cv2"])
                last = f"{m}/cv2"
            parts.append(last)
            j += 1
        return conv(f"{p}/cv2", tuple(parts))

    x = conv("model_1", conv("model_0", ()))
    x = conv("model_3", c2f(2, x))
    p3 = c2f(4, x)
    p4 = c2f(6, conv("model_5", p3))
    x = c2f(8, conv("model_7", p4))
    x = conv("model_9/cv1", x)
    p5 = conv("model_9/cv2", x * 4)  # cv1's output and its three max pools, concatenated
    h4 = c2f(12, p5 + p4)
    outs = [c2f(15, h4 + p3)]
    outs.append(c2f(18, conv("model_16", outs[0]) + h4))
    outs.append(c2f(21, conv("model_19", outs[1]) + p5))
    for i, feat in enumerate(outs):
        for branch in ("cv2", "cv3"):
            hidden = conv(f"model_22/{branch}_{i}_1", conv(f"model_22/{branch}_{i}_0", feat))
            inputs[f"model_22/{branch}_{i}_2"] = hidden
    return ChannelGraph(sizes, {u: tuple(p) for u, p in producers.items()}, inputs)


def min_keep(size: int) -> int:
    """Channels a unit of ``size`` keeps at least: 8 or an eighth of it, whichever is more
    (all of a unit of 8 or fewer)."""
    return min(size, max(8, math.ceil(size / 8)))


def _node(tree: Mapping[str, Any], path: str) -> Any:
    for name in path.split("/"):
        tree = tree[name]
    return tree


def channel_scores(params: Mapping[str, Any], graph: ChannelGraph, method: str) -> dict[str, np.ndarray]:
    """unit -> float64 (size,) importance of each channel: |BatchNorm gamma| (``bn_scale``) or
    the L1 norm of the output filter (``l1``), the largest over the unit's producers."""
    scores = {}
    for unit, size in graph.sizes.items():
        per_producer = []
        for path, offset in graph.producers[unit]:
            if method == "bn_scale":
                values = np.abs(np.asarray(_node(params, path)["bn"]["scale"], np.float64))
            else:
                values = np.abs(np.asarray(_node(params, path)["conv"]["kernel"], np.float64)).sum(axis=(0, 1, 2))
            per_producer.append(values[offset:offset + size])
        scores[unit] = np.max(per_producer, axis=0)
    return scores


def select_channels(params: Mapping[str, Any], widths: Mapping[str, int], ratio: float,
                    method: str = "bn_scale") -> dict[str, np.ndarray]:
    """The channels to keep: unit -> sorted int64 indices into the unit (:func:`channel_graph`).

    Args:
      params: the model's ``params`` (numpy or jax arrays), shaped as ``widths`` says.
      widths: the model's full widths table (:func:`yolojax.models.yolov8.resolve_widths`).
      ratio: in [0, 1): the fraction of all channels to remove (``bn_scale``: the lowest
        |gamma| over the network; ``l1``: that fraction of each unit, rounded down), never
        below :func:`min_keep` per unit (so fewer may go).
      method: "bn_scale" or "l1".

    Raises:
      ValueError: ratio outside [0, 1) or an unknown method (one line).
    """
    check_prune_args(ratio, method)
    graph = channel_graph(widths)
    scores = channel_scores(params, graph, method)
    removed: dict[str, list[int]] = {u: [] for u in graph.sizes}
    if method == "bn_scale":
        flat = [(float(s), u, i) for u, values in scores.items() for i, s in enumerate(values)]
        budget = int(ratio * len(flat))
        for _, unit, index in sorted(flat, key=lambda t: t[0]):
            if budget == 0:
                break
            if graph.sizes[unit] - len(removed[unit]) > min_keep(graph.sizes[unit]):
                removed[unit].append(index)
                budget -= 1
    else:
        for unit, values in scores.items():
            count = min(int(ratio * len(values)), len(values) - min_keep(len(values)))
            removed[unit] = list(np.argsort(values, kind="stable")[:count])
    return {u: np.setdiff1d(np.arange(graph.sizes[u]), removed[u]).astype(np.int64) for u in graph.sizes}


def check_prune_args(ratio: Any, method: Any) -> None:
    """Raise ``ValueError`` (one line naming the field) unless ratio is a number in [0, 1) and
    method one of :data:`METHODS`."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise ValueError(f"ratio={ratio!r}: expected a fraction of channels to remove in [0, 1)")
    if method not in METHODS:
        raise ValueError(f"method={method!r}: expected one of {', '.join(METHODS)}")


def prune_variables(variables: Mapping[str, Any], widths: Mapping[str, int],
                    keep: Mapping[str, np.ndarray]) -> tuple[dict, dict[str, int]]:
    """Keep only the ``keep`` channels (:func:`select_channels`) of a YOLOv8's variables.

    Each producer's conv kernel (k, k, Cin, Cout), BatchNorm scale, bias, mean and var lose the
    removed output channels; each consumer's kernel loses the matching input channels (at every
    offset the unit is read at), and what those inputs added to it as constants
    (:func:`removed_input_shifts`) moves into its BatchNorm running mean (or, for the head's
    last convs, its bias). Returns (new float32 numpy ``{"params", "batch_stats"}``, the
    new full widths table, C2f splits moved).
    """
    graph = channel_graph(widths)
    shifts = removed_input_shifts(variables["params"], graph, keep)
    out_index: dict[str, list[np.ndarray]] = {}
    for unit, prods in graph.producers.items():
        for path, offset in prods:
            out_index.setdefault(path, []).append(np.asarray(keep[unit]) + offset)
    params = _copy_tree(variables["params"])
    stats = _copy_tree(variables["batch_stats"])
    for path, src in graph.inputs.items():
        node = _node(params, path)
        conv = node["conv"] if "conv" in node else node
        if src:
            starts = np.cumsum([0] + [graph.sizes[u] for u in src])
            rows = np.concatenate([np.asarray(keep[u]) + s for u, s in zip(src, starts)])
            conv["kernel"] = conv["kernel"][:, :, rows, :]
        if path in shifts:  # the removed inputs' constant part, folded into the BN mean or the bias
            if "bn" in node:
                _node(stats, path)["bn"]["mean"] = _node(stats, path)["bn"]["mean"] - shifts[path]
            else:
                conv["bias"] = conv["bias"] + shifts[path]
        if path in out_index:
            cols = np.concatenate(out_index[path])  # a C2f's cv1: its first part's, then its second's
            conv["kernel"] = conv["kernel"][..., cols]
            for tree, names in ((node["bn"], ("scale", "bias")), (_node(stats, path)["bn"], ("mean", "var"))):
                for name in names:
                    tree[name] = tree[name][cols]
    new_widths = {k: (len(keep[f"{k[:-len('/split')]}/cv1:0"]) if k.endswith("/split")
                      else _node(params, k)["conv"]["kernel"].shape[-1]) for k in widths}
    return {"params": params, "batch_stats": stats}, new_widths


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def removed_input_shifts(params: Mapping[str, Any], graph: ChannelGraph,
                         keep: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """consumer Conv path -> float64 (Cout,): what the removed channels it reads added to its
    conv output, each taken as the constant SiLU(beta) (its BatchNorm output at its running-mean
    input; network slimming's removed channels have |gamma| near 0, so that is nearly all they
    carry), times the kernel's taps summed over space (exact away from the zero-padded border).

    A residual C2f's unit is a running sum: Bottleneck ``m_k``'s cv1 reads, and its cv2's concat
    reads at occurrence ``k``, the sum of the first ``k + 1`` producers' constants (cv1's second
    part, then ``m_0`` ... ``m_{k-1}``'s cv2). Consumers that read no removed channel are absent.
    """
    def constant(unit: str, position: int) -> np.ndarray:
        size = graph.sizes[unit]
        return sum(_silu(np.asarray(_node(params, path)["bn"]["bias"], np.float64)[offset:offset + size])
                   for path, offset in graph.producers[unit][:position + 1])

    shifts = {}
    for path, src in graph.inputs.items():
        removed_values, seen = [], {}
        for unit in src:
            position = seen.get(unit, 0)
            seen[unit] = position + 1
            parts = path.split("/")
            if len(parts) == 3 and parts[1].startswith("m_") and parts[2] == "cv1":  # Bottleneck m_k reads x_k
                position = int(parts[1][2:])
            values = constant(unit, position)
            values[np.asarray(keep[unit], np.int64)] = 0.0
            removed_values.append(values)
        if not removed_values or not any(v.any() for v in removed_values):
            continue
        node = _node(params, path)
        kernel = np.asarray((node["conv"] if "conv" in node else node)["kernel"], np.float64)
        shifts[path] = np.einsum("hwio,i->o", kernel, np.concatenate(removed_values))
    return shifts


def _copy_tree(tree: Mapping[str, Any]) -> dict:
    return {k: _copy_tree(v) if isinstance(v, Mapping) else np.asarray(v, np.float32) for k, v in tree.items()}


def model_widths(info: Mapping[str, Any]) -> dict[str, int]:
    """The full widths table of the model ``info`` describes (``load_weights``' info, pruned or not)."""
    width = info.get("cls_width")
    return resolve_widths(info["scale"], int(info["num_classes"]), int(info.get("reg_max", 16)),
                          int(width) if width else None, info.get("widths"))


def prune(variables: Mapping[str, Any], info: Mapping[str, Any], ratio: float,
          method: str = "bn_scale") -> tuple[dict, dict]:
    """Prune a YOLOv8 (``load_weights``' variables and info, pruned before or not) by ``ratio``
    with ``method`` (:func:`select_channels`). Returns (the pruned variables, their info: the
    same plus ``widths``, the full table that :func:`yolojax.models.registry.model_from_info`
    builds the pruned model from). Logs a warning when a removed channel's |gamma| exceeds
    :data:`SPARSE_GAMMA` (weights not sparsity-trained). Raises ``ValueError`` for a bad ratio
    or method, or weights of a family without per-layer widths (YOLO11), in one line."""
    from yolojax.models.registry import family_of

    check_prune_args(ratio, method)
    if not family_of(info).prunable:
        raise ValueError(f"structured pruning supports YOLOv8 weights only, not {family_of(info).title}")
    widths = model_widths(info)
    keep = select_channels(variables["params"], widths, ratio, method)
    largest = largest_removed_gamma(variables["params"], channel_graph(widths), keep)
    if largest > SPARSE_GAMMA:
        logger.warning("removed channels with BatchNorm |gamma| up to %.2f (not near 0): expect lower accuracy "
                       "until the pruned model is fine-tuned; sparsity training first (yolojax train ... bn_l1=1e-4) "
                       "drives the gammas of spare channels to 0", largest)
    pruned, new_widths = prune_variables(variables, widths, keep)
    return pruned, {**info, "widths": new_widths}


def largest_removed_gamma(params: Mapping[str, Any], graph: ChannelGraph, keep: Mapping[str, np.ndarray]) -> float:
    """The largest BatchNorm |gamma| among the channels ``keep`` leaves out (0.0 when none):
    what the removed channels carried beyond the constant folded into their consumers."""
    largest = 0.0
    for unit, producers in graph.producers.items():
        removed = np.setdiff1d(np.arange(graph.sizes[unit]), keep[unit])
        for path, offset in producers:
            if len(removed):
                gamma = np.abs(np.asarray(_node(params, path)["bn"]["scale"]))[removed + offset]
                largest = max(largest, float(gamma.max()))
    return largest
