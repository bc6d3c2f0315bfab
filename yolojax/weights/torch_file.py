"""Reading ``torch.save`` zip files without torch, safely: no code from the file ever runs,
and no file can exhaust memory or time or change what later loads return.

A ``.pt`` file is the zip that ``torch.save`` writes: ``<prefix>/data.pkl`` (a pickle),
``<prefix>/data/<key>`` (raw tensor storages) and ``<prefix>/byteorder``. The pickle runs
on :func:`yolojax.weights.safe_pickle.load`, which builds data only. Its globals resolve to stand-ins
made here: tensor rebuild functions map to numpy builders, storage classes to immutable
:class:`StorageType` values, torch and ultralytics module classes to inert
:class:`PickledObject` subclasses made afresh for every load, set, frozenset and OrderedDict
to themselves, slice, torch.Size and pathlib paths to checked builders; any other global is
refused.

Resources are bounded by the file: every member is read as stored (torch.save never
compresses, and a compressed member could inflate without bound), a storage member must
hold exactly the bytes its tensors' storage declares (as torch requires), tensors are
read-only views that must lie inside their storage with no more elements than it and no
stride-0 expansion, and all bytes read or built count against a :class:`Budget` of
``READ_BUDGET_PER_FILE_BYTE`` times the file size plus ``READ_BUDGET_BASE``. Before that,
:mod:`zipfile` parses the zip directory, which costs up to about 7 times the size of a file
of empty members.

Every failure is one ``ValueError`` that starts with the file's path and names the part:
the member, or the byte offset in ``data.pkl`` and the storage member a tensor views.
"""

from __future__ import annotations

import collections
import math
import os
import re
import sys
import zipfile
from dataclasses import dataclass
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np

from yolojax.weights import safe_pickle
from yolojax.weights.safe_pickle import Budget, describe

READ_BUDGET_PER_FILE_BYTE = 4
READ_BUDGET_BASE = 64 << 20
MAX_TENSOR_DIMS = 32

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


def quoted(text: str, limit: int = 80) -> str:
    """``repr`` of text from a file, cut at ``limit`` characters: safe in a one-line message."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


# ----------------------------------------------------------------------------------------
# Stand-ins for the globals a checkpoint may name.
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StorageType:
    """Stand-in for a ``torch.*Storage`` class named in a checkpoint: its numpy dtype."""

    name: str
    dtype: np.dtype


class PickledObject:
    """Inert stand-in for a pickled torch/ultralytics object (a module, a namespace ...).

    Creating one runs no code from the checkpoint; the object's pickled state (for a
    ``torch.nn.Module`` its ``__dict__`` with ``_parameters``, ``_buffers``, ``_modules``
    ...) is kept unchanged in :attr:`state`. Subclasses, one per global name and load, are
    made by :class:`_Globals` and carry the original ``module`` and ``name``.
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


class _NumpyDtype:
    """Stand-in for a pickled ``numpy.dtype``: numeric kinds only, byte order from state."""

    def __init__(self, spec: Any, align: Any = False, copy: Any = False) -> None:
        if not isinstance(spec, str):
            raise ValueError(f"refusing a numpy dtype spec that is a {type(spec).__name__}")
        dtype = np.dtype(spec)
        if dtype.kind not in _NUMPY_SCALAR_KINDS:
            raise ValueError(f"refusing numpy dtype {quoted(spec)}: only numeric dtypes")
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


class _Storage(NamedTuple):
    """A tensor storage read from the file: its zip member and its elements (1-D, read-only)."""

    member: str
    array: np.ndarray


def _is_index_tuple(values: Any) -> bool:
    return isinstance(values, (tuple, list)) and all(
        type(v) is int and v >= 0 for v in values
    )


def _tensor_layout(
    storage: _Storage, offset: Any, size: Any, stride: Any
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shape and byte strides of a view of ``storage`` at element ``offset`` with element
    ``size``/``stride``. Raises ``ValueError`` (naming the storage member) unless all are
    non-negative ints, at most ``MAX_TENSOR_DIMS`` dims, and a non-empty view has every
    element inside the storage, no more elements than it and no stride 0 on a dimension
    longer than 1 (an expanded view, which would multiply the storage's bytes)."""
    where = f"tensor on storage {storage.member}"
    if not (_is_index_tuple((offset,)) and _is_index_tuple(size) and _is_index_tuple(stride)):
        raise ValueError(f"{where}: offset, size and stride must be non-negative ints")
    if len(size) != len(stride) or len(size) > MAX_TENSOR_DIMS:
        raise ValueError(f"{where}: {len(size)} sizes and {len(stride)} strides")
    size, capacity = tuple(size), storage.array.shape[0]
    if 0 in size:
        return size, (0,) * len(size)
    if any(n > 1 and s == 0 for n, s in zip(size, stride, strict=True)):
        raise ValueError(f"{where}: stride 0 on a dimension longer than 1 (an expanded view)")
    if math.prod(size) > capacity:
        raise ValueError(
            f"{where}: a view of {math.prod(size)} elements is larger than its storage of "
            f"{capacity}"
        )
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= capacity:
        raise ValueError(
            f"{where}: size {size} at offset {offset} exceeds its storage of {capacity} elements"
        )
    itemsize = storage.array.itemsize
    return size, tuple(s * itemsize if n > 1 else 0 for n, s in zip(size, stride, strict=True))


def _rebuild_tensor(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2``: a read-only array of shape ``size`` viewing
    ``storage`` (no copy), in the storage's dtype; the layout is checked by
    :func:`_tensor_layout`."""
    if not isinstance(storage, _Storage):
        raise ValueError("a tensor without a storage from this file")
    shape, byte_strides = _tensor_layout(storage, storage_offset, size, stride)
    if 0 in shape:
        return np.zeros(shape, storage.array.dtype)
    return np.lib.stride_tricks.as_strided(
        storage.array[storage_offset:], shape=shape, strides=byte_strides, writeable=False
    )


def _rebuild_parameter(
    data: Any, requires_grad: Any = False, backward_hooks: Any = None, state: Any = None
) -> np.ndarray:
    """``torch._utils._rebuild_parameter[_with_state]``: a Parameter is just its data here."""
    if not isinstance(data, np.ndarray):
        raise ValueError("parameter rebuild without a tensor")
    return data


_REBUILD_FUNCTIONS = (_rebuild_tensor, _rebuild_parameter)


def _rebuild_from_type(func: Any, new_type: Any, args: Any, state: Any = None) -> np.ndarray:
    """``torch._tensor._rebuild_from_type_v2`` for plain tensors/parameters; state dropped."""
    if func not in _REBUILD_FUNCTIONS or not isinstance(args, tuple):
        raise ValueError("refusing a tensor rebuild through a non-tensor function")
    return func(*args)


def _size(dims: Any = ()) -> tuple[int, ...]:
    """``torch.Size`` -> a tuple of non-negative ints."""
    if not _is_index_tuple(dims):
        raise ValueError("a torch.Size that is not a sequence of non-negative ints")
    return tuple(dims)


def _encode_bytes(text: Any, encoding: Any = "utf-8") -> bytes:
    """``_codecs.encode``: how protocol-2 pickles (torch.save's default) store ``bytes``,
    e.g. the raw data of a numpy scalar. Only str -> latin-1 bytes is allowed."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ValueError("refusing _codecs.encode other than str -> latin1 bytes")
    return text.encode("latin-1")


def _path_str(*parts: Any) -> str:
    """``pathlib.*Path`` (seen in some train_args) -> its string."""
    if not all(isinstance(p, str) for p in parts):
        raise ValueError("a pathlib path of parts that are not strings")
    return "/".join(parts)


def _slice(*args: Any) -> slice:
    """``slice`` of ints and None only (a slice of other objects could hash without bound)."""
    if not all(a is None or type(a) is int for a in args):
        raise ValueError("a slice of values other than ints and None")
    return slice(*args)


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch", "Size"): _size,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _encode_bytes,
    ("numpy", "dtype"): _NumpyDtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    **{
        (module, name): builtin
        for module in ("builtins", "__builtin__")
        for name, builtin in (("set", set), ("frozenset", frozenset), ("slice", _slice))
    },
    **{
        ("pathlib", p): _path_str
        for p in ("Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath")
    },
    **{
        ("torch", name): StorageType(name, np.dtype(dtype))
        for name, dtype in _STORAGE_DTYPES.items()
    },
}

# Classes a checkpoint names that become PickledObject stand-ins (besides those below).
_INERT_CLASSES = {
    ("torch", "Tensor"),
    ("torch.nn.parameter", "Parameter"),
    ("ultralytics.utils", "IterableSimpleNamespace"),
    ("ultralytics.yolo.utils", "IterableSimpleNamespace"),
}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _is_inert_class(module: str, name: str) -> bool:
    """Torch and ultralytics classes that are safe to replace by a :class:`PickledObject`."""
    if (module, name) in _INERT_CLASSES:
        return True
    if not _IDENTIFIER.fullmatch(name):
        return False
    if module.startswith("torch.nn.modules."):
        return True
    if module == "ultralytics.nn.modules" or module.startswith("ultralytics.nn.modules."):
        return True
    return module == "ultralytics.nn.tasks" and name.endswith("Model")


class _Globals:
    """``find_class`` of one load: allow-listed callables and immutable storage types, or a
    :class:`PickledObject` subclass per inert class name made for this load only."""

    def __init__(self) -> None:
        self.classes: dict[tuple[str, str], type[PickledObject]] = {}

    def __call__(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        if not _is_inert_class(module, name):
            raise ValueError(
                f"refusing global {quoted(module + '.' + name)}: not an allow-listed global"
            )
        if (module, name) not in self.classes:
            attrs = {"module": module, "name": name}
            self.classes[(module, name)] = type(name, (PickledObject,), attrs)
        return self.classes[(module, name)]


def _set_state(obj: Any, state: Any) -> None:
    """BUILD: only stand-in instances made by this load take state, and an OrderedDict made
    by this load (a torch state dict) has its state (``_metadata``) dropped. Every shared
    object (a storage type, a rebuild function, a class) is refused, so no file can change
    what later loads see."""
    if isinstance(obj, collections.OrderedDict):
        return
    if not isinstance(obj, (PickledObject, _NumpyDtype)):
        raise ValueError(
            f"refusing BUILD on a {type(obj).__name__}: only pickled objects take state"
        )
    obj.__setstate__(state)


# ----------------------------------------------------------------------------------------
# The zip archive.
# ----------------------------------------------------------------------------------------


def _archive_prefix(names: list[str]) -> str:
    """The top-level folder of a torch.save zip (``<prefix>/data.pkl``)."""
    if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
        raise ValueError("a TorchScript archive, not a torch.save checkpoint")
    prefixes = [n[: -len("/data.pkl")] for n in names if re.fullmatch(r"[^/]+/data\.pkl", n)]
    if len(prefixes) != 1:
        raise ValueError("a zip but not a torch.save checkpoint (no single <dir>/data.pkl)")
    return prefixes[0]


class _TorchZip:
    """An open torch.save zip: its members by name, byte order and storages, read within
    ``budget``. Raises ``ValueError`` naming the member for duplicate or missing members,
    compressed ones and sizes that do not match."""

    def __init__(self, archive: zipfile.ZipFile, file_size: int, budget: Budget) -> None:
        self.archive = archive
        self.file_size = file_size
        self.budget = budget
        self.members: dict[str, zipfile.ZipInfo] = {}
        for info in archive.infolist():
            if info.filename in self.members:
                raise ValueError(f"duplicate member {quoted(info.filename)}")
            self.members[info.filename] = info
        self.prefix = _archive_prefix(list(self.members))
        self.byteorder = self._byteorder()
        self.storages: dict[str, _Storage] = {}

    def read_member(self, name: str, size: int | None = None) -> bytes:
        """The bytes of member ``name``, which must be stored uncompressed (and hold exactly
        ``size`` bytes when given); checked before anything is read."""
        info = self.members.get(name)
        if info is None:
            raise ValueError(f"missing member {quoted(name)}")
        if info.compress_type != zipfile.ZIP_STORED:
            raise ValueError(
                f"member {quoted(name)} is compressed (zip method {info.compress_type}); "
                "torch.save stores members uncompressed, and a compressed one could inflate "
                "without bound (a zip bomb)"
            )
        if size is not None and info.file_size != size:
            raise ValueError(
                f"member {quoted(name)} holds {info.file_size} bytes, not the {size} bytes its "
                "storage declares"
            )
        if info.file_size > self.file_size:
            raise ValueError(f"member {quoted(name)} claims more bytes than the whole file")
        self.budget.charge(info.file_size, f"member {quoted(name)}")
        try:
            return self.archive.read(info)
        except Exception as e:  # noqa: BLE001 - a corrupt member (CRC, header) is bad input
            raise ValueError(f"member {quoted(name)}: {describe(e)}") from None

    def _byteorder(self) -> str:
        name = f"{self.prefix}/byteorder"
        if name not in self.members:
            return "little"
        byteorder = self.read_member(name).decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise ValueError(f"member {name}: unknown byte order {quoted(byteorder)}")
        return byteorder

    def load_storage(self, pid: Any) -> _Storage:
        """``persistent_load`` of ``('storage', StorageType, key, location, numel)``: the
        storage member ``<prefix>/data/<key>`` as ``numel`` elements (read once per key)."""
        if not (type(pid) is tuple and len(pid) == 5 and pid[0] == "storage"):
            raise ValueError(f"unsupported persistent id (a {type(pid).__name__})")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, StorageType):
            raise ValueError(
                f"a storage of type {type(storage_type).__name__}, not a torch storage"
            )
        if not (type(key) is str and type(numel) is int and numel >= 0):
            raise ValueError("a storage whose key is not a string or numel not an int >= 0")
        if key not in self.storages:
            member = f"{self.prefix}/data/{key}"
            raw = self.read_member(member, numel * storage_type.dtype.itemsize)
            self.storages[key] = _Storage(member, self._elements(raw, storage_type.dtype))
        return self.storages[key]

    def _elements(self, raw: bytes, dtype: np.dtype) -> np.ndarray:
        """Raw storage bytes as a read-only 1-D array in native byte order."""
        data = np.frombuffer(raw, dtype=np.uint8)
        if self.byteorder != sys.byteorder and dtype.itemsize > 1:
            self.budget.charge(data.nbytes, "byte-swapping a storage")
            data = data.reshape(-1, dtype.itemsize)[:, ::-1].reshape(-1)  # a copy
            data.flags.writeable = False
        return data.view(dtype)

    def unpickle(self) -> Any:
        """Run ``<prefix>/data.pkl`` through :func:`yolojax.weights.safe_pickle.load`."""
        member = f"{self.prefix}/data.pkl"
        data = self.read_member(member)
        try:
            return safe_pickle.load(
                data,
                find_class=_Globals(),
                persistent_load=self.load_storage,
                set_state=_set_state,
                budget=self.budget,
            )
        except ValueError as e:
            raise ValueError(f"{member} {e}") from None


def _refuse_non_zip(path: str) -> None:
    """Raise ``ValueError`` for a legacy (pre-1.6) torch file or anything else not a zip."""
    if zipfile.is_zipfile(path):
        return
    with open(path, "rb") as f:
        head = f.read(2)
    if head[:1] == b"\x80":
        raise ValueError(
            "uses torch's legacy (non-zip) serialization, which is not supported; "
            "re-save it with torch >= 1.6 (torch.save(torch.load(f), f))"
        )
    raise ValueError("not a torch.save checkpoint (not a zip file)")


def read_torch_file(path: str | os.PathLike) -> Any:
    """Unpickle a ``torch.save`` zip file safely into plain Python objects.

    Tensors become read-only numpy arrays in their stored dtype (float16/32/64, bfloat16
    via ``ml_dtypes``, int8..64, uint8, bool) and shape, viewing the file's storages;
    torch/ultralytics objects become :class:`PickledObject` stand-ins. Raises one
    ``ValueError`` starting with the path for anything else: a non-allow-listed global, a
    legacy (pre-1.6, non-zip) torch file, a file that is not a torch.save zip, a corrupt or
    compressed member, an inconsistent tensor, or a file that would build more than its
    budget (see the module docstring).
    """
    path = str(path)
    try:
        _refuse_non_zip(path)
        basis = f"{READ_BUDGET_PER_FILE_BYTE} x the file size + {READ_BUDGET_BASE >> 20} MiB"
        budget = Budget(READ_BUDGET_PER_FILE_BYTE * os.path.getsize(path) + READ_BUDGET_BASE, basis)
        try:
            archive = zipfile.ZipFile(path)
        except Exception as e:  # noqa: BLE001 - a damaged zip directory is bad input
            raise ValueError(f"unreadable zip directory ({describe(e)})") from None
        with archive:
            return _TorchZip(archive, os.path.getsize(path), budget).unpickle()
    except Exception as e:  # noqa: BLE001 - every failure is one ValueError naming the file
        raise ValueError(f"{path}: {e if isinstance(e, ValueError) else describe(e)}") from None
