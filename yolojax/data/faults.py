"""Faults of the training input while it runs: images that can no longer be read, and data
worker processes that die.

* An image moved, deleted or damaged after the label scan: the batch builders use the next
  readable image in its place (:class:`yolojax.data.train_batches.BatchImages`: the batch keeps
  its shape and stays a function of the step, so a resume is exact) and record it in the batch
  under ``SKIPPED_KEY``; :class:`SkipReporter`, in the main process, names each file once in a
  WARNING. (A record logged in a Grain worker does reach stderr, but not in the run's log
  format, since the spawned worker has no handler of its own, and every worker would name the
  file again.) When no image of the split can be read, :class:`UnreadableSplitError`.
* A data worker process that dies (SIGKILL from the kernel's out-of-memory killer, a crash):
  Grain raises a RuntimeError with the exit code; :class:`WatchedIterator` raises
  :class:`DataWorkerError` instead, naming the process and what to try, after stopping the
  other workers and releasing the shared memory the dead one left
  (:func:`yolojax.data.memory.shm_pool.unlink_blocks_of_exited_workers`).
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import multiprocessing
import re
import signal
import weakref
from multiprocessing.process import BaseProcess
from typing import Any

import grain

from yolojax.data.memory.shm_pool import unlink_blocks_of_exited_workers, wait_for_grain_unlinks

logger = logging.getLogger(__name__)

SKIPPED_KEY = "skipped_images"  # a batch's SkippedImage records; removed in the main process
GRAIN_WORKER_NAME = "grain-process-prefetch"  # how Grain (0.2.x) names its worker processes
_WORKER_DIED = re.compile(r"Worker process was terminated unexpectedly with exit code (-?\d+)")


class DataWorkerError(RuntimeError):
    """A data worker process died while training (e.g. SIGKILL from the kernel's out-of-memory
    killer); the one-line message names the process, how it ended and what to try. Raised
    from Grain's RuntimeError."""


class UnreadableSplitError(OSError):
    """Not one image of a split can be read any more (moved, deleted or unmounted during the
    run); the one-line message names the split and an example file with its reason."""


@dataclasses.dataclass(frozen=True)
class SkippedImage:
    """An image a batch could not read, and the image used in its place.

    Attributes:
      index: its source index.
      path: its file (or "image N" for a source without files).
      reason: why it could not be read, e.g. "file not found".
      substitute: the source index used instead.
      substitute_path: that image's file.
    """

    index: int
    path: str
    reason: str
    substitute: int
    substitute_path: str

    def message(self) -> str:
        return (f"skipped {self.path}: no longer readable ({self.reason}); using image {self.substitute} "
                f"({self.substitute_path}) instead")


class SkipReporter:
    """Main-process step: names each image the batch builders skipped in one WARNING, the first
    time a batch reports it, and drops the batch's records.

    Attributes:
      skipped: path -> :class:`SkippedImage`, every image skipped so far.
    """

    def __init__(self) -> None:
        self.skipped: dict[str, SkippedImage] = {}

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        for record in batch.pop(SKIPPED_KEY, ()):
            if record.path not in self.skipped:
                self.skipped[record.path] = record
                logger.warning("%s", record.message())
        return batch


_REPORTERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def skip_reporter_for(source: Any) -> SkipReporter:
    """The :class:`SkipReporter` of ``source``: every iterator over one source (the training
    iterator, the run's plots of its batches) shares it, so a file is named once per run."""
    try:
        return _REPORTERS.setdefault(source, SkipReporter())
    except TypeError:  # a source that takes no weak reference
        return SkipReporter()


def describe_exit(exitcode: int) -> str:
    """How a process ended, from its exit code (negative: the signal that killed it)."""
    if exitcode >= 0:
        return f"exited with code {exitcode}"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = f"signal {-exitcode}"
    oom = " (often the kernel's out-of-memory killer)" if -exitcode == signal.SIGKILL else ""
    return f"was killed by {name}{oom}"


def _grain_workers() -> list[BaseProcess]:
    return [p for p in multiprocessing.active_children() if p.name.startswith(GRAIN_WORKER_NAME)]


class WatchedIterator(grain.DatasetIterator):
    """The pipeline's iterator: Grain's, with a dead worker reported as :class:`DataWorkerError`
    and every shared-memory block released on :meth:`close`. ``get_state`` / ``set_state`` are
    the wrapped iterator's.

    The worker processes (for the error) are the Grain workers among this process's children
    that were not there when it was made, recorded as each batch arrives (a worker that dies
    before the first batch is reported without its pid). An iterator still open when the
    interpreter exits is closed first (an atexit hook, which runs before multiprocessing's).

    Args:
      parent: the Grain iterator.
      workers: its number of worker processes (data.workers; 0: none).
    """

    def __init__(self, parent: grain.DatasetIterator, workers: int):
        super().__init__(parent)
        self.workers = int(workers)
        self._foreign = {p.pid for p in _grain_workers()} if self.workers else set()
        self._processes: dict[int, BaseProcess] = {}
        _OPEN.add(self)

    def __next__(self) -> Any:
        """The next batch.

        Raises:
          DataWorkerError: a worker process died; the iterator is closed.
          StopIteration: after the last batch.
        """
        self._record_workers()
        try:
            batch = next(self._parent)
        except RuntimeError as e:
            died = _WORKER_DIED.search(str(e))
            if died is None:
                raise
            error = self._worker_error(int(died.group(1)))
            self.close()
            raise error from e
        self._record_workers()
        return batch

    def get_state(self) -> dict[str, Any]:
        return self._parent.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state)

    def close(self) -> None:
        """Stop the worker processes, free the batches Grain still holds (and their shared
        memory), then unlink the blocks any worker left behind (one that died holds some)."""
        if self._closed:
            return
        super().close()
        wait_for_grain_unlinks()
        if self.workers:
            unlink_blocks_of_exited_workers()

    def __del__(self) -> None:
        # Garbage collection, maybe at interpreter exit with the modules half gone: stop the
        # workers (Grain's close) and leave the rest to close().
        super().close()

    def _record_workers(self) -> None:
        if len(self._processes) < self.workers:
            for process in _grain_workers():
                if process.pid not in self._foreign:
                    self._processes.setdefault(process.pid, process)

    def _worker_error(self, exitcode: int) -> DataWorkerError:
        dead = [p for p in self._processes.values() if p.exitcode not in (None, 0)]
        who = f"data worker process {dead[0].pid}" if dead else "a data worker process"
        how = describe_exit(dead[0].exitcode if dead else exitcode)
        return DataWorkerError(f"{who} {how}: try fewer data.workers (now {self.workers}) or more host memory")


_OPEN: weakref.WeakSet[WatchedIterator] = weakref.WeakSet()


@atexit.register
def _close_open_iterators() -> None:
    for iterator in list(_OPEN):
        iterator.close()
