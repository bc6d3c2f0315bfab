"""The settings of a training run: the config checked once, and resolved, before any work.

:func:`resolve` turns an ``ml_collections.ConfigDict`` (``yolojax/configs/base.py`` and its
overrides) into a frozen :class:`Settings`. Every field is checked once, by the rule its
declaration below carries (type, range, allowed values: ultralytics 8.4.190's cfg rules where
it has one, e.g. fractions in [0, 1]; otherwise what can have meaning, e.g. epochs >= 1, imgsz
a positive multiple of 32), then the combinations (device-mode options, the pmap mesh, the
synthetic dataset). A refusal is one :class:`yolojax.console.ConfigError` line naming the
field, its value and what is allowed. Values given in a config's loose forms are parsed here
(``classes="[0, 2]"`` -> (0, 2), ``freeze="10"`` -> (0, ..., 9), ``data.cache=True`` ->
"ram"), and the values derived from the settings are computed here once (the val batch, the
frozen layer names, the augmentation, the compute dtype). :meth:`Settings.on_devices` then
checks what needs the devices (the mesh fits them, the batch divides over them), after
``jax.distributed`` has started and before the dataset is read. Everything after reads the
settings, never the config.

Each field's metadata also says what the field is to a run:

* ``run``: it defines the run; a workdir's checkpoint resumes only with the same value
  (:func:`check_resumable`);
* ``step``: it may reach the traced train step; the step cache's key holds it
  (:meth:`Settings.step_view`, :mod:`yolojax.train.step_cache`);
* neither: it only steers the run (its length, logging, checkpointing, validation).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from yolojax import config as rules
from yolojax.config import Rule, flatten
from yolojax.console import ConfigError
from yolojax.data.augment.config import AUGMENT_ON, AugmentConfig
from yolojax.data.device.batches import check_device_options
from yolojax.data.memory.image_cache import cache_mode
from yolojax.data.sources.tfds import PREFIX, TfdsSpec, is_tfds
from yolojax.data.sources.subset import parse_classes
from yolojax.data.train_batches import MOSAIC_POOLS
from yolojax.models.registry import FAMILIES
from yolojax.models.yolov8 import SCALES
from yolojax.parallel.mesh import resolve_axis_sizes
from yolojax.parallel.rules import RULE_SETS
from yolojax.parallel.step import MODES as PARALLEL_MODES
from yolojax.train.freeze import frozen_layer_names, parse_freeze
from yolojax.train.optim import OPTIMIZERS
from yolojax.weights.ultralytics import MAX_REG_MAX

DTYPES = ("auto", "float32", "bfloat16")
# dtype='auto' per platform (jax.devices()[0].platform): bfloat16 on accelerators, as
# ultralytics' amp=True is on every CUDA device; float32 on CPU, where ultralytics' AMP is off.
AUTO_DTYPE = {"cpu": "float32"}
ACCELERATOR_DTYPE = "bfloat16"
SCALE_NAMES = tuple(SCALES)  # n, s, m, l, x


def setting(rule: Rule, *, run: bool, step: bool) -> Any:
    """A config field: its value :class:`yolojax.config.Rule`, whether it defines the run
    (``run``) and whether it may reach the traced train step (``step``)."""
    return dataclasses.field(metadata={"rule": rule, "run": run, "step": step})


def group(cls: type) -> Any:
    """A group of config fields (``model``, ``data``, ``val`` ...): the settings class ``cls``."""
    return dataclasses.field(metadata={"group": cls})


def derived() -> Any:
    """A value :func:`resolve` computes from the fields (not a config field)."""
    return dataclasses.field(metadata={"derived": True})


def _loose(kinds: tuple[type, ...], allowed: str) -> Rule:
    """A field whose loose forms (a string of a list, an int, a list) are parsed in :func:`resolve`."""
    return Rule(kinds, None, allowed)


def _mesh_axis() -> Rule:
    return Rule((int,), lambda v: v == -1 or v >= 1, "-1 (the remaining devices) or an integer >= 1")


def _coordinator() -> Rule:
    return Rule((str,), lambda v: not v or (":" in v and v.rsplit(":", 1)[1].isdigit()), "'' or host:port")


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    family: str = setting(rules.one_of(*FAMILIES), run=True, step=True)
    scale: str = setting(rules.one_of(*SCALE_NAMES), run=True, step=True)
    num_classes: int = setting(rules.integer(-1, note=" (-1 or 0: the dataset's class count)"), run=True, step=True)
    reg_max: int = setting(rules.integer(1, MAX_REG_MAX), run=True, step=True)


@dataclasses.dataclass(frozen=True)
class SyntheticSettings:
    root: str = setting(rules.text(), run=True, step=True)
    num_train: int = setting(rules.integer(1), run=True, step=True)
    num_val: int = setting(rules.integer(1), run=True, step=True)
    min_size: int = setting(rules.integer(32), run=True, step=True)
    max_size: int = setting(rules.integer(32), run=True, step=True)
    max_shapes: int = setting(rules.integer(1), run=True, step=True)
    seed: int = setting(rules.integer(0), run=True, step=True)


@dataclasses.dataclass(frozen=True)
class TfdsSettings:
    name: str = setting(rules.text(), run=True, step=True)
    data_dir: str = setting(rules.text(), run=False, step=False)  # the same data, moved, resumes
    train: str = setting(rules.text(), run=True, step=True)
    val: str = setting(rules.text(), run=False, step=False)


@dataclasses.dataclass(frozen=True)
class DataSettings:
    yaml: str = setting(rules.text(), run=True, step=True)
    tfds: TfdsSettings = group(TfdsSettings)
    # data.workers defines the run: the saved data position (Grain's iterator state) has
    # another form with worker processes, and per worker count.
    workers: int = setting(rules.integer(0), run=True, step=False)
    threads: int = setting(rules.integer(1), run=False, step=False)
    prefetch: int = setting(rules.integer(1), run=False, step=False)
    max_boxes: int = setting(rules.integer(0, note=" (0: from the label scan)"), run=True, step=True)
    mosaic_pool: str = setting(rules.one_of(*MOSAIC_POOLS), run=True, step=True)
    augment_on: str = setting(rules.one_of(*AUGMENT_ON), run=False, step=True)
    cache: str = setting(_loose((str, bool), "'', 'ram' or 'disk' (True means 'ram', as ultralytics' cache)"),
                         run=False, step=False)
    synthetic: SyntheticSettings = group(SyntheticSettings)


@dataclasses.dataclass(frozen=True)
class ValSettings:
    enabled: bool = setting(rules.boolean(), run=False, step=False)
    every_epochs: int = setting(rules.integer(1), run=False, step=False)
    batch_size: int = setting(rules.integer(0, note=" (0: 2 x batch_size)"), run=False, step=False)
    conf: float = setting(rules.fraction(), run=False, step=False)
    iou: float = setting(rules.fraction(), run=False, step=False)
    max_det: int = setting(rules.integer(0, note=" (0: ultralytics' rule)"), run=False, step=False)
    rect: bool = setting(rules.boolean(), run=False, step=False)


@dataclasses.dataclass(frozen=True)
class MeshSettings:
    data: int = setting(_mesh_axis(), run=False, step=True)
    model: int = setting(_mesh_axis(), run=False, step=True)


@dataclasses.dataclass(frozen=True)
class DistributedSettings:
    coordinator: str = setting(_coordinator(), run=False, step=False)
    num_processes: int = setting(rules.integer(0, note=" (0: from the environment)"), run=False, step=False)
    process_id: int = setting(rules.integer(-1, note=" (-1: from the environment)"), run=False, step=False)
    auto: bool = setting(rules.boolean(), run=False, step=False)


@dataclasses.dataclass(frozen=True)
class ParallelSettings:
    mode: str = setting(rules.one_of(*PARALLEL_MODES), run=False, step=True)
    sync_bn: bool = setting(rules.boolean(), run=False, step=True)  # before 'rules' shadows the module
    rules: str = setting(rules.one_of(*RULE_SETS), run=False, step=True)


@dataclasses.dataclass(frozen=True)
class CheckpointSettings:
    every_steps: int = setting(rules.integer(0, note=" (0: epoch ends only)"), run=False, step=False)
    keep: int = setting(rules.integer(0, note=" (0: all)"), run=False, step=False)
    keep_best: bool = setting(rules.boolean(), run=False, step=False)
    async_save: bool = setting(rules.boolean(), run=False, step=False)


def _fraction_or_count() -> Rule:
    """ultralytics' ``fraction``: a ratio in (0, 1] or a whole image count > 1."""
    return Rule((int, float), lambda v: 0 < v <= 1 or (v > 1 and v == int(v)),
                "a ratio in (0, 1] or a whole image count > 1")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every setting of a run, checked and resolved (:func:`resolve`); the fields are those of
    ``yolojax/configs/base.py`` (see there for their meaning), with the same names."""

    model: ModelSettings = group(ModelSettings)
    weights: str = setting(rules.text(), run=True, step=False)
    cls_remap: bool = setting(rules.boolean(), run=False, step=True)
    # Not run-defining: the state (float32 parameters, optimiser, EMA) is the same in any
    # compute dtype, so a run started on a GPU in bfloat16 may resume on a CPU in float32.
    dtype: str = setting(rules.one_of(*DTYPES), run=False, step=True)
    data: DataSettings = group(DataSettings)
    fraction: float = setting(_fraction_or_count(), run=True, step=True)
    single_cls: bool = setting(rules.boolean(), run=True, step=True)
    classes: tuple[int, ...] | None = setting(_loose((str, int, list, tuple), "a class id or a list of ids"),
                                              run=True, step=True)
    rect: bool = setting(rules.boolean(), run=True, step=True)
    multi_scale: float = setting(rules.number(0.0, 1.0, high_open=True), run=True, step=True)
    imgsz: int = setting(rules.image_size(), run=True, step=True)
    batch_size: int = setting(rules.integer(1), run=True, step=True)
    epochs: int = setting(rules.integer(1), run=True, step=True)
    max_steps: int = setting(rules.integer(0, note=" (0: no cap)"), run=False, step=False)
    patience: int = setting(rules.integer(0, note=" epochs (0 disables early stopping)"), run=False, step=False)
    time: float = setting(rules.number(0.0, note=" hours (0: no limit)"), run=False, step=False)
    save_period: int = setting(rules.integer(), run=False, step=False)
    seed: int = setting(rules.integer(0), run=True, step=False)
    optimizer: str = setting(rules.one_of(*OPTIMIZERS), run=True, step=True)
    lr0: float = setting(rules.fraction(), run=True, step=True)
    lrf: float = setting(rules.fraction(), run=True, step=True)
    momentum: float = setting(rules.fraction(), run=True, step=True)
    weight_decay: float = setting(rules.fraction(), run=True, step=True)
    warmup_epochs: float = setting(rules.number(0.0), run=True, step=True)
    warmup_momentum: float = setting(rules.fraction(), run=True, step=True)
    warmup_bias_lr: float = setting(rules.fraction(), run=True, step=True)
    cos_lr: bool = setting(rules.boolean(), run=True, step=True)
    nbs: int = setting(rules.integer(1), run=True, step=True)
    freeze: tuple[int | str, ...] = setting(_loose((str, int, list, tuple), "a layer count or a list of layers"),
                                            run=True, step=True)
    box: float = setting(rules.number(0.0), run=True, step=True)
    cls: float = setting(rules.number(0.0), run=True, step=True)
    dfl: float = setting(rules.number(0.0), run=True, step=True)
    cls_pw: float = setting(rules.fraction(), run=True, step=True)
    distill_model: str = setting(rules.text(), run=True, step=True)
    dis: float = setting(rules.number(0.0), run=True, step=True)
    bn_l1: float = setting(rules.number(0.0), run=True, step=True)
    hsv_h: float = setting(rules.fraction(), run=True, step=True)
    hsv_s: float = setting(rules.fraction(), run=True, step=True)
    hsv_v: float = setting(rules.fraction(), run=True, step=True)
    degrees: float = setting(rules.number(0.0, 180.0, note=" (rotations drawn in +-degrees)"), run=True, step=True)
    translate: float = setting(rules.fraction(), run=True, step=True)
    scale: float = setting(rules.fraction(), run=True, step=True)
    shear: float = setting(rules.number(0.0, 90.0, high_open=True, note=" (shears drawn in +-degrees)"), run=True,
                           step=True)
    perspective: float = setting(rules.fraction(), run=True, step=True)
    flipud: float = setting(rules.fraction(), run=True, step=True)
    fliplr: float = setting(rules.fraction(), run=True, step=True)
    mosaic: float = setting(rules.fraction(), run=True, step=True)
    mixup: float = setting(rules.fraction(), run=True, step=True)
    cutmix: float = setting(rules.fraction(), run=True, step=True)
    bgr: float = setting(rules.fraction(), run=True, step=True)
    close_mosaic: int = setting(rules.integer(0), run=True, step=True)
    val: ValSettings = group(ValSettings)
    mesh: MeshSettings = group(MeshSettings)
    distributed: DistributedSettings = group(DistributedSettings)
    parallel: ParallelSettings = group(ParallelSettings)
    checkpoint: CheckpointSettings = group(CheckpointSettings)
    log_every_steps: int = setting(rules.integer(1), run=False, step=False)
    progress: bool = setting(rules.boolean(), run=False, step=False)
    plots: bool = setting(rules.boolean(), run=False, step=False)
    max_nonfinite: int = setting(rules.integer(1), run=False, step=False)
    compile_cache: str = setting(rules.text(), run=False, step=False)

    # Derived once by resolve().
    raw: Mapping[str, Any] = derived()              # the config as given (config.json, checkpoints)
    augment: AugmentConfig = derived()              # the augmentation hyperparameters
    frozen: tuple[str, ...] = derived()             # ultralytics' frozen name substrings (freeze, '.dfl')
    compute_dtype: str | None = derived()           # the dtype the model computes in ('auto': on_devices)
    val_batch_size: int = derived()                 # val.batch_size, or 2 x batch_size (ultralytics)
    val_max_det: int | None = derived()             # val.max_det, None for ultralytics' rule
    mesh_shape: tuple[int, int] | None = derived()  # (data, model) on the devices (on_devices)

    def on_devices(self, device_count: int, process_count: int, platform: str = "cpu") -> Settings:
        """These settings with ``mesh_shape`` resolved for ``device_count`` devices over
        ``process_count`` processes, and ``compute_dtype`` for ``dtype='auto'`` on ``platform``
        (``jax.devices()[0].platform``: 'cpu', 'gpu', 'tpu', ...; :func:`auto_dtype`).

        Raises:
          ConfigError: the mesh does not fit the devices, or the global batch does not
            divide over the processes or the mesh's 'data' axis (naming the fields).
        """
        data, model = self.mesh.data, self.mesh.model
        try:
            shape = resolve_axis_sizes(data, model, device_count)
        except ValueError as e:
            raise ConfigError(f"mesh.data={data}, mesh.model={model}: {e}") from None
        if self.batch_size % process_count:
            raise ConfigError(f"batch_size={self.batch_size}: must divide over the {process_count} processes")
        if self.batch_size % shape[0]:
            raise ConfigError(f"batch_size={self.batch_size}: must divide over the mesh's {shape[0]} 'data' "
                              f"shards (mesh.data)")
        return dataclasses.replace(self, mesh_shape=shape, compute_dtype=resolve_dtype(self.dtype, platform))

    def step_view(self) -> dict[str, Any]:
        """The config values that may reach the traced train step (``step`` fields), as given."""
        return _select(self.raw, "step")

    def run_view(self) -> dict[str, Any]:
        """The config values that define the run (``run`` fields), as given."""
        return _select(self.raw, "run")


def auto_dtype(platform: str) -> str:
    """``dtype='auto'``'s compute dtype on ``platform``: 'float32' on 'cpu', 'bfloat16' on GPU
    and TPU (ultralytics 8.4.190 trains with amp=True, i.e. mixed precision, on CUDA and
    without it on CPU, engine/trainer.py)."""
    return AUTO_DTYPE.get(platform, ACCELERATOR_DTYPE)


def resolve_dtype(dtype: str, platform: str) -> str:
    """The compute dtype of the ``dtype`` setting on ``platform`` ('auto' resolved)."""
    return auto_dtype(platform) if dtype == "auto" else dtype


def field_rules() -> dict[str, dataclasses.Field]:
    """Every config field's declaration by dotted name (``imgsz``, ``data.synthetic.root``, ...)."""
    out: dict[str, dataclasses.Field] = {}

    def walk(cls: type, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            if "group" in f.metadata:
                walk(f.metadata["group"], f"{prefix}{f.name}.")
            elif "rule" in f.metadata:
                out[f"{prefix}{f.name}"] = f

    walk(Settings, "")
    return out


def _select(raw: Mapping[str, Any], role: str) -> dict[str, Any]:
    fields = field_rules()
    return {name: value for name, value in flatten(raw).items() if name in fields and fields[name].metadata[role]}


def resolve(config: Any, need_data: bool = True) -> Settings:
    """Check every field of ``config`` and return the frozen :class:`Settings`.

    Args:
      config: an ``ml_collections.ConfigDict`` (or a nested mapping) with every field of
        ``yolojax/configs/base.py``.
      need_data: refuse a config that names no dataset (False: a plan, which reads none).

    Raises:
      ConfigError: one line naming the field, the value and what is allowed, for an unknown
        or missing field, a value of another type or out of its range, or settings that
        cannot go together; before anything is read or built.
    """
    raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    values = flatten(raw)
    fields = field_rules()
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config field {unknown[0]} (the fields are those of yolojax/configs/base.py)")
    missing = sorted(set(fields) - set(values))
    if missing:
        raise ConfigError(f"the config has no field {missing[0]}: start from yolojax.configs.base.get_config()")
    for name, f in fields.items():
        f.metadata["rule"].check(name, values[name])
    values = _parsed(values)
    _check_combinations(values, need_data)
    return _build(Settings, "", values, raw)


def _parsed(values: dict[str, Any]) -> dict[str, Any]:
    """The loose forms made exact (classes, freeze, data.cache), or one-line refusals."""
    out = dict(values)
    for name, parse in (("classes", lambda v: parse_classes(v, None)), ("freeze", lambda v: tuple(parse_freeze(v))),
                        ("data.cache", cache_mode)):
        try:
            out[name] = parse(values[name])
        except ValueError as e:
            raise ConfigError(f"{name}={values[name]!r}: {e}") from None
    family = FAMILIES.get(values["model.family"])
    layers = len(family.layers) if family else 0
    if family and any(isinstance(layer, int) and layer >= layers for layer in out["freeze"]):
        raise ConfigError(f"freeze={values['freeze']!r}: must be fewer than {family.title}'s {layers} layers (0-"
                          f"{layers - 1}; freeze={layers - 1} leaves the Detect head training) or a list of them")
    if out["classes"] is not None:
        out["classes"] = tuple(out["classes"])
    out["fraction"] = float(values["fraction"])
    return out


def _check_combinations(values: Mapping[str, Any], need_data: bool = True) -> None:
    """Settings that are each allowed but cannot go together."""
    if values["data.augment_on"] == "device":
        try:
            check_device_options(AugmentConfig.from_config({k: v for k, v in values.items() if "." not in k}),
                                 values["rect"], values["multi_scale"])
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if values["parallel.mode"] == "pmap" and values["mesh.model"] != 1:
        raise ConfigError(f"mesh.model={values['mesh.model']}: parallel.mode='pmap' is data parallel only and "
                          "needs mesh.model=1")
    if values["data.synthetic.min_size"] > values["data.synthetic.max_size"]:
        raise ConfigError(f"data.synthetic.min_size={values['data.synthetic.min_size']}: must be <= "
                          f"data.synthetic.max_size={values['data.synthetic.max_size']}")
    if need_data and not values["data.yaml"] and not values["data.tfds.name"] and not values["data.synthetic.root"]:
        raise ConfigError("data.yaml='': no dataset: set data.yaml=PATH, data.tfds.name=NAME (data=tfds:NAME) or "
                          "data.synthetic.root")
    _check_tfds(values)
    if values["data.yaml"] and not Path(values["data.yaml"]).is_file():
        raise ConfigError(f"data.yaml={values['data.yaml']!r}: must be an existing data.yaml file")
    if values["weights"] and not Path(values["weights"]).exists():
        raise ConfigError(f"weights={values['weights']!r}: must be an existing .pt, converted directory or "
                          "train workdir ('' trains from scratch)")
    if values["distill_model"] and not Path(values["distill_model"]).exists():
        raise ConfigError(f"distill_model={values['distill_model']!r}: must be the teacher's existing .pt, converted "
                          "directory or train workdir ('' trains without distillation)")


def _check_tfds(values: Mapping[str, Any]) -> None:
    """A TFDS dataset (data.tfds.name) alone, with a well-formed name, and an image cache it can have."""
    name = values["data.tfds.name"]
    if is_tfds(values["data.yaml"]):
        raise ConfigError(f"data.yaml={values['data.yaml']!r}: a TFDS dataset goes in data.tfds.name (data=tfds:NAME "
                          "on the yolojax command line)")
    if not name:
        if values["data.tfds.data_dir"]:
            raise ConfigError(f"data.tfds.data_dir={values['data.tfds.data_dir']!r} is for a TFDS dataset, and none "
                              "is named: set data.tfds.name (data=tfds:NAME) or leave data.tfds.data_dir empty")
        return
    try:
        TfdsSpec.parse(PREFIX + name)
    except ValueError as e:
        raise ConfigError(f"data.tfds.name={name!r}: {str(e).split(': ', 1)[-1]}") from None
    if values["data.yaml"]:
        raise ConfigError(f"data.tfds.name={name!r} and data.yaml={values['data.yaml']!r} both name the dataset: "
                          "give one")
    if values["data.cache"] == "disk":
        raise ConfigError("data.cache='disk': ultralytics' .npy files go beside image files, which a TFDS dataset has "
                          "none of: use data.cache='ram' (or '')")
    for split in ("train", "val"):
        if not values[f"data.tfds.{split}"]:
            raise ConfigError(f"data.tfds.{split}='': name the TFDS split to use as '{split}', e.g. "
                              f"{'train' if split == 'train' else 'validation'}")


def _build(cls: type, prefix: str, values: Mapping[str, Any], raw: Mapping[str, Any]) -> Any:
    kwargs = {}
    for f in dataclasses.fields(cls):
        if "group" in f.metadata:
            kwargs[f.name] = _build(f.metadata["group"], f"{prefix}{f.name}.", values, raw)
        elif "rule" in f.metadata:
            kwargs[f.name] = values[f"{prefix}{f.name}"]
    if cls is not Settings:
        return cls(**kwargs)
    batch, dtype = values["batch_size"], values["dtype"]
    return Settings(**kwargs, raw=raw, augment=AugmentConfig.from_config(kwargs),
                    frozen=frozen_layer_names(list(values["freeze"])), compute_dtype=None if dtype == "auto" else dtype,
                    val_batch_size=values["val.batch_size"] or 2 * batch, val_max_det=values["val.max_det"] or None,
                    mesh_shape=None)


def check_resumable(saved: Mapping[str, Any], current: Mapping[str, Any], workdir: Any,
                    defaults: Mapping[str, Any] | None = None) -> None:
    """Refuse to resume a workdir whose checkpoint was written with other run-defining
    settings (the ``run`` fields). A field missing from ``saved`` (a run from before it
    existed) counts as its value in ``defaults`` (``yolojax/configs/base.py`` when not given).

    Args:
      saved: the workdir's config.json; current: this run's config (nested dicts).

    Raises:
      ConfigError: naming up to three differing fields, ``saved -> current``.
    """
    if defaults is None:
        from yolojax.config import default_config

        defaults = default_config().to_dict()
    old = {**_select(defaults, "run"), **_select(saved, "run")}
    new = _select(current, "run")
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in new if old.get(k) != new.get(k)]
    if diffs:
        raise ConfigError(f"{workdir} holds a run with other settings ({'; '.join(diffs[:3])}"
                          f"{'; ...' if len(diffs) > 3 else ''}); start the new run in another directory "
                          "(--workdir; yolojax train: name= or project=)")
