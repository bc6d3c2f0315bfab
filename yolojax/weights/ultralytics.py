"""Ultralytics YOLOv8 and YOLO11 ``.pt`` checkpoints -> yolojax variables, without torch or
ultralytics.

The ``.pt`` zip is read by :func:`yolojax.weights.torch_file.read_torch_file`, which never runs
code from the file and bounds the memory and time any file can cost (see its module
docstring). The checkpoint's model is then walked as data: each submodule once, at most
``MAX_MODULE_DEPTH`` deep, refusing a module that contains itself. Its family
(:mod:`yolojax.models.registry`) is told by its module classes (C2f: YOLOv8, C3k2: YOLO11),
or for a bare state dict by the index of its Detect layer. Its weights are mapped onto the
Flax variables of the family's module (torch key
``model.22.cv2.0.2.weight`` -> Flax path ``model_22/cv2_0_2/kernel``; OIHW conv weights ->
HWIO kernels; BatchNorm weight/bias -> params scale/bias, running mean/var -> batch_stats
mean/var) and checked against the model's own variable shapes before any is converted.

Every failure to read a ``.pt`` is one ``ValueError`` naming the file and the part: the zip
member, the byte in ``data.pkl``, the module path or the tensor key.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from yolojax.weights.safe_pickle import describe
from yolojax.weights.torch_file import PickledObject, quoted, read_torch_file

if TYPE_CHECKING:
    from yolojax.models.registry import Family

Variables = dict[str, dict[str, Any]]
Info = dict[str, Any]

# ----------------------------------------------------------------------------------------
# Checkpoint structure -> flat state dict + model description.
# ----------------------------------------------------------------------------------------

MAX_CHECKPOINT_NESTING = 4  # checkpoint -> 'ema'/'model' -> 'state_dict' -> tensors
MAX_MODULE_DEPTH = 32  # a YOLOv8 DetectionModel nests 7 deep, a YOLO11 one 8
MAX_NUM_CLASSES = 1 << 16
MAX_REG_MAX = 64  # ultralytics uses 16

def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())
    )


def _select_model(obj: Any, path: str) -> PickledObject | Mapping[str, np.ndarray]:
    """The model (or state dict) of a checkpoint: 'ema' if set, else 'model', as ultralytics
    loads it; also a pickled model itself, a plain state dict, or one under 'state_dict'.
    Looks at most ``MAX_CHECKPOINT_NESTING`` dicts deep."""
    for _ in range(MAX_CHECKPOINT_NESTING):
        if isinstance(obj, PickledObject) or _is_state_dict(obj):
            return obj
        if not isinstance(obj, Mapping):
            break
        obj = next((obj[k] for k in ("ema", "model", "state_dict") if obj.get(k) is not None), None)
    raise ValueError(
        f"{path} holds no model: expected an ultralytics checkpoint dict ('ema'/'model'), "
        "a pickled DetectionModel or a state dict of tensors"
    )


def _module_name(path: str) -> str:
    return f"module {quoted(path)}" if path else "the top module"


def _module_field(
    module: PickledObject, field: str, path: str, source: str
) -> dict[str, Any]:
    """A module's ``_modules``/``_parameters``/``_buffers``: a dict whose keys are non-empty
    names without dots, or {} when absent; anything else raises ``ValueError``."""
    value = module.attrs.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and k and "." not in k for k in value
    ):
        raise ValueError(
            f"{source}: {_module_name(path)}: {field} is not a dict of names to entries"
        )
    return value


def _walk_modules(root: PickledObject, source: str) -> list[tuple[str, PickledObject]]:
    """(dotted path, module) of ``root`` (path "") and of every submodule, depth first in
    pickled order. Each module is listed once: one reached again through another path (as
    ultralytics shares one SiLU among its Convs) only at its first path, so a graph costs
    time linear in its size. Raises ``ValueError`` naming the module path for a module that
    contains itself, nesting deeper than ``MAX_MODULE_DEPTH`` or a child that is not a
    module."""
    listed: list[tuple[str, PickledObject]] = []
    seen: set[int] = set()
    pending: list[tuple[str, PickledObject, tuple[int, ...]]] = [("", root, ())]
    while pending:
        path, module, ancestors = pending.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        listed.append((path, module))
        lineage = (*ancestors, id(module))
        children = []
        for name, child in _module_field(module, "_modules", path, source).items():
            child_path = f"{path}.{name}" if path else name
            if child is None:
                continue
            if not isinstance(child, PickledObject):
                raise ValueError(
                    f"{source}: {_module_name(child_path)} is a {type(child).__name__}, "
                    "not a module"
                )
            if id(child) in lineage:
                raise ValueError(f"{source}: {_module_name(child_path)} contains itself")
            if len(lineage) > MAX_MODULE_DEPTH:
                raise ValueError(
                    f"{source}: {_module_name(child_path)} is nested more than "
                    f"{MAX_MODULE_DEPTH} modules deep"
                )
            children.append((child_path, child, lineage))
        pending.extend(reversed(children))  # the first child is walked first
    return listed


def _module_state_dict(
    modules: list[tuple[str, PickledObject]], source: str
) -> dict[str, np.ndarray]:
    """``torch.nn.Module.state_dict()`` of walked modules (:func:`_walk_modules`): dotted
    name -> array. Raises ``ValueError`` naming the key or module for an entry that is not a
    tensor and for malformed parameter or buffer tables."""
    sd: dict[str, np.ndarray] = {}
    for path, module in modules:
        prefix = f"{path}." if path else ""
        skip = module.attrs.get("_non_persistent_buffers_set") or set()
        if not isinstance(skip, (set, frozenset)):
            raise ValueError(
                f"{source}: {_module_name(path)}: _non_persistent_buffers_set is not a set"
            )
        buffers = _module_field(module, "_buffers", path, source)
        named = [
            *_module_field(module, "_parameters", path, source).items(),
            *((k, v) for k, v in buffers.items() if k not in skip),
        ]
        for name, value in named:
            if value is None:
                continue
            if not isinstance(value, np.ndarray):
                raise ValueError(
                    f"{source}: tensor {quoted(prefix + name)} is a {type(value).__name__}, "
                    "not a tensor"
                )
            sd[prefix + name] = value
    return sd


def _family_of_model(model: PickledObject, modules: list[tuple[str, PickledObject]], path: str) -> Family:
    """The family of a pickled model, from its module classes: the family whose marker class
    (C2f, C3k2) it uses and whose classes cover all of its own. Raises ``ValueError`` for any
    other model (segment/pose/obb, YOLOv10, YOLO26 ...), naming the classes that don't fit."""
    from yolojax.models.registry import FAMILIES

    known = " and ".join(f.title for f in FAMILIES.values())
    if model.name != "DetectionModel":
        raise ValueError(f"{path} holds a {model.name}; only {known} detection models (DetectionModel) can be converted")
    classes = {module.name for _, module in modules}
    # The family whose marker the model uses, else (a model without blocks: its weights are
    # checked next) the first whose classes cover it.
    marked = [f for f in FAMILIES.values() if f.marker in classes]
    for family in marked or list(FAMILIES.values()):
        if classes <= family.torch_classes:
            _check_yaml_graph(model.attrs.get("yaml"), family, path)
            return family
    foreign = sorted(classes - set().union(*(f.torch_classes for f in marked or FAMILIES.values())))
    raise ValueError(f"{path} is not a {known} detection model: it uses {', '.join(foreign)} "
                     "(a different YOLO version or task?)")


def _check_yaml_graph(yaml: Any, family: Family, path: str) -> None:
    """Refuse a model whose yaml describes another graph than the family's (YOLO26 uses
    YOLO11's module classes with other rows and an end-to-end head): rows are compared by
    source, repeats, module and arguments (the Detect row's, which ultralytics fills in, aside)."""
    if not isinstance(yaml, Mapping) or not isinstance(yaml.get("backbone"), list):
        return
    if yaml.get("end2end"):
        raise ValueError(f"{path}: its yaml has an end-to-end (NMS-free) head, which {family.title} has not "
                         "(YOLO26 or YOLOv10?)")
    rows = [*yaml["backbone"], *(yaml.get("head") or [])]
    expected = [[src, n, kind, [None if a == "None" else a for a in args]] for src, n, kind, args in family.layers]
    for i, (row, want) in enumerate(zip(rows, expected)):
        got = list(row) if isinstance(row, (list, tuple)) and len(row) == 4 else row
        if want[2] == "Detect" and isinstance(got, list):
            got, want = got[:3], want[:3]
        elif isinstance(got, list):
            got = [*got[:3], [None if a == "None" else a for a in got[3]] if isinstance(got[3], list) else got[3]]
        if got != want:
            raise ValueError(f"{path}: its yaml's layer {i} is {_short(row)}, not {family.name}.yaml's {want}")
    if len(rows) != len(expected):
        raise ValueError(f"{path}: its yaml has {len(rows)} layers, not {family.name}.yaml's {len(expected)}")


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _family_of_state_dict(sd: Mapping[str, np.ndarray], path: str) -> Family:
    """The family of a bare state dict: the one whose Detect layer index holds the head's box
    branch (``model.22.cv2.0.2.weight`` in YOLOv8, ``model.23.cv2.0.2.weight`` in YOLO11)."""
    from yolojax.models.registry import FAMILIES

    keys = [(f, f"model.{f.detect_layer}.cv2.0.2.weight") for f in FAMILIES.values()]
    found = [f for f, key in keys if key in sd]
    if len(found) != 1:
        listed = ", ".join(f"{key} ({f.title})" for f, key in keys)
        raise ValueError(f"{path} is not a YOLOv8 or YOLO11 detection model: expected exactly one of {listed}")
    return found[0]


def _infer_scale_from_shapes(sd: Mapping[str, np.ndarray], family: Family, path: str) -> str:
    """The scale whose stem width and first C2f/C3k2 depth match the weights."""
    stem = sd.get("model.0.conv.weight")
    if stem is None or stem.ndim != 4:
        raise ValueError(
            f"{path}: no {family.title} stem conv 'model.0.conv.weight' to infer the scale from"
        )
    depth = len({k.split(".")[3] for k in sd if k.startswith("model.2.m.")})
    for scale in family.scales:
        if (family.scaled_channels(scale, family.layers[0][3][0]) == stem.shape[0]
                and family.scaled_depth(scale, family.layers[2][1]) == depth):
            return scale
    raise ValueError(
        f"{path}: stem width {stem.shape[0]} with {depth} block(s) in model.2 matches "
        f"no {family.title} scale ({', '.join(family.scales)})"
    )


def _scale_from_yaml(yaml: Mapping[str, Any], yaml_file: Any, family: Family) -> str | None:
    """The scale a model yaml names: its 'scale' key, a 'yolov8s.yaml'-style file name, or
    the depth/width multiples of one of the family's scales."""
    if isinstance(yaml.get("scale"), str) and yaml["scale"] in family.scales:
        return yaml["scale"]
    yaml_name = Path(yaml_file).name if isinstance(yaml_file, str) else ""
    match = re.search(rf"{family.name}([nsmlx])(?![a-z0-9])", yaml_name)
    if match:
        return match.group(1)
    dw = (yaml.get("depth_multiple"), yaml.get("width_multiple"))
    for scale, s in family.scales.items():
        if dw == (s.depth, s.width):
            return scale
    return None


def _class_names(names: Any, num_classes: int, path: str) -> list[str]:
    """Class names as a list indexed by class id; missing ones become 'class{i}'. Raises
    ``ValueError`` for a name that is not a string or an int."""
    if isinstance(names, (list, tuple)):
        names = dict(enumerate(names))
    names = names if isinstance(names, Mapping) else {}
    listed = [names.get(i, f"class{i}") for i in range(num_classes)]
    for i, name in enumerate(listed):
        if not isinstance(name, (str, int)):
            raise ValueError(f"{path}: the name of class {i} is a {type(name).__name__}")
    return [str(name) for name in listed]


def _head_outputs(sd: Mapping[str, np.ndarray], family: Family, path: str) -> tuple[int, int, int]:
    """(num_classes, reg_max, class-branch width) from the Detect head's first output convs,
    checked to lie in [1, MAX_NUM_CLASSES] and [1, MAX_REG_MAX] before anything is sized by
    them."""
    cls_key, box_key = (f"model.{family.detect_layer}.{branch}.0.2.weight" for branch in ("cv3", "cv2"))
    for key in (cls_key, box_key):
        if key not in sd or sd[key].ndim != 4:
            raise ValueError(f"{path} is not a {family.title} detection model: no Detect head weight {key}")
    num_classes, cls_width = (int(n) for n in sd[cls_key].shape[:2])
    box_channels = int(sd[box_key].shape[0])
    if not 1 <= num_classes <= MAX_NUM_CLASSES:
        raise ValueError(
            f"{path}: tensor '{cls_key}' gives {num_classes} classes, not 1 to {MAX_NUM_CLASSES}"
        )
    if box_channels % 4 or not 1 <= box_channels // 4 <= MAX_REG_MAX:
        raise ValueError(
            f"{path}: tensor '{box_key}' gives {box_channels} box outputs, not "
            f"4 * reg_max with reg_max 1 to {MAX_REG_MAX}"
        )
    return num_classes, box_channels // 4, cls_width


def _infer_info(sd: Mapping[str, np.ndarray], model: PickledObject | None, family: Family, path: str) -> Info:
    """family, scale, num_classes, names, reg_max, cls_width of a state dict of ``family``
    (and its model, if any)."""
    # The class branch's hidden width: ultralytics builds max(P3 width, min(nc, 100)), but a model
    # it fine-tuned to another class count keeps its source's width (e.g. 80 for yolov8n -> 2 classes).
    num_classes, reg_max, cls_width = _head_outputs(sd, family, path)
    shape_scale = _infer_scale_from_shapes(sd, family, path)
    attrs = model.attrs if model is not None else {}
    yaml = attrs.get("yaml") if isinstance(attrs.get("yaml"), Mapping) else {}
    yaml_scale = _scale_from_yaml(yaml, yaml.get("yaml_file") or attrs.get("yaml_file"), family)
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
    return {
        "family": family.name,
        "scale": shape_scale,
        "num_classes": num_classes,
        "names": _class_names(names, num_classes, path),
        "reg_max": reg_max,
        "cls_width": cls_width,
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
    return ("params", *path, leaf)  # not a model's leaf: reported as unexpected


@functools.lru_cache(maxsize=16)
def expected_shapes(
    family: str, scale: str, num_classes: int, reg_max: int, cls_width: int | None = None,
    widths: tuple[tuple[str, int], ...] | None = None,
) -> dict[tuple[str, ...], tuple[int, ...]]:
    """(collection, *path) -> shape of every variable of the ``family`` model so described
    (:func:`yolojax.models.registry.model_from_info`), from ``jax.eval_shape`` of its init (no
    computation)."""
    import jax
    import jax.numpy as jnp

    from yolojax.models.registry import model_from_info

    model = model_from_info({"family": family, "scale": scale, "num_classes": num_classes, "reg_max": reg_max,
                             "cls_width": cls_width, "widths": widths})
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
    flat {(collection, *path): array} tree against the model built from ``info``
    (:func:`yolojax.models.registry.model_from_info`).

    ``origin`` maps paths to the names the user knows (torch keys) for the message.
    """
    from yolojax.models.registry import family_of
    from yolojax.models.yolov8 import widths_key

    family = family_of(info)
    expected = expected_shapes(family.name, info["scale"], info["num_classes"], info["reg_max"], info.get("cls_width"),
                               widths_key(info.get("widths")))
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
            f"{family.title}{info['scale']} with {info['num_classes']} classes, reg_max {info['reg_max']}"
            + (f", class branch width {info['cls_width']}" if info.get("cls_width") else "")
            + (" pruned to its info's widths" if info.get("widths") else "")
        )
        raise ValueError(f"{source} does not match {model}: {'; '.join(problems)}")


def state_dict_to_variables(
    sd: Mapping[str, np.ndarray], info: Info, source: str = "state dict"
) -> Variables:
    """A YOLOv8 or YOLO11 torch state dict -> ``{"params": ..., "batch_stats": ...}`` float32 numpy.

    Conv weights (O, I, kH, kW) become kernels (kH, kW, I, O). The shapes are checked
    against the variables of ``model_from_info(info)`` before any array is converted, so
    memory stays within the model's size. The arrays are new and writable (the state dict's
    may be read-only views of a file's storages).
    """
    flat: dict[tuple[str, ...], np.ndarray] = {}
    origin: dict[tuple[str, ...], str] = {}
    for key, value in sd.items():
        target = torch_key_to_flax(key, value.ndim)
        if target is None:
            continue
        shown = key if key.isprintable() and len(key) <= 200 else quoted(key)
        if target in flat:
            raise ValueError(
                f"{source}: keys {origin[target]} and {shown} map to the same variable"
            )
        flat[target] = value.transpose(2, 3, 1, 0) if target[-1] == "kernel" else value
        origin[target] = shown
    check_variables(flat, info, source, origin)
    return unflatten_tree({p: np.array(v, dtype=np.float32, order="C") for p, v in flat.items()})


def unflatten_tree(flat: Mapping[tuple[str, ...], Any]) -> Variables:
    """``{("params", "model_0", "conv", "kernel"): array, ...}`` -> the nested dicts."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return tree


def flatten_tree(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Nested dicts -> ``{path tuple: leaf}`` (:func:`unflatten_tree`'s inverse)."""
    flat: dict[tuple[str, ...], Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten_tree(value, (*prefix, str(key))))
        else:
            flat[(*prefix, str(key))] = value
    return flat


def count_params(variables: Variables) -> int:
    """Number of trainable-collection ("params") scalars, as ultralytics counts parameters."""
    return int(sum(np.size(v) for v in flatten_tree(variables.get("params", {})).values()))


# ----------------------------------------------------------------------------------------
# Public loaders.
# ----------------------------------------------------------------------------------------


def load_ultralytics(path: str | os.PathLike) -> tuple[Variables, Info]:
    """Read an ultralytics YOLOv8 or YOLO11 detection ``.pt`` without torch or ultralytics.

    Accepts an ultralytics checkpoint dict (its 'ema' weights if present, else 'model'), a
    pickled DetectionModel, or a plain state dict (optionally under 'state_dict'/'model').

    Returns ``(variables, info)``: variables ``{"params": ..., "batch_stats": ...}`` of
    float32 numpy arrays for ``model_from_info(info)`` (:mod:`yolojax.models.registry`); info
    ``{"family": "yolov8" | "yolo11", "scale": str, "num_classes": int, "names": list[str] (index = class id), "reg_max":
    int, "cls_width": int}`` (cls_width: the head's class-branch width, from the weights), and
    ``"imgsz": int`` when the checkpoint records the size it was trained at
    (:func:`training_imgsz`).
    Raises ``ValueError`` for files that are unsafe, not torch checkpoints, or not YOLOv8 or
    YOLO11 detectors.
    """
    source = str(path)
    try:
        return _convert_checkpoint(read_torch_file(path), source)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - any other failure is still one line naming the file
        raise ValueError(f"{source}: cannot convert its model ({describe(e)})") from None


def _convert_checkpoint(checkpoint: Any, source: str) -> tuple[Variables, Info]:
    """:func:`load_ultralytics` of the objects read from ``source``."""
    selected = _select_model(checkpoint, source)
    model = selected if isinstance(selected, PickledObject) else None
    if model is not None:
        modules = _walk_modules(model, source)
        family = _family_of_model(model, modules, source)
        sd = _module_state_dict(modules, source)
    else:
        sd = dict(selected)
        family = _family_of_state_dict(sd, source)
    info = _infer_info(sd, model, family, source)
    train_args = checkpoint.get("train_args") if isinstance(checkpoint, Mapping) else None
    imgsz = training_imgsz(train_args.get("imgsz")) if isinstance(train_args, Mapping) else None
    if imgsz is not None:
        info["imgsz"] = imgsz
    return state_dict_to_variables(sd, info, source), info


def training_imgsz(value: Any) -> int | None:
    """The image size weights were trained at, as their file records it (an ultralytics
    checkpoint's ``train_args["imgsz"]``, a yolojax run's ``imgsz``), or None when it is not a
    positive multiple of 32. Val, predict and export default to it, as ultralytics' model keeps
    ``imgsz`` from its checkpoint (8.4.190 engine/model.py ``_reset_ckpt_args``)."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 32 and value % 32 == 0
    return int(value) if ok else None
