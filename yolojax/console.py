"""What every command shares: one-line errors, the log lines a command shows, output checks.

* :class:`ConfigError`: a setting, file or input that cannot serve; a command prints its
  message as one line and exits with status 1.
* :class:`OneLineErrorParser` and :func:`error_line`: usage errors and exceptions as one line.
* :func:`configure_logging`: yolojax's INFO lines and every library's warnings, one line each,
  above the progress bar.
* :func:`ensure_writable_dir`: an output folder refused before the work rather than after.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
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
    instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise (as logging.StreamHandler)
            self.handleError(record)


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
