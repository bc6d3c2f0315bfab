"""How a train run ends: its last line, its exit status, and the one line of a fault.

A fault (a full or read-only disk, a dead data worker, a device out of memory, a lost peer,
anything unexpected) ends the run with one line that says what happened, which checkpoint is
kept and what to try; the full traceback is kept in the workdir's log (:func:`run_log_path`)
and not shown on the terminal. :func:`fault_line` composes that line from the exception and
the files on disk.

Exit statuses (``python -m yolojax.train`` and ``yolojax train``; :func:`exit_status`):

* :data:`EXIT_FINISHED` (0): the run finished (all epochs, early stopping or ``time``);
* :data:`EXIT_ERROR` (1): a refused setting or input, or a fault;
* :data:`EXIT_USAGE` (2): a bad command line;
* :data:`EXIT_RESUMABLE` (75, sysexits.h's ``EX_TEMPFAIL``): stopped by SIGTERM or SIGINT with
  the latest state checkpointed (or before the first step): re-running resumes exactly, so a
  scheduler requeues on it.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from yolojax.parallel.peers import EXIT_PEER_LOST
from yolojax.weights.workdir import BEST_DIR, CHECKPOINTS_DIR, latest_complete_step

EXIT_FINISHED = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_RESUMABLE = EXIT_PEER_LOST  # 75: one status for a signal stop and a lost peer, both resumable

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_NOT_WRITABLE = (errno.EACCES, errno.EROFS, errno.EPERM)
_DISK_FULL_TEXT = re.compile(r"No space left on device|os_error_code='?(28|122)\b|Disk quota exceeded")
_NOT_WRITABLE_TEXT = re.compile(r"Permission denied|Read-only file system|os_error_code='?(13|30)\b")
_DEVICE_OOM_TEXT = re.compile(r"RESOURCE_EXHAUSTED.*(out of memory|ran out of memory)|out of memory while trying to "
                              r"allocate", re.IGNORECASE | re.DOTALL)
_LOST_PEER_TEXT = re.compile(r"Gloo|Connection closed by peer|connection reset|DEADLINE_EXCEEDED|heartbeat|"
                             r"coordination service|barrier timed out|UNAVAILABLE", re.IGNORECASE)


class TrainError(RuntimeError):
    """A run stopped by a fault. Its message is one line: what happened (and at which step),
    what is kept, what to try, and where the traceback is (``log_path``); ``__cause__`` is the
    original error."""

    def __init__(self, line: str, log_path: Path | None = None):
        super().__init__(line)
        self.log_path = log_path


def final_status(status: int, log_path: Path | None = None) -> int:
    """Prepare the command's end with ``status`` after its last line, and return ``status``:
    what the process writes to stderr from then on goes to ``log_path`` (:func:`stderr_to_log`;
    None: stays); in a multi-process run the process ends here, through
    :func:`yolojax.parallel.peers.leave` (``os._exit``: jax's shutdown barrier would wait for
    peers that already left, then abort)."""
    from yolojax.parallel.distributed import is_distributed

    stderr_to_log(log_path)
    if is_distributed():
        from yolojax.parallel.peers import leave

        leave(status)
    return status


def stderr_to_log(log_path: Path | None) -> None:
    """Send what this process writes to stderr from now on to ``log_path`` (appended): after a
    fault's one line, the reports of library threads that fail as the interpreter shuts down
    (e.g. Orbax writes still in flight) go to the workdir's log, not the terminal. Nothing
    happens when the log cannot be opened."""
    if log_path is None:
        return
    try:
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError:
        return
    sys.stderr.flush()
    os.dup2(fd, 2)
    os.close(fd)


class CheckpointWriteError(RuntimeError):
    """A checkpoint that could not be written (``what``: e.g. "the checkpoint of step 12 in
    /w/checkpoints"); ``__cause__`` is the error of the write."""

    def __init__(self, what: str):
        super().__init__(f"writing {what} failed")
        self.what = what


def run_log_path(workdir: str | os.PathLike, process_index: int = 0) -> Path:
    """The workdir's log: ``train.log`` (process 0), ``train.process<i>.log`` (the others)."""
    return Path(workdir) / ("train.log" if process_index == 0 else f"train.process{process_index}.log")


def error_chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and its causes and contexts, outermost first (each once)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _first_line(error: BaseException, limit: int = 200) -> str:
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line if len(line) <= limit else line[:limit] + "..."


def kept_text(workdir: str | os.PathLike) -> str:
    """What a stopped run leaves to resume from: ``kept: checkpoints/12 (latest),
    checkpoints_best/9 (best); re-run to resume`` (read from the files on disk)."""
    workdir = Path(workdir)
    latest = latest_complete_step(workdir / CHECKPOINTS_DIR)
    best = latest_complete_step(workdir / BEST_DIR)
    if latest is None:
        return "no checkpoint was written yet; re-run to start again"
    best_text = f", {BEST_DIR}/{best} (best)" if best is not None else ""
    return f"kept: {workdir}/{CHECKPOINTS_DIR}/{latest} (latest){best_text}; re-run to resume"


def describe_error(error: BaseException, settings: Any) -> str:
    """What went wrong, in a phrase with the advice that fits (no ``kept``/traceback part)."""
    from yolojax.data import DataWorkerError, UnreadableSplitError

    chain = list(error_chain(error))
    write = next((e for e in chain if isinstance(e, CheckpointWriteError)), None)
    target = f" writing {write.what}" if write is not None else ""
    for e in chain:
        if isinstance(e, (DataWorkerError, UnreadableSplitError)):
            return str(e)
        text = str(e)
        if (isinstance(e, OSError) and e.errno in _DISK_FULL) or _DISK_FULL_TEXT.search(text):
            where = target or (f" writing {e.filename}" if isinstance(e, OSError) and e.filename else "")
            return (f"no space left on device{where}: free space (or lower checkpoint.keep, now "
                    f"{settings.checkpoint.keep})")
        if (isinstance(e, OSError) and e.errno in _NOT_WRITABLE) or (write and _NOT_WRITABLE_TEXT.search(text)):
            where = target or (f" {e.filename}" if isinstance(e, OSError) and e.filename else "")
            return f"cannot write{where}: {e.strerror if isinstance(e, OSError) and e.strerror else _first_line(e)}"
        if _DEVICE_OOM_TEXT.search(text):
            return (f"the device ran out of memory ({_first_line(e, 120)}): try a smaller batch_size (now "
                    f"{settings.batch_size}) or imgsz (now {settings.imgsz}), dtype=bfloat16, or "
                    f"parallel.rules=fsdp on several devices; `yolojax plan` shows the step's peak memory")
    if settings.distributed.coordinator and any(_LOST_PEER_TEXT.search(str(e)) for e in chain):
        return (f"lost contact with another process of this {settings.distributed.num_processes or ''}-process run "
                f"(coordinator {settings.distributed.coordinator}): {_first_line(error)}")
    root = chain[-1]
    return f"{type(root).__name__}: {_first_line(root)}"


def fault_line(error: BaseException, settings: Any, workdir: str | os.PathLike, step: int | None,
               log_path: Path | None) -> str:
    """The one line a run ends with on ``error``: ``step 12: no space left on device writing
    ...; kept: .../checkpoints/11 (latest); re-run to resume; traceback in .../train.log``."""
    where = f"step {step}: " if step is not None else ""
    log = f"; traceback in {log_path}" if log_path is not None else ""
    return f"{where}{describe_error(error, settings)}; {kept_text(workdir)}{log}"


def summary_line(summary: dict) -> str:
    """The last line a run prints (:func:`yolojax.train.train`'s summary): where it stopped and
    what it wrote."""
    if summary["stopped_by_signal"] is not None:
        saved = (f"latest checkpoint: {summary['workdir']}/checkpoints/{summary['checkpoint_step']}"
                 if summary["checkpoint_step"] is not None else "no checkpoint yet")
        return (f"stopped by signal {summary['stopped_by_signal']} at step {summary['step']}; {saved} "
                f"(re-run to resume; exit status {EXIT_RESUMABLE})")
    best = f", checkpoints_best/{summary['best_step']}" if summary["best_step"] is not None else ""
    early = (f"stopped early ({summary['stopped_early']}) at step {summary['step']} of {summary['total_steps']}\n"
             if summary["stopped_early"] is not None else "")
    return (f"{early}done: {summary['step']} steps; {summary['workdir']}/metrics.jsonl, results.png, tensorboard/, "
            f"checkpoints/{summary['checkpoint_step']}{best}")


def log_last_line(summary: dict, line: str) -> None:
    """Append the run's last line (:func:`summary_line`, printed after :func:`yolojax.train.train`
    returned) to this process's log in the workdir, so the log tells a finished or stopped run
    from a crashed one. A log that cannot be written is left as it is."""
    import jax

    try:
        with run_log_path(summary["workdir"], jax.process_index()).open("a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
    except OSError:
        pass


def exit_status(summary: dict) -> int:
    """:data:`EXIT_RESUMABLE` for a run a signal stopped, else :data:`EXIT_FINISHED`."""
    return EXIT_RESUMABLE if summary["stopped_by_signal"] is not None else EXIT_FINISHED


def interrupted_line(workdir: str | os.PathLike) -> str:
    """The line of a run stopped at once by a second signal (KeyboardInterrupt)."""
    return f"interrupted by a second signal; {kept_text(workdir)}"
