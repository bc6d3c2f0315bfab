"""The checkpoints of a train workdir on disk: their layout, which steps are complete, and
reading them (the EMA weights that ``load_weights(WORKDIR)`` returns).

Layout of ``WORKDIR/checkpoints/<step>/`` (one Orbax CheckpointManager step; the best
validation's step is kept the same way in ``WORKDIR/checkpoints_best/<step>/``):

    state/   the TrainState arrays (params, batch_stats, opt_state, grad_accum, step,
             last_opt_step, ema, ema_updates), Orbax StandardSave (OCDBT)
    data/    the Grain iterator state (grain.checkpoint.CheckpointSave), one JSON per process
    meta/    JSON: step, epoch, counters, model info (scale, num_classes, names, reg_max, cls_width);
             in checkpoints_best/ also ``val``, the validation row that made it the best
    config/  JSON: the run's ConfigDict

A step is complete once Orbax renamed its temporary directory into place and wrote
``_CHECKPOINT_METADATA`` and ``commit_success.txt`` (:func:`complete_steps`): only such steps
are ever taken as the latest. A step directory left by an interrupted write (a
``*.orbax-checkpoint-tmp-*`` directory, or a step without its commit files) is ignored
(:func:`incomplete_entries`), and the run that writes there next removes it, with a line
naming it (:func:`remove_incomplete`). The writer is :mod:`yolojax.train.checkpoints`.

A complete step whose files were damaged afterwards (a data file truncated or deleted, a
JSON item unreadable) fails to read: resuming and loading weights
(:func:`load_workdir_weights`) then take the newest step that reads
(:func:`read_newest_intact`), with one warning naming the damaged steps. When no step reads,
:class:`CheckpointError` says so in one line.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import jax
import numpy as np

from yolojax.models.naming import model_variables
from yolojax.weights.ultralytics import training_imgsz

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "checkpoints_best"
PERIOD_DIR = "checkpoints_period"  # save_period: the epoch-end steps kept every save_period epochs
ITEMS = ("state", "data", "meta", "config")
STATE_FIELDS = ("step", "params", "batch_stats", "opt_state", "grad_accum", "last_opt_step", "ema",
                "ema_updates")
_COMMIT_FILES = ("_CHECKPOINT_METADATA", "commit_success.txt")
_TMP_MARK = ".orbax-checkpoint-tmp"
_MAX_REASON = 300  # characters of a read error quoted in a message

T = TypeVar("T")


class CheckpointError(ValueError):
    """No complete checkpoint under a directory can be read; the message is one line."""


def _is_step_name(name: str) -> bool:
    return name.isdigit()


def complete_steps(directory: str | os.PathLike) -> list[int]:
    """Steps under ``directory`` whose write finished (sorted ascending)."""
    root = Path(directory)
    if not root.is_dir():
        return []
    steps = []
    for child in root.iterdir():
        if not (child.is_dir() and _is_step_name(child.name)):
            continue
        if all((child / f).is_file() for f in _COMMIT_FILES) and all(
            (child / item).is_dir() for item in ("state", "meta")
        ):
            steps.append(int(child.name))
    return sorted(steps)


def latest_complete_step(directory: str | os.PathLike) -> int | None:
    """The newest complete step under ``directory`` (None when there is none)."""
    steps = complete_steps(directory)
    return steps[-1] if steps else None


def incomplete_entries(directory: str | os.PathLike) -> list[Path]:
    """Leftovers of interrupted writes: temporary directories and step directories that
    lack their commit files."""
    root = Path(directory)
    if not root.is_dir():
        return []
    complete = {str(s) for s in complete_steps(root)}
    out = []
    for child in root.iterdir():
        if _TMP_MARK in child.name or (child.is_dir() and _is_step_name(child.name) and child.name not in complete):
            out.append(child)
    return sorted(out)


def move_aside(entry: Path, kind: str) -> Path:
    """Move ``entry`` (a step directory) to ``<its directory>_<kind>/<name>.<time>-<pid>``."""
    dest_root = entry.parent.parent / f"{entry.parent.name}_{kind}"
    dest_root.mkdir(parents=True, exist_ok=True)
    dest = dest_root / f"{entry.name}.{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    shutil.move(str(entry), str(dest))
    return dest


def _size_mib(entry: Path) -> float:
    files = [entry] if entry.is_file() else [p for p in entry.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def remove_incomplete(directory: str | os.PathLike) -> list[Path]:
    """Delete :func:`incomplete_entries` (never read: half-written by an interrupted save, e.g.
    on a full disk), logging one line for each; returns what was removed."""
    removed = []
    for entry in incomplete_entries(directory):
        size = _size_mib(entry)
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        logger.warning("removed %s (%.1f MiB): a checkpoint half-written by an interrupted save", entry, size)
        removed.append(entry)
    return removed


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line if len(line) <= _MAX_REASON else line[:_MAX_REASON] + "..."


def _drop_closed_loop_callbacks(unraisable: Any) -> None:
    """``sys.unraisablehook`` that drops what a failed Orbax read leaves behind.

    Orbax reads a step's arrays with tensorstore inside an asyncio loop of its own. When one
    read fails, the loop is closed while the other reads are still in flight: each of their
    completion callbacks then reports ``RuntimeError: Event loop is closed``, and each read
    coroutine, closed unfinished (``GeneratorExit``), raises again when it is collected (a
    traceback each, after the real error was handled). Those are dropped; every other
    unraisable exception goes to the previous hook.
    """
    error = unraisable.exc_value
    closed_loop = isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
    closed_read = inspect.iscoroutine(unraisable.object) and isinstance(
        error.__cause__ or error.__context__, GeneratorExit)
    if closed_loop or closed_read:
        return
    _previous_unraisablehook(unraisable)


_previous_unraisablehook = sys.unraisablehook


class _UnretrievedReadErrors(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" records of tensorstore reads.

    When one of a step's reads fails, Orbax raises that error and leaves the other reads of
    the damaged step failing in tasks nobody awaits; asyncio logs each (with a traceback) when
    the task is collected. The step's failure is already reported in one line.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        unretrieved = str(record.msg).startswith("Task exception was never retrieved")
        read_error = isinstance(error, ValueError) and any(
            marker in str(error) for marker in ('"zarr" driver', "OCDBT", "tensorstore"))
        return not (unretrieved and read_error)


_unretrieved_read_errors = _UnretrievedReadErrors()


def quiet_failed_read_callbacks() -> None:
    """Install :func:`_drop_closed_loop_callbacks` and a filter of asyncio's unretrieved read
    errors (:class:`_UnretrievedReadErrors`) before a read that may fail (once, for the rest
    of the process: tensorstore's threads can report the callbacks before the failed read has
    even raised, or long after it returned)."""
    global _previous_unraisablehook
    if sys.unraisablehook is not _drop_closed_loop_callbacks:
        _previous_unraisablehook = sys.unraisablehook
        sys.unraisablehook = _drop_closed_loop_callbacks
    logging.getLogger("asyncio").addFilter(_unretrieved_read_errors)  # a no-op when already added


def read_newest_intact(directory: str | os.PathLike, read: Callable[[int], T]) -> tuple[int, T, list[tuple[int, str]]]:
    """``read(step)`` of the newest complete step under ``directory`` that reads without error.

    Returns ``(step, read(step), damaged)`` with ``damaged`` the newer steps that failed, as
    ``(step, first line of the error)``, newest first. Raises :class:`CheckpointError` (one
    line naming the directory and each step's error) when no step reads or there is none; a
    :class:`CheckpointError` that ``read`` raises (a step that reads but cannot serve) passes
    through.
    """
    damaged: list[tuple[int, str]] = []
    quiet_failed_read_callbacks()
    for step in reversed(complete_steps(directory)):
        try:
            return step, read(step), damaged
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - any other failure to read means the step is damaged
            damaged.append((step, first_line(e)))
    if not damaged:
        raise CheckpointError(f"{directory} holds no complete checkpoint")
    raise CheckpointError(f"no intact checkpoint in {directory}: " + "; ".join(
        f"step {step} is damaged ({reason})" for step, reason in damaged))


def damaged_message(directory: str | os.PathLike, damaged: list[tuple[int, str]], used_step: int) -> str:
    """One line: which steps of ``directory`` are damaged (with the first error) and the step used."""
    names = ", ".join(str(Path(directory) / str(step)) for step, _ in damaged)
    were = "is" if len(damaged) == 1 else "are"
    return f"checkpoint {names} {were} damaged ({damaged[0][1]}); using step {used_step} instead"


def _checkpoints_dir(path: Path) -> Path | None:
    """``path`` itself or ``path/checkpoints`` when it holds complete steps."""
    for candidate in (path / CHECKPOINTS_DIR, path):
        if candidate.is_dir() and complete_steps(candidate):
            return candidate
    return None


def is_train_workdir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a train workdir (or its ``checkpoints/`` or ``checkpoints_best/``)
    with a complete checkpoint."""
    p = Path(path)
    return p.is_dir() and _checkpoints_dir(p) is not None


def _read_json_item(item_dir: Path) -> dict:
    """The JSON of an Orbax JsonSave item (its ``metadata`` file)."""
    return json.loads((item_dir / "metadata").read_text())


def _read_arrays(state_dir: Path, keys: tuple[str, ...] | None = None) -> dict:
    """The state arrays of a step (only ``keys`` at the top level, when given) as numpy, read
    without a template."""
    import orbax.checkpoint as ocp

    # The handler's metadata: the checkpointer's also looks for a step-level metadata file in
    # state/ (it is one level up) and logs a warning that it is missing.
    tree = ocp.PyTreeCheckpointHandler().metadata(state_dir)
    item = {k: tree[k] for k in keys} if keys else dict(tree)
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    with ocp.PyTreeCheckpointer() as checkpointer:
        return checkpointer.restore(
            state_dir, args=ocp.args.PyTreeRestore(item=item, restore_args=as_numpy, partial_restore=bool(keys)))


def read_step(step_dir: str | os.PathLike) -> None:
    """Read every item of a checkpoint step without a template (the JSON items parse, every
    state array loads); raises what the reading raises, e.g. for a truncated or deleted file."""
    step_dir = Path(step_dir)
    for item in ("meta", "config"):
        _read_json_item(step_dir / item)
    for data_json in sorted((step_dir / "data").glob("process_*.json")):
        json.loads(data_json.read_text())
    _read_arrays(step_dir / "state")


def _read_ema_weights(step_dir: Path) -> tuple[dict, dict]:
    """The EMA weights (float32 numpy; a distillation projector left out) and model info of one
    checkpoint step directory."""
    meta = _read_json_item(step_dir / "meta")
    if not isinstance(meta, dict) or not isinstance(meta.get("info"), dict):
        raise ValueError(f"{step_dir}/meta: missing model info")
    info = {"family": meta["info"].get("family", "yolov8"),  # absent from runs before YOLO11: YOLOv8
            **{k: meta["info"].get(k) for k in ("scale", "num_classes", "names", "reg_max")}}
    if isinstance(meta["info"].get("cls_width"), int):
        info["cls_width"] = meta["info"]["cls_width"]
    if isinstance(meta["info"].get("widths"), dict):  # a pruned model's (yolojax.models.prune)
        info["widths"] = meta["info"]["widths"]
    # The run's imgsz: in the info since it was recorded there, else in the step's config.
    imgsz = training_imgsz(meta["info"].get("imgsz"))
    if imgsz is None and (step_dir / "config").is_dir():
        config = _read_json_item(step_dir / "config")
        imgsz = training_imgsz(config.get("imgsz")) if isinstance(config, dict) else None
    if imgsz is not None:
        info["imgsz"] = imgsz
    ema = jax.tree.map(lambda x: np.asarray(x, np.float32), _read_arrays(step_dir / "state", ("ema",))["ema"])
    return model_variables({"params": ema["params"], "batch_stats": ema["batch_stats"]}), info


def load_workdir_weights(path: str | os.PathLike) -> tuple[dict, dict]:
    """The EMA weights of the newest intact checkpoint of a train workdir (``path`` is the
    workdir, its ``checkpoints/``, or its ``checkpoints_best/`` for the best validation's
    weights), as float32 numpy ``{"params", "batch_stats"}`` on the host, and the model info
    (scale, num_classes, names, reg_max, cls_width, a pruned model's widths) recorded with it.

    A newer step that fails to read (damaged after it was written) is named in one warning
    and skipped; nothing is moved. Raises ``ValueError`` (:class:`CheckpointError` when every
    complete step is damaged) in one line.
    """
    root = Path(path).absolute()
    ckpt_dir = _checkpoints_dir(root)
    if ckpt_dir is None:
        raise ValueError(f"{root} holds no complete yolojax training checkpoint")
    step, (variables, info), damaged = read_newest_intact(ckpt_dir, lambda s: _read_ema_weights(ckpt_dir / str(s)))
    if damaged:
        logger.warning("%s", damaged_message(ckpt_dir, damaged, step))
    return variables, info
