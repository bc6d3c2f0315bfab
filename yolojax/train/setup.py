"""A run's set-up from its :class:`yolojax.train.settings.Settings`: the dataset, the
pretrained weights, the model and its train state, and the sharded train step.

Each function raises :class:`yolojax.console.ConfigError` in one line for a dataset, weights
file or option that cannot serve, before the model is built and compiled.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from yolojax.console import ConfigError
from yolojax.train.preflight import close_image_cache, open_image_cache, open_split
from yolojax.train.settings import DistributedSettings, Settings

logger = logging.getLogger("yolojax.train")


def start_distributed(distributed: DistributedSettings) -> bool:
    """``jax.distributed.initialize`` when the settings or the environment name a coordinator
    (or ``distributed.auto``); before anything touches the devices. Returns whether this
    process is one of several."""
    from yolojax.parallel import initialize_distributed

    d = distributed
    return initialize_distributed(d.coordinator or None, d.num_processes or None,
                                  d.process_id if d.process_id >= 0 else None, auto=d.auto)


def describe_devices(settings: Settings, platform: str, device_count: int) -> str:
    """The line a run logs about where it computes: the devices, the mesh, the resolved compute
    dtype and where BatchNorm statistics are reduced (after :meth:`Settings.on_devices`)."""
    data, model = settings.mesh_shape
    auto = f" (dtype=auto on {platform})" if settings.dtype == "auto" else ""
    bn = "the global batch" if settings.parallel.sync_bn or data == 1 else "each device's rows (sync_bn=False)"
    return (f"devices: {device_count} {platform}, mesh data={data} model={model}, parallel.mode="
            f"{settings.parallel.mode} rules={settings.parallel.rules}; computing in {settings.compute_dtype}{auto}; "
            f"BatchNorm statistics over {bn}")


def prepare_data(settings: Settings, resumed: dict | None = None) -> Any:
    """The dataset to train on: the TFDS dataset of ``data.tfds`` (a
    :class:`yolojax.data.sources.tfds.TfdsSpec`; a resumed run keeps the version it started on,
    ``resumed["resolved"]["data"]``, when the name gives none), the data.yaml of ``data.yaml``,
    or the synthetic dataset's data.yaml, written once."""
    if settings.data.tfds.name:
        from yolojax.data.sources.tfds import PREFIX, TfdsSpec, is_tfds

        tfds = settings.data.tfds
        spec = TfdsSpec.parse(PREFIX + tfds.name, data_dir=tfds.data_dir, train=tfds.train, val=tfds.val)
        started_on = ((resumed or {}).get("resolved") or {}).get("data")
        if ":" not in tfds.name and is_tfds(started_on):
            spec = dataclasses.replace(spec, name=TfdsSpec.parse(started_on).name)
            logger.info("resuming on %s, the version this run started on", spec)
        return spec
    if settings.data.yaml:
        return Path(settings.data.yaml)
    syn = settings.data.synthetic
    root = Path(syn.root)
    yaml_path = root / "data.yaml"
    if not yaml_path.is_file():
        from yolojax.data.sources.synthetic import write_synthetic_dataset

        logger.info("writing the synthetic shapes dataset to %s", root)
        tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
        write_synthetic_dataset(tmp, num_train=syn.num_train, num_val=syn.num_val,
                                size_range=(syn.min_size, syn.max_size), max_shapes=syn.max_shapes, seed=syn.seed)
        root.parent.mkdir(parents=True, exist_ok=True)
        if root.exists():
            shutil.rmtree(root)
        os.rename(tmp, root)
    return yaml_path


def pinned_dataset(data: Any) -> Any:
    """``data`` with the TFDS version it reads named (:func:`yolojax.data.sources.dataset.pinned`):
    what the run logs and config.json keeps (``resolved.data``) for a resume."""
    from yolojax.data.sources.dataset import pinned

    try:
        return pinned(data)
    except (ImportError, OSError, ValueError) as e:
        raise ConfigError(str(e).strip().splitlines()[0]) from None


def read_names(data: Any, settings: Settings) -> list[str]:
    """The dataset's class names, checked against ``model.num_classes`` and ``classes``
    (reads only the yaml or the TFDS dataset's metadata, before any image or label)."""
    from yolojax.data.sources.dataset import dataset_names, describe
    from yolojax.data.sources.subset import parse_classes

    where = describe(data)
    try:
        names = list(dataset_names(data))
    except Exception as e:  # noqa: BLE001 - any failure is a dataset that cannot serve
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(message if message.startswith(where) else f"dataset {where}: {message}") from None
    if not names:
        raise ConfigError(f"dataset {where} has no class names")
    if settings.model.num_classes not in (-1, 0, 1 if settings.single_cls else len(names)):
        raise ConfigError(f"model.num_classes={settings.model.num_classes} but {where} has {len(names)} classes")
    try:
        parse_classes(list(settings.classes) if settings.classes is not None else None, len(names))
    except ValueError as e:
        raise ConfigError(f"classes={list(settings.classes)}: {e}") from None
    return names


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


def augment_groups(settings: Settings) -> int:
    """Device-mode groups of the local batch: the 'data' shards this process feeds."""
    from yolojax.parallel import local_data_shards, make_mesh

    return local_data_shards(make_mesh(settings.mesh.data, settings.mesh.model), settings.batch_size)


def train_iterator(settings: Settings, source: Any, *, start_step: int = 0, max_boxes: int | None = None,
                   workers: int | None = None, prefetch: int | None = None, augment_on: str | None = None,
                   process_index: int = 0, process_count: int = 1) -> Any:
    """The run's training batches (:func:`yolojax.data.make_train_iterator`) from ``start_step``:
    the one place the settings become the iterator's arguments (the run and its train_batch
    plots draw the same batches). ``max_boxes``, ``workers``, ``prefetch`` and ``augment_on``
    default to the settings'."""
    from yolojax.data import make_train_iterator

    data = settings.data
    augment_on = augment_on or data.augment_on
    return make_train_iterator(
        source, imgsz=settings.imgsz, batch_size=settings.batch_size, epochs=settings.epochs, seed=settings.seed,
        aug=settings.augment, max_boxes=max_boxes if max_boxes is not None else data.max_boxes or None,
        workers=data.workers if workers is None else workers, threads=data.threads,
        prefetch=data.prefetch if prefetch is None else prefetch, start_step=start_step,
        process_index=process_index, process_count=process_count, mosaic_pool=data.mosaic_pool, rect=settings.rect,
        multi_scale=settings.multi_scale, augment_on=augment_on,
        augment_groups=augment_groups(settings) if augment_on == "device" else 1)


def build_data(settings: Settings, data: Any, names: list[str], process_index: int,
               process_count: int) -> RunData:
    """Open the splits (``fraction``, ``classes``, ``single_cls`` applied as ultralytics'
    datasets apply them; ``data.cache`` built) and the training iterator."""
    from yolojax.data.sources.dataset import describe
    from yolojax.data.sources.subset import SINGLE_CLASS_NAMES, select_labels

    classes = list(settings.classes) if settings.classes is not None else None
    train_source = select_labels(open_split(data, "train", fraction=settings.fraction), classes,
                                 settings.single_cls)
    val_source = open_split(data, "val") if settings.val.enabled else None
    if val_source is not None:
        val_source = select_labels(val_source, classes, settings.single_cls)
    train_source, val_source = open_image_cache(settings.data.cache, settings.imgsz, train_source, val_source)
    try:
        batches = train_iterator(settings, train_source, process_index=process_index, process_count=process_count)
    except (ValueError, FileNotFoundError, OSError) as e:
        close_image_cache(train_source, val_source)
        raise ConfigError(f"dataset {describe(data)}: {e}") from None
    total = batches.num_steps if not settings.max_steps else min(settings.max_steps, batches.num_steps)
    return RunData(batches, val_source, list(SINGLE_CLASS_NAMES) if settings.single_cls else names,
                   batches.steps_per_epoch, total)


def load_pretrained(settings: Settings) -> tuple[Any, dict]:
    """(variables or None, their info) from ``weights``."""
    if not settings.weights:
        return None, {}
    from yolojax.weights import load_weights

    try:
        pretrained, winfo = load_weights(settings.weights)
    except ValueError as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    from yolojax.models.registry import model_title

    run_title = model_title({"family": settings.model.family, "scale": settings.model.scale})
    if winfo.get("scale") and model_title(winfo) != run_title:
        logger.warning("weights are %s; training %s (model.family, model.scale) with the layers that fit",
                       model_title(winfo), run_title)
    return pretrained, winfo


def load_teacher(settings: Settings) -> tuple[Any, dict] | None:
    """(variables, info) of the distillation teacher ``distill_model``, or None without one."""
    if not settings.distill_model:
        return None
    from yolojax.weights import load_weights

    try:
        return load_weights(settings.distill_model)
    except ValueError as e:
        raise ConfigError(f"distill_model={settings.distill_model!r}: {str(e).splitlines()[0]}") from None


@dataclasses.dataclass
class RunModel:
    """The model side of a run (:func:`build_model`): the initial :class:`TrainState` (on the
    host), the module, the loss, the recipe, what the run resolved from them (``resolved``, into
    config.json), the model info saved with checkpoints and the
    :class:`yolojax.loss.distill.Distillation` (None without ``distill_model``)."""

    state: Any
    module: Any
    loss_fn: Any
    recipe: Any
    resolved: dict
    info: dict
    distill: Any = None


def run_recipe(settings: Settings, dataset_size: int, num_classes: int, iters_per_epoch: int | None = None) -> Any:
    """The run's :class:`yolojax.train.optim.Recipe` (ultralytics' optimiser arithmetic) for
    ``dataset_size`` training images (a run's, or the size a plan assumes)."""
    from yolojax.train.optim import make_recipe

    s = settings
    return make_recipe(
        epochs=s.epochs, batch_size=s.batch_size, dataset_size=dataset_size, num_classes=num_classes,
        iters_per_epoch=iters_per_epoch, optimizer=s.optimizer, lr0=s.lr0, lrf=s.lrf, momentum=s.momentum,
        weight_decay=s.weight_decay, warmup_epochs=s.warmup_epochs, warmup_momentum=s.warmup_momentum,
        warmup_bias_lr=s.warmup_bias_lr, cos_lr=s.cos_lr, nbs=s.nbs, frozen=s.frozen)


def run_module(settings: Settings, num_classes: int, cls_width: int, widths: dict | None = None) -> Any:
    """The run's detector module: its family, scale, classes, reg_max, the resolved compute dtype
    (:meth:`Settings.on_devices`), the frozen layers and a pruned model's ``widths``."""
    import jax.numpy as jnp

    from yolojax.models.registry import model_from_info

    if settings.compute_dtype is None:
        raise ValueError("dtype='auto' is resolved by Settings.on_devices, which has not run")
    m = settings.model
    info = {"family": m.family, "scale": m.scale, "num_classes": num_classes, "reg_max": m.reg_max,
            "cls_width": cls_width, "widths": widths}
    return model_from_info(info, dtype=jnp.dtype(settings.compute_dtype), frozen=settings.frozen)


def build_model(settings: Settings, data: RunData, pretrained: Any, winfo: dict,
                teacher: tuple[Any, dict] | None = None) -> RunModel:
    """The recipe (logged), the model (``freeze`` applied), its initial or pretrained variables,
    the loss (``cls_pw`` class weights) and, with a ``teacher`` (:func:`load_teacher`), the
    distillation (:func:`build_distillation`)."""
    from yolojax.loss import DetectionLoss
    from yolojax.models.registry import get_family
    from yolojax.models.summary import model_summary
    from yolojax.train.freeze import check_frozen
    from yolojax.train.optim import describe_recipe, resolved_settings
    from yolojax.train.state import TrainState
    from yolojax.train.transfer import finetune_cls_width, head_in_widths, init_variables, transfer_pretrained

    s, family, scale, num_classes = settings, get_family(settings.model.family), settings.model.scale, len(data.names)
    recipe = run_recipe(s, len(data.batches.source), num_classes, data.steps_per_epoch)
    for line in describe_recipe(recipe, optimizer=s.optimizer, lr0=s.lr0, momentum=s.momentum,
                                weight_decay=s.weight_decay):
        logger.info("%s", line)
    resolved = {**resolved_settings(recipe), "num_classes": num_classes, "val_batch_size": s.val_batch_size,
                "dtype": s.compute_dtype, "mesh": {"data": s.mesh_shape[0], "model": s.mesh_shape[1]}}
    cls_width = finetune_cls_width(head_in_widths(family.name, scale), pretrained) if pretrained is not None else None
    cls_width = cls_width or family.default_cls_width(scale, num_classes)
    # A pruned model's per-layer widths (yolojax.models.prune) when the weights are of this model.
    same_model = winfo.get("scale") == scale and winfo.get("family", "yolov8") == family.name
    widths = winfo.get("widths") if pretrained is not None and same_model else None
    model = run_module(s, num_classes, cls_width, widths)
    info = {"family": family.name, "scale": scale, "num_classes": num_classes, "names": data.names, "reg_max": s.model.reg_max,
            "cls_width": cls_width, "imgsz": s.imgsz, **({"widths": widths} if widths else {})}
    logger.info("%s", model_summary(model).line())
    variables = init_variables(model, s.seed)
    if pretrained is not None:
        variables, copied, kept, remapped = transfer_pretrained(
            variables, pretrained, winfo.get("names"), data.names, cls_remap=s.cls_remap)
        logger.info("transferred %d arrays from %s%s; %d kept fresh%s", copied + remapped, s.weights,
                    f" ({remapped} class arrays remapped by class name)" if remapped else "", len(kept),
                    f" (e.g. {kept[0]})" if kept else "")
        if copied == 0:
            raise ConfigError(f"weights {s.weights}: no array fits {family.title}{scale}")
    try:
        count = check_frozen(variables["params"], s.frozen, s.raw["freeze"])
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if s.freeze:
        logger.info("freeze=%s: %d parameter arrays frozen (%s)", s.raw["freeze"], count, ", ".join(s.frozen))
    loss_fn = DetectionLoss(num_classes=num_classes, reg_max=s.model.reg_max, box=s.box, cls=s.cls, dfl=s.dfl,
                            class_weights=loss_class_weights(s.cls_pw, data.batches.source, num_classes))
    distill = None
    if teacher is not None:
        distill, variables = build_distillation(settings, model, variables, teacher)
    state = TrainState.create(model.apply, variables, recipe, teacher=teacher[0] if teacher is not None else None)
    return RunModel(state, model, loss_fn, recipe, resolved, info, distill)


def build_distillation(settings: Settings, student: Any, variables: dict, teacher: tuple[Any, dict]) -> tuple[Any, dict]:
    """ultralytics' DistillationModel around ``student``: :func:`distillation_for` the teacher
    and a fresh projector, whose parameters join ``variables["params"]``
    (:data:`yolojax.models.naming.DISTILL_PROJECTOR`). Returns (the
    :class:`yolojax.loss.distill.Distillation`, the variables with the projector)."""
    import jax

    from yolojax.loss.distill import feature_widths
    from yolojax.models.naming import DISTILL_PROJECTOR

    teacher_info = teacher[1]
    distill = distillation_for(settings, teacher_info)
    projector = distill.init_projector(jax.random.fold_in(jax.random.key(settings.seed), 1), feature_widths(student))
    from yolojax.models.registry import model_title

    logger.info("distilling from %s (%s, %d classes; P3-P5 widths %s), dis=%g", settings.distill_model,
                model_title(teacher_info), int(teacher_info["num_classes"]),
                "/".join(map(str, distill.teacher_widths)), settings.dis)
    params = {**variables["params"], DISTILL_PROJECTOR: jax.device_get(projector)}
    return distill, {**variables, "params": params}


def distillation_for(settings: Settings, teacher_info: dict) -> Any:
    """The :class:`yolojax.loss.distill.Distillation` of the teacher ``teacher_info`` describes
    (``load_weights``' info), computing in the run's dtype, with the run's ``dis``."""
    import jax.numpy as jnp

    from yolojax.loss.distill import Distillation, DistillationLoss, feature_widths
    from yolojax.models.registry import model_from_info

    module = model_from_info(teacher_info, dtype=jnp.dtype(settings.compute_dtype))
    return Distillation(module, feature_widths(module), DistillationLoss(settings.dis))


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


@dataclasses.dataclass
class RunStep:
    """The train step on the mesh (:func:`build_step`): ``step_fn(state, batch)``, the state
    placed on the mesh, its shardings, and ``place(local batch) -> global batch``."""

    step_fn: Callable
    state: Any
    shardings: Any
    place: Callable


def build_step(settings: Settings, model: RunModel, compile_cache: Path | None) -> RunStep:
    """The jit train step for ``mesh`` and ``parallel``; with a ``compile_cache`` directory the
    step is kept there across runs (:mod:`yolojax.train.step_cache`)."""
    import jax

    from yolojax.parallel import make_mesh, make_parallel_train_step, place_batch, shard_state
    from yolojax.train.step import loss_step
    from yolojax.train.step_cache import CachedStep, StepCache, step_cache_applies

    mesh = make_mesh(settings.mesh.data, settings.mesh.model)
    step = loss_step(model.loss_fn, model.distill, settings.bn_l1)
    step_fn, shardings = make_parallel_train_step(settings.parallel.mode, step, mesh,
                                                  model.state, rules=settings.parallel.rules,
                                                  sync_bn=settings.parallel.sync_bn, model=model.module)
    state = shard_state(jax.device_get(model.state), shardings)
    if compile_cache is not None and step_cache_applies():
        step_fn = CachedStep(step_fn, StepCache(compile_cache), {
            "config": settings.step_view(), "model": model.module, "recipe": model.recipe, "loss": model.loss_fn,
            "distill": model.distill})
    return RunStep(step_fn, state, shardings, lambda b: place_batch(b, mesh))


def validate_ema(settings: Settings, val_source: Any, variables: Any, info: dict,
                 plots_dir: Path | None = None) -> dict:
    """The run's validation of ``variables`` (its EMA weights, without the training-only
    projector): :func:`yolojax.evaluation.validate`
    with the run's val settings, in this process, without workers; with ``plots_dir``, also the
    validation plots there."""
    from yolojax.evaluation import validate
    from yolojax.models.naming import model_variables

    return validate(data=val_source, variables=model_variables(variables), info=info, imgsz=settings.imgsz,
                    batch=settings.val_batch_size, conf=settings.val.conf, iou=settings.val.iou,
                    max_det=settings.val_max_det, rect=settings.val.rect, workers=0, verbose=False,
                    plots_dir=plots_dir)
