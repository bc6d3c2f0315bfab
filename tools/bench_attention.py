"""YOLO11's attention block (C2PSA, layer 10) on XLA:CPU beside ultralytics' PyTorch one.

    YOLO_OFFLINE=1 python tools/bench_attention.py --scales n s --batch 8 --imgsz 640 [--rounds 10]

The block runs alone, forward and backward (the gradients of its parameters and input from
the sum of its output), on the input it gets in YOLO11 at ``--imgsz``: (B, imgsz/32, imgsz/32,
C) with C = 256 (n) or 512 (s), i.e. 400 positions at 640 px. Both sides build the block with
the same random weights (yolojax's variables converted from ultralytics' state dict) and run
in their own processes (tools/side_by_side.py), alternating; the table shows median
milliseconds per forward + backward, the ratio ultralytics / yolojax (> 1: yolojax is faster),
and, for yolojax, the block's share of its whole train step's FLOPs by XLA's cost analysis.
Needs the [dev] extra (torch, ultralytics).
"""

from __future__ import annotations

import argparse
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from side_by_side import Worker, alternate, ultralytics_environ
from yolojax.runtime import reexec_with_malloc_tunables


def _torch_block(scale: str):
    """ultralytics' C2PSA of yolo11{scale} (layer 10), random init with torch seed 0, train mode."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    return DetectionModel(f"yolo11{scale}.yaml", verbose=False).model[10].train()


def _input(scale: str, batch: int, imgsz: int) -> np.ndarray:
    from yolojax.models.yolo11 import SCALES

    side = imgsz // 32
    return np.random.default_rng(0).standard_normal((batch, side, side, SCALES[scale].channels(1024)), np.float32)


def yolojax_block(scale: str, batch: int, imgsz: int) -> Callable[[], None]:
    """A closure running yolojax's C2PSA forward + backward (jit) on the fixed input."""
    from yolojax.models.yolo11 import LAYERS, SCALES
    from yolojax.models.yolo11_layers import C2PSA
    from yolojax.weights.ultralytics import torch_key_to_flax, unflatten_tree

    block = C2PSA(features=SCALES[scale].channels(1024), n=SCALES[scale].repeats(LAYERS[10][1]))
    flat = {}
    for key, value in _torch_block(scale).state_dict().items():
        target = torch_key_to_flax(key, value.ndim)
        if target is not None:
            array = value.numpy()
            flat[target] = array.transpose(2, 3, 1, 0) if target[-1] == "kernel" else array
    variables = jax.device_put(unflatten_tree(flat))
    x = jax.device_put(_input(scale, batch, imgsz))

    def loss(params, x):
        out, _ = block.apply({**variables, "params": params}, x, True, mutable=["batch_stats"])
        return jnp.sum(out)

    step = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return lambda: jax.block_until_ready(step(variables["params"], x))


def ultralytics_block(scale: str, batch: int, imgsz: int, threads: int) -> Callable[[], None]:
    """A closure running ultralytics' C2PSA forward + backward on the same input (NCHW)."""
    import torch

    torch.set_num_threads(threads)
    block = _torch_block(scale)
    x = torch.from_numpy(_input(scale, batch, imgsz)).permute(0, 3, 1, 2).contiguous().requires_grad_(True)

    def run() -> None:
        block(x).sum().backward()
        block.zero_grad(set_to_none=True)
        x.grad = None

    return run


def step_flops_share(scale: str, batch: int, imgsz: int) -> float:
    """The C2PSA block's share of yolojax's YOLO11 forward + backward FLOPs (XLA cost analysis)."""
    from yolojax.models import model_from_info
    from yolojax.models.yolo11 import LAYERS, SCALES
    from yolojax.models.yolo11_layers import C2PSA

    def flops(fn, *args) -> float:
        return float(jax.jit(fn).lower(*args).compile().cost_analysis()["flops"])

    model = model_from_info({"family": "yolo11", "scale": scale, "num_classes": 80})
    images = jax.ShapeDtypeStruct((batch, imgsz, imgsz, 3), jnp.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))

    def whole(v, x):
        return jax.grad(lambda p: sum(jnp.sum(o) for o in model.apply({**v, "params": p}, x, True,
                                                                          mutable=["batch_stats"])[0]))(v["params"])

    block = C2PSA(features=SCALES[scale].channels(1024), n=SCALES[scale].repeats(LAYERS[10][1]))
    block_vars = jax.eval_shape(lambda: {"params": variables["params"]["model_10"],
                                         "batch_stats": variables["batch_stats"]["model_10"]})
    x = jax.ShapeDtypeStruct(_input(scale, batch, imgsz).shape, jnp.float32)

    def part(v, x):
        return jax.grad(lambda p: jnp.sum(block.apply({**v, "params": p}, x, True, mutable=["batch_stats"])[0]))(
            v["params"])

    return flops(part, block_vars, x) / flops(whole, variables, images)


def main() -> None:
    reexec_with_malloc_tunables()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", nargs="+", default=["n", "s"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    args = parser.parse_args()

    import torch

    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; torch {torch.__version__} with {args.threads} "
          f"threads; C2PSA forward + backward, batch {args.batch} at {args.imgsz} px; load average "
          f"{os.getloadavg()[0]:.2f}")
    print(f"{'model':8} {'yolojax ms':>10} {'ultralytics ms':>14} {'ratio':>6} {'share of step FLOPs':>20}")
    for scale in args.scales:
        ours = Worker(yolojax_block, scale, args.batch, args.imgsz)
        theirs = Worker(ultralytics_block, scale, args.batch, args.imgsz, args.threads,
                        environ=ultralytics_environ(False))
        ours.first_run_seconds()
        theirs.first_run_seconds()
        jax_s, torch_s = alternate(ours, theirs, args.rounds)
        ours.close()
        theirs.close()
        share = step_flops_share(scale, args.batch, args.imgsz)
        print(f"{'yolo11' + scale:8} {1e3 * jax_s:>10.1f} {1e3 * torch_s:>14.1f} {torch_s / jax_s:>6.2f} "
              f"{100 * share:>19.1f}%", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
