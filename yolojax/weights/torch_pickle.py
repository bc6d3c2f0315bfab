"""Write ``torch.save`` files without torch: the zip layout and the pickle opcodes torch uses.

A checkpoint is described with plain Python values (None, bool, int, float, str, tuple,
list, dict, set) and four node types: :class:`Global` (a ``module.name`` reference, never
imported here), :class:`Call` (``func(*args)`` at load time, optionally followed by
``__setitem__`` of ``items``), :class:`Object` (``cls.__new__(cls)`` then its ``__dict__``
set to ``state``, as pickle restores a ``torch.nn.Module``) and :class:`Tensor` (a numpy
array, stored as a torch storage). :func:`save` writes them as pickle protocol 2 in
``<name>/data.pkl`` with each tensor in ``<name>/data/<key>``, 64-byte aligned, plus
``byteorder``, ``version``, ``.format_version`` and ``.storage_alignment``, as torch 2.x's
``torch.save`` does (torch/serialization.py ``_save``). :func:`yolojax.weights.torch_file.read_torch_file`
reads such files back.
"""

from __future__ import annotations

import os
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

STORAGE_ALIGNMENT = 64

# numpy dtype -> torch storage class name (torch/storage.py typed storages).
_STORAGE_NAMES = {
    np.dtype(np.float64): "DoubleStorage", np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float16): "HalfStorage", np.dtype(np.int64): "LongStorage", np.dtype(np.int32): "IntStorage",
    np.dtype(np.int16): "ShortStorage", np.dtype(np.int8): "CharStorage", np.dtype(np.uint8): "ByteStorage",
    np.dtype(np.bool_): "BoolStorage",
}


@dataclass(frozen=True)
class Global:
    """A ``module.name`` global, written as pickle's GLOBAL opcode (resolved only at load)."""

    module: str
    name: str


@dataclass
class Call:
    """``func(*args)`` at load time (REDUCE); ``items`` are then set on the result (SETITEMS)."""

    func: Global
    args: tuple = ()
    items: dict = field(default_factory=dict)


@dataclass
class Object:
    """An instance of ``cls`` created without ``__init__`` (NEWOBJ) whose state is ``state``
    (BUILD: ``__setstate__(state)`` or ``__dict__.update(state)``)."""

    cls: Global
    state: dict


@dataclass
class Tensor:
    """A contiguous tensor: torch ``_rebuild_tensor_v2`` over a storage holding ``array``."""

    array: np.ndarray


def ordered_dict(items: dict | None = None) -> Call:
    """A ``collections.OrderedDict`` with ``items`` (in their order)."""
    return Call(Global("collections", "OrderedDict"), (), dict(items or {}))


def parameter(array: np.ndarray, requires_grad: bool = True) -> Call:
    """A ``torch.nn.Parameter`` (``torch._utils._rebuild_parameter``) holding ``array``."""
    return Call(Global("torch._utils", "_rebuild_parameter"), (Tensor(array), requires_grad, ordered_dict()))


class _Writer:
    """Emits pickle protocol 2 opcodes for the node types above; collects tensor storages."""

    def __init__(self):
        self.out = bytearray(b"\x80\x02")  # PROTO 2
        self.storages: list[np.ndarray] = []

    def write(self, value: Any) -> None:  # noqa: C901 - one branch per pickled type
        out = self.out
        if value is None:
            out += b"N"
        elif value is True or value is False:
            out += b"\x88" if value else b"\x89"
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            self._int(int(value))
        elif isinstance(value, (float, np.floating)):
            out += b"G" + struct.pack(">d", float(value))
        elif isinstance(value, str):
            data = value.encode("utf-8")
            out += b"X" + struct.pack("<I", len(data)) + data
        elif isinstance(value, tuple):
            self._tuple(value)
        elif isinstance(value, list):
            out += b"]"
            self._marked(value, b"e")  # APPENDS
        elif isinstance(value, (set, frozenset)):
            self.write(Call(Global("builtins", "set"), (sorted(value, key=repr),)))
        elif isinstance(value, dict):
            out += b"}"
            self._marked([x for kv in value.items() for x in kv], b"u")  # SETITEMS
        elif isinstance(value, Global):
            out += b"c" + f"{value.module}\n{value.name}\n".encode("ascii")
        elif isinstance(value, Call):
            self.write(value.func)
            self._tuple(value.args)
            out += b"R"
            self._marked([x for kv in value.items.items() for x in kv], b"u")
        elif isinstance(value, Object):
            self.write(value.cls)
            out += b")\x81"  # EMPTY_TUPLE NEWOBJ
            self.write(value.state)
            out += b"b"  # BUILD
        elif isinstance(value, Tensor):
            self._tensor(value.array)
        else:
            raise TypeError(f"cannot write a {type(value).__name__} into a torch checkpoint")

    def _int(self, v: int) -> None:
        if 0 <= v < 256:
            self.out += b"K" + bytes([v])
        elif 0 <= v < 65536:
            self.out += b"M" + struct.pack("<H", v)
        elif -(2**31) <= v < 2**31:
            self.out += b"J" + struct.pack("<i", v)
        else:
            data = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
            self.out += b"\x8a" + bytes([len(data)]) + data  # LONG1

    def _tuple(self, items: tuple) -> None:
        if not items:
            self.out += b")"
            return
        self.out += b"("
        for item in items:
            self.write(item)
        self.out += b"t"

    def _marked(self, items: list, opcode: bytes) -> None:
        if items:
            self.out += b"("
            for item in items:
                self.write(item)
            self.out += opcode

    def _tensor(self, array: np.ndarray) -> None:
        array = np.asarray(array, order="C")  # ascontiguousarray would make a 0-d array (1,)
        if array.dtype not in _STORAGE_NAMES:
            raise TypeError(f"no torch storage for dtype {array.dtype}")
        key = str(len(self.storages))
        self.storages.append(array)
        strides = tuple(s // array.itemsize for s in array.strides) if array.ndim else ()
        self.write(Global("torch._utils", "_rebuild_tensor_v2"))
        self.out += b"("
        pid = ("storage", Global("torch", _STORAGE_NAMES[array.dtype]), key, "cpu", int(array.size))
        self._tuple(pid)
        self.out += b"Q"  # BINPERSID
        for item in (0, tuple(int(d) for d in array.shape), strides, False, ordered_dict()):
            self.write(item)
        self.out += b"tR"


def _aligned_info(name: str, offset: int) -> zipfile.ZipInfo:
    """A stored (uncompressed) zip entry whose data starts at a multiple of STORAGE_ALIGNMENT,
    padded with an extra field as torch's writer does."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    start = offset + 30 + len(name.encode("utf-8")) + 4  # local header, name, extra field header
    pad = (-start) % STORAGE_ALIGNMENT
    info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad  # id "FB", as torch's writer
    return info


def save(obj: Any, path: str | os.PathLike, archive_name: str | None = None) -> Path:
    """Write ``obj`` (values and nodes as in the module doc) as a torch.save zip at ``path``.

    ``archive_name`` is the zip's top folder (torch uses the file's stem). Numbers are
    stored little-endian. Returns ``path``; raises ``TypeError`` for a value it cannot write.
    """
    path = Path(path)
    name = archive_name or path.stem
    writer = _Writer()
    writer.write(obj)
    writer.out += b"."  # STOP
    records = [("data.pkl", bytes(writer.out)), (".format_version", b"1"),
               (".storage_alignment", str(STORAGE_ALIGNMENT).encode()), ("byteorder", b"little")]
    records += [(f"data/{i}", a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
                for i, a in enumerate(writer.storages)]
    records.append(("version", b"3\n"))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for record, data in records:
            offset = archive.fp.tell()
            archive.writestr(_aligned_info(f"{name}/{record}", offset), data)
    return path
