"""Converted weight directories: ``python -m yolojax.convert IN.pt OUT_DIR``'s output.

``OUT_DIR/variables`` is an Orbax checkpoint of ``{"params", "batch_stats"}`` and
``OUT_DIR/info.json`` the model info (``format``, ``format_version``, scale, num_classes,
names, reg_max, cls_width, and ``widths`` {module path: channels} for a pruned model,
:func:`yolojax.models.yolov8.default_widths`' keys). The directory is written whole or not at all.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from yolojax.weights.ultralytics import Info, Variables, check_variables, flatten_tree, training_imgsz, unflatten_tree

INFO_FILE = "info.json"
VARIABLES_DIR = "variables"
FORMAT_NAME = "yolojax.convert"  # recorded in every info.json: the format's name since version 1
FORMAT_VERSION = 1


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
            k: unflatten_tree({p: np.asarray(v) for p, v in flatten_tree(variables[k]).items()})
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


def is_converted_dir(path: Path) -> bool:
    """Whether ``path`` holds a conversion (info.json and variables/)."""
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
    # "family" is absent from conversions written before YOLO11: those are YOLOv8.
    info = {"family": record.get("family", "yolov8"), **{k: record.get(k) for k in ("scale", "num_classes", "names",
                                                                                   "reg_max")}}
    if isinstance(record.get("cls_width"), int):  # absent from conversions before it was recorded
        info["cls_width"] = record["cls_width"]
    if training_imgsz(record.get("imgsz")) is not None:
        info["imgsz"] = record["imgsz"]
    if record.get("widths") is not None:  # a pruned model's (yolojax.models.prune)
        if not isinstance(record["widths"], dict):
            raise ValueError(f"{root / INFO_FILE}: widths must be an object of module path -> channels")
        info["widths"] = record["widths"]
    if not (
        isinstance(info["num_classes"], int)
        and isinstance(info["reg_max"], int)
        and isinstance(info["names"], list)
        and isinstance(info["scale"], str)
        and isinstance(info["family"], str)
    ):
        raise ValueError(f"{root / INFO_FILE}: bad or missing family/scale/num_classes/names/reg_max")
    with ocp.PyTreeCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(root / VARIABLES_DIR).item_metadata
        as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
        restored = checkpointer.restore(
            root / VARIABLES_DIR, args=ocp.args.PyTreeRestore(restore_args=as_numpy)
        )
    flat = {p: np.asarray(v, dtype=np.float32) for p, v in flatten_tree(restored).items()}
    check_variables(flat, info, str(root))
    return unflatten_tree(flat), info
