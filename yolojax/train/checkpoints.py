"""Writing and restoring the checkpoints of a training run (Orbax, asynchronous).

:class:`RunCheckpointer` keeps ``WORKDIR/checkpoints`` (and ``checkpoints_period``),
:class:`BestCheckpointer` ``WORKDIR/checkpoints_best``, in the layout of
:mod:`yolojax.weights.workdir`. Saves are asynchronous: ``save`` returns after the
device-to-host copy and the files are written in a background thread into a temporary
directory that Orbax renames into place when complete, so a step is never half-written as
the latest. A save that fails (a full disk) raises :class:`CheckpointWriteError` naming the step
and directory, at the latest when the next save starts or the run closes. Resuming takes the newest step that reads; damaged newer steps are named in one
warning and moved to ``<directory>_damaged/`` so that the run can save them again.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import jax

from yolojax.train.outcome import CheckpointWriteError
from yolojax.weights.workdir import (BEST_DIR, CHECKPOINTS_DIR, ITEMS, PERIOD_DIR, STATE_FIELDS, CheckpointError,
                                     complete_steps, damaged_message, first_line, latest_complete_step, move_aside,
                                     remove_incomplete, quiet_failed_read_callbacks, read_newest_intact,
                                     read_step)

logger = logging.getLogger(__name__)

BEST_METRIC = "mAP50-95"  # the validation metric that picks checkpoints_best/ (higher is better)


def state_arrays(state: Any) -> dict[str, Any]:
    """The checkpointed fields of a :class:`yolojax.train.TrainState` as a dict."""
    return {name: getattr(state, name) for name in STATE_FIELDS}



class RunCheckpointer:
    """An Orbax ``CheckpointManager`` for a train workdir.

    Args:
      directory: ``WORKDIR/checkpoints``.
      keep: keep the last ``keep`` checkpoints (None or 0: all).
      async_save: write in a background thread (``save`` returns after the device-to-host copy).
    """

    def __init__(self, directory: str | os.PathLike, keep: int | None = 3, async_save: bool = True):
        import orbax.checkpoint as ocp

        self.directory = Path(directory).absolute()
        if jax.process_index() == 0:
            remove_incomplete(self.directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep or None,
            create=True,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        self._ocp = ocp
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)
        self.last_saved_step: int | None = latest_complete_step(self.directory)
        self._in_flight: int | None = None  # the step of a save started and not yet known complete

    def latest_step(self) -> int | None:
        """The newest complete step on disk (a save still in flight does not count)."""
        return latest_complete_step(self.directory)

    def read_meta(self, step: int) -> dict:
        """The meta JSON of the complete ``step``."""
        restored = self.manager.restore(step, args=self._ocp.args.Composite(meta=self._ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def drop_after(self, step: int) -> list[int]:
        """Delete the steps newer than ``step`` (e.g. past the step a run resumes from);
        returns them."""
        dropped = [s for s in self.manager.all_steps() if s > step]
        for s in dropped:
            logger.info("deleting %s/%d: newer than step %d", self.directory, s, step)
            self.manager.delete(s)
        self.last_saved_step = self.latest_step()
        return dropped

    def save(self, step: int, state: Any, iterator: Any, meta: Mapping[str, Any], config: Mapping[str, Any]) -> bool:
        """Start an asynchronous save of ``step`` (skipped if that step is already saved), after
        the previous save completed. Raises :class:`CheckpointWriteError` when the previous save
        or this one's start fails."""
        import grain

        if self.last_saved_step == step:
            return False
        self.wait()
        args = self._ocp.args.Composite(
            state=self._ocp.args.StandardSave(state_arrays(state)),
            data=grain.checkpoint.CheckpointSave(iterator),
            meta=self._ocp.args.JsonSave(dict(meta)),
            config=self._ocp.args.JsonSave(dict(config)),
        )
        self._in_flight = step
        try:
            saved = self.manager.save(step, args=args, force=True)
        except Exception as e:
            self._failed()
            raise CheckpointWriteError(f"the checkpoint of step {step} in {self.directory}") from e
        if saved:
            self.last_saved_step = step
        else:
            self._in_flight = None
        return saved

    def _failed(self) -> None:
        self._in_flight = None
        self.last_saved_step = self.latest_step()

    def restore(self, step: int, state: Any, iterator: Any, shardings: Any | None = None) -> tuple[Any, dict]:
        """Restore ``step`` into ``state`` (a TrainState giving structure, dtypes and, with
        ``shardings`` (a TrainState-like pytree of shardings), the placement) and
        ``iterator`` (its position is set in place). Returns ``(state, meta)``."""
        import grain

        target = state_arrays(state)
        if shardings is not None:
            target_shardings = state_arrays(shardings)
            abstract = jax.tree.map(
                lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), target, target_shardings)
        else:
            abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target)
        restored = self.manager.restore(step, args=self._ocp.args.Composite(
            state=self._ocp.args.StandardRestore(abstract),
            data=grain.checkpoint.CheckpointRestore(iterator),
            meta=self._ocp.args.JsonRestore(),
        ))
        self.last_saved_step = step
        return state.replace(**restored["state"]), dict(restored["meta"])

    def restore_newest_intact(self, state: Any, iterator: Any, shardings: Any | None = None) -> tuple[Any, dict] | None:
        """:meth:`restore` the newest complete step that reads (None when there is none).

        Newer steps whose files fail to read (:func:`read_step`) are named in one warning and
        moved to ``<directory>_damaged/`` (process 0), so the resumed run saves those steps
        anew. Raises :class:`CheckpointError` when no complete step reads, or when the newest
        step that reads cannot be restored into ``state`` / ``iterator`` (the message says why).
        """
        if self.latest_step() is None:
            return None

        def restore_or_tell(step: int) -> tuple[Any, dict]:
            try:
                return self.restore(step, state, iterator, shardings)
            except Exception as e:
                read_step(self.directory / str(step))  # raises when the files are damaged
                raise CheckpointError(f"{self.directory}/{step} reads but cannot be restored into this run: "
                                      f"{type(e).__name__}: {first_line(e)}") from e

        step, (state, meta), damaged = read_newest_intact(self.directory, restore_or_tell)
        if damaged:
            logger.warning("%s; moved to %s_damaged/", damaged_message(self.directory, damaged, step),
                           self.directory.name)
            if jax.process_index() == 0:
                for bad_step, _ in damaged:
                    move_aside(self.directory / str(bad_step), "damaged")
            self.manager.reload()
        return state, meta

    def wait(self) -> None:
        """Block until the save in flight (if any) is complete on disk. Raises
        :class:`CheckpointWriteError` when it failed."""
        step, self._in_flight = self._in_flight, None
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            self._failed()
            raise CheckpointWriteError(f"the checkpoint of step {step} in {self.directory}") from e

    def close(self) -> None:
        """:meth:`wait`, then close the manager (which it does even when the save failed)."""
        try:
            self.wait()
        finally:
            self.manager.close()


class BestCheckpointer:
    """The one checkpoint of the best validation so far, in ``WORKDIR/checkpoints_best``.

    Holds the same items as :class:`RunCheckpointer` (its meta also holds ``val``, the
    validation row), so it serves as weights (:func:`load_workdir_weights`) like the workdir.

    Args:
      directory: ``WORKDIR/checkpoints_best``.
      metric: the key of the validation row to maximise (e.g. "mAP50-95").
      resume_step: the step the run starts from: a best saved past it (by a run that was
        interrupted before its next checkpoint) is deleted, as that part is redone.
      async_save: as for :class:`RunCheckpointer`.
    """

    def __init__(self, directory: str | os.PathLike, metric: str, resume_step: int, async_save: bool = True):
        self.metric = metric
        self.checkpointer = RunCheckpointer(directory, keep=1, async_save=async_save)
        self.checkpointer.drop_after(resume_step)
        self.step = self.checkpointer.latest_step()
        self.value = -float("inf")
        if self.step is not None:
            quiet_failed_read_callbacks()
            try:
                value = self.checkpointer.read_meta(self.step).get("val", {}).get(metric)
            except Exception as e:  # noqa: BLE001 - a damaged best is replaced by the next validation
                dest = move_aside(self.directory / str(self.step), "damaged") if jax.process_index() == 0 else None
                logger.warning("checkpoint %s/%d is damaged (%s); moved to %s: the next validation sets the best",
                               self.directory, self.step, first_line(e), dest)
                self.checkpointer.manager.reload()
                self.step, value = None, None
            self.value = float(value) if value is not None else -float("inf")

    @property
    def directory(self) -> Path:
        return self.checkpointer.directory

    def offer(self, step: int, val_row: Mapping[str, Any], state: Any, iterator: Any, meta: Mapping[str, Any],
              config: Mapping[str, Any]) -> bool:
        """Save ``step`` (replacing the previous best) when ``val_row[metric]`` is higher than
        every value offered before (ties keep the earlier step); returns whether it saved."""
        value = val_row.get(self.metric)
        if value is None or not value > self.value:
            return False
        saved = self.checkpointer.save(step, state, iterator, {**meta, "val": dict(val_row)}, config)
        if saved:
            self.step, self.value = step, float(value)
        return saved

    def latest_step(self) -> int | None:
        """The best step complete on disk (a save in flight does not count)."""
        return self.checkpointer.latest_step()

    def close(self) -> None:
        self.checkpointer.close()


class RunCheckpoints:
    """The checkpoints of one run in its workdir: ``checkpoints/`` (the latest
    ``checkpoint.keep`` steps), ``checkpoints_best/`` (with ``checkpoint.keep_best`` and
    validation) and ``checkpoints_period/`` (with ``save_period``). A state holding non-finite
    values is never saved. A context manager: on exit every save in flight completes.

    Args:
      workdir: the run's directory.
      keep, keep_best, save_period, async_save: the settings of those names; ``keep_best``
        only with validation on.
    """

    def __init__(self, workdir: Path, keep: int, keep_best: bool, save_period: int, async_save: bool):
        import jax.numpy as jnp

        self.workdir, self.async_save = workdir, async_save
        self.latest = RunCheckpointer(workdir / CHECKPOINTS_DIR, keep=keep, async_save=async_save)
        self._keep_best, self._save_period = keep_best, save_period
        self.best: BestCheckpointer | None = None
        self.period: RunCheckpointer | None = None
        self._open = True
        self._is_finite = jax.jit(lambda trees: jnp.all(jnp.stack(
            [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(trees)])))

    def __enter__(self) -> RunCheckpoints:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc is None:
            self.close()
            return
        try:  # the run's own error is the one to report; a save failing as well is logged
            self.close()
        except CheckpointWriteError as close_error:
            logger.debug("closing the checkpoints after an error: %s", close_error, exc_info=True)

    def resume(self, state: Any, iterator: Any, shardings: Any) -> tuple[Any, dict | None]:
        """Restore the newest intact checkpoint into ``state`` and ``iterator`` (``(state, None)``
        when there is none), then open ``checkpoints_best/`` and ``checkpoints_period/`` from
        that step (what an interrupted run saved past it is redone). Raises
        :class:`CheckpointError` when no checkpoint can be restored."""
        resumed = self.latest.restore_newest_intact(state, iterator, shardings)
        state, meta = resumed if resumed is not None else (state, None)
        start_step = int(meta["step"]) if meta is not None else 0
        if self._keep_best:
            self.best = BestCheckpointer(self.workdir / BEST_DIR, BEST_METRIC, start_step, async_save=self.async_save)
        if self._save_period > 0:
            self.period = RunCheckpointer(self.workdir / PERIOD_DIR, keep=None, async_save=self.async_save)
            self.period.drop_after(start_step)
        return state, meta

    def finite(self, state: Any) -> bool:
        """Whether the weights, BatchNorm statistics and EMA of ``state`` are all finite."""
        return bool(self._is_finite((state.params, state.batch_stats, state.ema)))

    def save(self, step: int, state: Any, iterator: Any, meta: Mapping[str, Any], config: Mapping[str, Any],
             period: bool = False) -> bool:
        """Checkpoint ``step`` into ``checkpoints/`` (or ``checkpoints_period/`` with ``period``)
        unless the weights hold non-finite values; returns whether it saved."""
        if not self.finite(state):
            logger.warning("step %d: the weights hold non-finite values: not checkpointed (latest stays step %s)",
                           step, self.latest.latest_step())
            return False
        self.wait()
        (self.period if period else self.latest).save(step, state, iterator, meta, config)
        return True

    def _checkpointers(self) -> list[RunCheckpointer]:
        return [c for c in (self.latest, self.best.checkpointer if self.best else None, self.period) if c is not None]

    def wait(self) -> None:
        """Block until every save in flight is complete; raises :class:`CheckpointWriteError`
        for the first that failed (so a failed best or periodic save stops the run at the next
        save, before anything newer is written)."""
        for checkpointer in self._checkpointers():
            checkpointer.wait()

    def offer_best(self, step: int, row: Mapping[str, Any], state: Any, iterator: Any, meta: Mapping[str, Any],
                   config: Mapping[str, Any]) -> None:
        """Offer a validated step to ``checkpoints_best/`` (kept when its :data:`BEST_METRIC` is the highest)."""
        if self.best is None:
            return
        self.wait()
        if self.best.offer(step, row, state, iterator, meta, config):
            logger.info("step %d: best %s so far (%.4g): saved in %s", step, BEST_METRIC, self.best.value,
                        self.best.directory)

    def summary(self) -> dict[str, Any]:
        """The complete steps on disk: ``checkpoint_step``, ``best_step``, ``period_steps``."""
        return {"checkpoint_step": self.latest.latest_step(),
                "best_step": self.best.latest_step() if self.best is not None else None,
                "period_steps": complete_steps(self.period.directory) if self.period is not None else []}

    def close(self) -> None:
        """Wait for the saves in flight and close the checkpointers (again: nothing more)."""
        if self._open:
            self._open = False
            errors = []
            for checkpointer in self._checkpointers():
                try:
                    checkpointer.close()
                except CheckpointWriteError as e:
                    errors.append(e)
            if errors:
                raise errors[0]
