"""INT8 ONNX: static post-training quantization of an exported YOLOv8 ONNX model.

    yolojax export model=yolov8n.pt format=onnx int8=True data=coco8.yaml [fraction=1.0]
    python -m yolojax.export --weights yolov8n.pt --int8 --data coco8.yaml [--fraction 1.0]

As ultralytics 8.4.190 (``int8=True``, now also spelled ``quantize=8``; engine/exporter.py,
utils/export/onnx.py): the float32 ONNX model is quantized by onnxruntime's
``quantize_static`` in QDQ format (QuantizeLinear / DequantizeLinear pairs around int8
tensors, which onnxruntime fuses into integer kernels), int8 weights, uint8 activations,
ranges calibrated (min/max) on the ``val`` split of ``data`` (the first ``fraction`` of its sorted
images: a ratio in (0, 1] or an image count; ultralytics' default 1.0, i.e. all of them; it
recommends >= 300), each image preprocessed as val feeds the model: long side resized to
imgsz, letterboxed to (H, W) with pad 114, RGB, /255, float32 NCHW. The file is written beside
the float32 one as ``<stem>_int8.onnx``, ultralytics' name for an INT8 ONNX export (ultralytics
then deletes the float32 file; yolojax keeps it).

What stays float (:func:`float_nodes`):

* **the Detect head's decode**: every node after the head's last convolutions, i.e. every
  node from which no Conv is reachable: the concat of each level's box and class logits and
  of the three levels, the DFL softmax and its expectation over the bins 0..15 (an Einsum
  in jax2onnx's graph, ultralytics' 1x1 DFL Conv), the anchor-point and stride arithmetic
  that turns distances into xywh pixels, the class sigmoid and the final concat of boxes
  (0..640 px) and scores (0..1). One int8 scale across that concat would round every score
  to 0; the softmax probabilities need finer than 1/255 steps for sub-pixel box edges; the
  anchor arithmetic is exact in float and cheap. ultralytics, which quantizes only
  Conv/Gemm/MatMul nodes, leaves the same part float except its DFL Conv.
* **the head's last convolutions** (``cv2.*.2``: box DFL logits, ``cv3.*.2``: class logits;
  the Conv nodes from which no other Conv is reachable) when ``keep_head_convs`` (default
  True): their outputs are the model's raw predictions; int8 there raised the error of the
  confident class scores against float32 1.3-1.9x (yolov8s, yolov8n); they are 1x1
  convolutions, a small share of the compute.
* **SPPF's -inf Pad and its max pools** (:func:`infinite_pads`): that tensor's range is infinite.
* by default (``op_types=CONV_OPS``, as ultralytics) every node that is not a Conv/MatMul/Gemm:
  SiLU (Sigmoid, Mul), the C2f splits and concats, SPPF's max pools, the upsampling; their
  inputs arrive dequantized. ``op_types=None`` quantizes them too (onnxruntime's QDQ
  rules for each op type).

Weights are quantized per output channel (``per_channel=True``; one scale per tensor gave
1.3-1.9x the box and score errors against float32), activations as uint8 (onnxruntime's
x86 U8S8 kernels: its default int8 activations ran slower than float32 on the development
CPU). onnxruntime's ``quant_pre_process`` runs first: it folds the BatchNorm arithmetic
that jax2onnx writes as separate nodes into the convolutions, whose weights then are
initializers that ``quantize_static`` quantizes. The measured effect of each choice is in
docs/compression.md.
"""

from __future__ import annotations

import ast
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from yolojax.inference.onnx_runtime import INSTALL_HINT

logger = logging.getLogger(__name__)

INT8_SUFFIX = "_int8"  # ultralytics: f"{stem}_int8.onnx" beside the float32 file
CONV_OPS = ("Conv", "MatMul", "Gemm")  # ultralytics' quantized op types (utils/export/onnx.py)
CALIBRATION_SPLIT = "val"  # ultralytics: self.args.split or "val"
CALIBRATION_METHODS = ("minmax", "entropy", "percentile", "distribution")
RECOMMENDED_IMAGES = 300  # ultralytics warns below this many calibration images


def int8_path(fp32_path: str | os.PathLike) -> Path:
    """``dir/model.onnx`` -> ``dir/model_int8.onnx`` (ultralytics' INT8 ONNX name)."""
    p = Path(fp32_path)
    return p.with_name(f"{p.stem}{INT8_SUFFIX}{p.suffix}")


def check_fraction(fraction: Any) -> float | int:
    """ultralytics' ``fraction`` for the calibration images: a ratio in (0, 1] or a whole image
    count > 1, or a [train, val, test] list whose ``val`` entry applies (missing: 1.0).

    Raises:
      ValueError: one line naming the value.
    """
    value = fraction
    if isinstance(fraction, (list, tuple)):
        if not 1 <= len(fraction) <= 3:
            raise ValueError(f"fraction={list(fraction)!r}: a list must be [train, val, test] (1 to 3 values)")
        value = fraction[1] if len(fraction) > 1 else 1.0
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (0 < value <= 1 or (value > 1 and value == int(value))))
    if not ok:
        raise ValueError(f"fraction={fraction!r}: must be a ratio in (0, 1] or a whole image count > 1 "
                         "(the share of data's val images used for INT8 calibration)")
    return value


def calibration_images(data: str | os.PathLike, fraction: Any = 1.0, split: str = CALIBRATION_SPLIT,
                       warn: bool = True) -> list[str]:
    """The calibration image files: the first ``fraction`` of ``split``'s sorted images in the
    data.yaml ``data`` (ultralytics' ``get_img_files`` order and ``fraction`` rule).

    Raises:
      ValueError: bad fraction, unreadable yaml, a split without images (one line).
    """
    from yolojax.data.sources.data_yaml import list_image_files, load_data_yaml, split_paths
    from yolojax.data.sources.subset import fraction_count

    value = check_fraction(fraction)
    try:
        spec = load_data_yaml(data)
        images = list_image_files(split_paths(spec, split))
    except (FileNotFoundError, TypeError) as e:
        raise ValueError(f"data={data}: {e}") from None
    images = images[:fraction_count(value, len(images))]
    if warn and len(images) < RECOMMENDED_IMAGES:
        logger.warning("INT8 calibration on %d images of %s's '%s' split (ultralytics recommends >= %d)",
                       len(images), data, split, RECOMMENDED_IMAGES)
    return images


def calibration_input(path: str | os.PathLike, input_hw: tuple[int, int]) -> np.ndarray | None:
    """One image as val feeds the model: float32 (3, H, W) RGB in [0, 1], long side resized to
    max(H, W), letterboxed (centred, pad 114, no upscaling); None when unreadable."""
    from yolojax.data.augment.letterbox import apply_letterbox, letterbox_params
    from yolojax.data.image_io import read_image_rgb, resize_long_side

    image = read_image_rgb(path)
    if image is None:
        return None
    image = resize_long_side(image, max(input_hw))
    boxed = apply_letterbox(image, letterbox_params(image.shape[:2], input_hw, scaleup=False))
    return np.ascontiguousarray(boxed.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)


def calibration_batches(images: Sequence[str | os.PathLike], input_hw: tuple[int, int],
                        batch: int) -> Iterator[np.ndarray]:
    """float32 (batch, 3, H, W) arrays over ``images`` (read lazily; unreadable files skipped
    with a warning). A fixed-batch model takes only full batches: the last one is filled by
    cycling from the first images, so every image is seen (repeats change no min/max)."""
    pending: list[np.ndarray] = []
    first: list[np.ndarray] = []
    for path in images:
        x = calibration_input(path, input_hw)
        if x is None:
            logger.warning("INT8 calibration: skipping unreadable image %s", path)
            continue
        pending.append(x)
        if len(first) < batch:
            first.append(x)
        if len(pending) == batch:
            yield np.stack(pending)
            pending = []
    if pending:
        fill = [first[i % len(first)] for i in range(batch - len(pending))]
        yield np.stack(pending + fill)


def _input_shape(model: Any) -> tuple[str, int | None, tuple[int, int]]:
    """(input name, fixed batch or None, (H, W)) of a (B, 3, H, W) image model."""
    (graph_input,) = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    dims = graph_input.type.tensor_type.shape.dim
    sizes = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if len(sizes) != 4 or sizes[1] != 3 or not sizes[2] or not sizes[3]:
        raise ValueError(f"expected a (B, 3, H, W) image input with fixed H, W, got {graph_input.name} {sizes}")
    return graph_input.name, sizes[0] or None, (int(sizes[2]), int(sizes[3]))


def _downstream_has_conv(model: Any) -> dict[int, bool]:
    """node index -> whether any Conv consumes (transitively) one of its outputs."""
    nodes = list(model.graph.node)
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    below: dict[int, bool] = {}
    for i in reversed(range(len(nodes))):  # ONNX graphs are topologically sorted
        below[i] = any(nodes[j].op_type == "Conv" or below.get(j, False)
                       for out in nodes[i].output for j in consumers.get(out, ()))
    return below


def decode_nodes(model: Any) -> list[str]:
    """Names of the Detect head's decode nodes: every non-Conv node from which no Conv is
    reachable (the concats, DFL softmax and expectation, anchor and stride arithmetic, class
    sigmoid, output transpose)."""
    below = _downstream_has_conv(model)
    return [n.name for i, n in enumerate(model.graph.node) if n.op_type != "Conv" and not below[i]]


def head_convs(model: Any) -> list[str]:
    """Names of the head's last convolutions (box DFL logits and class logits per level): the
    Conv nodes from which no other Conv is reachable."""
    below = _downstream_has_conv(model)
    return [n.name for i, n in enumerate(model.graph.node) if n.op_type == "Conv" and not below[i]]


def infinite_pads(model: Any) -> list[str]:
    """SPPF's -inf padding: Pad nodes whose constant value is not finite, and the nodes that
    consume their output (the max pools). Calibration would give that tensor an infinite range."""
    from onnx import numpy_helper

    constants = {t.name: t for t in model.graph.initializer}
    pads = []
    for node in model.graph.node:
        if node.op_type == "Pad" and len(node.input) > 2 and node.input[2] in constants:
            if not np.isfinite(numpy_helper.to_array(constants[node.input[2]])).all():
                pads.append(node)
    padded = {o for n in pads for o in n.output}
    return [n.name for n in pads] + [n.name for n in model.graph.node if padded & set(n.input)]


def float_nodes(model: Any, keep_head_convs: bool = True) -> list[str]:
    """The nodes :func:`quantize_onnx` leaves float (module docstring): the decode, SPPF's
    -inf Pad and its max pools, and with ``keep_head_convs`` the head's last convolutions."""
    return decode_nodes(model) + infinite_pads(model) + (head_convs(model) if keep_head_convs else [])


def _name_nodes(model: Any) -> None:
    """Give unnamed nodes unique names (``nodes_to_exclude`` matches by name)."""
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)


def _with_int8_metadata(model: Any, data: str, fraction: Any) -> None:
    """Record the INT8 export in ultralytics' ``args`` metadata (``int8``, ``data``, ``fraction``)."""
    for prop in model.metadata_props:
        if prop.key == "args":
            try:
                args = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return
            if isinstance(args, dict):
                args.update(int8=True, data=str(data), fraction=fraction)
                prop.value = str(args)


def quantize_onnx(fp32: str | os.PathLike, out: str | os.PathLike | None = None, *, data: str | os.PathLike,
                  fraction: Any = 1.0, images: Sequence[str | os.PathLike] | None = None,
                  per_channel: bool = True, keep_head_convs: bool = True,
                  op_types: Sequence[str] | None = CONV_OPS, method: str = "minmax",
                  activations: str = "uint8", preprocess: bool = True) -> Path:
    """Quantize the float32 YOLOv8 ONNX file ``fp32`` to INT8 (QDQ) with onnxruntime's
    ``quantize_static``, calibrated on ``data``'s val images (module docstring).

    Args:
      out: the INT8 file (default :func:`int8_path` beside ``fp32``).
      data, fraction: the calibration images (:func:`calibration_images`).
      images: calibration image files instead of ``data``'s (``data`` is then only recorded).
      per_channel: one weight scale per output channel (else per tensor).
      keep_head_convs: leave the head's last convolutions float.
      op_types: the op types quantized (None: every type onnxruntime quantizes); the decode
        stays float either way.
      method: activation range calibration: minmax (ultralytics'), entropy, percentile
        (99.999) or distribution.
      activations: "uint8" (asymmetric; onnxruntime's fast U8S8 kernels on x86) or "int8"
        (onnxruntime's default, S8S8).
      preprocess: run onnxruntime's ``quant_pre_process`` first (shape inference and the
        graph optimizations that fold BatchNorm's Mul/Add into the convolutions).

    Returns the written path. Raises ``ImportError`` without onnxruntime/onnx, ``ValueError``
    for bad input.
    """
    try:
        import onnx
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                              quantize_static)
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise ImportError(f"INT8 export needs onnxruntime and onnx: {INSTALL_HINT}") from None
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}")
    if activations not in ("uint8", "int8"):
        raise ValueError(f"activations must be uint8 or int8, got {activations!r}")
    fp32, out = Path(fp32), Path(out) if out is not None else int8_path(fp32)
    images = list(images) if images is not None else calibration_images(data, fraction)
    with tempfile.TemporaryDirectory(prefix="yolojax-int8-") as tmp:
        source = fp32
        if preprocess:
            source = Path(tmp) / "preprocessed.onnx"
            quant_pre_process(str(fp32), str(source), skip_symbolic_shape=True)
        model = onnx.load(str(source))
        _name_nodes(model)
        input_name, batch, input_hw = _input_shape(model)
        exclude = float_nodes(model, keep_head_convs)
        logger.info("INT8: quantizing %s (%s), %d of %d nodes kept float, calibrating on %d images",
                    fp32.name, ", ".join(op_types) if op_types else "all op types", len(exclude),
                    len(model.graph.node), len(images))

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.rewind()

            def get_next(self) -> dict[str, np.ndarray] | None:
                x = next(self.batches, None)
                return None if x is None else {input_name: x}

            def rewind(self) -> None:
                self.batches = calibration_batches(images, input_hw, batch or 1)

        # minmax keeps two scalars per tensor and image; the histogram methods keep every
        # activation of every image in memory (about 0.3 GB per 640x640 yolov8n image).
        extra: dict[str, Any] = {"CalibPercentile": 99.999} if method == "percentile" else {}
        out.parent.mkdir(parents=True, exist_ok=True)
        activation_type = QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8
        quantize_static(model, str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=activation_type, weight_type=QuantType.QInt8,
                        op_types_to_quantize=list(op_types) if op_types else None, nodes_to_exclude=exclude,
                        calibrate_method=getattr(CalibrationMethod, {"minmax": "MinMax"}.get(method, method.title())),
                        extra_options=extra)
    quantized = onnx.load(str(out))
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(onnx.load(str(fp32), load_external_data=False).metadata_props)
    _with_int8_metadata(quantized, str(data), fraction)
    onnx.save(quantized, str(out))
    return out
