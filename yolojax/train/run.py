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
from yolojax.train.preflight import (ConfigError, check_plot_output, check_split_paths, check_writable,
                                     close_image_cache, open_image_cache, open_split)

logger = logging.getLogger("yolojax.train")

DTYPES = ("float32", "bfloat16")
SCALES = ("n", "s", "m", "l", "x")


class NonFiniteLossError(RuntimeError):
    """Too many non-finite losses in a row."""


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
    coordinator = config.distributed.coordinator
    need(not coordinator or (":" in coordinator and coordinator.rsplit(":", 1)[1].isdigit()),
         f"distributed.coordinator must be host:port, got {coordinator!r}")
    need(config.distributed.num_processes >= 0, "distributed.num_processes must be >= 0 (0: from the environment)")
    need(config.distributed.process_id >= -1, "distributed.process_id must be >= -1 (-1: from the environment)")
    if config.weights and not Path(config.weights).exists():
        raise ConfigError(f"weights {config.weights} does not exist")


def start_distributed(config: Any) -> bool:
    """``jax.distributed.initialize`` when ``config.distributed`` or the environment names a
    coordinator (or ``distributed.auto``); before anything touches the devices. Returns
    whether this process is one of several."""
    from yolojax.parallel import initialize_distributed

    d = config.distributed
    return initialize_distributed(d.coordinator or None, d.num_processes or None,
                                  d.process_id if d.process_id >= 0 else None, auto=d.auto)


# Settings a resumed run must share with the run that wrote the checkpoint (the others,
# e.g. max_steps, logging, checkpointing, validation, workers, mesh, may change).
RUN_DEFINING = ("model", "weights", "dtype", "imgsz", "batch_size", "epochs", "seed", "optimizer", "lr0", "lrf",
                "momentum", "weight_decay", "warmup_epochs", "warmup_momentum", "warmup_bias_lr", "cos_lr", "nbs",
                "box", "cls", "dfl", "hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale", "shear",
                "perspective", "flipud", "fliplr", "mosaic", "mixup", "close_mosaic")


def check_resumable(saved: dict, current: dict, workdir: Path) -> None:
    """Refuse to resume a workdir whose checkpoint was written with other run settings."""
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


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


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
    it from the compilation cache): the progress bar says "compiling" meanwhile, then its
    clock restarts so that its rate and ETA leave the compile out. Returns (state, metrics,
    seconds until the step was compiled and dispatched)."""
    t0 = time.perf_counter()
    if bar is not None:
        description = bar.desc
        bar.set_description("compiling the train step", refresh=True)
    state, metrics = step_fn(state, batch)
    seconds = time.perf_counter() - t0
    logger.info("train step compiled in %.1f s", seconds)
    if bar is not None:
        bar.set_description(description, refresh=False)
        bar.unpause()
    return state, metrics, seconds


def _validate(config, val_source, variables, info, batch_size):
    from yolojax.val import validate

    return validate(data=val_source, variables=variables, info=info, imgsz=config.imgsz, batch=batch_size,
                    conf=config.val.conf, iou=config.val.iou, max_det=config.val.max_det or None, rect=config.val.rect,
                    workers=0, verbose=False)


def train(config: Any, workdir: str | os.PathLike) -> dict:
    """Train per ``config`` in ``workdir`` (resuming when it holds a checkpoint).

    Returns a summary: final step, total steps, last metrics, the signal that stopped it
    (or None), the latest and the best complete checkpoint steps (None when there is none),
    and the ground-truth boxes a ``data.max_boxes`` cap dropped (0 by default).
    Raises :class:`ConfigError` for settings, datasets, weights or a workdir that cannot
    serve (before any training: :mod:`yolojax.train.preflight`), and
    :class:`NonFiniteLossError`.
    """
    import jax
    import jax.numpy as jnp

    from yolojax.checkpoint import BEST_DIR, CHECKPOINTS_DIR, BestCheckpointer, CheckpointError, RunCheckpointer
    from yolojax.data import AugmentConfig, make_train_iterator
    from yolojax.loss import DetectionLoss
    from yolojax.models import YOLOv8, default_cls_width
    from yolojax.models.summary import model_summary
    from yolojax.train import TrainState, make_recipe
    from yolojax.train.optim import describe_recipe, resolved_settings
    from yolojax.train.transfer import finetune_cls_width, head_in_widths, init_variables, transfer_pretrained

    check_config(config)
    enable_compilation_cache(config.compile_cache)
    start_distributed(config)
    workdir = Path(workdir).absolute()
    config_dict = config.to_dict()
    check_workdir(workdir, config_dict)
    data_yaml = prepare_data(config)
    names = _read_names(data_yaml)
    num_classes = len(names)
    if config.model.num_classes not in (-1, 0, num_classes):
        raise ConfigError(f"model.num_classes={config.model.num_classes} but {data_yaml} has {num_classes} classes")
    check_split_paths(data_yaml, ("train", "val") if config.val.enabled else ("train",))

    pretrained, scale = None, config.model.scale
    if config.weights:
        from yolojax.convert import load_weights

        try:
            pretrained, winfo = load_weights(config.weights)
        except ValueError as e:
            raise ConfigError(str(e).splitlines()[0]) from None
        if winfo.get("scale") and winfo["scale"] != scale:
            logger.warning("weights are YOLOv8%s; training YOLOv8%s (config.model.scale) with the layers that fit",
                           winfo["scale"], scale)

    process_index, process_count = jax.process_index(), jax.process_count()
    if config.batch_size % process_count:
        raise ConfigError(f"batch_size {config.batch_size} is not divisible by {process_count} processes")
    is_main = process_index == 0
    check_writable(workdir)
    if is_main:
        check_plot_output(workdir)
    train_source = open_split(data_yaml, "train")
    val_source = open_split(data_yaml, "val") if config.val.enabled else None
    train_source, val_source = open_image_cache(config.data.cache, config.imgsz, train_source, val_source)
    try:
        batches = make_train_iterator(
            train_source, imgsz=config.imgsz, batch_size=config.batch_size, epochs=config.epochs, seed=config.seed,
            aug=AugmentConfig.from_config(config), max_boxes=config.data.max_boxes or None, workers=config.data.workers,
            threads=config.data.threads, prefetch=config.data.prefetch, start_step=0,
            process_index=process_index, process_count=process_count, mosaic_pool=config.data.mosaic_pool,
            augment_on=config.data.augment_on, augment_groups=_augment_groups(config))
    except (ValueError, FileNotFoundError, OSError) as e:
        raise ConfigError(f"dataset {data_yaml}: {e}") from None
    dataset_size = len(batches.source)
    steps_per_epoch = batches.steps_per_epoch
    total_steps = batches.num_steps if not config.max_steps else min(config.max_steps, batches.num_steps)

    recipe = make_recipe(
        epochs=config.epochs, batch_size=config.batch_size, dataset_size=dataset_size, num_classes=num_classes,
        iters_per_epoch=steps_per_epoch, optimizer=config.optimizer, lr0=config.lr0, lrf=config.lrf,
        momentum=config.momentum, weight_decay=config.weight_decay, warmup_epochs=config.warmup_epochs,
        warmup_momentum=config.warmup_momentum, warmup_bias_lr=config.warmup_bias_lr, cos_lr=config.cos_lr,
        nbs=config.nbs)
    for line in describe_recipe(recipe, optimizer=config.optimizer, lr0=config.lr0, momentum=config.momentum,
                                weight_decay=config.weight_decay):
        logger.info("%s", line)
    val_batch = config.val.batch_size or 2 * config.batch_size
    config_dict["resolved"] = {**resolved_settings(recipe), "num_classes": num_classes, "val_batch_size": val_batch}
    dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
    cls_width = finetune_cls_width(head_in_widths(scale), pretrained) if pretrained is not None else None
    cls_width = cls_width or default_cls_width(scale, num_classes)
    model = YOLOv8(scale=scale, num_classes=num_classes, reg_max=config.model.reg_max, dtype=dtype,
                   cls_width=cls_width)
    info = {"scale": scale, "num_classes": num_classes, "names": names, "reg_max": config.model.reg_max,
            "cls_width": cls_width}
    logger.info("%s", model_summary(model).line())
    variables = init_variables(model, config.seed)
    if pretrained is not None:
        variables, copied, kept, remapped = transfer_pretrained(
            variables, pretrained, winfo.get("names"), names, cls_remap=config.cls_remap)
        logger.info("transferred %d arrays from %s%s; %d kept fresh%s", copied + remapped, config.weights,
                    f" ({remapped} class arrays remapped by class name)" if remapped else "", len(kept),
                    f" (e.g. {kept[0]})" if kept else "")
        if copied == 0:
            batches.close()
            raise ConfigError(f"weights {config.weights}: no array fits YOLOv8{scale}")
    state = TrainState.create(model.apply, variables, recipe)
    loss_fn = DetectionLoss(num_classes=num_classes, reg_max=config.model.reg_max, box=config.box, cls=config.cls,
                            dfl=config.dfl)
    step_fn, state, shardings, place = _make_step(config, loss_fn, state)

    if is_main:
        (workdir / "config.json").write_text(json.dumps(config_dict, indent=1) + "\n")
    ckpt = RunCheckpointer(workdir / CHECKPOINTS_DIR, keep=config.checkpoint.keep,
                           async_save=config.checkpoint.async_save)
    start_step, nonfinite_total = 0, 0
    try:
        resumed = ckpt.restore_newest_intact(state, batches.iterator, shardings)
    except CheckpointError as e:
        ckpt.close()
        batches.close()
        raise ConfigError(f"cannot resume: {e}") from None
    if resumed is not None:
        state, meta = resumed
        start_step = int(meta["step"])
        nonfinite_total = int(meta.get("nonfinite_total", 0))
        logger.info("resumed from %s/%s/%d", workdir, CHECKPOINTS_DIR, start_step)
    assert int(jax.device_get(state.step)) == start_step, "checkpoint step mismatch"
    log = MetricsLog(workdir / "metrics.jsonl", start_step, enabled=is_main)
    tensorboard = TensorBoardLog(workdir / "tensorboard", start_step, enabled=is_main)

    best_ckpt = None
    if config.checkpoint.keep_best and config.val.enabled:
        best_ckpt = BestCheckpointer(workdir / BEST_DIR, BEST_METRIC, start_step,
                                     async_save=config.checkpoint.async_save)
    state_is_finite = jax.jit(lambda trees: jnp.all(jnp.stack(
        [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(trees)])))

    def meta_for(step: int) -> dict:
        return {"step": step, "epoch": step // steps_per_epoch, "nonfinite_total": nonfinite_total,
                "info": info, "total_steps": total_steps, "time": time.time()}

    def save(step: int) -> bool:
        """Checkpoint ``step`` unless the weights hold non-finite values; returns whether it saved."""
        tensorboard.flush()
        if not bool(state_is_finite((state.params, state.batch_stats, state.ema))):
            logger.warning("step %d: the weights hold non-finite values: not checkpointed (latest stays step %s)",
                           step, ckpt.latest_step())
            return False
        ckpt.save(step, state, batches.iterator, meta_for(step), config_dict)
        return True

    def offer_best(step: int, val_row: dict) -> None:
        """Save ``step`` into checkpoints_best/ when ``val_row`` improves on BEST_METRIC."""
        if best_ckpt is not None and best_ckpt.offer(step, val_row, state, batches.iterator, meta_for(step),
                                                     config_dict):
            logger.info("step %d: best %s so far (%.4g): saved in %s", step, BEST_METRIC, best_ckpt.value,
                        best_ckpt.directory)

    def run_validation(step: int, epoch: int) -> dict:
        row = {"epoch": epoch, "step": step}
        try:
            results = _validate(config, val_source, jax.device_get(state.ema), info, val_batch)
        except Exception:
            logger.error("validation at step %d failed; the checkpoint of step %d is kept: re-running resumes "
                         "after it", step, step)
            raise
        for k in ("mAP50", "mAP50-95", "precision", "recall"):
            row[k] = _finite_or_none(float(results[k]))
        return row

    stop = _Stop()
    stop.install()
    use_bar = config.progress and is_main
    bar = None
    if use_bar:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, file=sys.stderr)
    last_row: dict = {}
    consecutive = 0
    pending = None  # (step, device metrics) of the previous step, read one step late
    t_window, n_window = time.perf_counter(), 0
    images_per_s = 0.0
    step = start_step
    stopped_by = None

    def consume(done_step: int, metrics) -> None:
        """Count, log and display the metrics of ``done_step``; raise NonFiniteLossError
        (after logging its row) at ``max_nonfinite`` non-finite losses in a row."""
        nonlocal consecutive, nonfinite_total, last_row, t_window, n_window, images_per_s
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not (math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])):
            consecutive += 1
            nonfinite_total += 1
            logger.warning("step %d: non-finite loss/gradient, update skipped (%d in a row, %d in all)",
                           done_step, consecutive, nonfinite_total)
        else:
            consecutive = 0
        fatal = consecutive >= config.max_nonfinite
        n_window += 1
        if done_step % config.log_every_steps == 0 or done_step == total_steps or fatal:
            now = time.perf_counter()
            images_per_s = n_window * config.batch_size / max(now - t_window, 1e-9)
            t_window, n_window = now, 0
            last_row = {"step": done_step, "epoch": (done_step - 1) // steps_per_epoch,
                        **{k: _finite_or_none(m[k]) for k in ("loss", "box", "cls", "dfl", "lr", "grad_norm")},
                        "images_per_s": round(images_per_s, 2), "nonfinite_total": nonfinite_total}
            log.write(last_row)
            tensorboard.write(last_row, "train")
        if fatal:
            raise NonFiniteLossError(
                f"{consecutive} non-finite losses in a row (max_nonfinite={config.max_nonfinite}) at step "
                f"{done_step}: lower lr0, check the data and weights, or use dtype=float32")
        if bar is not None:
            epoch = (done_step - 1) // steps_per_epoch
            bar.set_description(f"epoch {epoch + 1}/{config.epochs}", refresh=False)
            bar.set_postfix(loss=f"{m['loss']:.3f}", box=f"{m['box']:.3f}", cls=f"{m['cls']:.3f}",
                            dfl=f"{m['dfl']:.3f}", lr=f"{m['lr']:.2e}", img_s=f"{images_per_s:.1f}", refresh=False)
            bar.update(1)

    try:
        while step < total_steps:
            batch = place(next(batches.iterator))
            if step == start_step:
                state, metrics, _ = compile_first_step(step_fn, state, batch, bar)
                t_window = time.perf_counter()
            else:
                state, metrics = step_fn(state, batch)
            step += 1
            if pending is not None:
                consume(*pending)
            pending = (step, metrics)
            epoch_end = step % steps_per_epoch == 0
            periodic = config.checkpoint.every_steps and step % config.checkpoint.every_steps == 0
            if epoch_end or periodic or step == total_steps or stop.signum is not None:
                consume(*pending)
                pending = None
            saved = False
            if epoch_end or periodic or step == total_steps or stop.signum is not None:
                saved = save(step)  # before validation: a failing validation never loses it
            if epoch_end or step == total_steps:
                epoch = (step - 1) // steps_per_epoch
                if config.val.enabled and ((epoch + 1) % config.val.every_epochs == 0 or step == total_steps):
                    row = run_validation(step, epoch)
                    log.write(row)
                    tensorboard.write(row, "val")
                    if bar is not None:
                        bar.write("epoch %d step %d: %s" % (epoch + 1, step, ", ".join(
                            f"{k} {v:.4g}" for k, v in row.items() if k not in ("epoch", "step") and v is not None)))
                    last_row = {**last_row, **row}
                    if saved:
                        offer_best(step, row)
            if stop.signum is not None:
                stopped_by = stop.signum
                break
        if pending is not None:
            consume(*pending)
    finally:
        if bar is not None:
            bar.close()
        stop.restore()
        tensorboard.close()
        ckpt.close()
        if best_ckpt is not None:
            best_ckpt.close()
        batches.close()
        close_image_cache(train_source, val_source)
    truncation = batches.truncation
    boxes_dropped = truncation.boxes_dropped if truncation is not None else 0
    if boxes_dropped:
        logger.warning("data.max_boxes=%d dropped %d ground-truth boxes of %d training samples in this run "
                       "(data.max_boxes=0 sizes it from the label scan and drops none)", config.data.max_boxes,
                       boxes_dropped, truncation.images_truncated)
    if is_main and (workdir / "metrics.jsonl").exists():
        try:
            plot_results(workdir / "metrics.jsonl", workdir / "results.png")
        except Exception as e:  # noqa: BLE001 - a plot must never fail a run
            logger.warning("results.png not written: %s", e)
    if is_main and config.plots and stopped_by is None:
        from yolojax.plots.run import write_run_plots

        write_run_plots(config, workdir, train_source, batches.max_boxes, val_source, jax.device_get(state.ema), info,
                        val_batch)
    return {"step": step, "total_steps": total_steps, "stopped_by_signal": stopped_by, "last": last_row,
            "nonfinite_total": nonfinite_total, "boxes_dropped": boxes_dropped, "workdir": str(workdir),
            "checkpoint_step": ckpt.latest_step(),
            "best_step": best_ckpt.latest_step() if best_ckpt is not None else None}


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

