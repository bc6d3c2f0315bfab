"""Orbax checkpoints of a training run: train state, EMA, Grain iterator position, config.

Layout of ``WORKDIR/checkpoints/<step>/`` (one Orbax CheckpointManager step; the best
validation's step is kept the same way in ``WORKDIR/checkpoints_best/<step>/``):

    state/   the TrainState arrays (params, batch_stats, opt_state, grad_accum, step,
             last_opt_step, ema, ema_updates), Orbax StandardSave (OCDBT)
    data/    the Grain iterator state (grain.checkpoint.CheckpointSave), one JSON per process
    meta/    JSON: step, epoch, counters, model info (scale, num_classes, names, reg_max, cls_width);
             in checkpoints_best/ also ``val``, the validation row that made it the best
    config/  JSON: the run's ConfigDict

Saves are asynchronous: ``save`` returns after the device-to-host copy and the files are
written in a background thread into a temporary directory that Orbax renames into place
when complete (then ``_CHECKPOINT_METADATA`` and ``commit_success.txt`` exist). Only such
complete steps are ever taken as the latest (:func:`complete_steps`): a step directory
left by an interrupted write (a ``*.orbax-checkpoint-tmp-*`` directory, or a step
directory without its commit files) is ignored, and moved out of the way before new saves.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "checkpoints_best"
ITEMS = ("state", "data", "meta", "config")
STATE_FIELDS = ("step", "params", "batch_stats", "opt_state", "grad_accum", "last_opt_step", "ema",
                "ema_updates")
_COMMIT_FILES = ("_CHECKPOINT_METADATA", "commit_success.txt")
_TMP_MARK = ".orbax-checkpoint-tmp"


def state_arrays(state: Any) -> dict[str, Any]:
    """The checkpointed fields of a :class:`yolojax.train.TrainState` as a dict."""
    return {name: getattr(state, name) for name in STATE_FIELDS}


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


def quarantine_incomplete(directory: str | os.PathLike) -> list[Path]:
    """Move :func:`incomplete_entries` to ``<directory>_incomplete/`` (never deleted, never
    read again); returns their new paths."""
    root = Path(directory)
    moved = []
    for entry in incomplete_entries(root):
        dest_root = root.parent / f"{root.name}_incomplete"
        dest_root.mkdir(parents=True, exist_ok=True)
        dest = dest_root / f"{entry.name}.{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        logger.warning("checkpoint %s is incomplete (interrupted write); moved to %s", entry, dest)
        shutil.move(str(entry), str(dest))
        moved.append(dest)
    return moved


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
            quarantine_incomplete(self.directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep or None,
            create=True,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        self._ocp = ocp
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)
        self.last_saved_step: int | None = latest_complete_step(self.directory)

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
        """Start an asynchronous save of ``step`` (skipped if that step is already saved)."""
        import grain

        if self.last_saved_step == step:
            return False
        args = self._ocp.args.Composite(
            state=self._ocp.args.StandardSave(state_arrays(state)),
            data=grain.checkpoint.CheckpointSave(iterator),
            meta=self._ocp.args.JsonSave(dict(meta)),
            config=self._ocp.args.JsonSave(dict(config)),
        )
        saved = self.manager.save(step, args=args, force=True)
        if saved:
            self.last_saved_step = step
        return saved

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

    def wait(self) -> None:
        """Block until the save in flight (if any) is complete on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
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
            value = self.checkpointer.read_meta(self.step).get("val", {}).get(metric)
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


def load_workdir_weights(path: str | os.PathLike) -> tuple[dict, dict]:
    """The EMA weights of the latest complete checkpoint of a train workdir (``path`` is the
    workdir, its ``checkpoints/``, or its ``checkpoints_best/`` for the best validation's
    weights), as float32 numpy ``{"params", "batch_stats"}`` on the host, and the model info
    (scale, num_classes, names, reg_max) recorded with it."""
    import json

    import orbax.checkpoint as ocp

    root = Path(path).absolute()
    ckpt_dir = _checkpoints_dir(root)
    if ckpt_dir is None:
        raise ValueError(f"{root} holds no complete yolojax training checkpoint")
    step_dir = ckpt_dir / str(latest_complete_step(ckpt_dir))
    meta_files = sorted((step_dir / "meta").glob("*"))
    meta = None
    for f in meta_files:
        if f.is_file():
            try:
                meta = json.loads(f.read_text())
                break
            except (OSError, json.JSONDecodeError):
                continue
    if not isinstance(meta, dict) or not isinstance(meta.get("info"), dict):
        raise ValueError(f"{step_dir}/meta: missing or unreadable model info")
    info = {k: meta["info"].get(k) for k in ("scale", "num_classes", "names", "reg_max")}
    if isinstance(meta["info"].get("cls_width"), int):
        info["cls_width"] = meta["info"]["cls_width"]
    with ocp.PyTreeCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(step_dir / "state").item_metadata
        ema_meta = {"ema": metadata["ema"]}
        as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), ema_meta)
        restored = checkpointer.restore(
            step_dir / "state",
            args=ocp.args.PyTreeRestore(item=ema_meta, restore_args=as_numpy, partial_restore=True),
        )
    ema = jax.tree.map(lambda x: np.asarray(x, np.float32), restored["ema"])
    return {"params": ema["params"], "batch_stats": ema["batch_stats"]}, info
