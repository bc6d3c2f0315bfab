"""The device mesh: named axes ('data', 'model') built for the real device topology."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA = "data"
MODEL = "model"
AXES = (DATA, MODEL)


def resolve_axis_sizes(data: int, model: int, num_devices: int) -> tuple[int, int]:
    """Resolve ``data``/``model`` sizes; at most one of them may be -1 (the rest)."""
    sizes = [int(data), int(model)]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got data={data}, model={model}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if any(s == 0 or s < -1 for s in sizes) or num_devices % known:
        raise ValueError(f"mesh data={data} x model={model} does not fit {num_devices} "
                         f"device{'s' if num_devices != 1 else ''}")
    sizes = [num_devices // known if s == -1 else s for s in sizes]
    if sizes[0] * sizes[1] != num_devices:
        raise ValueError(
            f"mesh data={sizes[0]} x model={sizes[1]} uses {sizes[0] * sizes[1]} of "
            f"{num_devices} devices; use -1 for one axis or match the device count"
        )
    return sizes[0], sizes[1]


def make_mesh(data: int = -1, model: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
    """A 2-D mesh ('data', 'model') over ``devices`` (default: all global devices).

    ``-1`` takes the remaining devices. The device order comes from ``jax.make_mesh`` (i.e.
    ``mesh_utils.create_device_mesh``), which lays 'model' (the last, fastest axis) over
    the closest devices of the physical topology (ICI neighbours on TPU, NVLink peers on
    GPU) and 'data' across hosts.

    Both axes are ``AxisType.Auto``: the mesh is for GSPMD-style ``jit`` with
    ``NamedSharding`` in/out shardings and ``with_sharding_constraint`` hints, where the
    compiler propagates shardings (JAX 0.10's ``jax.make_mesh`` would default to
    ``Explicit`` axes, which put shardings in the types and change how ops type-check).
    ``jax.shard_map`` (the pmap path) works on the same mesh.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_axis_sizes(data, model, len(devices))
    auto = (AxisType.Auto, AxisType.Auto)
    if devices == list(jax.devices()):
        return jax.make_mesh(shape, AXES, axis_types=auto)
    try:
        return jax.make_mesh(shape, AXES, axis_types=auto, devices=devices)
    except Exception:  # a subset of devices may not form a physical sub-mesh
        return Mesh(np.asarray(devices).reshape(shape), AXES, axis_types=auto)


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension over 'data', replicated over 'model'."""
    return NamedSharding(mesh, P(DATA))
