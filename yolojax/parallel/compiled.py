"""What a compiled, partitioned program costs per device: its collectives (read from the HLO
text), its memory (XLA's memory analysis) and its FLOPs and bytes (XLA's cost analysis).

Works on any ``jax.stages.Compiled``: the local devices, a simulated CPU mesh, or libtpu's
compile-only TPU devices (:mod:`yolojax.parallel.targets`). The partitioned module is one
device's program, so every figure is per device.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from typing import Any

COLLECTIVE_OPS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute",
                  "collective-broadcast", "ragged-all-to-all")
DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2,
               "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b(" + "|".join(DTYPE_BYTES) + r")\[([0-9,]*)\]")
# "%name = TYPE opcode(operands), attributes" (TYPE may be a tuple with spaces).
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.+?)\s+([a-z][a-z0-9\-]*)\((.*)$")
_ARRAY_LAYOUT = re.compile(r"\b(" + "|".join(DTYPE_BYTES) + r")\[([0-9,]*)\](\{[^}]*\})?")
_TILE = re.compile(r"T\((\d+)(?:,(\d+))?\)")
_LAYER = re.compile(r"(model_\d+(?:/[a-z]+[0-9_]*)?)")
# Top-level instructions that read and write HBM (a fusion is one kernel: its inputs and output).
MEMORY_OPS = ("fusion", "convolution", "copy", "transpose", "reduce", "reduce-window", "select-and-scatter",
              "custom-call", "dot", "scatter", "gather", "dynamic-slice", "dynamic-update-slice", "concatenate")
_GROUPS_IOTA = re.compile(r"replica_groups=\[(\d+),(\d+)\]<=")
_GROUPS_LIST = re.compile(r"replica_groups=\{\{([0-9,]*)\}")
_GROUPS_MESH = re.compile(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}")


@dataclasses.dataclass(frozen=True)
class Collective:
    """The collectives of one kind and dtype in a program.

    Attributes:
      op: HLO opcode (``all-reduce``, ``all-gather``, ``reduce-scatter``, ...; the async
        ``-start`` form counts as its op).
      dtype: HLO element type (``f32``, ``bf16``, ...).
      count: how many such instructions one step runs.
      bytes: their per-device buffer size summed, in bytes: the reduced buffer of an
        all-reduce, the gathered result of an all-gather, the scattered operand of a
        reduce-scatter (the larger of operand and result).
      group_size: the largest number of devices one of them spans.
    """

    op: str
    dtype: str
    count: int
    bytes: int
    group_size: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def array_bytes(type_text: str) -> dict[str, float]:
    """Bytes by element type of every array in an HLO type (``f32[8,16]{1,0}``, a tuple...)."""
    out: dict[str, float] = defaultdict(float)
    for dtype, dims in _ARRAY.findall(type_text):
        size = 1
        for d in filter(None, dims.split(",")):
            size *= int(d)
        out[dtype] += size * DTYPE_BYTES[dtype]
    return out


def laid_out_bytes(type_text: str) -> tuple[float, float]:
    """(bytes as shaped, bytes as laid out) of the arrays in an HLO type: a layout's first tile
    (TPU's ``T(8,128)``) pads the most-minor dimensions of the physical order to its sizes
    (a 16-channel bfloat16 activation in 128 lanes takes 8x its bytes)."""
    plain = laid = 0.0
    for dtype, dims, layout in _ARRAY_LAYOUT.findall(type_text):
        shape = [int(d) for d in dims.split(",") if d]
        size = DTYPE_BYTES[dtype]
        padded = list(shape)
        tile = _TILE.search(layout or "")
        order = [int(i) for i in (layout or "{}").strip("{}").split(":")[0].split(",") if i.strip().isdigit()]
        if tile and len(order) == len(shape):
            tiles = [int(tile.group(1))] + ([int(tile.group(2))] if tile.group(2) else [])
            for tile_dim, axis in zip(reversed(tiles), order):  # order lists the minor-most dimension first
                padded[axis] = -(-padded[axis] // tile_dim) * tile_dim
        n_plain = n_laid = size
        for d, e in zip(shape, padded):
            n_plain, n_laid = n_plain * d, n_laid * e
        plain, laid = plain + n_plain, laid + n_laid
    return plain, laid


def layer_of(line: str) -> str:
    """The model layer (``model_2/m_0``, ...) in an instruction's ``op_name``, else the
    loss, optimiser or the op's own name."""
    m = re.search(r'op_name="([^"]*)"', line)
    if not m:
        return "(no op_name)"
    name = m.group(1)
    layer = _LAYER.search(name)
    if layer:
        return layer.group(1)
    return "other: " + name.split("/")[-1][:40]


def memory_traffic(hlo_text: str) -> dict[str, tuple[float, float, int]]:
    """HBM traffic of one run of the entry computation if each top-level kernel
    (:data:`MEMORY_OPS`) reads its inputs and writes its output once: ``{layer: (bytes as
    shaped, bytes as laid out, instructions)}`` (:func:`layer_of`). A lower bound beside XLA's
    'bytes accessed', which also counts operand reads inside fused computations."""
    types: dict[str, str] = {}
    lines = hlo_text.splitlines()
    for line in lines:
        m = _INSTRUCTION.match(line)
        if m:
            types[m.group(1)] = m.group(2)
    out: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    in_entry = False
    for line in lines:
        if line.startswith("ENTRY"):
            in_entry = True
            continue
        if in_entry and line.startswith("}"):
            break
        m = _INSTRUCTION.match(line) if in_entry else None
        if not m or m.group(3) not in MEMORY_OPS:
            continue
        plain, laid = laid_out_bytes(m.group(2))
        for operand in re.findall(r"%([\w.\-]+)", m.group(4).split(")", 1)[0]):
            p, l_ = laid_out_bytes(types.get(operand, ""))
            plain, laid = plain + p, laid + l_
        entry = out[layer_of(line)]
        entry[0], entry[1], entry[2] = entry[0] + plain, entry[1] + laid, entry[2] + 1
    return {k: (v[0], v[1], int(v[2])) for k, v in out.items()}


def _group_size(attributes: str, num_devices: int) -> int:
    if m := _GROUPS_IOTA.search(attributes):
        return int(m.group(2))
    if m := _GROUPS_LIST.search(attributes):
        return len([d for d in m.group(1).split(",") if d])
    if m := _GROUPS_MESH.search(attributes):
        sizes = dict(re.findall(r"'([^']+)'=(\d+)", m.group(1)))
        size = 1
        for axis in re.findall(r"'([^']+)'", m.group(2)):
            size *= int(sizes.get(axis, 1))
        return size
    return num_devices


def collectives(hlo_text: str, num_devices: int = 1) -> list[Collective]:
    """Every cross-device collective of a compiled HLO module (``compiled.as_text()``),
    grouped by op and dtype, sorted by bytes (largest first).

    An instruction with several dtypes (a combined all-reduce of a tuple) counts once under
    each. ``num_devices`` is the group size where the text names no replica groups.
    """
    types: dict[str, str] = {}
    found = []
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        name, type_text, opcode, rest = m.groups()
        types[name] = type_text
        op = opcode.removesuffix("-start")
        if op in COLLECTIVE_OPS:
            found.append((op, opcode != op, type_text, rest))
    totals: dict[tuple[str, str], list[int]] = {}
    for op, is_start, type_text, rest in found:
        operand_text = rest.split(")", 1)[0]
        operands: dict[str, float] = defaultdict(float)
        inline = array_bytes(operand_text)
        sources = [inline] if inline else [array_bytes(types.get(n, "")) for n in re.findall(r"%([\w.\-]+)", operand_text)]
        for source in sources:
            for dtype, size in source.items():
                operands[dtype] += size
        result = array_bytes(type_text)
        group = _group_size(rest, num_devices)
        for dtype in sorted(set(result) | set(operands)):
            out = result.get(dtype, 0) - (operands.get(dtype, 0) if is_start else 0)  # a -start tuple holds both
            size = int(max(operands.get(dtype, 0), out))
            if size == 0:
                continue
            entry = totals.setdefault((op, dtype), [0, 0, 0])
            entry[0] += 1
            entry[1] += size
            entry[2] = max(entry[2], group)
    return sorted((Collective(op, dtype, c, b, g) for (op, dtype), (c, b, g) in totals.items()),
                  key=lambda c: (-c.bytes, c.op, c.dtype))


@dataclasses.dataclass(frozen=True)
class ProgramCost:
    """One device's share of a compiled program.

    Attributes:
      peak_bytes: arguments + outputs - donated (aliased) buffers + temporaries + code, in
        bytes: what the program needs resident at its peak (XLA's memory analysis).
      argument_bytes, output_bytes, alias_bytes, temp_bytes: that analysis' parts.
      flops: floating-point operations of one run (XLA's cost analysis).
      bytes_accessed: bytes read and written by its operations (XLA's cost analysis; each
        fused kernel's inputs and outputs, with the backend's padded layouts).
      io_bytes: the laid-out bytes its top-level kernels read and write
        (:func:`memory_traffic`), a lower bound of its HBM traffic.
      xla_optimal_seconds: XLA's own time estimate, or None where it reports none.
      collectives: :func:`collectives` of its HLO.
    """

    peak_bytes: int
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    flops: float
    bytes_accessed: float
    io_bytes: float
    xla_optimal_seconds: float | None
    collectives: list[Collective]


def program_cost(compiled: Any, num_devices: int) -> ProgramCost:
    """:class:`ProgramCost` of a ``jax.stages.Compiled`` partitioned over ``num_devices``."""
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per program
        cost = cost[0] if cost else {}
    cost = dict(cost or {})
    arg, out = int(memory.argument_size_in_bytes), int(memory.output_size_in_bytes)
    alias, temp = int(memory.alias_size_in_bytes), int(memory.temp_size_in_bytes)
    code = int(getattr(memory, "generated_code_size_in_bytes", 0) or 0)
    optimal = cost.get("optimal_seconds")
    text = compiled.as_text()
    return ProgramCost(
        peak_bytes=arg + out - alias + temp + code, argument_bytes=arg, output_bytes=out, alias_bytes=alias,
        temp_bytes=temp, flops=float(cost.get("flops", 0.0)), bytes_accessed=float(cost.get("bytes accessed", 0.0)),
        io_bytes=sum(v[1] for v in memory_traffic(text).values()),
        xla_optimal_seconds=float(optimal) if optimal is not None else None,
        collectives=collectives(text, num_devices))
