"""Train-step speed of yolojax beside ultralytics, same model, batch and targets.

    YOLO_OFFLINE=1 python tools/bench_train_step.py --scales n s --batch 8 --imgsz 640 [--family yolo11
        --boxes 8 --max-boxes 100 --dtype bfloat16 --teacher s]

yolojax: one jit-compiled ``train_step`` (forward, v8 loss, backward, SGD-Nesterov update,
EMA) with an update on every batch, of ``--family`` (yolov8 or yolo11) at each of ``--scales``. ultralytics: ``model(batch)`` (forward + v8DetectionLoss),
``loss.sum().backward()``, gradient clipping, ``SGD.step()``, ``zero_grad()`` and its ModelEMA
update, in fp32 on the same CPU (yolojax in --dtype: float32, or bfloat16 compute with float32
parameters, to see what bfloat16 costs on a CPU). Each runs in its own process (tools/side_by_side.py) and the
two alternate step by step; the table shows median seconds per step and the ratio
ultralytics / yolojax (> 1: yolojax is faster). ``--teacher SCALE``: knowledge distillation
from a model of that family and scale in both (ultralytics' DistillationModel around the student, its
projector in the optimiser and EMA; yolojax's ``train_step(distill=...)``). Needs the [dev] extra.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from side_by_side import Worker, alternate, ultralytics_environ
from yolojax.runtime import reexec_with_malloc_tunables


def random_batch(batch: int, imgsz: int, num_classes: int, boxes_per_image: int = 8,
                 max_boxes: int | None = None) -> dict:
    """uint8 noise images and ``boxes_per_image`` random boxes each, in DESIGN.md's batch
    format, padded to ``max_boxes`` rows (default: no padding)."""
    rng = np.random.default_rng(0)
    m = max_boxes or boxes_per_image
    wh = rng.uniform(0.05, 0.5, (batch, m, 2)) * imgsz
    xy = rng.uniform(0, 1, (batch, m, 2)) * (imgsz - wh)
    mask = np.arange(m)[None, :] < boxes_per_image
    return {
        "image": rng.integers(0, 256, (batch, imgsz, imgsz, 3), dtype=np.uint8),
        "boxes": np.where(mask[..., None], np.concatenate([xy, xy + wh], -1), 0.0).astype(np.float32),
        "classes": np.where(mask, rng.integers(0, num_classes, (batch, m)), 0).astype(np.int32),
        "mask": np.broadcast_to(mask, (batch, m)).copy(),
    }


def ultralytics_step_fn(scale: str, batch: dict, imgsz: int, teacher: str = "", family: str = "yolov8"):
    """A closure running one ultralytics training iteration of ``family`` at ``scale`` on
    ``batch`` (with a ``teacher`` scale: its DistillationModel's, as its trainer wraps the
    student)."""
    import torch
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.distill_model import DistillationModel
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.torch_utils import ModelEMA

    model = DetectionModel(f"{family}{scale}.yaml", verbose=False)
    model.args = get_cfg(overrides={"imgsz": imgsz})
    if teacher:
        model = DistillationModel(DetectionModel(f"{family}{teacher}.yaml", verbose=False), model)
    model.train()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=0.01, momentum=0.937, nesterov=True,
    )
    ema = ModelEMA(model)
    b, m = batch["classes"].shape
    real = batch["mask"].reshape(-1)  # ultralytics' batch lists real boxes only
    boxes = batch["boxes"].reshape(-1, 4)[real] / imgsz
    xywh = np.concatenate([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], 1)
    torch_batch = {
        "img": torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).float() / 255,
        "batch_idx": torch.arange(b).repeat_interleave(m)[torch.from_numpy(real)].float(),
        "cls": torch.from_numpy(batch["classes"].reshape(-1, 1)[real]).float(),
        "bboxes": torch.from_numpy(xywh).float(),
    }

    def step():
        loss, _ = model(torch_batch)
        loss.sum().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
        optimizer.step()
        optimizer.zero_grad()
        ema.update(model)

    return step


def yolojax_step(scale: str, batch: int, imgsz: int, boxes: int, max_boxes: int,
                 dtype: str = "float32", teacher: str = "", family: str = "yolov8") -> Callable[[], None]:
    """A closure running one yolojax ``train_step`` (state kept between calls) of ``family`` at
    ``scale``, computing in ``dtype``; with a ``teacher`` scale, distilling from it."""
    from yolojax.loss import DetectionLoss, Distillation, feature_widths
    from yolojax.models import model_from_info
    from yolojax.models.naming import DISTILL_PROJECTOR
    from yolojax.train import TrainState, make_recipe, make_train_step
    from yolojax.train.step import train_step

    def init(module):
        return jax.jit(module.init, static_argnames="train")(jax.random.key(0), jnp.zeros((1, imgsz, imgsz, 3)),
                                                             train=False)

    def build(s: str):
        return model_from_info({"family": family, "scale": s, "num_classes": 80}, dtype=jnp.dtype(dtype))

    model = build(scale)
    variables = init(model)
    recipe = make_recipe(epochs=100, batch_size=batch, dataset_size=10_000, num_classes=80, optimizer="SGD",
                         warmup_epochs=0)
    teacher_vars, step = None, make_train_step(DetectionLoss(80))
    if teacher:
        teacher_model = build(teacher)
        teacher_vars, distill = init(teacher_model), Distillation(teacher_model, feature_widths(teacher_model))
        projector = distill.init_projector(jax.random.key(1), feature_widths(model))
        variables = {**variables, "params": {**variables["params"], DISTILL_PROJECTOR: projector}}
        step = jax.jit(lambda s, b: train_step(s, b, DetectionLoss(80), distill=distill), donate_argnums=0)
    state = [TrainState.create(model.apply, variables, dataclasses.replace(recipe, accumulate=1), teacher=teacher_vars)]
    device_batch = jax.device_put(random_batch(batch, imgsz, 80, boxes, max_boxes or None))

    def run() -> None:
        state[0], metrics = step(state[0], device_batch)
        jax.block_until_ready(metrics)

    return run


def ultralytics_step(scale: str, batch: int, imgsz: int, boxes: int, max_boxes: int,
                     threads: int, teacher: str = "", family: str = "yolov8") -> Callable[[], None]:
    """:func:`ultralytics_step_fn` on the same batch, with ``threads`` torch threads."""
    import torch

    torch.set_num_threads(threads)
    return ultralytics_step_fn(scale, random_batch(batch, imgsz, 80, boxes, max_boxes or None), imgsz, teacher,
                               family)


def main() -> None:
    reexec_with_malloc_tunables()  # as yolojax's commands do (the ultralytics worker: see --same-malloc)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="yolov8", choices=["yolov8", "yolo11"])
    parser.add_argument("--scales", nargs="+", default=["n", "s"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument("--same-malloc", action="store_true",
                        help="give ultralytics yolojax's glibc malloc tunables too (default: glibc's defaults)")
    parser.add_argument("--boxes", type=int, default=8, help="real boxes per image")
    parser.add_argument("--max-boxes", type=int, default=0, help="box rows per image (padding; 0: --boxes)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="yolojax's compute dtype")
    parser.add_argument("--teacher", default="", choices=["", "n", "s", "m", "l", "x"],
                        help="distil from a model of --family at this scale (ultralytics' distill_model)")
    args = parser.parse_args()

    import torch

    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; torch {torch.__version__} with "
          f"{args.threads} threads; yolojax in {args.dtype}; batch {args.batch} at {args.imgsz}, "
          f"{args.boxes} boxes per image in "
          f"{args.max_boxes or args.boxes} rows; each in its own process; ultralytics with "
          f"{'the same' if args.same_malloc else 'glibc default'} malloc settings; "
          f"{'teacher ' + args.family + args.teacher if args.teacher else 'no teacher'}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'model':8} {'compile s':>9} {'yolojax s':>9} {'ultralytics s':>13} {'ratio':>6}")
    ratios = []
    shape = (args.batch, args.imgsz, args.boxes, args.max_boxes)
    for scale in args.scales:
        ours = Worker(yolojax_step, scale, *shape, args.dtype, args.teacher, args.family)
        theirs = Worker(ultralytics_step, scale, *shape, args.threads, args.teacher, args.family,
                        environ=ultralytics_environ(args.same_malloc))
        compile_s = ours.first_run_seconds()
        theirs.first_run_seconds()
        jax_s, torch_s = alternate(ours, theirs, args.rounds)
        ours.close()
        theirs.close()
        ratios.append(torch_s / jax_s)
        print(f"{args.family + scale:8} {compile_s:>9.1f} {jax_s:>9.2f} {torch_s:>13.2f} {torch_s / jax_s:>6.2f}",
              flush=True)
    print(f"geometric-mean ratio (ultralytics / yolojax): {float(np.exp(np.mean(np.log(ratios)))):.2f}; "
          f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
