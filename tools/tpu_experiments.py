"""Formulations of yolov8's memory-bound pieces, compiled for one TPU v5e chip without a TPU.

    ALLOW_MULTIPLE_LIBTPU_LOAD=1 JAX_PLATFORMS=cpu python tools/tpu_experiments.py [--batch 16 --imgsz 640]

(in a Python with jax[tpu]). Each experiment compiles the same mathematics two ways, forward
and backward in bfloat16 as the train step runs it, and prints XLA's FLOPs and bytes accessed
and the entry computation's laid-out input/output bytes (TPU tiles pad the minor dimensions to
128 lanes; tools/plan_hotspots.py). Estimates from the compiler, not timings:

* stem: yolov8's first convolution (3x3, stride 2, 3 -> 16 channels at imgsz) plain, and as a
  space-to-depth 2x2 convolution over 12 channels (the same sums, 16 taps instead of 9 with
  zeros);
* bn_stats: a BatchNorm's batch moments of a 16-channel 320x320 activation as two reductions
  (mean, mean of squares: yolojax.models.layers.BatchNorm) and as one reduction of both;
* narrow: a Conv-BN-SiLU block at 16 channels (yolov8n's model_2 bottleneck) against the same
  block at 128 channels and 1/8 of the pixels (the same bytes as shaped): what the lane
  padding of narrow layers costs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
from jax import lax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from yolojax.parallel.compiled import memory_traffic  # noqa: E402

BF16 = jnp.bfloat16


def conv(x, w, stride, padding):
    return lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    preferred_element_type=jnp.float32).astype(x.dtype)


def stem_plain(x, w):
    return conv(x, w, 2, ((1, 1), (1, 1)))


def s2d_kernel(w):
    """(3, 3, C, O) stride-2 kernel -> (2, 2, 4C, O) over space-to-depth input (tap a of
    3 at block offset u: a=0 -> (block -1, u=1), a=1 -> (0, 0), a=2 -> (0, 1))."""
    c, o = w.shape[2], w.shape[3]
    out = jnp.zeros((2, 2, 2, 2, c, o), w.dtype)  # (p, q, u, v, C, O)
    where = {0: (0, 1), 1: (1, 0), 2: (1, 1)}
    for a in range(3):
        for b in range(3):
            (p, u), (q, v) = where[a], where[b]
            out = out.at[p, q, u, v].set(w[a, b])
    return out.reshape(2, 2, 4 * c, o)


def stem_s2d(x, w):
    b, h, wd, c = x.shape
    blocks = x.reshape(b, h // 2, 2, wd // 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h // 2, wd // 2, 4 * c)
    return conv(blocks, s2d_kernel(w), 1, ((1, 0), (1, 0)))


def bn_two(x):
    x32 = x.astype(jnp.float32)
    return jnp.mean(x32, axis=(0, 1, 2)), jnp.mean(jnp.square(x32), axis=(0, 1, 2))


def bn_one(x):
    x32 = x.astype(jnp.float32)
    both = jnp.mean(jnp.stack([x32, jnp.square(x32)]), axis=(1, 2, 3))
    return both[0], both[1]


def block(x, w):
    y = conv(x, w, 1, ((1, 1), (1, 1))).astype(jnp.float32)
    mean, var = jnp.mean(y, axis=(0, 1, 2)), jnp.var(y, axis=(0, 1, 2))
    return jax.nn.silu((y - mean) * lax.rsqrt(var + 1e-3)).astype(x.dtype)


def train_like(f, argnums):
    """Forward and the gradients a train step needs (``argnums``: the kernel; an activation too
    where it has layers before it; never the image)."""
    def loss(*args):
        out = f(*args)
        outs = out if isinstance(out, tuple) else (out,)
        return sum(jnp.sum(o.astype(jnp.float32) ** 2) for o in outs)
    return jax.grad(loss, argnums=argnums)


def measure(name, f, shapes, device, argnums=(0, 1)):
    sharding = jax.sharding.SingleDeviceSharding(device)
    args = [jax.ShapeDtypeStruct(s, BF16, sharding=sharding) for s in shapes]
    compiled = jax.jit(train_like(f, argnums)).lower(*args).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    laid = sum(v[1] for v in memory_traffic(compiled.as_text()).values())
    print(f"  {name:34} FLOPs {cost['flops']:9.3g}  bytes accessed {cost['bytes accessed']:9.3g}  "
          f"laid-out I/O {laid:9.3g}  temp {compiled.memory_analysis().temp_size_in_bytes / 2**20:7.1f} MiB")
    return cost["bytes accessed"], laid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16, help="images per chip")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--topology", default="v5e:2x2")
    args = parser.parse_args()
    from jax.experimental import topologies

    device = topologies.get_topology_desc(topology_name=args.topology, platform="tpu").devices[0]
    b, s = args.batch, args.imgsz
    print(f"{device.device_kind}, {b} images per chip at {s} px, bfloat16, forward + backward")
    print("stem (model_0.conv, 3 -> 16, stride 2):")
    plain = measure("plain 3x3 stride 2", stem_plain, [(b, s, s, 3), (3, 3, 3, 16)], device, (1,))
    s2d = measure("space-to-depth 2x2 over 12 channels", stem_s2d, [(b, s, s, 3), (3, 3, 3, 16)], device, (1,))
    print(f"  -> space-to-depth: bytes accessed x{s2d[0] / plain[0]:.2f}, laid-out I/O x{s2d[1] / plain[1]:.2f}")
    print("BatchNorm moments of a 16-channel activation:")
    two = measure("two reductions (yolojax)", bn_two, [(b, s // 2, s // 2, 16)], device, (0,))
    one = measure("one reduction of [x, x^2]", bn_one, [(b, s // 2, s // 2, 16)], device, (0,))
    print(f"  -> one reduction: bytes accessed x{one[0] / two[0]:.2f}, laid-out I/O x{one[1] / two[1]:.2f}")
    print("Conv-BN-SiLU, the same bytes as shaped:")
    narrow = measure("16 channels at imgsz/4", block, [(b, s // 4, s // 4, 16), (3, 3, 16, 16)], device)
    wide = measure("128 channels at imgsz/4 / sqrt(8)", block,
                   [(b, int(s // 4 / 8 ** 0.5), int(s // 4 / 8 ** 0.5), 128), (3, 3, 128, 128)], device)
    print(f"  -> 16 channels cost x{narrow[0] / wide[0]:.2f} the bytes accessed of 128 at the same shaped size")


if __name__ == "__main__":
    main()
