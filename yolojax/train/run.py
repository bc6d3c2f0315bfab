"""A training run: :func:`train` tells it in one function, phase by phase.

    python -m yolojax.train --config yolov8s --workdir DIR [--config.FIELD=VALUE ...]

Settings (checked before any work: :mod:`yolojax.train.settings`, :mod:`yolojax.train.preflight`)
-> data (the splits, the image cache, the training iterator) -> model (the recipe, pretrained
weights as ultralytics loads them, :mod:`yolojax.train.transfer`) -> step (the jit train step
on the mesh) -> resume (the newest intact checkpoint of DIR, at the exact data position) ->
loop (steps; each epoch end checkpoints, then validates) -> finish (results.png and
ultralytics' plots). In DIR:

* ``metrics.jsonl``: ``{"step", "loss", "box", "cls", "dfl", "lr", ...}`` every
  ``log_every_steps`` and ``{"epoch", "step", "mAP50", "mAP50-95", ...}`` after each
  validation; ``tensorboard/``: the same rows as TensorBoard scalars ``train/<key>`` and
  ``val/<key>`` (:mod:`yolojax.train.logs`);
* ``checkpoints/``: Orbax steps (every ``checkpoint.every_steps``, each epoch end, before
  that epoch's validation, and the end of the run; SIGTERM / SIGINT save and stop);
  re-running with the same DIR resumes from the newest intact one (a damaged newer one is
  named in a warning and moved to ``checkpoints_damaged/``; the settings that define the run
  must be unchanged). A state holding non-finite values is never checkpointed, and
  ``max_nonfinite`` non-finite losses in a row stop the run;
* ``checkpoints_best/``: the step of the highest validation mAP50-95 so far; it serves as
  weights like DIR itself, which gives the latest; ``checkpoints_period/`` with ``save_period``
  (:mod:`yolojax.train.checkpoints`);
* ``config.json``: the config, and under ``"resolved"`` the values derived from it (also
  logged once; ``data``: the dataset, a TFDS one with the version read, which a resume keeps); ``results.png``; with ``plots``: ``labels.jpg``, ``train_batch*.jpg`` and the
  final validation's plots (:mod:`yolojax.train.plots`).

Only process 0 writes metrics.jsonl, tensorboard/, config.json and the plots.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from yolojax.console import ConfigError, log_to_file
from yolojax.data.sources.dataset import describe
from yolojax.models.naming import model_variables
from yolojax.parallel import broadcast_json
from yolojax.parallel.peers import PeerWatch, PreemptionSync
from yolojax.runtime import enable_compilation_cache
from yolojax.train.callbacks import EarlyStopping, TimeLimit, period_epoch
from yolojax.train.checkpoints import CheckpointError, RunCheckpoints
from yolojax.train.outcome import TrainError, fault_line, kept_text, run_log_path
from yolojax.train.lock import WorkdirLock
from yolojax.train.logs import MetricsLog, TensorBoardLog, previous_validation, write_results_png
from yolojax.train.preflight import (check_plot_output, check_split_paths, check_workdir, check_writable,
                                     close_image_cache)
from yolojax.train.progress import NonFiniteLossError, StepProgress, compile_first_step, finite_or_none
from yolojax.train.settings import Settings, resolve
from yolojax.train.setup import (build_data, build_model, build_step, describe_devices, load_pretrained, load_teacher,
                                 pinned_dataset, prepare_data, read_names, start_distributed, validate_ema)

__all__ = ["NonFiniteLossError", "TrainError", "train"]

logger = logging.getLogger("yolojax.train")


def train(config: Any, workdir: str | os.PathLike) -> dict:
    """Train per ``config`` (a ConfigDict of ``yolojax/configs/base.py``'s fields) in ``workdir``,
    resuming when it holds a checkpoint.

    Returns a summary: ``step`` reached, ``total_steps``, ``last`` metrics row,
    ``stopped_by_signal`` (the signal number or None), ``stopped_early`` ("patience", "time" or
    None), ``checkpoint_step`` / ``best_step`` (the latest and best complete checkpoints, None
    when there is none), ``period_steps``, ``nonfinite_total`` and ``boxes_dropped`` (by a
    ``data.max_boxes`` cap).

    Raises:
      ConfigError: settings, a dataset, weights or a workdir that cannot serve (one held by
        another run: :class:`yolojax.train.lock.WorkdirLock`), in one line, before any training.
      NonFiniteLossError: ``max_nonfinite`` non-finite losses in a row.
      TrainError: any other fault (a full disk, a dead data worker, the device out of memory, a
        lost peer, ...), in one line (:func:`yolojax.train.outcome.fault_line`); its traceback
        is in the workdir's ``train.log``.
    """
    import jax

    # -- Settings: every field checked, then what needs the devices; the workdir locked and its log opened.
    settings = resolve(config)
    compile_cache = enable_compilation_cache(settings.compile_cache)
    start_distributed(settings.distributed)
    settings = settings.on_devices(jax.device_count(), jax.process_count(), jax.devices()[0].platform)
    workdir, process = Path(workdir).absolute(), jax.process_index()
    log_path = run_log_path(workdir, process)
    with contextlib.ExitStack() as guard:
        # Several processes: a lost one ends the others within seconds, in one line (PeerWatch);
        # an error on one (a locked workdir too) ends the others.
        peers = guard.enter_context(PeerWatch(None, process, jax.process_count(), log_file=log_path,
                                              prefix="yolojax.train: error", suffix=lambda: kept_text(workdir)))
        if process == 0:
            guard.enter_context(WorkdirLock(workdir))  # before anything is written there
        else:
            check_writable(workdir)
        log = guard.enter_context(log_to_file(log_path))
        position = RunPosition()
        try:
            return run(settings, workdir, compile_cache, position)
        except (ConfigError, NonFiniteLossError):
            raise
        except Exception as e:
            peers.settle()  # a collective that failed because a peer died: the watch ends the process
            line = fault_line(e, settings, workdir, position.step, log_path)
            log.handle(logging.makeLogRecord({"name": logger.name, "levelno": logging.ERROR, "levelname": "ERROR",
                                              "msg": line, "exc_info": (type(e), e, e.__traceback__)}))
            raise TrainError(line, log_path) from e


class RunPosition:
    """Where a run is, for the line a fault ends it with: ``step``, the step being taken (or
    checkpointed, validated), None before the first."""

    step: int | None = None


def run(settings: Settings, workdir: Path, compile_cache: Any, position: RunPosition) -> dict:
    """The phases of :func:`train` after the settings, in a locked ``workdir``."""
    import jax

    # -- Checks: the files and the workdir, before the data are scanned.
    is_main = jax.process_index() == 0
    resumed = check_workdir(workdir, settings)
    dataset = prepare_data(settings, resumed)
    names = read_names(dataset, settings)
    dataset = pinned_dataset(dataset)
    check_split_paths(dataset, ("train", "val") if settings.val.enabled else ("train",))
    pretrained, winfo = load_pretrained(settings)
    teacher = load_teacher(settings)
    check_writable(workdir)
    if is_main:
        check_plot_output(workdir)
    logger.info("%s", describe_devices(settings, jax.devices()[0].platform, jax.device_count()))

    with contextlib.ExitStack() as stack:
        # SIGTERM / SIGINT from here on (to any process) stop every process after a common step, checkpointed.
        stop = stack.enter_context(PreemptionSync())

        # -- Data: the splits (label scans, image cache) and the training iterator.
        data = build_data(settings, dataset, names, jax.process_index(), jax.process_count())
        stack.callback(close_image_cache, data.batches.source, data.val_source)
        stack.callback(data.batches.close)
        logger.info("data: %s, %d training images, %d steps per epoch, %d steps%s", describe(dataset),
                    len(data.batches.source), data.steps_per_epoch, data.total_steps,
                    f", {len(data.val_source)} validation images" if data.val_source is not None else "")

        # -- Model: the recipe, the model, its initial or pretrained variables, the loss.
        model = build_model(settings, data, pretrained, winfo, teacher)
        config_dict = {**settings.raw, "resolved": {**model.resolved, "data": describe(dataset)}}
        if is_main:
            (workdir / "config.json").write_text(json.dumps(config_dict, indent=1) + "\n")

        # -- Step: the jit train step on the mesh, the state placed.
        step_parts = build_step(settings, model, compile_cache)
        step_fn, place = step_parts.step_fn, step_parts.place

        # -- Resume: the newest intact checkpoint, and the logs and counters from its step.
        ckpts = stack.enter_context(RunCheckpoints(
            workdir, settings.checkpoint.keep, settings.checkpoint.keep_best and settings.val.enabled,
            settings.save_period, settings.checkpoint.async_save))
        iterator = data.batches.iterator
        try:
            state, meta = ckpts.resume(step_parts.state, iterator, step_parts.shardings)
        except CheckpointError as e:
            raise ConfigError(f"cannot resume: {e}") from None
        meta = meta or {}
        start_step = int(meta.get("step", 0))
        assert int(jax.device_get(state.step)) == start_step, "checkpoint step mismatch"
        stopper = EarlyStopping(settings.patience)
        stopper.load_state_dict(meta.get("early_stop"))
        tensorboard = TensorBoardLog(workdir / "tensorboard", start_step, enabled=is_main)
        stack.callback(tensorboard.close)
        progress = StepProgress(settings, MetricsLog(workdir / "metrics.jsonl", start_step, enabled=is_main),
                                tensorboard, data.steps_per_epoch, data.total_steps, start_step,
                                int(meta.get("nonfinite_total", 0)), show_bar=settings.progress and is_main)
        stack.callback(progress.close)
        if meta:
            logger.info("resumed from %s/%d", ckpts.latest.directory, start_step)

        def meta_for(step: int) -> dict:
            return {"step": step, "epoch": step // data.steps_per_epoch, "nonfinite_total": progress.nonfinite_total,
                    "info": model.info, "total_steps": data.total_steps, "time": time.time(),
                    "early_stop": stopper.state_dict()}

        def save(step: int, period: bool = False) -> bool:
            tensorboard.flush()
            return ckpts.save(step, state, iterator, meta_for(step), config_dict, period=period)

        def end_of_epoch(step: int, last: bool, saved: bool) -> bool:
            """The periodic checkpoint, validation when due, the best checkpoint, early stopping."""
            epoch = (step - 1) // data.steps_per_epoch
            if saved and step % data.steps_per_epoch == 0 and period_epoch(epoch, settings.save_period):
                save(step, period=True)
            due = (epoch + 1) % settings.val.every_epochs == 0 or last or stopper.possible_stop
            if not (settings.val.enabled and due):
                return False
            row = validation_row(settings, data, model.info, state, step, epoch)
            progress.validation_row(row)
            if saved:
                ckpts.offer_best(step, row, state, iterator, meta_for(step), config_dict)
            return stopper(epoch + 1, row["mAP50-95"] or 0.0)

        def replay_epoch_end(step: int) -> bool:
            """Resumed at an epoch end: what the interrupted run did after saving it, taken from
            metrics.jsonl (its validation row: early stopping counts it, and a best checkpoint
            whose save failed is saved now) or redone (a validation that never finished)."""
            row = broadcast_json(previous_validation(workdir / "metrics.jsonl", step) if is_main else None)
            if row is None:
                return end_of_epoch(step, step == data.total_steps, saved=True)
            ckpts.offer_best(step, row, state, iterator, meta_for(step), config_dict)
            return stopper(row["epoch"] + 1, row["mAP50-95"] or 0.0)

        # -- Loop: each step's metrics are read one step late; epoch ends (and the last step, a
        # signal, the time limit) checkpoint before they validate.
        timer, pending, step, stopped = TimeLimit(settings.time), None, start_step, None
        if meta and settings.val.enabled and start_step % data.steps_per_epoch == 0:
            stopped = "patience" if replay_epoch_end(start_step) and start_step < data.total_steps else None
        while step < data.total_steps and stopped is None:
            position.step = step + 1
            batch = place(next(iterator))
            if step == start_step:
                state, metrics, _ = compile_first_step(step_fn, state, batch, progress.bar)
                progress.restart_clock()
            else:
                state, metrics = step_fn(state, batch)
            step += 1
            if pending is not None:
                progress.consume(*pending)
            pending = (step, metrics)
            if timer.exceeded():  # each process's clock: the processes agree on a step through `stop`
                stop.request_stop(f"time limit of {settings.time:g} hours reached at step {step}")
            halt = stop.should_stop(step)  # the same answer on every process
            epoch_end = step % data.steps_per_epoch == 0
            last = step == data.total_steps or (halt and stop.requested is not None)
            periodic = settings.checkpoint.every_steps and step % settings.checkpoint.every_steps == 0
            if not (epoch_end or periodic or last or halt):
                continue
            progress.consume(*pending)
            pending = None
            saved = save(step)  # before validation: a failing validation never loses it
            no_progress = (epoch_end or last) and end_of_epoch(step, last, saved)
            if halt:
                stopped = "time" if stop.requested is not None else int(stop.signum or signal.SIGTERM)
            elif no_progress and step < data.total_steps:
                stopped = "patience"
        if pending is not None:
            progress.consume(*pending)

        # -- Finish: every save complete and the input stopped, then results.png and the plots.
        stop.restore()
        progress.close()
        tensorboard.close()
        ckpts.close()
        data.batches.close()
        return finish(settings, workdir, data, model.info, state, step, stopped, is_main,
                      {"last": progress.last_row, "nonfinite_total": progress.nonfinite_total, **ckpts.summary()})


def validation_row(settings: Settings, data: Any, info: dict, state: Any, step: int, epoch: int) -> dict:
    """The metrics row of validating ``state``'s EMA weights after ``step`` (``epoch`` 0-based)."""
    import jax

    try:
        results = validate_ema(settings, data.val_source, jax.device_get(state.ema), info)
    except Exception:
        logger.error("validation at step %d failed; the checkpoint of step %d is kept: re-running resumes after it",
                     step, step)
        raise
    return {"epoch": epoch, "step": step,
            **{k: finite_or_none(float(results[k])) for k in ("mAP50", "mAP50-95", "precision", "recall")}}


def finish(settings: Settings, workdir: Path, data: Any, info: dict, state: Any, step: int, stopped: Any,
           is_main: bool, counts: dict) -> dict:
    """After the loop: report boxes a ``data.max_boxes`` cap dropped, draw results.png and, with
    ``plots`` unless a signal stopped the run (early stopping and ``time`` still plot, as
    ultralytics' final evaluation), the run plots; returns :func:`train`'s summary."""
    import jax

    truncation = data.batches.truncation
    boxes_dropped = truncation.boxes_dropped if truncation is not None else 0
    if boxes_dropped:
        logger.warning("data.max_boxes=%d dropped %d ground-truth boxes of %d training samples in this run "
                       "(data.max_boxes=0 sizes it from the label scan and drops none)", settings.data.max_boxes,
                       boxes_dropped, truncation.images_truncated)
    if is_main and (workdir / "metrics.jsonl").exists():
        write_results_png(workdir / "metrics.jsonl", workdir / "results.png")
    if is_main and settings.plots and not isinstance(stopped, int):
        from yolojax.train import plots

        plots.write_run_plots(settings, workdir, data.batches.source, data.batches.max_boxes, data.val_source,
                              model_variables(jax.device_get(state.ema)), info, step)
    return {"step": step, "total_steps": data.total_steps,
            "stopped_by_signal": stopped if isinstance(stopped, int) else None,
            "stopped_early": stopped if isinstance(stopped, str) else None, "boxes_dropped": boxes_dropped,
            "workdir": str(workdir), **counts}
