"""Ultralytics YOLOv8 ``.pt`` checkpoints -> yolojax variables, without torch or ultralytics.

    python -m yolojax.convert yolov8s.pt runs/yolov8s

A ``.pt`` file is the zip that ``torch.save`` writes: ``<prefix>/data.pkl`` (a pickle),
``<prefix>/data/<key>`` (raw tensor storages) and ``<prefix>/byteorder``. The pickle is read
by a restricted unpickler that never imports or calls anything named in the file: tensor
rebuild functions map to our own numpy builders, torch and ultralytics module classes map
to inert :class:`PickledObject` stand-ins that keep their pickled state as data, a few
harmless builtins resolve to themselves, and every other global is refused with a
``ValueError`` naming it.

The weights are then mapped onto the Flax variables of :class:`yolojax.models.YOLOv8`
(torch key ``model.22.cv2.0.2.weight`` -> Flax path ``model_22/cv2_0_2/kernel``; OIHW conv
weights -> HWIO kernels; BatchNorm weight/bias -> params scale/bias, running mean/var ->
batch_stats mean/var) and checked against the model's own variable shapes.
"""

from __future__ import annotations

import argparse
import collections
import functools
import io
import json
import os
import pickle
import re
import shutil
import sys
import uuid
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

Variables = dict[str, dict[str, Any]]
Info = dict[str, Any]

INFO_FILE = "info.json"
VARIABLES_DIR = "variables"
FORMAT_NAME = "yolojax.convert"
FORMAT_VERSION = 1

# ----------------------------------------------------------------------------------------
# Restricted reading of torch.save zip files.
# ----------------------------------------------------------------------------------------

_STORAGE_DTYPES: dict[str, Any] = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "UntypedStorage": np.uint8,  # torch reads untyped storages as raw bytes too
}

# numpy scalar dtypes a checkpoint's metrics may hold: bool, integers, floats (never object).
_NUMPY_SCALAR_KINDS = "biuf"


class StorageType:
    """Stand-in for a ``torch.*Storage`` class named in a checkpoint: just its numpy dtype."""

    def __init__(self, name: str, dtype: Any) -> None:
        self.name = name
        self.dtype = np.dtype(dtype)

    def __repr__(self) -> str:
        return f"StorageType({self.name})"


class PickledObject:
    """Inert stand-in for a pickled torch/ultralytics object (a module, a namespace ...).

    Creating one runs no code from the checkpoint; the object's pickled state (for a
    ``torch.nn.Module`` its ``__dict__`` with ``_parameters``, ``_buffers``, ``_modules``
    ...) is kept unchanged in :attr:`state`. Subclasses, one per global name, are made by
    :func:`_placeholder_class` and carry the original ``module`` and ``name``.
    """

    module: str = ""
    name: str = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> PickledObject:
        obj = super().__new__(cls)
        obj.args = args
        obj.state = None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    @property
    def attrs(self) -> dict[str, Any]:
        """The pickled ``__dict__`` ({} when the state is not a dict)."""
        state = self.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = state[0]  # (__dict__, slot state)
        return state if isinstance(state, dict) else {}

    def __repr__(self) -> str:
        return f"<pickled {self.module}.{self.name}>"


@functools.cache
def _placeholder_class(module: str, name: str) -> type[PickledObject]:
    return type(name, (PickledObject,), {"module": module, "name": name})


class _NumpyDtype:
    """Stand-in for a pickled ``numpy.dtype``: numeric kinds only, byte order from state."""

    def __init__(self, spec: Any, align: Any = False, copy: Any = False) -> None:
        if not isinstance(spec, str):
            raise ValueError(f"refusing numpy dtype spec {spec!r}: not a type string")
        dtype = np.dtype(spec)
        if dtype.kind not in _NUMPY_SCALAR_KINDS:
            raise ValueError(f"refusing numpy dtype {spec!r}: only numeric dtypes are allowed")
        self.dtype = dtype

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(state[1])


def _numpy_scalar(dtype: Any, data: Any = b"") -> Any:
    """``numpy.core.multiarray.scalar``: a numeric numpy scalar from its raw bytes."""
    if not isinstance(dtype, _NumpyDtype) or not isinstance(data, bytes):
        raise ValueError("refusing a numpy scalar that is not a numeric dtype with raw bytes")
    if len(data) != dtype.dtype.itemsize:
        raise ValueError(f"numpy scalar of {dtype.dtype} with {len(data)} bytes")
    return np.frombuffer(data, dtype=dtype.dtype)[0]


def _rebuild_tensor(
    storage: Any,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2``: an array of shape ``size`` viewing ``storage``
    (a 1-D array) from element ``storage_offset`` with element strides ``stride``; returned
    as a contiguous copy in the storage's dtype. Out-of-range views are refused."""
    if not isinstance(storage, np.ndarray) or storage.ndim != 1:
        raise ValueError("tensor rebuild without a storage from this file")
    size, stride = tuple(size), tuple(stride)
    ints = (storage_offset, *size, *stride)
    if len(size) != len(stride) or not all(isinstance(v, int) and v >= 0 for v in ints):
        raise ValueError(
            f"invalid tensor layout: offset {storage_offset}, size {size}, stride {stride}"
        )
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= storage.shape[0]:
        raise ValueError(
            f"tensor of size {size} at offset {storage_offset} exceeds its storage "
            f"of {storage.shape[0]} elements"
        )
    view = np.lib.stride_tricks.as_strided(
        storage[storage_offset:],
        shape=size,
        strides=tuple(s * storage.itemsize for s in stride),
        writeable=False,
    )
    return np.array(view, order="C")


def _rebuild_parameter(
    data: Any, requires_grad: bool = False, backward_hooks: Any = None, state: Any = None
) -> np.ndarray:
    """``torch._utils._rebuild_parameter[_with_state]``: a Parameter is just its data here."""
    if not isinstance(data, np.ndarray):
        raise ValueError("parameter rebuild without a tensor")
    return data


_REBUILD_FUNCTIONS = (_rebuild_tensor, _rebuild_parameter)


def _rebuild_from_type(func: Any, new_type: Any, args: tuple, state: Any = None) -> np.ndarray:
    """``torch._tensor._rebuild_from_type_v2`` for plain tensors/parameters; state dropped."""
    if func not in _REBUILD_FUNCTIONS or not isinstance(args, tuple):
        raise ValueError("refusing a tensor rebuild through a non-tensor function")
    return func(*args)


def _size(dims: Any = ()) -> tuple[int, ...]:
    """``torch.Size`` -> a tuple of ints."""
    return tuple(int(d) for d in dims)


def _encode_bytes(text: Any, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode``: how protocol-2 pickles (torch.save's default) store ``bytes``,
    e.g. the raw data of a numpy scalar. Only str -> latin-1 bytes is allowed."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ValueError("refusing _codecs.encode other than str -> latin1 bytes")
    return text.encode("latin-1")


def _path_str(*parts: Any) -> str:
    """``pathlib.*Path`` (seen in some train_args) -> its string."""
    return "/".join(str(p) for p in parts)


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch", "Tensor"): _placeholder_class("torch", "Tensor"),
    ("torch.nn.parameter", "Parameter"): _placeholder_class("torch.nn.parameter", "Parameter"),
    ("torch", "Size"): _size,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("__builtin__", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    ("__builtin__", "slice"): slice,
    ("_codecs", "encode"): _encode_bytes,
    ("numpy", "dtype"): _NumpyDtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    **{
        ("pathlib", p): _path_str
        for p in ("Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath")
    },
    **{("torch", name): StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()},
}

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _is_inert_class(module: str, name: str) -> bool:
    """Torch and ultralytics classes that are safe to replace by a :class:`PickledObject`."""
    if not _IDENTIFIER.match(name):
        return False
    if module.startswith("torch.nn.modules."):
        return True
    if module == "ultralytics.nn.modules" or module.startswith("ultralytics.nn.modules."):
        return True
    if module == "ultralytics.nn.tasks" and name.endswith("Model"):
        return True
    return (
        module in ("ultralytics.utils", "ultralytics.yolo.utils")
        and name == "IterableSimpleNamespace"
    )


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for ``data.pkl`` that resolves only allow-listed globals (see module doc)."""

    def __init__(self, data: bytes, load_storage: Callable[[Any], np.ndarray], source: str) -> None:
        super().__init__(io.BytesIO(data))
        self._load_storage = load_storage
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        if _is_inert_class(module, name):
            return _placeholder_class(module, name)
        raise ValueError(
            f"refusing to load {module + '.' + name!r} from {self._source}: "
            "not an allow-listed global"
        )

    def persistent_load(self, pid: Any) -> np.ndarray:
        return self._load_storage(pid)


def _archive_prefix(names: list[str], path: str) -> str:
    """The top-level folder of a torch.save zip (``<prefix>/data.pkl``)."""
    if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
        raise ValueError(f"{path} is a TorchScript archive, not a torch.save checkpoint")
    prefixes = [n[: -len("/data.pkl")] for n in names if re.fullmatch(r"[^/]+/data\.pkl", n)]
    if len(prefixes) != 1:
        raise ValueError(
            f"{path} is a zip but not a torch.save checkpoint (no single <dir>/data.pkl)"
        )
    return prefixes[0]


def _storage_array(
    raw: bytes, dtype: np.dtype, numel: Any, byteorder: str, member: str
) -> np.ndarray:
    """The first ``numel`` elements of a raw storage as a read-only native-order 1-D array."""
    if not isinstance(numel, int) or numel < 0 or numel * dtype.itemsize > len(raw):
        raise ValueError(f"storage {member} is shorter than {numel!r:.20} elements")
    data = np.frombuffer(raw, dtype=np.uint8, count=numel * dtype.itemsize)
    if byteorder != sys.byteorder and dtype.itemsize > 1:
        data = data.reshape(-1, dtype.itemsize)[:, ::-1].reshape(-1)  # swap bytes (a copy)
        data.flags.writeable = False
    return data.view(dtype)


def read_torch_file(path: str | os.PathLike) -> Any:
    """Unpickle a ``torch.save`` zip file safely into plain Python objects.

    Tensors become numpy arrays in their stored dtype (float16/32/64, bfloat16 via
    ``ml_dtypes``, int8..64, uint8, bool) and shape; torch/ultralytics objects become
    :class:`PickledObject` stand-ins. Raises ``ValueError`` for a non-allow-listed global, a
    legacy (pre-1.6, non-zip) torch file, or anything that is not a torch.save zip.
    """
    path = str(path)
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:1] == b"\x80":
            raise ValueError(
                f"{path} uses torch's legacy (non-zip) serialization, which is not supported; "
                "re-save it with torch >= 1.6 (torch.save(torch.load(f), f))"
            )
        raise ValueError(f"{path} is not a torch.save checkpoint (not a zip file)")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        prefix = _archive_prefix(names, path)
        byteorder = "little"
        if f"{prefix}/byteorder" in names:
            byteorder = archive.read(f"{prefix}/byteorder").decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise ValueError(f"{path}: unknown byteorder {byteorder!r}")
        storages: dict[str, np.ndarray] = {}

        def load_storage(pid: Any) -> np.ndarray:
            if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
                raise ValueError(f"{path}: unsupported persistent id {pid!r:.80}")
            _, storage_type, key, _location, numel = pid
            if not isinstance(storage_type, StorageType):
                raise ValueError(f"{path}: storage of unsupported type {storage_type!r:.80}")
            key = str(key)
            if key not in storages:
                member = f"{prefix}/data/{key}"
                if member not in names:
                    raise ValueError(f"{path}: missing tensor storage {member}")
                raw = archive.read(member)
                storages[key] = _storage_array(raw, storage_type.dtype, numel, byteorder, member)
            return storages[key]

        unpickler = _RestrictedUnpickler(archive.read(f"{prefix}/data.pkl"), load_storage, path)
        try:
            return unpickler.load()
        except ValueError:
            raise
        except Exception as e:  # a malformed pickle: report it as bad input
            raise ValueError(
                f"{path}: cannot unpickle data.pkl ({type(e).__name__}: {e})"
            ) from None


# ----------------------------------------------------------------------------------------
# Checkpoint structure -> flat state dict + model description.
# ----------------------------------------------------------------------------------------

# Classes a YOLOv8 DetectionModel is built from; anything else is another architecture.
_YOLOV8_CLASSES = {
    "DetectionModel",
    "Conv",
    "C2f",
    "Bottleneck",
    "SPPF",
    "Concat",
    "Detect",
    "DFL",
    "Conv2d",
    "BatchNorm2d",
    "SiLU",
    "ModuleList",
    "Sequential",
    "MaxPool2d",
    "Upsample",
    "Identity",
}


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())
    )


def _select_model(obj: Any, path: str) -> PickledObject | Mapping[str, np.ndarray]:
    """The model (or state dict) of a checkpoint: 'ema' if set, else 'model', as ultralytics
    loads it; also a pickled model itself, a plain state dict, or one under 'state_dict'."""
    if isinstance(obj, PickledObject) or _is_state_dict(obj):
        return obj
    if isinstance(obj, Mapping):
        for key in ("ema", "model", "state_dict"):
            if obj.get(key) is not None:
                return _select_model(obj[key], path)
    raise ValueError(
        f"{path} holds no model: expected an ultralytics checkpoint dict ('ema'/'model'), "
        "a pickled DetectionModel or a state dict of tensors"
    )


def _module_state_dict(module: PickledObject, prefix: str = "") -> dict[str, np.ndarray]:
    """``torch.nn.Module.state_dict()`` of a pickled module: dotted name -> array."""
    attrs = module.attrs
    out: dict[str, np.ndarray] = {}
    skip = attrs.get("_non_persistent_buffers_set") or set()
    named = list((attrs.get("_parameters") or {}).items())
    named += [(k, v) for k, v in (attrs.get("_buffers") or {}).items() if k not in skip]
    for name, value in named:
        if value is None:
            continue
        if not isinstance(value, np.ndarray):
            raise ValueError(f"{prefix}{name} is a {type(value).__name__}, not a tensor")
        out[prefix + name] = value
    for name, child in (attrs.get("_modules") or {}).items():
        if isinstance(child, PickledObject):
            out.update(_module_state_dict(child, f"{prefix}{name}."))
    return out


def _module_class_names(module: PickledObject) -> set[str]:
    names = {module.name}
    for child in (module.attrs.get("_modules") or {}).values():
        if isinstance(child, PickledObject):
            names |= _module_class_names(child)
    return names


def _check_yolov8_detect(model: PickledObject, path: str) -> None:
    """Refuse models that are not YOLOv8 detectors (segment/pose/obb, YOLO11, v10 ...)."""
    if model.name != "DetectionModel":
        raise ValueError(
            f"{path} holds a {model.name}; only YOLOv8 detection models (DetectionModel) "
            "can be converted"
        )
    foreign = sorted(_module_class_names(model) - _YOLOV8_CLASSES)
    if foreign:
        raise ValueError(
            f"{path} is not a YOLOv8 detection model: it uses {', '.join(foreign)} "
            "(a different YOLO version or task?)"
        )


def _infer_scale_from_shapes(sd: Mapping[str, np.ndarray], path: str) -> str:
    """The scale whose stem width and first C2f depth match the weights."""
    from yolojax.models import SCALES, scaled_channels, scaled_depth

    stem = sd.get("model.0.conv.weight")
    if stem is None or stem.ndim != 4:
        raise ValueError(
            f"{path}: no YOLOv8 stem conv 'model.0.conv.weight' to infer the scale from"
        )
    depth = len({k.split(".")[3] for k in sd if k.startswith("model.2.m.")})
    for scale in SCALES:
        if scaled_channels(scale, 64) == stem.shape[0] and scaled_depth(scale, 3) == depth:
            return scale
    raise ValueError(
        f"{path}: stem width {stem.shape[0]} with {depth} bottleneck(s) in model.2 matches "
        "no YOLOv8 scale (n, s, m, l, x)"
    )


def _scale_from_yaml(yaml: Mapping[str, Any], yaml_file: Any) -> str | None:
    """The scale a model yaml names: its 'scale' key, a 'yolov8s.yaml'-style file name, or
    the depth/width multiples of one of the standard scales."""
    from yolojax.models import SCALES

    if yaml.get("scale") in SCALES:
        return yaml["scale"]
    match = re.search(r"yolov8([nsmlx])(?![a-z0-9])", Path(str(yaml_file or "")).name)
    if match:
        return match.group(1)
    dw = (yaml.get("depth_multiple"), yaml.get("width_multiple"))
    for scale, s in SCALES.items():
        if dw == (s.depth, s.width):
            return scale
    return None


def _class_names(names: Any, num_classes: int) -> list[str]:
    """Class names as a list indexed by class id; missing ones become 'class{i}'."""
    if isinstance(names, (list, tuple)):
        names = dict(enumerate(names))
    names = names if isinstance(names, Mapping) else {}
    return [str(names.get(i, f"class{i}")) for i in range(num_classes)]


def _infer_info(sd: Mapping[str, np.ndarray], model: PickledObject | None, path: str) -> Info:
    """scale, num_classes, names, reg_max, cls_width of a YOLOv8 state dict (and its model, if any)."""
    from yolojax.models import default_cls_width

    for key in ("model.22.cv3.0.2.weight", "model.22.cv2.0.2.weight"):
        if key not in sd or sd[key].ndim != 4:
            raise ValueError(f"{path} is not a YOLOv8 detection model: no Detect head weight {key}")
    num_classes = int(sd["model.22.cv3.0.2.weight"].shape[0])
    box_channels = int(sd["model.22.cv2.0.2.weight"].shape[0])
    if box_channels % 4:
        raise ValueError(f"{path}: box head has {box_channels} outputs, not 4 * reg_max")
    reg_max = box_channels // 4
    shape_scale = _infer_scale_from_shapes(sd, path)
    attrs = model.attrs if model is not None else {}
    yaml = attrs.get("yaml") if isinstance(attrs.get("yaml"), Mapping) else {}
    yaml_scale = _scale_from_yaml(yaml, yaml.get("yaml_file") or attrs.get("yaml_file"))
    if yaml_scale is not None and yaml_scale != shape_scale:
        raise ValueError(
            f"{path}: its yaml says scale {yaml_scale!r} but its weights have the shapes of "
            f"scale {shape_scale!r}"
        )
    if isinstance(yaml.get("nc"), int) and yaml["nc"] != num_classes:
        raise ValueError(
            f"{path}: its yaml says nc={yaml['nc']} but its head has {num_classes} classes"
        )
    names = attrs.get("names") if attrs.get("names") is not None else yaml.get("names")
    # The class branch's hidden width: ultralytics builds max(P3 width, min(nc, 100)), but a model
    # it fine-tuned to another class count keeps its source's width (e.g. 80 for yolov8n -> 2 classes).
    hidden = sd.get("model.22.cv3.0.0.conv.weight")
    cls_width = int(hidden.shape[0]) if hidden is not None and hidden.ndim == 4 else None
    return {
        "scale": shape_scale,
        "num_classes": num_classes,
        "names": _class_names(names, num_classes),
        "reg_max": reg_max,
        "cls_width": cls_width or default_cls_width(shape_scale, num_classes),
    }


# ----------------------------------------------------------------------------------------
# State dict -> Flax variables.
# ----------------------------------------------------------------------------------------


def torch_key_to_flax(key: str, ndim: int) -> tuple[str, ...] | None:
    """A torch state-dict key -> (collection, *flax path), or None for keys yolojax drops.

    Each run of numeric components joins the name before it with '_':
    ``model.2.m.0.cv1.conv.weight`` (4-D) -> ``("params", "model_2", "m_0", "cv1", "conv",
    "kernel")``. Leaves: 4-D weight -> kernel, 1-D weight -> scale (BatchNorm), bias -> bias,
    running_mean/var -> batch_stats mean/var; num_batches_tracked -> None.
    """
    *modules, leaf = key.split(".")
    path: list[str] = []
    for part in modules:
        if part.isdigit() and path:
            path[-1] = f"{path[-1]}_{part}"
        else:
            path.append(part)
    if leaf == "num_batches_tracked":
        return None
    if leaf == "weight":
        return ("params", *path, "kernel" if ndim == 4 else "scale")
    if leaf == "bias":
        return ("params", *path, "bias")
    if leaf in ("running_mean", "running_var"):
        return ("batch_stats", *path, leaf[len("running_") :])
    return ("params", *path, leaf)  # not a YOLOv8 leaf: reported as unexpected


@functools.lru_cache(maxsize=16)
def expected_shapes(
    scale: str, num_classes: int, reg_max: int, cls_width: int | None = None
) -> dict[tuple[str, ...], tuple[int, ...]]:
    """(collection, *path) -> shape of every variable of ``YOLOv8(scale, num_classes,
    reg_max, cls_width=cls_width)``, from ``jax.eval_shape`` of its init (no computation)."""
    import jax
    import jax.numpy as jnp

    from yolojax.models import YOLOv8

    model = YOLOv8(scale=scale, num_classes=num_classes, reg_max=reg_max, cls_width=cls_width)
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3), jnp.float32), train=False)
    )
    return {
        _path_names(p): tuple(v.shape) for p, v in jax.tree_util.tree_leaves_with_path(abstract)
    }


def _path_names(path: tuple) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", k)) for k in path)


def _flax_to_torch_key(flax_path: tuple[str, ...]) -> str:
    """Best-effort inverse of :func:`torch_key_to_flax`, for error messages."""
    collection, *modules, leaf = flax_path
    leaf = {
        "kernel": "weight",
        "scale": "weight",
        "mean": "running_mean",
        "var": "running_var",
    }.get(leaf, leaf)
    return ".".join([*(m.replace("_", ".") for m in modules), leaf])


def _listing(items: list[str], limit: int = 6) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def check_variables(
    flat: Mapping[tuple[str, ...], Any],
    info: Info,
    source: str,
    origin: Mapping[tuple[str, ...], str] | None = None,
) -> None:
    """Raise ``ValueError`` naming every missing, unexpected or mis-shaped variable of a
    flat {(collection, *path): array} tree against ``YOLOv8`` built from ``info``.

    ``origin`` maps paths to the names the user knows (torch keys) for the message.
    """
    expected = expected_shapes(info["scale"], info["num_classes"], info["reg_max"], info.get("cls_width"))
    origin = origin or {}
    name = lambda p: origin.get(p, "/".join(p))  # noqa: E731
    missing = sorted(
        f"{'/'.join(p)} ({_flax_to_torch_key(p)})" for p in expected.keys() - flat.keys()
    )
    unexpected = sorted(name(p) for p in flat.keys() - expected.keys())
    misshaped = sorted(
        f"{name(p)} {tuple(np.shape(flat[p]))} (expected {expected[p]})"
        for p in flat.keys() & expected.keys()
        if tuple(np.shape(flat[p])) != expected[p]
    )
    problems = []
    if missing:
        problems.append("missing " + _listing(missing))
    if unexpected:
        problems.append("unexpected " + _listing(unexpected))
    if misshaped:
        problems.append("mis-shaped " + _listing(misshaped))
    if problems:
        model = (
            f"YOLOv8{info['scale']} with {info['num_classes']} classes, reg_max {info['reg_max']}"
            + (f", class branch width {info['cls_width']}" if info.get("cls_width") else "")
        )
        raise ValueError(f"{source} does not match {model}: {'; '.join(problems)}")


def state_dict_to_variables(
    sd: Mapping[str, np.ndarray], info: Info, source: str = "state dict"
) -> Variables:
    """A YOLOv8 torch state dict -> ``{"params": ..., "batch_stats": ...}`` float32 numpy.

    Conv weights (O, I, kH, kW) become kernels (kH, kW, I, O). Checked against the
    variables of ``yolov8_from_info(info)``.
    """
    flat: dict[tuple[str, ...], np.ndarray] = {}
    origin: dict[tuple[str, ...], str] = {}
    for key, value in sd.items():
        target = torch_key_to_flax(key, value.ndim)
        if target is None:
            continue
        if target in flat:
            raise ValueError(f"{source}: keys {origin[target]} and {key} map to the same variable")
        array = np.asarray(value, dtype=np.float32)
        if target[-1] == "kernel":
            array = array.transpose(2, 3, 1, 0)
        flat[target] = np.ascontiguousarray(array)
        origin[target] = key
    check_variables(flat, info, source, origin)
    return _unflatten(flat)


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> Variables:
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return tree


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    flat: dict[tuple[str, ...], Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, (*prefix, str(key))))
        else:
            flat[(*prefix, str(key))] = value
    return flat


def count_params(variables: Variables) -> int:
    """Number of trainable-collection ("params") scalars, as ultralytics counts parameters."""
    return int(sum(np.size(v) for v in _flatten(variables.get("params", {})).values()))


# ----------------------------------------------------------------------------------------
# Public loaders.
# ----------------------------------------------------------------------------------------


def load_ultralytics(path: str | os.PathLike) -> tuple[Variables, Info]:
    """Read an ultralytics YOLOv8 detection ``.pt`` without torch or ultralytics.

    Accepts an ultralytics checkpoint dict (its 'ema' weights if present, else 'model'), a
    pickled DetectionModel, or a plain state dict (optionally under 'state_dict'/'model').

    Returns ``(variables, info)``: variables ``{"params": ..., "batch_stats": ...}`` of
    float32 numpy arrays for ``yolov8_from_info(info)`` (:mod:`yolojax.models`); info
    ``{"scale": str, "num_classes": int, "names": list[str] (index = class id), "reg_max":
    int, "cls_width": int}`` (cls_width: the head's class-branch width, from the weights).
    Raises ``ValueError`` for files that are unsafe, not torch checkpoints, or not YOLOv8
    detectors.
    """
    source = str(path)
    selected = _select_model(read_torch_file(path), source)
    model = selected if isinstance(selected, PickledObject) else None
    if model is not None:
        _check_yolov8_detect(model, source)
        sd = _module_state_dict(model)
    else:
        sd = dict(selected)
    info = _infer_info(sd, model, source)
    return state_dict_to_variables(sd, info, source), info


def save_converted(variables: Variables, info: Info, out_dir: str | os.PathLike) -> Path:
    """Write ``variables`` as an Orbax checkpoint at ``out_dir/variables`` plus
    ``out_dir/info.json``; returns the absolute ``out_dir``.

    Everything is written to a temporary sibling directory that is renamed into place at the
    end, so ``out_dir`` is never left half-written. An existing ``out_dir`` is replaced only
    if it is empty or a previous conversion (has info.json); anything else is refused.
    """
    import orbax.checkpoint as ocp

    out = Path(out_dir).absolute()
    if out.exists() and not (
        out.is_dir() and (not any(out.iterdir()) or (out / INFO_FILE).is_file())
    ):
        raise ValueError(
            f"{out} exists and is not a converted yolojax checkpoint; refusing to overwrite it"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        arrays = {
            k: _unflatten({p: np.asarray(v) for p, v in _flatten(variables[k]).items()})
            for k in ("params", "batch_stats")
        }
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(tmp / VARIABLES_DIR, arrays)
            checkpointer.wait_until_finished()
        record = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **info}
        (tmp / INFO_FILE).write_text(json.dumps(record, indent=1) + "\n")
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _replace_dir(new: Path, dest: Path) -> None:
    """Move directory ``new`` to ``dest``, replacing an existing ``dest`` last."""
    if not dest.exists():
        os.rename(new, dest)
        return
    old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(dest, old)
    try:
        os.rename(new, dest)
    except OSError:
        os.rename(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _is_converted_dir(path: Path) -> bool:
    return (path / INFO_FILE).is_file() and (path / VARIABLES_DIR).is_dir()


def load_converted(path: str | os.PathLike) -> tuple[Variables, Info]:
    """Restore a directory written by :func:`save_converted` as float32 numpy arrays on
    the host (no device or sharding needed), checked against the model ``info`` describes."""
    import jax
    import orbax.checkpoint as ocp

    root = Path(path).absolute()
    try:
        record = json.loads((root / INFO_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{root / INFO_FILE}: cannot read ({e})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT_NAME:
        raise ValueError(f"{root / INFO_FILE} was not written by {FORMAT_NAME}")
    info = {k: record.get(k) for k in ("scale", "num_classes", "names", "reg_max")}
    if isinstance(record.get("cls_width"), int):  # absent from conversions before it was recorded
        info["cls_width"] = record["cls_width"]
    if not (
        isinstance(info["num_classes"], int)
        and isinstance(info["reg_max"], int)
        and isinstance(info["names"], list)
        and isinstance(info["scale"], str)
    ):
        raise ValueError(f"{root / INFO_FILE}: bad or missing scale/num_classes/names/reg_max")
    with ocp.PyTreeCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(root / VARIABLES_DIR).item_metadata
        as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
        restored = checkpointer.restore(
            root / VARIABLES_DIR, args=ocp.args.PyTreeRestore(restore_args=as_numpy)
        )
    flat = {p: np.asarray(v, dtype=np.float32) for p, v in _flatten(restored).items()}
    check_variables(flat, info, str(root))
    return _unflatten(flat), info


def load_weights(path: str | os.PathLike) -> tuple[Variables, Info]:
    """Load YOLOv8 variables and info from any supported source of weights.

    ``path`` is an ultralytics ``.pt``/``.pth`` file (:func:`load_ultralytics`), a
    directory written by :func:`save_converted` (:func:`load_converted`) or a train workdir
    (or its ``checkpoints/``): the EMA weights of its latest complete checkpoint
    (:func:`yolojax.checkpoint.load_workdir_weights`). Returns the same
    ``(variables, info)`` as :func:`load_ultralytics`. Raises ``ValueError`` otherwise.
    """
    p = Path(path)
    if p.is_file() and p.suffix.lower() in (".pt", ".pth"):
        return load_ultralytics(p)
    if p.is_dir() and _is_converted_dir(p):
        return load_converted(p)
    if p.is_dir():
        from yolojax.checkpoint import is_train_workdir, load_workdir_weights

        if is_train_workdir(p):  # a train workdir: its latest complete checkpoint's EMA weights
            return load_workdir_weights(p)
    what = "does not exist" if not p.exists() else "is not a supported source of weights"
    raise ValueError(
        f"{path} {what}: expected an ultralytics .pt file or a yolojax checkpoint "
        f"directory (with {INFO_FILE} and {VARIABLES_DIR}/) or a train workdir with a checkpoint"
    )


# ----------------------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m yolojax.convert IN.pt OUT_DIR``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m yolojax.convert",
        description="Convert an ultralytics YOLOv8 detection .pt checkpoint into a yolojax "
        "checkpoint directory (Orbax variables + info.json). Reads the .pt without torch or "
        "ultralytics and never executes code from it.",
    )
    parser.add_argument("input", help="ultralytics .pt checkpoint (e.g. yolov8s.pt)")
    parser.add_argument(
        "out_dir",
        help="output directory; created, or replaced if it holds a previous conversion",
    )
    args = parser.parse_args(argv)
    try:
        if not Path(args.input).is_file():
            missing = not Path(args.input).exists()
            raise ValueError(f"{args.input} {'does not exist' if missing else 'is not a file'}")
        variables, info = load_ultralytics(args.input)
        out = save_converted(variables, info, args.out_dir)
    except (ValueError, OSError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    print(
        f"wrote {out}: YOLOv8{info['scale']}, {info['num_classes']} classes, "
        f"reg_max {info['reg_max']}, {count_params(variables):,} parameters"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
