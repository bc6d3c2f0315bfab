"""Per-step bookkeeping of a train run: non-finite loss counting, the metrics.jsonl /
TensorBoard rows every ``log_every_steps``, the tqdm progress bar, and the first step (the
compile) kept out of the bar's rate."""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any

logger = logging.getLogger("yolojax.train")

STEP_KEYS = ("loss", "box", "cls", "dfl", "lr", "grad_norm")
DISTILL_KEYS = ("dis",)  # with distill_model: ultralytics' dis_loss


class NonFiniteLossError(RuntimeError):
    """Too many non-finite losses in a row."""


def finite_or_none(x: float) -> float | None:
    """``x``, or None when it is NaN or infinite (JSON has no NaN)."""
    return x if math.isfinite(x) else None


class StepProgress:
    """Consumes each step's metrics (read from the device one step late by the loop).

    Args:
      settings: the run's :class:`yolojax.train.settings.Settings` (log_every_steps, batch_size, epochs,
        max_nonfinite).
      log, tensorboard: :class:`yolojax.train.logs.MetricsLog` / ``TensorBoardLog`` to write rows to.
      steps_per_epoch, total_steps, start_step: the run's length and where this process starts.
      nonfinite_total: non-finite losses counted before ``start_step`` (from the checkpoint).
      show_bar: draw the tqdm bar (process 0 with ``progress``).

    Attributes:
      nonfinite_total: non-finite losses so far in the run.
      last_row: the latest metrics row (train keys, then merged validation keys).
      bar: the tqdm bar or None.
    """

    def __init__(self, settings: Any, log: Any, tensorboard: Any, steps_per_epoch: int, total_steps: int,
                 start_step: int, nonfinite_total: int, show_bar: bool):
        self.settings, self.log, self.tensorboard = settings, log, tensorboard
        self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps
        self.nonfinite_total = nonfinite_total
        self.consecutive = 0
        self.last_row: dict = {}
        self.images_per_s = 0.0
        self.restart_clock()
        self.bar = None
        if show_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, file=sys.stderr)

    def restart_clock(self) -> None:
        """Start the images/s window now (after the first step's compile)."""
        self._t_window, self._n_window = time.perf_counter(), 0

    def consume(self, done_step: int, metrics: Any) -> None:
        """Count, log and display the metrics of ``done_step``; raise
        :class:`NonFiniteLossError` (after logging its row) at ``max_nonfinite`` non-finite
        losses in a row."""
        import jax

        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not (math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])):
            self.consecutive += 1
            self.nonfinite_total += 1
            logger.warning("step %d: non-finite loss/gradient, update skipped (%d in a row, %d in all)",
                           done_step, self.consecutive, self.nonfinite_total)
        else:
            self.consecutive = 0
        fatal = self.consecutive >= self.settings.max_nonfinite
        self._n_window += 1
        if done_step % self.settings.log_every_steps == 0 or done_step == self.total_steps or fatal:
            self._write_row(done_step, m)
        if fatal:
            raise NonFiniteLossError(
                f"{self.consecutive} non-finite losses in a row (max_nonfinite={self.settings.max_nonfinite}) at step "
                f"{done_step}: lower lr0, check the data and weights, or use dtype=float32")
        if self.bar is not None:
            self.bar.set_description(f"epoch {(done_step - 1) // self.steps_per_epoch + 1}/{self.settings.epochs}",
                                     refresh=False)
            parts = {k: f"{m[k]:.3f}" for k in ("loss", "box", "cls", "dfl", *DISTILL_KEYS) if k in m}
            self.bar.set_postfix(**parts, lr=f"{m['lr']:.2e}", img_s=f"{self.images_per_s:.1f}", refresh=False)
            self.bar.update(1)

    def _write_row(self, done_step: int, m: dict[str, float]) -> None:
        now = time.perf_counter()
        self.images_per_s = self._n_window * self.settings.batch_size / max(now - self._t_window, 1e-9)
        self._t_window, self._n_window = now, 0
        self.last_row = {"step": done_step, "epoch": (done_step - 1) // self.steps_per_epoch,
                         **{k: finite_or_none(m[k]) for k in STEP_KEYS + DISTILL_KEYS if k in m},
                         "images_per_s": round(self.images_per_s, 2), "nonfinite_total": self.nonfinite_total}
        self.log.write(self.last_row)
        self.tensorboard.write(self.last_row, "train")

    def validation_row(self, row: dict) -> None:
        """Write a validation row (metrics.jsonl, TensorBoard, a line above the bar)."""
        self.log.write(row)
        self.tensorboard.write(row, "val")
        if self.bar is not None:
            self.bar.write("epoch %d step %d: %s" % (row["epoch"] + 1, row["step"], ", ".join(
                f"{k} {v:.4g}" for k, v in row.items() if k not in ("epoch", "step") and v is not None)))
        self.last_row = {**self.last_row, **row}

    def close(self) -> None:
        """Close the bar (again: nothing more)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def compile_first_step(step_fn, state, batch, bar) -> tuple[Any, Any, float]:
    """The first ``step_fn(state, batch)`` of this process, which compiles the step (or loads
    it from a cache): the progress bar says "preparing the train step" meanwhile, then its
    clock restarts so that its rate and ETA leave the compile out. Returns (state, metrics,
    seconds until the step was compiled and dispatched)."""
    t0 = time.perf_counter()
    if bar is not None:
        description = bar.desc
        bar.set_description("preparing the train step", refresh=True)
    state, metrics = step_fn(state, batch)
    seconds = time.perf_counter() - t0
    logger.info("train step %s in %.1f s", "loaded" if getattr(step_fn, "loaded", False) else "compiled", seconds)
    if bar is not None:
        bar.set_description(description, refresh=False)
        bar.unpause()
    return state, metrics, seconds
