"""Reused shared-memory blocks for the image batches a Grain worker hands to the main process.

A fresh POSIX shared-memory block per batch costs the worker a page fault and a zeroed page
for every 4 KiB it writes (~22-27 ms for a 16 x 640 x 640 x 3 batch on the development
machine, against ~2 ms for writing memory already faulted in: ~1.5 ms of CPU per image).
So each worker keeps its blocks and reuses one once the main process is done with it:

* worker: :func:`pooled_array` returns an array in a free block of the right size (a new
  block when none is free). Grain sends the block's name, as for any ``SharedMemoryArray``.
* main process: :func:`adopt` (called on arrival) maps the block itself and returns a plain
  array over it; when that mapping is freed (the array, every view of it and every JAX array
  aliasing it: JAX on CPU keeps the numpy array alive instead of copying it) a flag byte in
  the block's last page is set, and the worker may write the block again.

Blocks are named ``yjxpool_{worker pid}_{its parent's pid}_*``. An exiting worker unlinks its blocks except those
the main process may still open or hold (sent and not freed), which it marks orphaned: the
main process unlinks those when it frees them (a file lock on the block orders the two). A
block whose name Grain unlinked (batches it discarded on ``set_state`` or ``close``) is dropped
by the worker when it next looks for a free block.

Every other array a worker sends goes in a one-off block named ``yjxshm_{worker pid}_{its
parent's pid}_*`` (:func:`in_named_blocks`, in place of Grain's anonymous ``psm_*`` blocks), so
that the main process can find and release the blocks of its workers that exited without
cleaning up (SIGKILL, e.g. from the out-of-memory killer): :func:`unlink_blocks_of_exited_workers`.
Linux only (the blocks are files in ``/dev/shm``); elsewhere workers use Grain's fresh blocks.
"""

from __future__ import annotations

import dataclasses
import fcntl
import gc
import math
import mmap
import os
import secrets
import sys
import threading
import weakref
from multiprocessing import resource_tracker, shared_memory, util
from typing import Any

import numpy as np
import numpy.typing as npt
from grain.multiprocessing import SharedMemoryArray, SharedMemoryArrayMetadata

PREFIX = "yjxpool_"
ONE_OFF_PREFIX = "yjxshm_"
SHM_DIR = "/dev/shm"
FREE, IN_USE = 0, 1  # the flag byte at the start of a block's last page
ORPHANED = 1  # the byte after it: its worker exited, the main process unlinks it when done


def available() -> bool:
    """Whether blocks can be pooled here (Linux, POSIX shared memory in /dev/shm)."""
    return sys.platform.startswith("linux") and os.path.isdir(SHM_DIR)


def _flag_offset(nbytes: int) -> int:
    """Offset of the flag page: the first page boundary at or after the data."""
    return math.ceil(nbytes / mmap.PAGESIZE) * mmap.PAGESIZE


class _PooledMetadata(SharedMemoryArrayMetadata):
    """What Grain sends for a pooled block. Grain unlinks the blocks of batches it discards
    (``set_state``, ``close``) while the worker, exiting, unlinks its blocks too: whichever
    comes second finds the name gone, which is fine."""

    __slots__ = ()

    def close_and_unlink_shm(self) -> None:
        try:
            super().close_and_unlink_shm()
        except FileNotFoundError:
            pass


class _PooledArray(SharedMemoryArray):
    """The worker's array in a pooled block: sent like any ``SharedMemoryArray`` (by name);
    freeing it leaves the block mapped in the pool instead of closing it."""

    @property
    def metadata(self) -> _PooledMetadata:
        block = getattr(self, "block", None)
        if block is not None:
            block.sent = True  # Grain asks for the metadata when it sends the array
        return _PooledMetadata(name=self.shm.name, shape=self.shape, dtype=self.dtype)

    def __del__(self) -> None:
        pass


@dataclasses.dataclass
class _Block:
    shm: shared_memory.SharedMemory
    nbytes: int
    sent: bool = False

    @property
    def flag(self) -> int:
        return self.shm.buf[_flag_offset(self.nbytes)]

    def set_flag(self, value: int) -> None:
        self.shm.buf[_flag_offset(self.nbytes)] = value

    def linked(self) -> bool:
        return os.path.exists(os.path.join(SHM_DIR, self.shm.name.lstrip("/")))

    def hand_over_or_unlink(self) -> None:
        """At the worker's exit: unlink the block unless the main process may still open or hold
        it (sent, not freed, not discarded); then mark it orphaned, and the main process
        unlinks it when it frees it (:func:`_release`; a file lock orders the two)."""
        if not self.linked():
            self.close(unlink=False)
            return
        fcntl.flock(self.shm._fd, fcntl.LOCK_EX)  # pylint: disable=protected-access - the block's own file
        try:
            held = self.sent and self.flag == IN_USE
            if held:
                self.shm.buf[_flag_offset(self.nbytes) + 1] = ORPHANED
        finally:
            fcntl.flock(self.shm._fd, fcntl.LOCK_UN)  # pylint: disable=protected-access
        self.close(unlink=not held)

    def close(self, unlink: bool) -> None:
        """Unmap (and unlink) the block; a name unlinked already is fine."""
        try:
            self.shm.close()
        except BufferError:  # an array of this process still views it: the mapping goes with it
            pass
        if unlink:
            try:
                self.shm.unlink()
            except FileNotFoundError:
                pass


class _Pool:
    """This process's blocks (a worker's)."""

    def __init__(self) -> None:
        self.blocks: list[_Block] = []
        self.count = 0
        self.lock = threading.Lock()  # Grain may build batches on several threads
        util.Finalize(self, self.close_all, exitpriority=10)  # runs when a multiprocessing worker exits

    def acquire(self, nbytes: int) -> _Block:
        """A free block of `nbytes` data bytes, now marked in use; blocks Grain unlinked are
        dropped, and free blocks of other sizes when a new one must be made."""
        with self.lock:
            return self._acquire(nbytes)

    def _acquire(self, nbytes: int) -> _Block:
        for block in list(self.blocks):
            if block.nbytes == nbytes and block.flag == FREE:
                block.set_flag(IN_USE)
                block.sent = False
                return block
            if block.flag == IN_USE and not block.linked():  # a batch Grain discarded
                self.blocks.remove(block)
                block.close(unlink=False)
        for block in [b for b in self.blocks if b.nbytes != nbytes and b.flag == FREE]:
            self.blocks.remove(block)
            block.close(unlink=True)
        self.count += 1
        name = f"{_owner(PREFIX)}{self.count}_{secrets.token_hex(4)}"
        block = _Block(shared_memory.SharedMemory(name, create=True, size=_flag_offset(nbytes) + mmap.PAGESIZE),
                       nbytes)
        block.set_flag(IN_USE)
        self.blocks.append(block)
        return block

    def close_all(self) -> None:
        while self.blocks:
            self.blocks.pop().hand_over_or_unlink()


_POOL: _Pool | None = None


def pooled_array(shape: tuple[int, ...], dtype: npt.DTypeLike = np.uint8, zeroed: bool = False) -> np.ndarray:
    """Worker side: an array of `shape` in a reused shared-memory block, for Grain to send.

    Args:
      shape, dtype: the array.
      zeroed: fill it with zeros (a reused block holds an earlier batch; fresh blocks are zero).

    Returns:
      A ``SharedMemoryArray`` (subclass); its contents are arbitrary unless `zeroed`.
    """
    global _POOL  # pylint: disable=global-statement - one pool per worker process
    if _POOL is None:
        _POOL = _Pool()
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    block = _POOL.acquire(nbytes)
    out = _PooledArray.from_shared_memory(block.shm, shape, dtype)
    out.block = block
    if zeroed:
        out.fill(0)
    return out


def is_pooled(array: np.ndarray) -> bool:
    """Whether `array` (a ``SharedMemoryArray`` opened by Grain) is in a pooled block."""
    shm = getattr(array, "shm", None)
    return isinstance(array, SharedMemoryArray) and shm is not None and shm.name.lstrip("/").startswith(PREFIX)


def _release(fd: int, flag: mmap.mmap, name: str) -> None:
    """Main side, when an adopted block is freed: hand it back to its worker, or unlink it when
    the worker has exited (and drop the resource tracker's entry this process's open made)."""
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        flag[0] = FREE
        if flag[1] == ORPHANED:
            try:
                os.unlink(os.path.join(SHM_DIR, name))
                untrack(name)
            except FileNotFoundError:
                pass
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        flag.close()
        os.close(fd)


def adopt(array: SharedMemoryArray) -> np.ndarray:
    """Main side: a plain array over the pooled block `array` lies in (`array` may go); the
    block returns to its worker once this array, its views and whatever aliases it are freed.

    Raises:
      FileNotFoundError: the block's name is gone (its worker exited).
    """
    name = array.shm.name.lstrip("/")
    fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR)
    try:
        data = mmap.mmap(fd, array.nbytes)
        flag = mmap.mmap(fd, mmap.PAGESIZE, offset=_flag_offset(array.nbytes))
    except BaseException:
        os.close(fd)
        raise
    weakref.finalize(data, _release, fd, flag, name)
    return np.frombuffer(data, array.dtype, array.size).reshape(array.shape)


def in_named_blocks(batch: dict[str, Any]) -> dict[str, Any]:
    """Worker side: ``batch`` with every array Grain would copy into an anonymous shared-memory
    block copied into a block named after this process (``yjxshm_{pid}_*``) instead; arrays
    already in shared memory (pooled or not) and those Grain pickles (object, non-contiguous
    or empty arrays) stay as they are. Grain sends and the main process unlinks these blocks
    as it would its own (:func:`yolojax.data.batching.unlink_on_arrival`)."""
    return {key: _in_named_block(value) for key, value in batch.items()}


def _in_named_block(value: Any) -> Any:
    if (isinstance(value, SharedMemoryArray) or not isinstance(value, np.ndarray) or value.dtype.hasobject
            or not value.flags.c_contiguous or value.size == 0):
        return value
    name = f"{_owner(ONE_OFF_PREFIX)}{secrets.token_hex(6)}"
    out = SharedMemoryArray.from_shared_memory(shared_memory.SharedMemory(name, create=True, size=value.nbytes),
                                               value.shape, value.dtype)
    np.copyto(out, value, casting="no")
    return out


def unlink_blocks_of_exited_workers() -> int:
    """Main side: unlink every block (pooled or one-off) of this process's worker processes that
    have exited, and drop the resource tracker's entry their creation made (Python's
    resource_tracker would otherwise unlink them at exit and report "leaked shared_memory
    objects"). A block this process still maps stays readable until it is freed; the blocks
    of workers still running (e.g. another iterator's) stay. Returns how many were unlinked.

    Call it only once the batches Grain had in flight are freed (:func:`wait_for_grain_unlinks`):
    Grain unlinks those itself and does not expect the name to be gone.
    """
    count = 0
    for name in os.listdir(SHM_DIR) if available() else ():
        parts = name.split("_")
        if f"{parts[0]}_" not in (PREFIX, ONE_OFF_PREFIX) or len(parts) < 4 or parts[2] != str(os.getpid()):
            continue
        if _running(int(parts[1])):
            continue
        count += _unlink_unless_held(name)
    return count


def remove_orphaned_blocks() -> list[str]:
    """Unlink the blocks (pooled or one-off) whose worker and main process are both gone: left
    by a run whose whole process group was SIGKILLed, resource tracker included, so nobody else
    would ever unlink them. Blocks of live processes, and those this user may not remove, stay.
    Returns the names removed."""
    removed = []
    for name in os.listdir(SHM_DIR) if available() else ():
        parts = name.split("_")
        if f"{parts[0]}_" not in (PREFIX, ONE_OFF_PREFIX) or len(parts) < 4 or not (parts[1] + parts[2]).isdigit():
            continue
        if _running(int(parts[1])) or _running(int(parts[2])):
            continue
        try:
            os.unlink(os.path.join(SHM_DIR, name))
        except OSError:
            continue
        removed.append(name)
    return removed


def _unlink_unless_held(name: str) -> int:
    """Unlink the block ``name`` of an exited worker and drop its tracker entry, unless it is a
    pooled block this process still holds (:func:`_release` unlinks that one when it is freed:
    one unregistering only, or the resource tracker reports a KeyError). The block's file lock
    orders this with :func:`_release`. Returns 1 when it unlinked the block, else 0."""
    path = os.path.join(SHM_DIR, name)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:  # unlinked meanwhile, by whoever also unregisters it
        return 0
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if name.startswith(PREFIX):
            size = os.fstat(fd).st_size
            flags = os.pread(fd, 2, size - mmap.PAGESIZE) if size >= mmap.PAGESIZE else b""
            if len(flags) == 2 and flags[0] == IN_USE and flags[1] == ORPHANED:
                return 0
        try:
            os.unlink(path)
        except FileNotFoundError:
            return 0
        untrack(name)
        return 1
    finally:
        os.close(fd)  # drops the lock


def untrack(name: str) -> None:
    """Drop the resource tracker's entry for the block ``name`` (unlinked by this process), whether or
    not the tracker has one: a worker killed between creating a block and registering it (both
    in ``SharedMemory.__init__``) leaves a block the tracker never saw, and unregistering that
    alone makes the tracker print a KeyError traceback. Registering first (a set: a second
    entry is a no-op) makes the unregistering valid either way; both go down the one pipe in order."""
    resource_tracker.register("/" + name, "shared_memory")
    resource_tracker.unregister("/" + name, "shared_memory")


def _owner(prefix: str) -> str:
    """The start of the names of this process's blocks: the prefix, its pid and its parent's."""
    return f"{prefix}{os.getpid()}_{os.getppid()}_"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # the pid went to another user's process: not a worker of ours
        return False
    return True


def wait_for_grain_unlinks() -> None:
    """Main side: free the batches a closed Grain iterator still holds in reference cycles, and
    wait until Grain's deletion thread has closed and unlinked their shared memory.

    Grain (0.2.x ``SharedMemoryArray.enable_async_del``) hands freed arrays to a one-thread
    pool; a no-op queued behind them returns once they are done. Without this, arrays freed
    just before exit are still linked when the interpreter stops the thread.
    """
    gc.collect()
    deletion_pool = SharedMemoryArray._del_thread_pool  # pylint: disable=protected-access - no public drain
    if deletion_pool is not None:
        deletion_pool.apply(int)
