"""Accelerator figures and a roofline step-time estimate from a program's per-device cost.

The figures are the vendors' published peaks per chip (Cloud TPU system-architecture pages
for v4, v5e, v5p and v6e; NVIDIA's A100, H100 SXM and H200 datasheets, dense bf16 tensor-core
FLOPs without sparsity). :func:`roofline` turns :class:`yolojax.parallel.compiled.ProgramCost`
into seconds; it is an estimate, never a measurement (docs/scaling.md says how far to trust it).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterable

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator chip's published peaks.

    Attributes:
      name: the family name ('v5e', 'h100', ...).
      hbm_bytes: memory per chip, bytes.
      peak_flops: dense bfloat16 matrix FLOP/s (TPUs also run float32 convolutions at this
        rate: JAX's default precision multiplies float32 in one bfloat16 pass there).
      peak_flops_f32: FLOP/s of a float32 model under JAX's default precision (TF32 tensor
        cores on NVIDIA; the bfloat16 rate on TPU).
      hbm_bandwidth: bytes/s.
      link_bandwidth: bytes/s one chip sends to its ring neighbour in a collective (ICI or
        NVLink, one direction).
      collective_latency: seconds of fixed cost per collective (an assumption, see
        docs/scaling.md).
    """

    name: str
    hbm_bytes: int
    peak_flops: float
    peak_flops_f32: float
    hbm_bandwidth: float
    link_bandwidth: float
    collective_latency: float


CHIPS: dict[str, Chip] = {c.name: c for c in (
    Chip("v4", 32 * GIB, 275e12, 275e12, 1228e9, 300e9, 20e-6),
    Chip("v5e", 16 * GIB, 197e12, 197e12, 819e9, 200e9, 20e-6),
    Chip("v5p", 95 * GIB, 459e12, 459e12, 2765e9, 600e9, 20e-6),
    Chip("v6e", 32 * GIB, 918e12, 918e12, 1640e9, 448e9, 20e-6),
    Chip("a100", 80 * 10**9, 312e12, 156e12, 2039e9, 300e9, 30e-6),
    Chip("h100", 80 * 10**9, 989e12, 494e12, 3350e9, 450e9, 30e-6),
    Chip("h200", 141 * 10**9, 989e12, 494e12, 4800e9, 450e9, 30e-6),
)}

# device_kind strings (jax.Device.device_kind) -> chip name.
_KINDS = ((r"v5 ?lite|v5e", "v5e"), (r"v5p|v5$", "v5p"), (r"v6 ?lite|v6e|trillium", "v6e"), (r"v4", "v4"),
          (r"a100", "a100"), (r"h100", "h100"), (r"h200", "h200"))


def chip_for(device_kind: str) -> Chip | None:
    """The :class:`Chip` of a ``jax.Device.device_kind`` ('TPU v5 lite', 'NVIDIA H100 80GB
    HBM3', ...) or a family name ('v5e'); None for a CPU or an unknown chip."""
    kind = device_kind.lower()
    if kind in CHIPS:
        return CHIPS[kind]
    for pattern, name in _KINDS:
        if re.search(pattern, kind):
            return CHIPS[name]
    return None


@dataclasses.dataclass(frozen=True)
class StepEstimate:
    """A roofline of one step on one chip, seconds.

    Attributes:
      compute_seconds: FLOPs / peak FLOP/s.
      memory_seconds: bytes accessed / HBM bandwidth.
      collective_seconds: for each collective, its latency plus its ring transfer time
        (2 (n-1)/n x bytes for an all-reduce, (n-1)/n x bytes otherwise, over the link
        bandwidth), summed: no overlap with compute assumed.
      step_seconds: max(compute, memory) + collectives (compute and memory traffic overlap
        perfectly; a lower bound for the fused kernels, an upper bound for the collectives).
      bound: 'compute', 'memory' or 'collective', whichever of the three is largest.
    """

    compute_seconds: float
    memory_seconds: float
    collective_seconds: float
    step_seconds: float
    bound: str


def collective_seconds(collectives: Iterable[Any], chip: Chip) -> float:
    """Ring-algorithm time of ``collectives`` (:class:`yolojax.parallel.compiled.Collective`)."""
    total = 0.0
    for c in collectives:
        n = max(c.group_size, 1)
        factor = 2 * (n - 1) / n if c.op == "all-reduce" else (n - 1) / n
        total += c.count * chip.collective_latency * (n > 1) + factor * c.bytes / chip.link_bandwidth
    return total


def roofline(flops: float, bytes_accessed: float, collectives: Iterable[Any], chip: Chip,
             float32: bool = False) -> StepEstimate:
    """The :class:`StepEstimate` of a program's per-device ``flops``, ``bytes_accessed`` and
    ``collectives`` on ``chip`` (``float32``: the model computes in float32)."""
    compute = flops / (chip.peak_flops_f32 if float32 else chip.peak_flops)
    memory = bytes_accessed / chip.hbm_bandwidth
    comm = collective_seconds(collectives, chip)
    parts = {"compute": compute, "memory": memory, "collective": comm}
    return StepEstimate(compute, memory, comm, max(compute, memory) + comm, max(parts, key=parts.get))
