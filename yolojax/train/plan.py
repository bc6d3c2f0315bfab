"""A run's train step compiled for a target without running it: memory, FLOPs, bytes,
collectives and a roofline step time per device (``yolojax plan``, docs/scaling.md).

The step is the one :func:`yolojax.train.run.train` would build from the same settings
(model, dtype, mesh, rules, parallel mode, sync_bn, batch, imgsz, max boxes) for the host
pipeline's batch (``data.augment_on=device`` also renders augmentation in the step, which a
plan leaves out), traced on abstract values only: nothing is initialised or placed, so a pod's step compiles on a laptop
through libtpu's compile-only devices (:mod:`yolojax.parallel.targets`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from yolojax.parallel.chips import Chip, StepEstimate, roofline
from yolojax.parallel.compiled import ProgramCost, program_cost
from yolojax.parallel.targets import Target
from yolojax.train.settings import Settings

# optimizer='auto' picks by the run's iterations; a plan has no dataset, so it assumes COCO
# train2017's image count (ultralytics' coco.yaml) unless given another.
DEFAULT_DATASET_SIZE = 118287
DEFAULT_MAX_BOXES = 32  # M when data.max_boxes is 0 (from the label scan in a run)


@dataclasses.dataclass(frozen=True)
class Plan:
    """One compiled step's figures on one target (per device unless named otherwise).

    Attributes:
      target: the target's name; devices: how many; chip: its family or None.
      dtype: the compute dtype; mesh: (data, model); rules: parallel.rules; mode: parallel.mode;
      sync_bn: parallel.sync_bn.
      batch: the global batch; per_device_batch: the rows each 'data' shard holds; imgsz;
      max_boxes: M, the box rows per image.
      cost: :class:`ProgramCost`; estimate: the roofline from XLA's bytes accessed (None
      without a known chip); estimate_low: the roofline from the kernels' laid-out
      input/output bytes (``cost.io_bytes``), a lower bound of the step time.
      fits: peak bytes <= the chip's HBM (None without a known chip).
      compile_seconds: lowering and compiling, seconds.
      optimizer: the optimiser the state carries (optimizer='auto' resolved).
      assumptions: what the plan assumed where a run would read its dataset (the optimiser
        optimizer='auto' picks, the box rows M).
    """

    target: str
    devices: int
    chip: Chip | None
    dtype: str
    mesh: tuple[int, int]
    rules: str
    mode: str
    sync_bn: bool
    batch: int
    per_device_batch: int
    imgsz: int
    max_boxes: int
    optimizer: str
    cost: ProgramCost
    estimate: StepEstimate | None
    estimate_low: StepEstimate | None
    fits: bool | None
    compile_seconds: float
    assumptions: tuple[str, ...] = ()

    @property
    def images_per_second_per_chip(self) -> float | None:
        """Estimated training images/s one chip processes (its rows / the step estimate)."""
        return self.per_device_batch / self.estimate.step_seconds if self.estimate else None

    @property
    def images_per_second_per_chip_high(self) -> float | None:
        """The same from the lower-bound step time (:attr:`estimate_low`)."""
        return self.per_device_batch / self.estimate_low.step_seconds if self.estimate_low else None

    @property
    def xla_estimate_sane(self) -> bool:
        """Whether XLA's own ``optimal_seconds`` can be shown: present, positive and finite
        (it is negative for the YOLOv8 step on libtpu 0.0.42, issue 24)."""
        t = self.cost.xla_optimal_seconds
        return t is not None and 0 < t < float("inf")

    def as_json(self) -> dict[str, Any]:
        """The figures under ``yolojax plan json=``'s keys (docs/scaling.md)."""
        est = self.estimate
        return {
            "target": self.target, "devices": self.devices, "chip": self.chip.name if self.chip else None,
            "dtype": self.dtype, "mesh": {"data": self.mesh[0], "model": self.mesh[1]}, "rules": self.rules,
            "mode": self.mode, "sync_bn": self.sync_bn, "batch": self.batch, "per_device_batch": self.per_device_batch,
            "imgsz": self.imgsz, "max_boxes": self.max_boxes, "optimizer": self.optimizer,
            "peak_bytes_per_device": self.cost.peak_bytes,
            "hbm_bytes_per_device": self.chip.hbm_bytes if self.chip else None, "fits": self.fits,
            "memory": {"argument_bytes": self.cost.argument_bytes, "output_bytes": self.cost.output_bytes,
                       "alias_bytes": self.cost.alias_bytes, "temp_bytes": self.cost.temp_bytes},
            "flops_per_device": self.cost.flops, "bytes_accessed_per_device": self.cost.bytes_accessed,
            "io_bytes_per_device": self.cost.io_bytes,
            "collectives": [c.as_dict() for c in self.cost.collectives],
            "step_seconds_estimate": est.step_seconds if est else None,
            "step_seconds_estimate_low": self.estimate_low.step_seconds if self.estimate_low else None,
            "roofline": dataclasses.asdict(est) if est else None,
            "roofline_low": dataclasses.asdict(self.estimate_low) if self.estimate_low else None,
            "images_per_second_per_chip": self.images_per_second_per_chip,
            "images_per_second_per_chip_high": self.images_per_second_per_chip_high,
            "xla_optimal_seconds": self.cost.xla_optimal_seconds,
            "compile_seconds": self.compile_seconds, "assumptions": list(self.assumptions),
        }


def abstract_step(settings: Settings, target: Target, num_classes: int, max_boxes: int,
                  dataset_size: int = DEFAULT_DATASET_SIZE) -> tuple[Any, tuple, str]:
    """The run's jitted train step for ``settings`` (resolved :meth:`Settings.on_devices` for
    ``target``) on a mesh over ``target.devices``, with abstract arguments; with
    ``distill_model``, the teacher's forward and the distillation loss in it (the teacher's
    file is read for its architecture).

    Returns:
      (jitted step, (state, batch) ShapeDtypeStructs with their shardings, the optimiser).
    """
    import jax
    import jax.numpy as jnp

    from yolojax.loss import DetectionLoss, feature_widths
    from yolojax.models.registry import get_family
    from yolojax.models.naming import DISTILL_PROJECTOR
    from yolojax.parallel import batch_sharding, make_mesh, make_parallel_train_step
    from yolojax.train.setup import distillation_for, load_teacher, run_module, run_recipe
    from yolojax.train.state import TrainState
    from yolojax.train.step import loss_step

    s = settings
    recipe = run_recipe(s, dataset_size, num_classes)
    model = run_module(s, num_classes, get_family(s.model.family).default_cls_width(s.model.scale, num_classes))
    distill = distillation_for(s, load_teacher(s)[1]) if s.distill_model else None
    images = jnp.zeros((1, s.imgsz, s.imgsz, 3), jnp.float32)

    def create():
        key, variables, teacher = jax.random.key(0), model.init(jax.random.key(0), images), None
        if distill is not None:  # the projector among the params, the teacher's variables beside them
            projector = distill.init_projector(key, feature_widths(model))
            variables = {**variables, "params": {**variables["params"], DISTILL_PROJECTOR: projector}}
            teacher = distill.teacher.init(key, images)
        return TrainState.create(model.apply, variables, recipe, teacher=teacher)

    state = jax.eval_shape(create)
    loss_fn = DetectionLoss(num_classes=num_classes, reg_max=s.model.reg_max, box=s.box, cls=s.cls, dfl=s.dfl)
    mesh = make_mesh(*s.mesh_shape, devices=list(target.devices))
    step, shardings = make_parallel_train_step(s.parallel.mode, loss_step(loss_fn, distill, s.bn_l1), mesh, state,
                                               rules=s.parallel.rules, model=model, sync_bn=s.parallel.sync_bn)
    rows = batch_sharding(mesh)
    b, m = s.batch_size, max_boxes
    batch = {"image": jax.ShapeDtypeStruct((b, s.imgsz, s.imgsz, 3), jnp.uint8, sharding=rows),
             "boxes": jax.ShapeDtypeStruct((b, m, 4), jnp.float32, sharding=rows),
             "classes": jax.ShapeDtypeStruct((b, m), jnp.int32, sharding=rows),
             "mask": jax.ShapeDtypeStruct((b, m), jnp.bool_, sharding=rows)}
    abstract_state = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), state, shardings)
    return step, (abstract_state, batch), recipe.optimizer


def make_plan(settings: Settings, target: Target, num_classes: int = 80, max_boxes: int | None = None,
              dataset_size: int = DEFAULT_DATASET_SIZE, hlo_path: str | Path | None = None) -> Plan:
    """Compile the run's train step for ``target`` and measure it (:class:`Plan`).

    Args:
      settings: resolved settings (:func:`yolojax.train.settings.resolve`); ``mesh`` and
        ``dtype='auto'`` are resolved here for the target's devices and platform.
      target: :func:`yolojax.parallel.targets.target_devices`.
      num_classes: the dataset's class count.
      max_boxes: M; default ``data.max_boxes`` or :data:`DEFAULT_MAX_BOXES`.
      dataset_size: training images, for ``optimizer='auto'``'s choice.
      hlo_path: also write the compiled (partitioned, optimised) HLO text there.

    Raises:
      ConfigError: the mesh does not fit the target's devices or the batch does not divide.
    """
    settings = settings.on_devices(len(target.devices), 1, target.platform)
    m = max_boxes or settings.data.max_boxes or DEFAULT_MAX_BOXES
    start = time.perf_counter()
    step, args, optimizer = abstract_step(settings, target, num_classes, m, dataset_size)
    compiled = step.lower(*args).compile()
    seconds = time.perf_counter() - start
    if hlo_path is not None:
        Path(hlo_path).write_text(compiled.as_text())
    cost = program_cost(compiled, len(target.devices))
    chip = target.chip
    estimate = estimate_low = fits = None
    if chip is not None:
        float32 = settings.compute_dtype == "float32"
        estimate = roofline(cost.flops, cost.bytes_accessed, cost.collectives, chip, float32=float32)
        estimate_low = roofline(cost.flops, cost.io_bytes, cost.collectives, chip, float32=float32)
        fits = cost.peak_bytes <= chip.hbm_bytes
    data = settings.mesh_shape[0]
    assumptions = []
    if settings.optimizer == "auto":
        assumptions.append(f"optimizer=auto picks {optimizer} for {dataset_size} training images and epochs="
                           f"{settings.epochs} (set optimizer= to plan another)")
    if not max_boxes and not settings.data.max_boxes:
        assumptions.append(f"M={m} box rows per image (a run takes M from its label scan; set data.max_boxes=)")
    return Plan(target.name, len(target.devices), chip, settings.compute_dtype, settings.mesh_shape,
                settings.parallel.rules, settings.parallel.mode, settings.parallel.sync_bn, settings.batch_size,
                settings.batch_size // data, settings.imgsz, m, optimizer, cost, estimate, estimate_low, fits, seconds,
                tuple(assumptions))


def suggestions(plan: Plan) -> list[str]:
    """When ``plan`` does not fit its chip: settings that would, by an estimate that scales
    the temporaries (activations) with the rows per device and the state with the rules
    (fsdp divides the parameter and optimiser bytes over 'data'). Empty when it fits."""
    if plan.fits is not False or plan.chip is None:
        return []
    hbm, cost = plan.chip.hbm_bytes, plan.cost
    state = cost.argument_bytes  # the donated state and the batch
    temp = cost.temp_bytes + cost.output_bytes - cost.alias_bytes
    data = plan.mesh[0]
    out = []
    if plan.rules == "data" and data > 1 and state / data + temp <= hbm:
        out.append(f"rules=fsdp (parameters and optimiser state split over the {data} 'data' devices): "
                   f"~{_gib(state / data + temp)} per device")
    for rows in (plan.per_device_batch // 2, plan.per_device_batch // 4, plan.per_device_batch // 8):
        if rows >= 1 and state + temp * rows / plan.per_device_batch <= hbm:
            out.append(f"batch={rows * data} ({rows} images per device): ~{_gib(state + temp * rows / plan.per_device_batch)}"
                       " per device; or keep the batch on a topology with "
                       f"{plan.per_device_batch // rows}x the chips")
            break
    if not out:
        out.append("no smaller batch fits one chip's memory; use more chips with rules=fsdp")
    return [f"{line} (an estimate: run yolojax plan with it to check)" for line in out]


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.2f} GiB"


def describe(plan: Plan) -> list[str]:
    """The lines ``yolojax plan`` prints for ``plan``."""
    c, est = plan.cost, plan.estimate
    chip = f" ({plan.chip.name}, {_gib(plan.chip.hbm_bytes)} HBM)" if plan.chip else ""
    lines = [
        f"target {plan.target}: {plan.devices} devices{chip}, mesh data={plan.mesh[0]} model={plan.mesh[1]}, "
        f"parallel.mode={plan.mode} rules={plan.rules} sync_bn={plan.sync_bn}",
        f"step: batch {plan.batch} ({plan.per_device_batch} per device) at {plan.imgsz} px, M={plan.max_boxes} box "
        f"rows, {plan.dtype} compute, {plan.optimizer}; compiled in {plan.compile_seconds:.1f} s",
        "per device:",
        f"  peak memory      {_gib(c.peak_bytes)} (state and batch {_gib(c.argument_bytes)}, temporaries "
        f"{_gib(c.temp_bytes)}, outputs not donated and code {_gib(c.peak_bytes - c.argument_bytes - c.temp_bytes)})"
        + ("" if plan.fits is None else ", fits" if plan.fits else ", DOES NOT FIT"),
        f"  FLOPs per step   {c.flops:.3g}",
        f"  bytes accessed   {c.bytes_accessed:.3g} (XLA's count); kernels' laid-out input/output {c.io_bytes:.3g}",
    ]
    if c.collectives:
        lines.append("  collectives      " + "; ".join(
            f"{x.op} {x.dtype} x{x.count} {x.bytes / (1 << 20):.2f} MiB" for x in c.collectives))
    else:
        lines.append("  collectives      none")
    if est is not None:
        low = plan.estimate_low
        lines.append(f"  step estimate    {est.step_seconds * 1e3:.1f} ms ({est.bound}-bound: compute "
                     f"{est.compute_seconds * 1e3:.1f} ms, memory {est.memory_seconds * 1e3:.1f} ms, collectives "
                     f"{est.collective_seconds * 1e3:.1f} ms) -> {plan.images_per_second_per_chip:.0f} images/s per chip, "
                     f"MFU {est.compute_seconds / est.step_seconds:.1%} (a roofline estimate)")
        lines.append(f"  lower bound      {low.step_seconds * 1e3:.1f} ms from the kernels' input/output -> "
                     f"{plan.images_per_second_per_chip_high:.0f} images/s per chip, "
                     f"MFU {low.compute_seconds / low.step_seconds:.1%}")
    else:
        lines.append("  step estimate    none: no published peaks for this device (a CPU or an unknown chip)")
    xla = c.xla_optimal_seconds
    if plan.xla_estimate_sane:
        lines.append(f"  XLA's estimate   {xla * 1e3:.1f} ms")
    elif xla is not None and plan.chip is not None:
        lines.append(f"  XLA's estimate   not shown: its optimal_seconds ({xla:.3g}) is not a duration")
    lines += [f"assumed: {a}" for a in plan.assumptions]
    lines += [f"suggestion: {s}" for s in suggestions(plan)]
    return lines
