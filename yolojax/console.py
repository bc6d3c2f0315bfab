"""What every command shares: one-line errors, the log lines a command shows, output checks.

* :class:`ConfigError`: a setting, file or input that cannot serve; a command prints its
  message as one line and exits with status 1.
* :class:`OneLineErrorParser` and :func:`error_line`: usage errors and exceptions as one line.
* :func:`configure_logging`: yolojax's INFO lines and every library's warnings, one line each,
  above the progress bar.
* :func:`ensure_writable_dir`: an output folder refused before the work rather than after.
* :func:`log_to_file`: while a train run lasts, every shown line and every traceback (logged
  errors, exceptions of background threads and of collected coroutines) also goes to a log
  file in its workdir, and the terminal gets the lines without the tracebacks.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm


class ConfigError(ValueError):
    """A setting, dataset, weights file or directory that cannot serve; its message is one line
    that names the field or file, the value and what is allowed."""


LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, ``PROG: error: MESSAGE``, exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def error_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def ensure_writable_dir(directory: str | os.PathLike, what: str) -> None:
    """Create ``directory`` (with its parents) and write and remove a file in it, so that a
    command refuses an output location before its work rather than after.

    Raises:
      ValueError: one line, ``{what} {directory} is not writable: {reason}``.
    """
    folder = Path(directory)
    probe = folder / f".yolojax-write-check-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"{what} {folder} is not writable: {e.strerror or e}") from None


class _ShownRecords(logging.Filter):
    """yolojax's INFO lines (scan summaries, skipped files, resolved settings) and every
    library's warnings and errors; other libraries' INFO lines (e.g. JAX's "Unable to
    initialize backend 'tpu'" probe on machines without a TPU) are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or (
            record.levelno >= logging.INFO and (record.name == "yolojax" or record.name.startswith("yolojax.")))


class _TqdmHandler(logging.Handler):
    """Writes each line to the current ``sys.stderr``, above any active tqdm progress bar
    instead of through it. While ``log_file`` is set (:func:`log_to_file`), a record's
    traceback goes only there, and so do asyncio's records (tracebacks of library tasks),
    absl's errors (Orbax's reports of a failed save, which the run reports in its own line) and
    Orbax's "Waiting for previous save" advice (the run waits for every save on purpose)."""

    log_file: Path | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self.log_file is not None:
                if record.name == "asyncio" or (record.name == "absl" and (
                        record.levelno >= logging.ERROR or str(record.msg).startswith("Waiting for previous save"))):
                    return
            if self.log_file is not None and record.exc_info:
                record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
                record.msg = f"{record.getMessage()} (traceback in {self.log_file})"
                record.args = None
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise (as logging.StreamHandler)
            self.handleError(record)


class _QuietFileHandler(logging.FileHandler):
    """A log file that never complains on the terminal: a full or lost disk drops its lines."""

    def handleError(self, record: logging.LogRecord) -> None:
        return


@contextlib.contextmanager
def log_to_file(path: str | os.PathLike) -> Iterator[logging.Handler]:
    """While the ``with`` block runs, append every line :func:`configure_logging` shows to
    ``path`` with a timestamp and its full traceback; also there (and not on the terminal):
    exceptions of collected objects (``sys.unraisablehook``, e.g. tensorstore callbacks after a
    failed write; tensorstore's hundreds of alike "Event loop is closed" reports are counted in
    one line) and of background threads (``threading.excepthook``; the terminal gets one
    line). Writing errors (a full disk) drop lines silently. Yields the file's handler (e.g. to
    log a fatal traceback only there: ``handler.handle(record)``).
    """
    path = Path(path)
    handler = _QuietFileHandler(path, mode="a", encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s " + LOG_FORMAT))
    handler.addFilter(_ShownRecords())
    root = logging.getLogger()
    console = [h for h in root.handlers if isinstance(h, _TqdmHandler)]
    previous_unraisable, previous_thread_hook = sys.unraisablehook, threading.excepthook

    def to_file(message: str, exc_info: tuple) -> None:
        handler.handle(logging.makeLogRecord({"name": "yolojax", "levelno": logging.ERROR, "levelname": "ERROR",
                                              "msg": message, "exc_info": exc_info}))

    closed_loop_reports = [0]

    def unraisable(u: sys.UnraisableHookArgs) -> None:
        if isinstance(u.exc_value, RuntimeError) and str(u.exc_value) == "Event loop is closed":
            closed_loop_reports[0] += 1  # tensorstore callbacks after a failed Orbax write: hundreds, all alike
            return
        where = f": {u.object!r}" if u.object is not None else ""
        to_file(f"{u.err_msg or 'Exception ignored in'}{where}", (u.exc_type, u.exc_value, u.exc_traceback))

    def thread_exception(a: threading.ExceptHookArgs) -> None:
        name = a.thread.name if a.thread is not None else "?"
        to_file(f"exception in thread {name}", (a.exc_type, a.exc_value, a.exc_traceback))
        if a.exc_type is not SystemExit:
            logging.getLogger("yolojax").warning("thread %s failed: %s: %s (traceback in %s)", name,
                                                 a.exc_type.__name__, error_line(a.exc_value), path)

    root.addHandler(handler)
    for h in console:
        h.log_file = path
    sys.unraisablehook, threading.excepthook = unraisable, thread_exception
    try:
        yield handler
    finally:
        if closed_loop_reports[0]:
            handler.handle(logging.makeLogRecord({
                "name": "yolojax", "levelno": logging.WARNING, "levelname": "WARNING",
                "msg": f"{closed_loop_reports[0]} reports 'Event loop is closed' of library callbacks after a failed "
                       "write were dropped"}))
        sys.unraisablehook, threading.excepthook = previous_unraisable, previous_thread_hook
        for h in console:
            h.log_file = None
        root.removeHandler(handler)
        handler.close()


def configure_logging() -> logging.Handler:
    """Route log records to stderr as ``LEVEL logger: message``, one line each, above the
    progress bar: yolojax's INFO and up, other libraries' WARNING and up.

    Replaces the handler absl.app.run installs on the root logger (it prefixes each line with
    a timestamp, thread id and source line) and one installed by an earlier call; other
    handlers stay. Returns the installed handler.
    """
    from absl import logging as absl_logging

    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, (_TqdmHandler, absl_logging.ABSLHandler)):
            root.removeHandler(old)
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(_ShownRecords())
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler
