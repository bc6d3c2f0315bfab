"""Export trained weights to ONNX or to an ultralytics ``.pt`` checkpoint.

    python -m yolojax.export --weights runs/s --format onnx [--out model.onnx --imgsz 640
        --batch 1 --dynamic --opset 18]
    python -m yolojax.export --weights runs/s --format pt [--out model.pt]

``--weights`` is anything :func:`yolojax.load_weights` reads (a .pt, a converted directory, a
train workdir); ``--out`` defaults to beside it (``runs/s.onnx``, ``yolov8n.onnx``...).

ONNX (via jax2onnx, ``pip install 'yolojax[export]'``) in ultralytics' own export layout, so
consumers of ultralytics' ONNX files (``YOLO("model.onnx")``, onnxruntime, TensorRT,
OpenVINO ...) take it unchanged:

* input ``images``: float32 (B, 3, H, W), RGB in [0, 1], letterboxed (pad value 114/255);
* output ``output0``: float32 (B, 4 + nc, N): rows 0-3 the box centre x, y, width, height in
  input pixels, rows 4.. the sigmoid class scores; N = sum over strides 8, 16, 32 of
  (H/s)(W/s), stride 8 first, row-major within a level; no NMS in the graph;
* metadata properties as ultralytics writes them (``names``, ``imgsz``, ``stride``, ``batch``,
  ``task``, ``args`` ...).

B is fixed (``--batch``) unless ``--dynamic``; H, W are fixed (``--imgsz``) in both cases
(ultralytics' ``dynamic=True`` also frees H and W, which the converter cannot express for
YOLOv8's anchor grid). ``.pt``: see :mod:`yolojax.weights.ultralytics_pt` (written without torch).

``int8=True`` (with ``data``, optionally ``fraction``) also writes ``<stem>_int8.onnx``
beside the float32 file: onnxruntime static quantization calibrated on data's val images
(:mod:`yolojax.inference.int8`).
"""

from __future__ import annotations

from importlib import metadata

import contextlib
import io
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from yolojax.config import STRIDE, check_arguments, weights_imgsz
from yolojax.inference.onnx_runtime import INSTALL_HINT

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "pt")
# ultralytics 8.4.190 utils/export/engine.py best_onnx_opset: 18 for torch >= 2.4 (ONNX Runtime
# CUDA lacks Resize-19 / ReduceMax-20 kernels); ultralytics also caps the IR version at 10.
DEFAULT_OPSET = 18
MAX_IR_VERSION = 10


def image_size_hw(imgsz: int | Sequence[int]) -> tuple[int, int]:
    """``imgsz`` as ultralytics takes it (an int, or [h, w]) -> (h, w), each a positive multiple
    of 32. Raises ``ValueError`` otherwise."""
    sizes = [imgsz] if isinstance(imgsz, (int, np.integer)) else list(imgsz)
    if len(sizes) not in (1, 2) or not all(isinstance(s, (int, np.integer)) for s in sizes):
        raise ValueError(f"imgsz must be an int or [height, width], got {imgsz!r}")
    check_arguments({"imgsz": [int(s) for s in sizes]})
    return int(sizes[0]), int(sizes[-1])


def onnx_graph_fn(variables: Mapping[str, Any], info: Mapping[str, Any]) -> Callable:
    """The function the ONNX graph computes: float32 (B, 3, H, W) in [0, 1] -> float32
    (B, 4 + nc, N), i.e. the model's ``apply(variables, NHWC images, train=False)`` transposed to
    ultralytics' export layout, with ``variables`` as constants."""
    import jax
    import jax.numpy as jnp

    from yolojax.models.registry import model_from_info

    model = model_from_info(info)
    constants = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), dict(variables))

    def graph(images_nchw):
        out = model.apply(constants, jnp.transpose(images_nchw, (0, 2, 3, 1)), train=False)
        return jnp.transpose(out, (0, 2, 1))

    return graph


def onnx_metadata(info: Mapping[str, Any], imgsz_hw: tuple[int, int], batch: int, dynamic: bool,
                  opset: int) -> dict[str, str]:
    """ultralytics' ONNX metadata properties (engine/exporter.py ``self.metadata``) for a
    yolojax detector; values are written as Python literals, as ultralytics does."""
    from yolojax.models.registry import model_title

    __version__ = metadata.version("yolojax")
    names = {i: str(n) for i, n in enumerate(info["names"])}
    args = {"batch": batch, "imgsz": list(imgsz_hw), "dynamic": dynamic, "opset": opset, "half": False,
            "nms": False, "format": "onnx"}
    values = {
        "description": f"yolojax {model_title(info)} model exported by yolojax {__version__}",
        "author": "yolojax", "date": datetime.now().astimezone().isoformat(), "version": __version__,
        "license": "Apache-2.0", "docs": "https://github.com/yolojax/yolojax", "stride": STRIDE,
        "task": "detect", "head": "Detect", "batch": batch, "imgsz": list(imgsz_hw), "names": names,
        "args": args, "channels": 3, "end2end": False,
    }
    return {k: str(v) for k, v in values.items()}


@contextlib.contextmanager
def _quiet_converter():
    """Keep the converter's chatter off the user's terminal: jax2onnx 0.13 prints debugging lines
    from its flax.linen Conv plugin, warns with tracebacks about plugins of other libraries
    (dm_pix) that it cannot import under this jax, and onnx_ir warns about shape-only helper
    values it skips. Errors still show."""
    loggers = [logging.getLogger(name) for name in ("jax2onnx", "onnx_ir")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


def export_onnx(variables: Mapping[str, Any], info: Mapping[str, Any], out: str | os.PathLike, *,
                imgsz: int | Sequence[int] | None = None, batch: int = 1, dynamic: bool = False,
                opset: int = DEFAULT_OPSET) -> Path:
    """Write detector ``variables`` (``info``: family, scale, num_classes, names) as an ONNX model.

    The graph is yolojax's eval forward in float32 converted by jax2onnx, in the layout of the
    module docstring; ``dynamic`` makes the batch dimension symbolic (``batch`` is then only
    the metadata value); ``imgsz`` None: the size the weights were trained at, else 640.
    Returns the written path. Raises ``ImportError`` (one line naming the
    extra to install) without jax2onnx/onnx, ``ValueError`` for a bad imgsz, batch or opset.
    """
    try:
        import onnx
        from jax2onnx import to_onnx
    except ImportError:
        raise ImportError(f"ONNX export needs jax2onnx and onnx: {INSTALL_HINT}") from None
    h, w = image_size_hw(weights_imgsz(imgsz, info))
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if not 11 <= opset <= onnx.defs.onnx_opset_version():
        raise ValueError(f"opset must be within 11..{onnx.defs.onnx_opset_version()} (installed onnx), got {opset}")
    from yolojax.models.registry import family_of, model_title
    from yolojax.ops.conv import portable_convolutions

    spec = [("batch" if dynamic else batch, 3, h, w)]
    logger.info("converting %s to ONNX with jax2onnx (about a minute on a CPU) ...", model_title(info))
    with _quiet_converter(), portable_convolutions():
        proto = to_onnx(onnx_graph_fn(variables, info), spec, model_name=family_of(info).model_name(info["scale"]),
                        opset=opset, input_names=["images"], output_names=["output0"])
    # jax2onnx annotates some broadcast intermediates of a batch > 1 graph with batch 1, which
    # onnxruntime warns about; the annotations are optional, so the runtime infers them instead.
    del proto.graph.value_info[:]
    proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
    for key, value in onnx_metadata(info, (h, w), batch, dynamic, opset).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(out))
    return out


def default_out(weights: str | os.PathLike, fmt: str) -> Path:
    """The output path beside ``weights``: ``yolov8n.pt`` -> ``yolov8n.onnx``; a directory
    ``runs/s`` -> ``runs/s.onnx``; for ``pt`` from a .pt, ``yolov8n_yolojax.pt``."""
    p = Path(weights)
    stem = p.stem if p.is_file() else p.name
    name = f"{stem}_yolojax.pt" if fmt == "pt" and p.is_file() and p.suffix.lower() == ".pt" else f"{stem}.{fmt}"
    return p.absolute().parent / name


def check_export_args(weights: str | os.PathLike, fmt: str, out: str | os.PathLike | None,
                      imgsz: int | Sequence[int], *, int8: bool = False, data: str | os.PathLike | None = None,
                      fraction: Any = 1.0) -> Path:
    """Refuse a bad format, output suffix, (ONNX) image size or INT8 request (int8 without
    ``data``, for ``pt``, a bad ``fraction``, a data.yaml without val images) before any work;
    returns the output path (``out`` or :func:`default_out`). Raises ``ValueError`` (and
    ``ImportError`` for int8 without onnxruntime)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r} (other targets: export to "
                         f"pt, then `yolo export model=model.pt format={fmt}`)")
    if not isinstance(int8, bool):
        raise ValueError(f"int8={int8!r}: must be true or false")
    if int8:
        from yolojax.inference.int8 import calibration_images, check_fraction

        if fmt != "onnx":
            raise ValueError(f"int8=True is for format=onnx (INT8 ONNX via onnxruntime), not format={fmt}")
        if not data:
            raise ValueError("int8=True needs data=<data.yaml>: its val images calibrate the INT8 ranges")
        check_fraction(fraction)
        calibration_images(data, fraction, warn=False)  # the yaml and its val images exist
        import importlib.util

        if importlib.util.find_spec("onnxruntime") is None:
            raise ImportError(f"INT8 export needs onnxruntime: {INSTALL_HINT}")
    out_path = Path(out) if out is not None else default_out(weights, fmt)
    if out_path.suffix.lower() != f".{fmt}":
        raise ValueError(f"--out {out_path} must end in .{fmt}")
    if fmt == "onnx" and imgsz is not None:
        image_size_hw(imgsz)
    return out_path


def export(weights: str | os.PathLike, fmt: str = "onnx", out: str | os.PathLike | None = None, *,
           imgsz: int | Sequence[int] | None = None, batch: int = 1, dynamic: bool = False,
           opset: int = DEFAULT_OPSET, int8: bool = False, data: str | os.PathLike | None = None,
           fraction: Any = 1.0) -> Path:
    """Load ``weights`` (:func:`yolojax.load_weights`) and write them as ``fmt`` ("onnx" or
    "pt") to ``out`` (default: :func:`default_out`). imgsz, batch, dynamic and opset apply to
    ONNX only; ``int8`` (ONNX only, with ``data`` and ``fraction``) also writes the INT8 model
    beside ``out`` (:func:`yolojax.inference.int8.quantize_onnx`) and returns that path.
    Returns the written path; raises ``ValueError`` for bad input."""
    from yolojax.weights import load_weights

    out_path = check_export_args(weights, fmt, out, imgsz, int8=int8, data=data, fraction=fraction)
    variables, info = load_weights(weights)
    if fmt == "onnx":
        path = export_onnx(variables, info, out_path, imgsz=imgsz, batch=batch, dynamic=dynamic, opset=opset)
        if not int8:
            return path
        from yolojax.inference.int8 import quantize_onnx

        logger.info("wrote %s (float32); quantizing to INT8 ...", path)
        return quantize_onnx(path, data=data, fraction=fraction)
    from yolojax.weights.ultralytics_pt import save_ultralytics_checkpoint

    return save_ultralytics_checkpoint(variables, info, out_path)
