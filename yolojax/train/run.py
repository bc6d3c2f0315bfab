"""The train command.

    python -m yolojax.train --config configs/yolov8s.py --workdir DIR [--config.FIELD=VALUE ...]

Builds the data pipeline, the model state (``config.weights``: a .pt, a converted directory
or a train workdir, loaded as ultralytics loads pretrained weights, :mod:`yolojax.train.transfer`:
the head's class branch keeps the pretrained width and weights, class rows are remapped by
name (``cls_remap``), layers whose shapes differ keep their fresh initialisation) and the jit
train step, then trains with a progress bar. In DIR:

* ``metrics.jsonl``: ``{"step", "loss", "box", "cls", "dfl", "lr", ...}`` every
  ``log_every_steps`` and ``{"epoch", "step", "mAP50", "mAP50-95", ...}`` after each
  validation;
* ``tensorboard/``: TensorBoard event files (tensorboardX) with the same scalars:
  ``train/<key>`` for every per-step row key (loss, box, cls, dfl, lr, grad_norm,
  images_per_s, nonfinite_total) and ``val/<key>`` for every validation row key (mAP50,
  mAP50-95, precision, recall), at the row's step; view them with
  ``tensorboard --logdir DIR`` (the ``tensorboard`` package, not a yolojax dependency);
* ``checkpoints/``: Orbax steps (every ``checkpoint.every_steps``, each epoch end, before
  that epoch's validation, and the end of the run; SIGTERM / SIGINT save and exit 0);
  re-running with the same DIR resumes from the newest intact checkpoint at the exact data
  position (a damaged newer one is named in a warning and moved to ``checkpoints_damaged/``;
  settings that define the run, :data:`RUN_DEFINING`, must be unchanged). A state holding
  non-finite values is never checkpointed, and ``max_nonfinite`` non-finite losses in a row
  stop the run (exit 1);
* ``checkpoints_best/``: the checkpoint (same items) of the validation with the highest
  mAP50-95 so far (``checkpoint.keep_best``); ``DIR/checkpoints_best`` serves as weights
  (``load_weights``, ``yolojax.val --weights``) like DIR itself, which gives the latest;
* ``config.json`` (the config, and under ``"resolved"`` the values derived from it, also
  logged once: :func:`yolojax.train.optim.resolved_settings`, the class count, the val batch)
  and ``results.png`` (losses, lr and validation curves);
* with ``plots`` (default True, as ultralytics): ``labels.jpg``, ``train_batch*.jpg`` and the
  final validation's plots (confusion matrices, Box P/R/F1/PR curves, val_batch*_labels/pred.jpg),
  written after training (:mod:`yolojax.plots.run`).

The model summary line (ultralytics' format, :mod:`yolojax.models.summary`) is logged at start.

Before the first step everything is checked (:mod:`yolojax.train.preflight`): the config, the
data.yaml splits, the weights, the workdir and the plot output.

Only process 0 writes metrics.jsonl, tensorboard/, config.json and results.png. On resume,
metrics and TensorBoard events past the resumed step are dropped (they are redone).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from yolojax.runtime import enable_compilation_cache, reexec_with_malloc_tunables
from yolojax.train.callbacks import EarlyStopping, TimeLimit, period_epoch
from yolojax.train.preflight import (ConfigError, check_plot_output, check_split_paths, check_writable,
                                     close_image_cache, open_image_cache, open_split)
from yolojax.train.progress import NonFiniteLossError, StepProgress, finite_or_none

logger = logging.getLogger("yolojax.train")

DTYPES = ("float32", "bfloat16")
SCALES = ("n", "s", "m", "l", "x")


BEST_METRIC = "mAP50-95"  # the validation metric that picks checkpoints_best/ (higher is better)


# ----------------------------------------------------------------------------------------
# Set-up: data, weights, state.
# ----------------------------------------------------------------------------------------


def prepare_data(config: Any) -> Path:
    """The data.yaml to train on; writes the synthetic dataset when configured."""
    if config.data.yaml:
        path = Path(config.data.yaml)
        if not path.is_file():
            raise ConfigError(f"data.yaml {config.data.yaml} does not exist")
        return path
    syn = config.data.synthetic
    if not syn.root:
        raise ConfigError("no dataset: set --config.data.yaml=PATH (or data.synthetic.root)")
    root = Path(syn.root)
    yaml_path = root / "data.yaml"
    if not yaml_path.is_file():
        from yolojax.data.synthetic import write_synthetic_dataset

        logger.info("writing the synthetic shapes dataset to %s", root)
        tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
        write_synthetic_dataset(tmp, num_train=syn.num_train, num_val=syn.num_val,
                                size_range=(syn.min_size, syn.max_size), max_shapes=syn.max_shapes, seed=syn.seed)
        root.parent.mkdir(parents=True, exist_ok=True)
        if root.exists():
            import shutil

            shutil.rmtree(root)
        os.rename(tmp, root)
    return yaml_path


def _cache_mode_or_none(value: Any) -> str | None:
    from yolojax.data.image_cache import cache_mode

    try:
        return cache_mode(value)
    except ValueError:
        return None


def check_config(config: Any) -> None:
    """Refuse settings that cannot serve, with a one-line reason."""
    from yolojax.data.augment_config import AUGMENT_ON

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    need(config.model.scale in SCALES, f"model.scale must be one of {SCALES}, got {config.model.scale!r}")
    need(config.imgsz > 0 and config.imgsz % 32 == 0, f"imgsz must be a positive multiple of 32, got {config.imgsz}")
    need(config.batch_size >= 1, f"batch_size must be >= 1, got {config.batch_size}")
    need(config.epochs >= 1, f"epochs must be >= 1, got {config.epochs}")
    need(config.max_steps >= 0, f"max_steps must be >= 0, got {config.max_steps}")
    need(config.dtype in DTYPES, f"dtype must be one of {DTYPES}, got {config.dtype!r}")
    need(config.optimizer in ("SGD", "Adam", "AdamW", "auto"),
         f"optimizer must be SGD, Adam, AdamW or auto, got {config.optimizer!r}")
    need(config.parallel.mode in ("jit", "pmap"), f"parallel.mode must be jit or pmap, got {config.parallel.mode!r}")
    need(config.log_every_steps >= 1, f"log_every_steps must be >= 1, got {config.log_every_steps}")
    need(config.checkpoint.every_steps >= 0, "checkpoint.every_steps must be >= 0")
    need(config.max_nonfinite >= 1, "max_nonfinite must be >= 1")
    need(config.data.max_boxes >= 0, "data.max_boxes must be >= 0 (0: from the label scan)")
    need(config.val.max_det >= 0, "val.max_det must be >= 0 (0: ultralytics' rule)")
    need(config.data.workers >= 0, "data.workers must be >= 0")
    need(_cache_mode_or_none(config.data.cache) is not None,
         f"data.cache must be '', 'ram' or 'disk' (True means 'ram', as ultralytics' cache), got {config.data.cache!r}")
    need(config.data.augment_on in AUGMENT_ON,
         f"data.augment_on must be one of {AUGMENT_ON}, got {config.data.augment_on!r}")
    check_option_values(config)
    coordinator = config.distributed.coordinator
    need(not coordinator or (":" in coordinator and coordinator.rsplit(":", 1)[1].isdigit()),
         f"distributed.coordinator must be host:port, got {coordinator!r}")
    need(config.distributed.num_processes >= 0, "distributed.num_processes must be >= 0 (0: from the environment)")
    need(config.distributed.process_id >= -1, "distributed.process_id must be >= -1 (-1: from the environment)")
    if config.weights and not Path(config.weights).exists():
        raise ConfigError(f"weights {config.weights} does not exist")


def check_option_values(config: Any) -> None:
    """Refuse bad values of ultralytics' train options (patience, time, save_period, fraction,
    freeze, classes, multi_scale, rect, cutmix, bgr, cls_pw), naming the field; with
    ``data.augment_on='device'`` also rect, multi_scale, cutmix and bgr, which only host mode
    renders (:func:`yolojax.data.device_batches.check_device_options`)."""
    from yolojax.data.augment_config import AugmentConfig
    from yolojax.data.device_batches import check_device_options
    from yolojax.data.subset import fraction_count, parse_classes
    from yolojax.train.freeze import parse_freeze

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    need(config.patience >= 0, f"patience must be >= 0 epochs (0 disables early stopping), got {config.patience}")
    need(config.time >= 0, f"time must be >= 0 hours (0: no limit), got {config.time}")
    for name in ("cutmix", "bgr"):
        need(0.0 <= config[name] <= 1.0, f"{name} must be a probability in [0, 1], got {config[name]}")
    need(0.0 <= config.cls_pw <= 1.0, f"cls_pw must be in [0, 1], got {config.cls_pw}")
    need(0.0 <= config.multi_scale < 1.0, f"multi_scale must be in [0, 1), got {config.multi_scale}")
    try:
        fraction_count(config.fraction, 1)
        parse_freeze(config.freeze)
        parse_classes(config.classes, 1 << 30)
        if config.data.augment_on == "device":
            check_device_options(AugmentConfig.from_config(config), config.rect, config.multi_scale)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def start_distributed(config: Any) -> bool:
    """``jax.distributed.initialize`` when ``config.distributed`` or the environment names a
    coordinator (or ``distributed.auto``); before anything touches the devices. Returns
    whether this process is one of several."""
    from yolojax.parallel import initialize_distributed

    d = config.distributed
    return initialize_distributed(d.coordinator or None, d.num_processes or None,
                                  d.process_id if d.process_id >= 0 else None, auto=d.auto)


# Settings that never reach the traced train step (run control, validation, checkpointing,
# loading; the optimiser settings reach it as the recipe): the step cache's key leaves them
# out, so that e.g. a resume with another max_steps loads the step (yolojax.train.step_cache).
STEP_INDEPENDENT = ("max_steps", "patience", "time", "save_period", "plots", "progress", "log_every_steps",
                    "max_nonfinite", "checkpoint", "val", "compile_cache", "weights", "seed", "distributed")
STEP_INDEPENDENT_DATA = ("workers", "threads", "prefetch", "cache")


def step_config(config_dict: dict) -> dict:
    """``config_dict`` without :data:`STEP_INDEPENDENT` settings (the step cache's view)."""
    kept = {k: v for k, v in config_dict.items() if k not in STEP_INDEPENDENT}
    kept["data"] = {k: v for k, v in config_dict["data"].items() if k not in STEP_INDEPENDENT_DATA}
    return kept


# Settings a resumed run must share with the run that wrote the checkpoint (the others,
# e.g. max_steps, logging, checkpointing, validation, workers, mesh, may change).
RUN_DEFINING = ("model", "weights", "dtype", "imgsz", "batch_size", "epochs", "seed", "optimizer", "lr0", "lrf",
                "momentum", "weight_decay", "warmup_epochs", "warmup_momentum", "warmup_bias_lr", "cos_lr", "nbs",
                "box", "cls", "dfl", "hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale", "shear",
                "perspective", "flipud", "fliplr", "mosaic", "mixup", "close_mosaic", "cutmix", "bgr", "cls_pw",
                "fraction", "single_cls", "classes", "rect", "multi_scale", "freeze")


def check_resumable(saved: dict, current: dict, workdir: Path, defaults: dict | None = None) -> None:
    """Refuse to resume a workdir whose checkpoint was written with other run settings. A
    setting missing from ``saved`` (a run from before it existed) counts as its value in
    ``defaults`` (the config's defaults, configs/base.py, when not given)."""
    if defaults is None:
        from yolojax.cli import _configs_dir, load_config_file

        defaults = load_config_file(_configs_dir() / "base.py").to_dict()
    saved = {**{k: defaults[k] for k in RUN_DEFINING if k in defaults and k not in saved}, **saved}
    diffs = [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in RUN_DEFINING if saved.get(k) != current.get(k)]
    # data.workers: the saved data position (Grain's iterator state) has another form with
    # worker processes, and per worker count.
    for k in ("yaml", "max_boxes", "mosaic_pool", "synthetic", "workers"):
        if saved.get("data", {}).get(k) != current.get("data", {}).get(k):
            diffs.append(f"data.{k}: {saved.get('data', {}).get(k)!r} -> {current.get('data', {}).get(k)!r}")
    if diffs:
        raise ConfigError(f"{workdir} holds a run with other settings ({'; '.join(diffs[:3])}"
                          f"{'; ...' if len(diffs) > 3 else ''}); use a new --workdir to start a new run")


def check_workdir(workdir: Path, config_dict: dict) -> None:
    """Refuse (before any work) a workdir whose checkpoints were written with other run
    settings; a missing or unreadable config.json only warns."""
    from yolojax.checkpoint import CHECKPOINTS_DIR, latest_complete_step

    if latest_complete_step(workdir / CHECKPOINTS_DIR) is None:
        return
    try:
        saved = json.loads((workdir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        logger.warning("%s/config.json is missing or unreadable: cannot check the resumed run's settings", workdir)
        return
    check_resumable(saved, config_dict, workdir)


def _read_names(data_yaml: Path) -> list[str]:
    from yolojax.data import load_data_yaml

    try:
        spec = load_data_yaml(data_yaml)
    except Exception as e:  # noqa: BLE001 - any failure is a dataset that cannot serve
        raise ConfigError(f"data.yaml {data_yaml}: {e}") from None
    names = getattr(spec, "names", None)
    if not names:
        raise ConfigError(f"data.yaml {data_yaml} has no class names")
    return list(names.values()) if isinstance(names, dict) else list(names)


# ----------------------------------------------------------------------------------------
# Metrics files.
# ----------------------------------------------------------------------------------------


class MetricsLog:
    """Appends JSON rows to ``metrics.jsonl`` (only rows past the resumed step are kept)."""

    def __init__(self, path: Path, resume_step: int, enabled: bool = True):
        self.path = path
        self.enabled = enabled
        if enabled and path.exists():
            # Drop rows written after the checkpoint we resume from (they will be redone).
            kept = []
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if row.get("step", 0) <= resume_step:
                    kept.append(line)
            path.write_text("".join(k + "\n" for k in kept))

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


def plot_results(metrics_path: Path, out_path: Path) -> Path | None:
    """results.png from metrics.jsonl: box/cls/dfl/total loss, lr and validation curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "loss" in r]
    epochs = [r for r in rows if "epoch" in r]
    val_keys = [k for k in ("mAP50", "mAP50-95", "precision", "recall") if any(k in r for r in epochs)]
    panels = ["loss", "box", "cls", "dfl", "lr"] + val_keys
    cols = 5
    rows_n = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.2 * cols, 2.8 * rows_n), squeeze=False)
    for ax, key in zip(axes.flat, panels):
        src = steps if key in ("loss", "box", "cls", "dfl", "lr") else epochs
        xs = [r["step"] for r in src if r.get(key) is not None]
        ys = [r[key] for r in src if r.get(key) is not None]
        ax.plot(xs, ys, marker="." if len(xs) < 30 else None)
        ax.set_title(key)
        ax.set_xlabel("step")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


# ----------------------------------------------------------------------------------------
# Training.
# ----------------------------------------------------------------------------------------


class _Stop:
    """SIGTERM / SIGINT: finish the current step, save, exit 0 (a second signal is fatal)."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass

    def _handle(self, signum, frame):
        if self.signum is not None:
            self.restore()
            raise KeyboardInterrupt
        self.signum = signum
        logger.warning("signal %d: saving a checkpoint and stopping", signum)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def _augment_groups(config) -> int:
    """Device-mode groups of the local batch: the 'data' shards this process feeds."""
    from yolojax.parallel import local_data_shards, mesh_from_config

    return local_data_shards(mesh_from_config(config), config.batch_size)


def _make_step(config, loss_fn, state):
    """(step_fn, state placed on the mesh, its shardings, place_batch) for config.mesh and
    config.parallel."""
    import jax

    from yolojax.parallel import make_parallel_train_step, mesh_from_config, place_batch, shard_state

    mesh = mesh_from_config(config)
    step_fn, shardings = make_parallel_train_step(config.parallel.mode, loss_fn, mesh, state,
                                                  rules=config.parallel.rules)
    state = shard_state(jax.device_get(state), shardings)
    return step_fn, state, shardings, (lambda b: place_batch(b, mesh))


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


def _validate(config, val_source, variables, info, batch_size):
    from yolojax.val import validate

    return validate(data=val_source, variables=variables, info=info, imgsz=config.imgsz, batch=batch_size,
                    conf=config.val.conf, iou=config.val.iou, max_det=config.val.max_det or None, rect=config.val.rect,
                    workers=0, verbose=False)


@dataclasses.dataclass
class RunData:
    """The data side of a run (:func:`build_data`).

    Attributes:
      batches: the training :class:`yolojax.data.Batches`.
      val_source: the val split as a source (None without validation).
      names: class names the model is trained for (``["item"]`` with ``single_cls``).
      steps_per_epoch, total_steps: the run's length (``max_steps`` applied).
    """

    batches: Any
    val_source: Any
    names: list[str]
    steps_per_epoch: int
    total_steps: int


def build_data(config: Any, data_yaml: Path, names: list[str], process_index: int, process_count: int) -> RunData:
    """Open the splits (``fraction``, ``classes``, ``single_cls`` applied as ultralytics'
    datasets apply them) and the training iterator. Raises :class:`ConfigError`."""
    from yolojax.data import AugmentConfig, make_train_iterator
    from yolojax.data.subset import SINGLE_CLASS_NAMES, parse_classes, select_labels

    try:
        classes = parse_classes(config.classes, len(names))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    train_source = select_labels(open_split(data_yaml, "train", fraction=config.fraction), classes,
                                 config.single_cls)
    val_source = open_split(data_yaml, "val") if config.val.enabled else None
    if val_source is not None:
        val_source = select_labels(val_source, classes, config.single_cls)
    train_source, val_source = open_image_cache(config.data.cache, config.imgsz, train_source, val_source)
    try:
        batches = make_train_iterator(
            train_source, imgsz=config.imgsz, batch_size=config.batch_size, epochs=config.epochs, seed=config.seed,
            aug=AugmentConfig.from_config(config), max_boxes=config.data.max_boxes or None, workers=config.data.workers,
            threads=config.data.threads, prefetch=config.data.prefetch, start_step=0,
            process_index=process_index, process_count=process_count, mosaic_pool=config.data.mosaic_pool,
            rect=config.rect, multi_scale=config.multi_scale, augment_on=config.data.augment_on,
            augment_groups=_augment_groups(config))
    except (ValueError, FileNotFoundError, OSError) as e:
        close_image_cache(train_source, val_source)
        raise ConfigError(f"dataset {data_yaml}: {e}") from None
    total = batches.num_steps if not config.max_steps else min(config.max_steps, batches.num_steps)
    return RunData(batches, val_source, list(SINGLE_CLASS_NAMES) if config.single_cls else names,
                   batches.steps_per_epoch, total)


def load_pretrained(config: Any) -> tuple[Any, dict]:
    """(variables or None, their info) from ``config.weights``."""
    if not config.weights:
        return None, {}
    from yolojax.convert import load_weights

    try:
        pretrained, winfo = load_weights(config.weights)
    except ValueError as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    if winfo.get("scale") and winfo["scale"] != config.model.scale:
        logger.warning("weights are YOLOv8%s; training YOLOv8%s (config.model.scale) with the layers that fit",
                       winfo["scale"], config.model.scale)
    return pretrained, winfo


@dataclasses.dataclass
class RunModel:
    """The model side of a run (:func:`build_model`): the placed state, the jit step, the
    state's shardings, the batch placement and the model info saved with checkpoints."""

    state: Any
    step_fn: Any
    shardings: Any
    place: Any
    info: dict


def build_model(config: Any, data: RunData, pretrained: Any, winfo: dict, config_dict: dict,
                compile_cache: Path | None = None) -> RunModel:
    """The recipe (logged, and under ``config_dict["resolved"]``), the model (``freeze``
    applied), its initial or pretrained variables, the loss (``cls_pw`` class weights) and
    the jit train step on the mesh; with a ``compile_cache`` directory the step is kept there
    across runs (:mod:`yolojax.train.step_cache`). Raises :class:`ConfigError`."""
    import jax.numpy as jnp

    from yolojax.loss import DetectionLoss
    from yolojax.models import YOLOv8, default_cls_width
    from yolojax.models.summary import model_summary
    from yolojax.train import TrainState, make_recipe
    from yolojax.train.freeze import check_frozen, frozen_layer_names
    from yolojax.train.optim import describe_recipe, resolved_settings
    from yolojax.train.step_cache import CachedStep, StepCache, step_cache_applies
    from yolojax.train.transfer import finetune_cls_width, head_in_widths, init_variables, transfer_pretrained

    scale, num_classes = config.model.scale, len(data.names)
    frozen = frozen_layer_names(config.freeze)
    recipe = make_recipe(
        epochs=config.epochs, batch_size=config.batch_size, dataset_size=len(data.batches.source),
        num_classes=num_classes, iters_per_epoch=data.steps_per_epoch, optimizer=config.optimizer, lr0=config.lr0,
        lrf=config.lrf, momentum=config.momentum, weight_decay=config.weight_decay, warmup_epochs=config.warmup_epochs,
        warmup_momentum=config.warmup_momentum, warmup_bias_lr=config.warmup_bias_lr, cos_lr=config.cos_lr,
        nbs=config.nbs, frozen=frozen)
    for line in describe_recipe(recipe, optimizer=config.optimizer, lr0=config.lr0, momentum=config.momentum,
                                weight_decay=config.weight_decay):
        logger.info("%s", line)
    config_dict["resolved"] = {**resolved_settings(recipe), "num_classes": num_classes,
                               "val_batch_size": config.val.batch_size or 2 * config.batch_size}
    cls_width = finetune_cls_width(head_in_widths(scale), pretrained) if pretrained is not None else None
    cls_width = cls_width or default_cls_width(scale, num_classes)
    model = YOLOv8(scale=scale, num_classes=num_classes, reg_max=config.model.reg_max, cls_width=cls_width,
                   dtype=jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32, frozen=frozen)
    info = {"scale": scale, "num_classes": num_classes, "names": data.names, "reg_max": config.model.reg_max,
            "cls_width": cls_width}
    logger.info("%s", model_summary(model).line())
    variables = init_variables(model, config.seed)
    if pretrained is not None:
        variables, copied, kept, remapped = transfer_pretrained(
            variables, pretrained, winfo.get("names"), data.names, cls_remap=config.cls_remap)
        logger.info("transferred %d arrays from %s%s; %d kept fresh%s", copied + remapped, config.weights,
                    f" ({remapped} class arrays remapped by class name)" if remapped else "", len(kept),
                    f" (e.g. {kept[0]})" if kept else "")
        if copied == 0:
            raise ConfigError(f"weights {config.weights}: no array fits YOLOv8{scale}")
    try:
        count = check_frozen(variables["params"], frozen, config.freeze)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if config.freeze:
        logger.info("freeze=%s: %d parameter arrays frozen (%s)", config.freeze, count, ", ".join(frozen))
    state = TrainState.create(model.apply, variables, recipe)
    loss_fn = DetectionLoss(num_classes=num_classes, reg_max=config.model.reg_max, box=config.box, cls=config.cls,
                            dfl=config.dfl, class_weights=loss_class_weights(config.cls_pw, data.batches.source,
                                                                             num_classes))
    step_fn, state, shardings, place = _make_step(config, loss_fn, state)
    if compile_cache is not None and step_cache_applies():
        step_fn = CachedStep(step_fn, StepCache(compile_cache),
                             {"config": step_config(config_dict), "model": model, "recipe": recipe, "loss": loss_fn})
    return RunModel(state, step_fn, shardings, place, info)


def loss_class_weights(cls_pw: float, source: Any, num_classes: int) -> tuple[float, ...] | None:
    """ultralytics' ``cls_pw`` weights from the training labels (after ``classes`` /
    ``single_cls``) (:func:`yolojax.loss.class_weights.class_weights`); None when off."""
    if cls_pw == 0:
        return None
    import numpy as np

    from yolojax.loss.class_weights import class_weights

    labels = getattr(source, "labels", None)
    if labels is None:
        raise ConfigError(f"cls_pw needs the training labels' class counts, which {type(source).__name__} lacks")
    weights = class_weights(np.bincount(labels.classes, minlength=num_classes)[:num_classes], cls_pw)
    if weights is not None:
        logger.info("class weights (cls_pw=%g): %s", cls_pw, ", ".join(f"{w:.3g}" for w in weights))
    return weights


class _Run:
    """One run's checkpointers, logs and stopping rules around the state, for the loop.

    ``ckpt`` (checkpoints/), ``best`` (checkpoints_best/, or None), ``period``
    (checkpoints_period/, or None), ``progress`` (:class:`StepProgress`), ``stopper``
    (:class:`EarlyStopping`), ``timer`` (:class:`TimeLimit`); ``state`` is the live TrainState.
    """

    def __init__(self, config: Any, workdir: Path, config_dict: dict, data: RunData, model: RunModel, is_main: bool):
        import jax
        import jax.numpy as jnp

        from yolojax.checkpoint import BEST_DIR, CHECKPOINTS_DIR, PERIOD_DIR, RunCheckpointer

        self.config, self.workdir, self.config_dict, self.data, self.model = config, workdir, config_dict, data, model
        self.is_main = is_main
        self.state = model.state
        self.ckpt = RunCheckpointer(workdir / CHECKPOINTS_DIR, keep=config.checkpoint.keep,
                                    async_save=config.checkpoint.async_save)
        self.best = self.period = self.progress = self.log = self.tensorboard = None
        self._best_dir, self._period_dir = workdir / BEST_DIR, workdir / PERIOD_DIR
        self.stopper = EarlyStopping(config.patience)
        self.timer = TimeLimit(config.time)
        self._is_finite = jax.jit(lambda trees: jnp.all(jnp.stack(
            [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(trees)])))

    def resume(self) -> int:
        """Restore the newest intact checkpoint (if any) and open the logs and the other
        checkpointers from that step; returns the step to start from."""
        from yolojax.checkpoint import BestCheckpointer, CheckpointError, RunCheckpointer

        config, start_step, nonfinite_total = self.config, 0, 0
        try:
            resumed = self.ckpt.restore_newest_intact(self.state, self.data.batches.iterator, self.model.shardings)
        except CheckpointError as e:
            raise ConfigError(f"cannot resume: {e}") from None
        if resumed is not None:
            self.state, meta = resumed
            start_step = int(meta["step"])
            nonfinite_total = int(meta.get("nonfinite_total", 0))
            self.stopper.load_state_dict(meta.get("early_stop"))
            logger.info("resumed from %s/%d", self.ckpt.directory, start_step)
        self.log = MetricsLog(self.workdir / "metrics.jsonl", start_step, enabled=self.is_main)
        self.tensorboard = TensorBoardLog(self.workdir / "tensorboard", start_step, enabled=self.is_main)
        if config.checkpoint.keep_best and config.val.enabled:
            self.best = BestCheckpointer(self._best_dir, BEST_METRIC, start_step,
                                         async_save=config.checkpoint.async_save)
        if config.save_period > 0:
            self.period = RunCheckpointer(self._period_dir, keep=None, async_save=config.checkpoint.async_save)
            self.period.drop_after(start_step)
        self.progress = StepProgress(config, self.log, self.tensorboard, self.data.steps_per_epoch,
                                     self.data.total_steps, start_step, nonfinite_total,
                                     show_bar=config.progress and self.is_main)
        return start_step

    def meta_for(self, step: int) -> dict:
        return {"step": step, "epoch": step // self.data.steps_per_epoch,
                "nonfinite_total": self.progress.nonfinite_total, "info": self.model.info,
                "total_steps": self.data.total_steps, "time": time.time(), "early_stop": self.stopper.state_dict()}

    def save(self, step: int, into: Any = None) -> bool:
        """Checkpoint ``step`` (into checkpoints/, or ``into``) unless the weights hold
        non-finite values; returns whether it saved."""
        self.tensorboard.flush()
        if not bool(self._is_finite((self.state.params, self.state.batch_stats, self.state.ema))):
            logger.warning("step %d: the weights hold non-finite values: not checkpointed (latest stays step %s)",
                           step, self.ckpt.latest_step())
            return False
        (into or self.ckpt).save(step, self.state, self.data.batches.iterator, self.meta_for(step), self.config_dict)
        return True

    def validate(self, step: int, epoch: int, saved: bool) -> dict:
        """Validate the EMA weights, write the row, offer ``step`` to checkpoints_best/ (when
        it was ``saved``); returns the row."""
        import jax

        row = {"epoch": epoch, "step": step}
        try:
            results = _validate(self.config, self.data.val_source, jax.device_get(self.state.ema), self.model.info,
                                self.config.val.batch_size or 2 * self.config.batch_size)
        except Exception:
            logger.error("validation at step %d failed; the checkpoint of step %d is kept: re-running resumes "
                         "after it", step, step)
            raise
        for k in ("mAP50", "mAP50-95", "precision", "recall"):
            row[k] = finite_or_none(float(results[k]))
        self.progress.validation_row(row)
        if saved and self.best is not None and self.best.offer(
                step, row, self.state, self.data.batches.iterator, self.meta_for(step), self.config_dict):
            logger.info("step %d: best %s so far (%.4g): saved in %s", step, BEST_METRIC, self.best.value,
                        self.best.directory)
        return row

    def end_of_epoch(self, step: int, last: bool, saved: bool) -> bool:
        """After the checkpoint of an epoch's last step (or the run's): the periodic
        checkpoint, validation when due, early stopping. Returns whether to stop."""
        config, epoch = self.config, (step - 1) // self.data.steps_per_epoch
        if self.period is not None and saved and step % self.data.steps_per_epoch == 0 and period_epoch(
                epoch, config.save_period):
            self.save(step, into=self.period)
        if not config.val.enabled:
            return False
        due = (epoch + 1) % config.val.every_epochs == 0 or last or self.stopper.possible_stop
        if not due:
            return False
        row = self.validate(step, epoch, saved)
        return self.stopper(epoch + 1, row["mAP50-95"] or 0.0)

    def close(self) -> None:
        """Stop the input pipeline and the writers; the image cache stays open for the run's
        plots (:func:`train` closes it)."""
        for closeable in (self.progress, self.tensorboard, self.ckpt, self.best, self.period):
            if closeable is not None:
                closeable.close()
        self.data.batches.close()


def train_loop(run: _Run, start_step: int) -> tuple[int, Any]:
    """Train from ``start_step`` to ``run.data.total_steps``; each epoch end (and the last
    step, a signal, the time limit) checkpoints before validating. Returns (the step reached,
    why it stopped early: a signal number, "patience", "time" or None)."""
    stop = _Stop()
    stop.install()
    try:
        return _steps(run, start_step, stop)
    finally:
        stop.restore()


def _steps(run: _Run, start_step: int, stop: _Stop) -> tuple[int, Any]:
    config, data, progress = run.config, run.data, run.progress
    pending, step = None, start_step  # pending: (step, device metrics) of the previous step, read one step late
    while step < data.total_steps:
        batch = run.model.place(next(data.batches.iterator))
        if step == start_step:
            run.state, metrics, _ = compile_first_step(run.model.step_fn, run.state, batch, progress.bar)
            progress.restart_clock()
        else:
            run.state, metrics = run.model.step_fn(run.state, batch)
        step += 1
        if pending is not None:
            progress.consume(*pending)
        pending = (step, metrics)
        timed_out = run.timer.exceeded()
        epoch_end = step % data.steps_per_epoch == 0
        last = step == data.total_steps or timed_out
        periodic = config.checkpoint.every_steps and step % config.checkpoint.every_steps == 0
        if not (epoch_end or periodic or last or stop.signum is not None):
            continue
        progress.consume(*pending)
        pending = None
        saved = run.save(step)  # before validation: a failing validation never loses it
        no_progress = (epoch_end or last) and run.end_of_epoch(step, last, saved)
        if timed_out:
            logger.info("time limit of %g hours reached at step %d", config.time, step)
            return step, "time"
        if no_progress and step < data.total_steps:
            return step, "patience"
        if stop.signum is not None:
            return step, stop.signum
    if pending is not None:
        progress.consume(*pending)
    return step, None


def finish_run(run: _Run, step: int, stopped: Any) -> dict:
    """After the loop (and :meth:`_Run.close`): report dropped boxes, draw results.png and,
    with ``plots`` unless a signal stopped the run (early stopping and ``time`` still plot,
    as ultralytics' final evaluation), the run plots (:func:`yolojax.plots.run.write_run_plots`);
    returns the summary :func:`train` returns."""
    from yolojax.checkpoint import complete_steps

    batches, config = run.data.batches, run.config
    truncation = batches.truncation
    boxes_dropped = truncation.boxes_dropped if truncation is not None else 0
    if boxes_dropped:
        logger.warning("data.max_boxes=%d dropped %d ground-truth boxes of %d training samples in this run "
                       "(data.max_boxes=0 sizes it from the label scan and drops none)", config.data.max_boxes,
                       boxes_dropped, truncation.images_truncated)
    metrics_path = run.workdir / "metrics.jsonl"
    if run.is_main and metrics_path.exists():
        try:
            plot_results(metrics_path, run.workdir / "results.png")
        except Exception as e:  # noqa: BLE001 - a plot must never fail a run
            logger.warning("results.png not written: %s", e)
    if run.is_main and config.plots and not isinstance(stopped, int):
        import jax

        from yolojax.plots.run import write_run_plots

        write_run_plots(config, run.workdir, batches.source, batches.max_boxes, run.data.val_source,
                        jax.device_get(run.state.ema), run.model.info, config.val.batch_size or 2 * config.batch_size,
                        step)
    return {"step": step, "total_steps": run.data.total_steps,
            "stopped_by_signal": stopped if isinstance(stopped, int) else None,
            "stopped_early": stopped if isinstance(stopped, str) else None,
            "last": run.progress.last_row, "nonfinite_total": run.progress.nonfinite_total,
            "boxes_dropped": boxes_dropped, "workdir": str(run.workdir), "checkpoint_step": run.ckpt.latest_step(),
            "best_step": run.best.latest_step() if run.best is not None else None,
            "period_steps": complete_steps(run.period.directory) if run.period is not None else []}


def train(config: Any, workdir: str | os.PathLike) -> dict:
    """Train per ``config`` in ``workdir`` (resuming when it holds a checkpoint).

    Returns a summary: final step, total steps, last metrics, the signal that stopped it
    (or None), ``stopped_early`` ("patience", "time" or None), the latest and the best
    complete checkpoint steps (None when there is none), the periodic checkpoint steps and
    the ground-truth boxes a ``data.max_boxes`` cap dropped (0 by default).
    Raises :class:`ConfigError` for settings, datasets, weights or a workdir that cannot
    serve (before any training: :mod:`yolojax.train.preflight`), and
    :class:`NonFiniteLossError`.
    """
    import jax

    check_config(config)
    compile_cache = enable_compilation_cache(config.compile_cache)
    start_distributed(config)
    workdir = Path(workdir).absolute()
    config_dict = config.to_dict()
    check_workdir(workdir, config_dict)
    data_yaml = prepare_data(config)
    names = _read_names(data_yaml)
    if config.model.num_classes not in (-1, 0, 1 if config.single_cls else len(names)):
        raise ConfigError(f"model.num_classes={config.model.num_classes} but {data_yaml} has {len(names)} classes")
    check_split_paths(data_yaml, ("train", "val") if config.val.enabled else ("train",))
    pretrained, winfo = load_pretrained(config)
    process_index, process_count = jax.process_index(), jax.process_count()
    if config.batch_size % process_count:
        raise ConfigError(f"batch_size {config.batch_size} is not divisible by {process_count} processes")
    is_main = process_index == 0
    check_writable(workdir)
    if is_main:
        check_plot_output(workdir)
    data = build_data(config, data_yaml, names, process_index, process_count)
    try:
        return _train_on(config, workdir, config_dict, data, pretrained, winfo, is_main, compile_cache)
    finally:
        close_image_cache(data.batches.source, data.val_source)  # after the run's plots, which read through it


def _train_on(config: Any, workdir: Path, config_dict: dict, data: RunData, pretrained: Any, winfo: dict,
              is_main: bool, compile_cache: Path | None) -> dict:
    """:func:`train` once its data is open: build the model, train, finish (plots, summary)."""
    import jax

    try:
        model = build_model(config, data, pretrained, winfo, config_dict, compile_cache)
    except ConfigError:
        data.batches.close()
        raise
    if is_main:
        (workdir / "config.json").write_text(json.dumps(config_dict, indent=1) + "\n")
    try:
        run = _Run(config, workdir, config_dict, data, model, is_main)
    except Exception:
        data.batches.close()
        raise
    try:
        start_step = run.resume()
        assert int(jax.device_get(run.state.step)) == start_step, "checkpoint step mismatch"
        step, stopped = train_loop(run, start_step)
    finally:
        run.close()
    return finish_run(run, step, stopped)


# ----------------------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------------------


def main() -> None:
    reexec_with_malloc_tunables()
    from absl import app, flags
    from ml_collections import config_flags

    from yolojax.cli import configure_logging

    config_flag = config_flags.DEFINE_config_file(
        "config", None, "Python config file with get_config() (e.g. configs/yolov8s.py); override fields with "
        "--config.FIELD=VALUE", lock_config=True)
    flags.DEFINE_string("workdir", None, "run directory: metrics.jsonl, checkpoints/, results.png; re-run to resume")
    flags.mark_flags_as_required(["config", "workdir"])

    def run(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        configure_logging()
        try:
            summary = train(config_flag.value, flags.FLAGS.workdir)
        except (ConfigError, NonFiniteLossError) as e:
            print(f"yolojax.train: error: {e}", file=sys.stderr)
            sys.exit(1)
        if summary["stopped_by_signal"] is not None:
            print(f"stopped by signal {summary['stopped_by_signal']} at step {summary['step']}; latest checkpoint: "
                  f"{summary['workdir']}/checkpoints/{summary['checkpoint_step']} (re-run to resume)", file=sys.stderr)
        else:
            best = f", checkpoints_best/{summary['best_step']}" if summary["best_step"] is not None else ""
            if summary["stopped_early"] is not None:
                print(f"stopped early ({summary['stopped_early']}) at step {summary['step']} of "
                      f"{summary['total_steps']}", file=sys.stderr)
            print(f"done: {summary['step']} steps; {summary['workdir']}/metrics.jsonl, results.png, tensorboard/, "
                  f"checkpoints/{summary['checkpoint_step']}{best}", file=sys.stderr)

    def parse_flags(argv):
        # Unknown or ill-typed --config.FIELD overrides raise inside the config loader; turn
        # every flag problem into one line, before any work starts.
        try:
            return flags.FLAGS(argv)
        except (AttributeError, KeyError) as e:
            print(f"yolojax.train: error: unknown config field {e}", file=sys.stderr)
            sys.exit(2)
        except (flags.Error, TypeError, ValueError) as e:
            print(f"yolojax.train: error: {e}", file=sys.stderr)
            sys.exit(2)

    app.run(run, flags_parser=parse_flags)

