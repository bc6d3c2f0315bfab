"""One writer per workdir: ``WORKDIR/run.lock``.

A train run takes the lock before it writes anything in its workdir and holds it until it
ends. The lock is an OS lock (``fcntl.flock``) on ``run.lock``, which also holds the holder's
host, pid, start time and command line as JSON. The OS drops the lock when the holder dies
(SIGKILL, a crash, a lost machine), so a later run takes it over and says whose it was; a
run that ends cleanly empties the file. On a file system without ``flock`` (some network
mounts) the file itself is the lock: created exclusively, taken over when its holder is a
dead process on this host, refused otherwise.

In a multi-process run only process 0 takes the lock.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from yolojax.console import ConfigError

logger = logging.getLogger("yolojax.train")

LOCK_NAME = "run.lock"
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def holder_record() -> dict[str, Any]:
    """This process as a lock holder: ``host``, ``pid``, ``started`` (local time), ``argv``."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "argv": sys.argv}


def describe_holder(holder: dict[str, Any] | None) -> str:
    """``pid 123 on host vm, started 2026-12-06 14:52:01`` (or ``an unknown process``)."""
    if not holder:
        return "an unknown process"
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('started', '?')}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkdirLock:
    """The lock of a train workdir; a context manager (``with WorkdirLock(dir):``).

    Args:
      workdir: the run's directory (created when missing).

    Raises (from :meth:`acquire`, as one line):
      ConfigError: another live run holds the workdir (naming its pid, host and start time),
        or the workdir cannot be created or written.
    """

    def __init__(self, workdir: str | os.PathLike):
        self.workdir = Path(workdir)
        self.path = self.workdir / LOCK_NAME
        self._fd: int | None = None
        self._flock = True
        self._created = False  # the lock made the workdir: a run refused before writing leaves none

    def acquire(self) -> None:
        """Take the lock (logging a line when it takes over a dead run's lock)."""
        try:
            self._created = not self.workdir.exists()
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._acquire()
        except OSError as e:
            raise ConfigError(f"workdir {self.workdir} is not writable: {e.strerror or e}") from None

    def _acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
                    raise self._in_use(self._read_holder()) from None
                if e.errno in _NO_FLOCK:
                    self._flock = False
                    return self._acquire_exclusive_file()
                raise
            # A releasing run unlinks the file while it holds it: the lock must be on the file
            # that is at the path now.
            if os.path.exists(self.path) and os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                break
            os.close(fd)
        self._fd = fd
        previous = self._read_holder()
        if previous:
            logger.warning("workdir %s: taking over the lock of a run that is no longer running (%s)", self.workdir,
                           describe_holder(previous))
        self._write_holder(fd)

    def _acquire_exclusive_file(self) -> None:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                break
            except FileExistsError:
                holder = self._read_holder()  # None: an empty file (the flock probe's, or a release's)
                stale = holder is None or (holder.get("host") == socket.gethostname()
                                           and not _pid_alive(int(holder.get("pid", -1))))
                if not stale:
                    raise self._in_use(holder, hint=f"; if that run is gone, delete {self.path}") from None
                if holder is not None:
                    logger.warning("workdir %s: taking over the lock of a run that is no longer running (%s)",
                                   self.workdir, describe_holder(holder))
                self.path.unlink(missing_ok=True)
        self._fd = fd
        self._write_holder(fd)

    def _in_use(self, holder: dict[str, Any] | None, hint: str = "") -> ConfigError:
        return ConfigError(f"workdir {self.workdir} is in use by another run ({describe_holder(holder)}): "
                           f"wait for it to end or stop it; one run writes a workdir at a time{hint}")

    def _read_holder(self) -> dict[str, Any] | None:
        try:
            text = self.path.read_text()
            return json.loads(text) if text.strip() else None
        except (OSError, ValueError):
            return None

    @staticmethod
    def _write_holder(fd: int) -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder_record()) + "\n").encode(), 0)

    def release(self) -> None:
        """Empty and remove the lock file, then drop the lock, and remove the workdir when the
        lock made it and nothing else was written there (a run refused by its checks); again:
        nothing more."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
            self.path.unlink(missing_ok=True)
        except OSError:
            pass  # the lock still goes with the descriptor
        finally:
            os.close(fd)
        if self._created:
            try:
                self.workdir.rmdir()
            except OSError:
                pass  # the run wrote there

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
