"""The devices a program is compiled for: this process's own, a simulated CPU mesh, or a TPU
topology through libtpu's compile-only devices (no TPU needed; ``pip install 'yolojax[tpu]'``).

Target names:

* ``""`` or ``"local"``: ``jax.devices()``;
* ``"cpu:N"``: N CPU devices; the process must have them, i.e. ``jax_num_cpu_devices`` (or
  ``XLA_FLAGS=--xla_force_host_platform_device_count=N``) set before JAX started
  (:func:`request_cpu_devices`);
* a TPU topology, ``"v5e:2x2"`` ... ``"v5e:16x16"``, ``"v5p:2x2x1"``, ``"v6e:4x4"``, ``"v4:2x2x1"``:
  ``jax.experimental.topologies.get_topology_desc(topology_name=..., platform="tpu")``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from yolojax.parallel.chips import Chip, chip_for

TPU_TOPOLOGY = re.compile(r"^(v4|v5e|v5p|v6e):\d+(x\d+){1,2}$")
CPU_TARGET = re.compile(r"^cpu:([1-9]\d*)$")


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a plan compiles: ``devices`` (real or compile-only), their ``platform``
    ('cpu', 'gpu', 'tpu'), the :class:`Chip` (None for CPUs and unknown chips)."""

    name: str
    devices: tuple[Any, ...]
    platform: str
    chip: Chip | None


def check_target_name(name: str) -> None:
    """Refuse a target name that is none of the forms above (before JAX starts).

    Raises:
      ValueError: naming the forms allowed.
    """
    if name in ("", "local") or CPU_TARGET.match(name) or TPU_TOPOLOGY.match(name):
        return
    raise ValueError(f"topology={name!r}: use '' (this machine's devices), cpu:N (N >= 1 simulated CPU devices) or a TPU "
                     "topology such as v5e:2x2, v5e:16x16, v5p:2x2x1, v6e:4x4")


def request_cpu_devices(name: str) -> None:
    """For ``cpu:N``, ask JAX for N CPU devices; call before JAX has started its backends."""
    m = CPU_TARGET.match(name)
    if m:
        import jax

        jax.config.update("jax_num_cpu_devices", int(m.group(1)))


def target_devices(name: str) -> Target:
    """The :class:`Target` called ``name``.

    Raises:
      ValueError: an unknown name, a ``cpu:N`` this process lacks the devices for, or a TPU
        topology libtpu cannot give (not installed, or a layout it refuses).
    """
    import jax

    check_target_name(name)
    if name in ("", "local"):
        devices = jax.devices()
        return Target(name or "local", tuple(devices), devices[0].platform, chip_for(devices[0].device_kind))
    if m := CPU_TARGET.match(name):
        count, devices = int(m.group(1)), jax.devices("cpu")
        if len(devices) < count:
            raise ValueError(f"topology={name}: this process has {len(devices)} CPU devices; ask for them before JAX "
                             f"starts (jax_num_cpu_devices={count}, or yolojax plan, which does)")
        return Target(name, tuple(devices[:count]), "cpu", None)
    from jax.experimental import topologies

    try:
        topology = topologies.get_topology_desc(topology_name=name, platform="tpu")
    except Exception as e:  # noqa: BLE001 - libtpu missing, or a layout it refuses
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"topology={name}: libtpu's compile-only TPU devices are unavailable ({first}); "
                         "pip install 'yolojax[tpu]'") from None
    devices = tuple(topology.devices)
    return Target(name, devices, "tpu", chip_for(name.split(":")[0]))
