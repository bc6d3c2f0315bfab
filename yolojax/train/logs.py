"""What a run writes as it trains: ``metrics.jsonl``, TensorBoard event files and ``results.png``.

Only process 0 writes them. A resumed run drops the rows and events past the step it resumes
from (they are redone).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path

from yolojax.plots.results import plot_results

logger = logging.getLogger(__name__)


def read_rows(path: Path) -> list[dict]:
    """The JSON rows of ``metrics.jsonl`` (a line that does not parse, e.g. cut short by a
    full disk, is skipped; no file: none)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def previous_validation(path: Path, step: int) -> dict | None:
    """The validation row of ``step`` in ``metrics.jsonl`` (one with ``mAP50-95``), or None."""
    rows = [r for r in read_rows(path) if r.get("step") == step and "mAP50-95" in r and "epoch" in r]
    return rows[-1] if rows else None


class MetricsLog:
    """Appends JSON rows to ``metrics.jsonl`` (only rows past the resumed step are kept)."""

    def __init__(self, path: Path, resume_step: int, enabled: bool = True):
        self.path = path
        self.enabled = enabled
        if enabled and path.exists():
            # Drop rows written after the checkpoint we resume from (they will be redone); the
            # kept rows replace the file only once written in full (a full disk loses none).
            kept = [row for row in read_rows(path) if row.get("step", 0) <= resume_step]
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            try:
                tmp.write_text("".join(json.dumps(row) + "\n" for row in kept))
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def _summary_writer_class() -> type:
    """tensorboardX's ``SummaryWriter``, imported without torch: tensorboardX imports torch
    whenever it is installed (to accept torch tensors, which yolojax never passes), which
    costs seconds and memory in every run; ``sys.modules["torch"] = None`` makes that import
    fail as it does where torch is absent. A torch already imported is left as it is."""
    if "torch" in sys.modules or "tensorboardX" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class TensorBoardLog:
    """The metrics rows as TensorBoard scalars (tensorboardX event files in ``directory``).

    Every finite number of a row but ``step`` and ``epoch`` becomes ``<group>/<key>`` at the
    row's step. Each run writes a new event file that starts with a purge marker at
    ``resume_step + 1``: TensorBoard then drops the events of earlier files from that step
    on (they are redone), as :class:`MetricsLog` drops rows.
    """

    def __init__(self, directory: Path, resume_step: int, enabled: bool = True):
        self.writer = None
        if enabled:
            writer_class = _summary_writer_class()
            # File names hold the time in seconds: the suffix keeps two runs started within
            # the same second apart (and in time order, as TensorBoard reads them by name).
            self.writer = writer_class(str(directory), purge_step=resume_step + 1, flush_secs=30,
                                        filename_suffix=f".{os.getpid()}.{time.time_ns()}")

    def write(self, row: dict, group: str) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if key in ("step", "epoch") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(f"{group}/{key}", value, row["step"])

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def write_results_png(metrics_path: Path, out_path: Path) -> Path | None:
    """results.png from the rows of ``metrics_path`` (:func:`yolojax.plots.results.plot_results`);
    a failure is a warning, never an error (a plot must never fail a run)."""
    try:
        rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
        return plot_results(rows, out_path)
    except Exception as e:  # noqa: BLE001 - a plot must never fail a run
        logger.warning("results.png not written: %s", e)
        return None
