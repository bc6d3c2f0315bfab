"""Reused shared-memory blocks (yolojax.data.memory.shm_pool): the main process's release hands a
block back, never earlier (views and JAX arrays aliasing it keep it), and nothing is left."""

from __future__ import annotations

import gc
import os

import jax
import numpy as np
import pytest
from grain.multiprocessing import SharedMemoryArray

from yolojax.data.memory import shm_pool
from yolojax.data.batching import unlink_on_arrival

SHAPE = (4, 32, 48, 3)

pytestmark = pytest.mark.skipif(not shm_pool.available(), reason="POSIX shared memory in /dev/shm (Linux) only")


@pytest.fixture()
def pool(monkeypatch):
    monkeypatch.setattr(shm_pool, "_POOL", None)
    yield
    shm_pool._POOL.close_all()  # pylint: disable=protected-access - what a worker's exit runs
    assert not [f for f in os.listdir(shm_pool.SHM_DIR) if f.startswith(f"{shm_pool.PREFIX}{os.getpid()}_")]


def send(array: np.ndarray) -> dict:
    """What Grain does with a worker's batch: its metadata crosses, the main process opens it."""
    metadata = array.metadata
    del array
    opened = SharedMemoryArray.from_metadata(metadata)
    opened.unlink_on_del()
    return unlink_on_arrival({"image": opened, "boxes": np.zeros(3)})


def name_of(array: np.ndarray) -> str:
    return array.shm.name


def test_a_block_returns_only_when_every_view_and_jax_array_is_freed(pool):
    first = shm_pool.pooled_array(SHAPE)
    first[:] = 7
    name = name_of(first)
    batch = send(first)
    assert type(batch["image"]) is np.ndarray and (batch["image"] == 7).all()
    view = batch["image"][1:3]
    placed = jax.device_put(batch["image"])  # on CPU JAX may alias the numpy memory
    del batch
    gc.collect()
    second = shm_pool.pooled_array(SHAPE)
    assert name_of(second) != name  # a view still holds the block
    del view
    gc.collect()
    third = shm_pool.pooled_array(SHAPE)
    assert name_of(third) not in (name, name_of(second))  # the JAX array still holds it
    assert int(np.asarray(placed).max()) == 7
    del placed
    gc.collect()
    again = shm_pool.pooled_array(SHAPE, zeroed=True)
    assert name_of(again) == name and not again.any()  # handed back, its old pixels cleared


def test_blocks_grain_discarded_and_other_sizes_are_dropped(pool):
    discarded = shm_pool.pooled_array(SHAPE)
    metadata = discarded.metadata
    metadata.close_and_unlink_shm()  # Grain unlinks a batch it discards (set_state, close) ...
    metadata.close_and_unlink_shm()  # ... and a second unlink (the exiting worker's) is fine
    freed = send(shm_pool.pooled_array(SHAPE))
    del freed
    gc.collect()
    other = shm_pool.pooled_array((2, 8, 8, 3))
    names = [b.shm.name for b in shm_pool._POOL.blocks]  # pylint: disable=protected-access
    assert names == [name_of(other)]  # the discarded block and the free one of another size are gone


def test_an_exiting_worker_leaves_held_blocks_to_the_main_process(pool):
    held = send(shm_pool.pooled_array(SHAPE))["image"]
    unsent = shm_pool.pooled_array(SHAPE)
    held_name, unsent_name = shm_pool._POOL.blocks[0].shm.name, name_of(unsent)  # pylint: disable=protected-access
    del unsent
    shm_pool._POOL.close_all()  # pylint: disable=protected-access - the worker exits
    files = os.listdir(shm_pool.SHM_DIR)
    assert held_name in files and unsent_name not in files  # the main process may still open a sent block
    held[:] = 3  # still mapped and writable here
    del held
    gc.collect()
    assert held_name not in os.listdir(shm_pool.SHM_DIR)  # unlinked when the main process freed it


_UNTRACK_SCRIPT = """
import os, sys
from multiprocessing import shared_memory
from yolojax.data.memory import shm_pool
tracked = shared_memory.SharedMemory(sys.argv[1], create=True, size=4096)  # registered by its creation
tracked.close()
os.unlink("/dev/shm/" + sys.argv[1])
shm_pool.untrack(sys.argv[1])
fd = os.open("/dev/shm/" + sys.argv[2], os.O_CREAT | os.O_RDWR)  # a block made but never registered
os.close(fd)
os.unlink("/dev/shm/" + sys.argv[2])
shm_pool.untrack(sys.argv[2])
"""


@pytest.mark.skipif(not shm_pool.available(), reason="POSIX shared memory in /dev/shm (Linux) only")
def test_untrack_drops_a_registered_block_and_accepts_one_never_registered(tmp_path):
    """untrack: the resource tracker (its output shares the process's stderr, and it runs until the
    process ends) neither reports the registered block as leaked nor prints a KeyError for the
    block it never saw (a worker killed between creating a block and registering it)."""
    import subprocess
    import sys

    names = [f"yjxtest_{os.getpid()}_{i}" for i in range(2)]
    proc = subprocess.run([sys.executable, "-c", _UNTRACK_SCRIPT, *names], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "leaked" not in proc.stderr and "KeyError" not in proc.stderr, proc.stderr
    assert not any(os.path.exists(f"/dev/shm/{n}") for n in names)
