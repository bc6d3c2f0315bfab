"""Multi-host: jax.distributed initialisation and process helpers."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"

_initialized = False


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, auto: bool = False,
                           local_device_ids=None) -> bool:
    """Call ``jax.distributed.initialize`` when a coordinator is named.

    The coordinator ("host:port") comes from the argument (config) or the environment
    (``JAX_COORDINATOR_ADDRESS``, with ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``).
    With ``auto=True`` and none named, ``jax.distributed.initialize()`` detects the
    cluster itself (Cloud TPU pods, SLURM, Open MPI, ...). Otherwise nothing happens (one
    process). Must run before anything touches the devices. Returns whether this process
    is part of a multi-process run. Idempotent.
    """
    global _initialized
    if _initialized:
        return True
    coordinator = coordinator or os.environ.get(COORDINATOR_ENV) or None
    if coordinator is None and not auto:
        return False
    if coordinator is not None:
        if num_processes is None and os.environ.get(NUM_PROCESSES_ENV):
            num_processes = int(os.environ[NUM_PROCESSES_ENV])
        if process_id is None and os.environ.get(PROCESS_ID_ENV):
            process_id = int(os.environ[PROCESS_ID_ENV])
        jax.distributed.initialize(coordinator, num_processes, process_id,
                                   local_device_ids=local_device_ids)
    else:
        jax.distributed.initialize()
    _initialized = True
    return True


def is_distributed() -> bool:
    """Whether :func:`initialize_distributed` started ``jax.distributed`` in this process
    (answers without initialising a backend)."""
    return _initialized


def process_index() -> int:
    return jax.process_index()


def process_count() -> int:
    return jax.process_count()


def is_main_process() -> bool:
    """True on process 0: the only one that logs and writes files other than checkpoints
    (Orbax writes checkpoints collectively from every process)."""
    return jax.process_index() == 0


def local_batch_size(global_batch_size: int) -> int:
    """Rows each process loads: the global batch split evenly over processes."""
    n = jax.process_count()
    if global_batch_size % n:
        raise ValueError(f"global batch {global_batch_size} does not split over {n} processes")
    return global_batch_size // n


def broadcast_json(value: Any, max_bytes: int = 1 << 16) -> Any:
    """Process 0's ``value`` (anything ``json.dumps`` takes, at most ``max_bytes`` encoded) on
    every process; with one process, ``value`` itself. The other processes' ``value`` is ignored.

    Raises:
      ValueError: process 0's value encodes to more than ``max_bytes``.
    """
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    encoded = np.zeros(max_bytes + 4, np.uint8)
    if jax.process_index() == 0:
        data = json.dumps(value).encode()
        if len(data) > max_bytes:
            raise ValueError(f"broadcast_json: {len(data)} bytes, more than max_bytes={max_bytes}")
        encoded[:4] = np.frombuffer(np.uint32(len(data)).tobytes(), np.uint8)
        encoded[4:4 + len(data)] = np.frombuffer(data, np.uint8)
    received = np.asarray(multihost_utils.broadcast_one_to_all(encoded))
    size = int(np.frombuffer(received[:4].tobytes(), np.uint32)[0])
    return json.loads(received[4:4 + size].tobytes().decode())
