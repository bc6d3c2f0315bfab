"""When a train run stops or keeps extra checkpoints: early stopping (``patience``), the time
limit (``time``) and the periodic epoch checkpoints (``save_period``), as ultralytics 8.4.190's
``BaseTrainer`` decides them (SIGTERM and SIGINT: :class:`yolojax.parallel.peers.PreemptionSync`).
The train loop (:mod:`yolojax.train.run`) asks these small objects after each step and each
epoch; none of them touches the model or the files.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable

logger = logging.getLogger(__name__)


class EarlyStopping:
    """ultralytics' ``utils.torch_utils.EarlyStopping``: stop after ``patience`` epochs without
    a better fitness (yolojax: val mAP50-95, ultralytics' detection fitness weights
    [P, R, mAP50, mAP50-95] = [0, 0, 0, 1]).

    Args:
      patience: epochs to wait after the best one; 0 disables early stopping (the train config
        refuses a negative one).

    The best epoch is the latest with ``fitness > best_fitness`` or any epoch while the best
    fitness is still 0 (ultralytics lets an all-zero early phase move the best epoch).
    """

    def __init__(self, patience: int):
        self.patience = patience if patience > 0 else math.inf
        self.best_fitness = 0.0
        self.best_epoch = 0
        self.possible_stop = False  # the next epoch may stop: ultralytics validates it even when not due

    def __call__(self, epoch: int, fitness: float | None) -> bool:
        """Record ``fitness`` of ``epoch`` (1-based: epochs finished); returns whether to stop.
        ``fitness`` None (no validation this epoch) never stops."""
        if fitness is None:
            return False
        if fitness > self.best_fitness or self.best_fitness == 0:
            self.best_epoch, self.best_fitness = epoch, float(fitness)
        self.possible_stop = epoch - self.best_epoch >= self.patience - 1
        stop = epoch - self.best_epoch >= self.patience
        if stop:
            logger.info("early stopping: no better mAP50-95 in the last %d epochs; the best was epoch %d (%.4g), "
                        "kept in checkpoints_best/ (patience=0 disables early stopping)", self.patience,
                        self.best_epoch, self.best_fitness)
        return stop

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state for the checkpoint's meta (so a resumed run counts on)."""
        return {"best_fitness": self.best_fitness, "best_epoch": self.best_epoch, "possible_stop": self.possible_stop}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore :meth:`state_dict`'s values (None: keep the fresh state)."""
        if state:
            self.best_fitness = float(state["best_fitness"])
            self.best_epoch = int(state["best_epoch"])
            self.possible_stop = bool(state.get("possible_stop", False))


class TimeLimit:
    """ultralytics' ``time`` argument: the run stops once it has trained ``hours`` (wall clock
    since this process started training, as ultralytics counts from ``train_time_start``).

    Args:
      hours: the limit; 0 (or less) disables it.
      clock: seconds, monotonic (``time.monotonic``; tests pass their own).
    """

    def __init__(self, hours: float, clock: Callable[[], float] = time.monotonic):
        self.seconds = hours * 3600.0 if hours > 0 else math.inf
        self._clock = clock
        self._start = clock()

    def exceeded(self) -> bool:
        """Whether the limit has passed."""
        return self._clock() - self._start > self.seconds


def period_epoch(epoch: int, save_period: int) -> bool:
    """Whether the end of ``epoch`` (0-based) is kept as a periodic checkpoint: ultralytics
    writes ``epoch{epoch}.pt`` when ``save_period > 0 and epoch % save_period == 0`` (so the
    first epoch, then every ``save_period``-th)."""
    return save_period > 0 and epoch % save_period == 0
