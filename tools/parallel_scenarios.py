"""Run yolojax.parallel scenarios on simulated CPU devices and print/write JSON results.

  python tools/parallel_scenarios.py --devices 8 --scenarios ref,data8,... --out R.json
  python tools/parallel_scenarios.py --devices 2 --coordinator 127.0.0.1:PORT \
      --num-processes 2 --process-id I --scenarios multihost --out R.json   (per process)

Each scenario trains yolov8n (--family yolo11: yolo11n) with 3 classes at 128 px (--imgsz),
global batch 8, SGD (nesterov, weight decay; --optimizer AdamW to compare) with one update per
batch, for 3 steps from the same host-side initial state and batches, and is compared with the
one-device run ("ref"): per leaf, max|a - ref| / max(max|ref|, 1e-12) (relative to the leaf's
largest magnitude: elementwise relative error is ill-posed for entries near 0).

--dtype float32 (default), float64 (jax_enable_x64, model and loss in float64) or bfloat16
(bfloat16 compute, float32 parameters, statistics and loss: dtype=bfloat16).
"mixed" (meant for --family yolo11) is one data=2 x model=4 mesh whose rules give each tactic
some layers (MIXED_RULES): the backbone's first layers replicated (data parallel), the C2PSA
attention (qkv, the depthwise positional conv) and the Detect class branch's first depthwise
step tensor-parallel, everything else fsdp (the other depthwise kernels among them).
Scenarios named *_nosync run with sync_bn=False (each device's BatchNorm statistics); their
reference is "ref_groups8", one device normalising each eighth of the batch by itself.
--perturb EPS adds a "control": the one-device run from params * (1 + EPS * N(0, 1)).
Measured: in float32 this problem amplifies rounding-level differences ~1e3x in the first
step and ~10x per step after (BatchNorm biases start at 0, so their values are the updates
themselves, and their gradients cancel heavily): the 1e-7 control ends ~1e-2 from the
reference, and no float32 implementation that sums in another order can be closer. In
float64 the same amplification leaves ~1e-11, so float64 runs test the parallel paths'
equivalence to 1e-5 and beyond. Used by tests/test_parallel.py; also a runnable demo.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def parse():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--scenarios", default="ref,data8,data4_model2_tp,data2_model4_tp,fsdp8,pmap8,memory_x")
    ap.add_argument("--out", default=None, help="write JSON results here")
    ap.add_argument("--save-params", default=None, help="dir: write <scenario>.npz of final params")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--family", default="yolov8", help="model family (yolojax.models.registry): yolov8, yolo11")
    ap.add_argument("--imgsz", type=int, default=128)
    ap.add_argument("--optimizer", default="SGD", choices=["SGD", "AdamW"],
                    help="SGD (default): the update is linear in the gradient, so runs that "
                         "differ only in float summation order stay within ~1e-6; AdamW's first "
                         "steps are ~lr*sign(g), which flips for near-zero gradient entries")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"],
                    help="float64 (jax_enable_x64; model, statistics and loss in float64) makes "
                         "float summation-order noise ~1e-16, so any difference that remains is "
                         "an implementation error")
    ap.add_argument("--perturb", type=float, default=0.0,
                    help="with 'ref': also run a one-device control from the initial params "
                         "times (1 + PERTURB * N(0, 1)): the problem's own sensitivity")
    ap.add_argument("--coordinator", default=None)
    ap.add_argument("--num-processes", type=int, default=None)
    ap.add_argument("--process-id", type=int, default=None)
    return ap.parse_args()


ARGS = parse()
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={ARGS.devices}"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import dataclasses  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

jax.config.update("jax_enable_x64", ARGS.dtype == "float64")
import numpy as np  # noqa: E402

from yolojax import parallel as par  # noqa: E402
from yolojax.data.sources.synthetic import rectangles_batch  # noqa: E402
from yolojax.loss import DetectionLoss  # noqa: E402
from yolojax.models import YOLOv8  # noqa: E402
from yolojax.models.registry import get_family  # noqa: E402
from yolojax.train import TrainState, loss_step, make_recipe, make_train_step  # noqa: E402

IMGSZ, NC, BATCH = ARGS.imgsz, 3, 8
FAMILY = get_family(ARGS.family)


def recipe():
    if ARGS.optimizer == "SGD":
        kw = dict(optimizer="SGD", lr0=0.01, momentum=0.937)
    else:
        kw = dict(optimizer="AdamW", lr0=0.002, momentum=0.9)
    r = make_recipe(epochs=100, batch_size=BATCH, dataset_size=BATCH, num_classes=NC,
                    warmup_epochs=0, **kw)
    return dataclasses.replace(r, accumulate=1)


DTYPE = jnp.dtype(ARGS.dtype)
PARAM_DTYPE = jnp.float32 if DTYPE == jnp.bfloat16 else DTYPE  # mixed precision keeps float32 params
MODEL = FAMILY.module(scale="n", num_classes=NC, dtype=DTYPE, param_dtype=PARAM_DTYPE)
LOSS = DetectionLoss(NC)


def host_state():
    """The initial TrainState on the host: float32 init (the same values for every
    --dtype), cast to the parameter dtype. Parameter shapes do not depend on the image size,
    so the init traces a 64 px input."""
    model32 = FAMILY.module(scale="n", num_classes=NC)
    variables = jax.jit(lambda: model32.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))()
    variables = jax.tree.map(lambda x: x.astype(PARAM_DTYPE), variables)
    return jax.device_get(TrainState.create(MODEL.apply, variables, recipe()))


# Pixel noise: see rectangles_batch (flat rectangles make exact assigner ties).
BATCHES = [rectangles_batch(BATCH, IMGSZ, NC, seed=s, noise=40) for s in range(ARGS.steps)]


def to_host(tree):
    """Global arrays -> numpy; replicated leaves read locally, sharded ones gathered."""
    def get(x):
        if x.is_fully_addressable:
            return np.asarray(x)
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return jax.tree.map(get, tree)


def flat(tree):
    return {par.path_str(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def run_steps(step_fn, state, mesh=None):
    losses, t0 = [], time.time()
    for i, b in enumerate(BATCHES):
        if mesh is not None:
            rows = par.process_batch_rows(BATCH, mesh)
            b = par.place_batch({k: v[rows] for k, v in b.items()}, mesh)
        state, metrics = step_fn(state, b)
        losses.append(float(metrics["loss"]))
        if i == 0:
            t_first = time.time() - t0
    return state, losses, t_first, time.time() - t0


SCENARIOS = {
    # name: (mode, data, model, rules, n_devices, sync_bn)
    "data8": ("jit", 8, 1, "data", 8, True),
    "data4_model2_tp": ("jit", 4, 2, "tp", 8, True),
    "data2_model4_tp": ("jit", 2, 4, "tp", 8, True),
    "fsdp8": ("jit", 8, 1, "fsdp", 8, True),
    "pmap8": ("pmap", 8, 1, "data", 8, True),
    "data4": ("jit", 4, 1, "data", 4, True),
    "multihost": ("jit", 4, 1, "data", 4, True),
    "data8_nosync": ("jit", 8, 1, "data", 8, False),
    "pmap8_nosync": ("pmap", 8, 1, "data", 8, False),
    "mixed": ("jit", 2, 4, "mixed", 8, True),
}

# "mixed": every tactic on one mesh, written for yolo11n's parameter paths.
MIXED_RULES = [
    (r"^model_[0-4]/", "replicate"),  # the first backbone layers: data parallel only
    (r"^model_10/", "tp"),  # C2PSA: the attention's qkv (2 heads of 128 channels, split in 4), pe, proj, ffn
    (r"^model_\d+/cv3_\d_0_", "tp"),  # the Detect class branch's first depthwise + 1x1 step
    (".*", "fsdp"),  # the rest, the second depthwise steps cv3_<i>_1_0 among them (GSPMD warns of a full
]                    # rematerialisation there: their channels over 'data' as the batch is; correct, not fast)

# Leaves whose compiled shardings the tests check.
TP_KERNEL = "model_2/cv1/conv/kernel"  # (1, 1, 32, 32) on yolov8n
TP_BN = "model_2/cv1/bn/scale"
FSDP_KERNEL = "model_7/conv/kernel"  # (3, 3, 128, 256)
# yolo11n's new kinds of leaves, for "mixed": the attention's qkv (1, 1, 128, 256) and
# depthwise pe (3, 3, 1, 128) under tp; the Detect class branch's depthwise kernels under tp
# (3, 3, 1, 64) and fsdp (3, 3, 1, 64).
WATCHED = (TP_KERNEL, TP_BN, FSDP_KERNEL, "model_10/m_0/attn/qkv/conv/kernel", "model_10/m_0/attn/pe/conv/kernel",
           "model_23/cv3_0_0_0/conv/kernel", "model_23/cv3_0_1_0/conv/kernel", "model_23/cv3_0_1_0/bn/scale")


def compiled_facts(step_fn, state, mesh):
    """The compiled step's parameter shardings (of the leaves the tests check) and its
    collectives (yolojax.parallel.compiled: op, dtype, count, bytes)."""
    from yolojax.parallel.compiled import collectives

    b = BATCHES[0]
    placed = par.place_batch({k: v[par.process_batch_rows(BATCH, mesh)] for k, v in b.items()}, mesh)
    compiled = step_fn.lower(state, placed).compile()
    in_state = compiled.input_shardings[0][0]
    params_sh = flat(jax.tree.map(lambda s: np.array(str(tuple(s.spec)) if hasattr(s, "spec") else "?"),
                                  in_state.params, is_leaf=lambda x: hasattr(x, "spec")))
    specs = {k: str(v) for k, v in params_sh.items() if k in WATCHED}
    return specs, [c.as_dict() for c in collectives(compiled.as_text(), mesh.size)]


def run_reference(name, init, model):
    """One device, ``model`` (MODEL, or MODEL with bn_groups), from ``init``."""
    t0 = time.time()
    step = make_train_step(LOSS)
    # A copy: device_put may alias numpy buffers zero-copy on CPU, and the step donates.
    state = jax.device_put(jax.tree.map(lambda x: np.array(x, copy=True), init.replace(apply_fn=model.apply)),
                           jax.devices()[0])
    state, losses, t_first, _ = run_steps(step, state)
    ref = {"losses": losses, "params": flat(jax.device_get(state.params)),
           "batch_stats": flat(jax.device_get(state.batch_stats))}
    if ARGS.save_params:
        np.savez(os.path.join(ARGS.save_params, f"{name}.npz"), **ref["params"])
    return ref, {"losses": losses, "first_step_s": t_first, "total_s": time.time() - t0}, step


def main():
    if ARGS.coordinator:
        par.initialize_distributed(ARGS.coordinator, ARGS.num_processes, ARGS.process_id)
    names = [s for s in ARGS.scenarios.split(",") if s]
    init = host_state()
    out = {"devices": jax.device_count(), "process_count": jax.process_count(), "scenarios": {}}
    refs = {}
    if "ref" in names:
        refs["ref"], out["scenarios"]["ref"], step = run_reference("ref", init, MODEL)
        if ARGS.perturb:
            out["scenarios"]["control"] = control(step, init, refs["ref"])
    if "ref_groups8" in names:
        refs["ref_groups8"], out["scenarios"]["ref_groups8"], _ = run_reference(
            "ref_groups8", init, MODEL.clone(bn_groups=8))
    for name in names:
        if name in ("ref", "ref_groups8", "memory_x"):
            continue
        t0 = time.time()
        mode, data, model, rules, ndev, sync_bn = SCENARIOS[name]
        rules = MIXED_RULES if rules == "mixed" else rules
        mesh = par.make_mesh(data, model, jax.devices()[:ndev])
        step, shardings = par.make_parallel_train_step(mode, loss_step(LOSS), mesh, init, rules, sync_bn=sync_bn)
        state = par.shard_state(init, shardings)
        res = {"mesh": {k: int(v) for k, v in mesh.shape.items()}, "mode": mode, "rules": rules, "sync_bn": sync_bn}
        ref = refs.get("ref" if sync_bn else "ref_groups8")
        if mode == "jit":
            res["compiled_specs"], res["collectives"] = compiled_facts(step, state, mesh)
            res["table"] = par.sharding_table(state.params)
        state, losses, t_first, t_all = run_steps(step, state, mesh)
        res["result_specs"] = {k: str(tuple(v.sharding.spec)) for k, v in
                               ((par.path_str(p), v) for p, v in
                                jax.tree_util.tree_leaves_with_path(state.params))
                               if k in WATCHED}
        res["opt_state_specs"] = sorted({  # momentum buffers of FSDP_KERNEL
            str(tuple(v.sharding.spec)) for p, v in jax.tree_util.tree_leaves_with_path(state.opt_state)
            if par.path_str(p).endswith(FSDP_KERNEL) and v.ndim == 4})
        res["losses"] = losses
        params = flat(to_host(state.params))
        stats = flat(to_host(state.batch_stats))
        if ref is not None:
            res.update(compare(losses, params, stats, ref))
            res["param_changed"] = max(
                float(np.max(np.abs(params[k] - np.asarray(v)))) for k, v in flat(init.params).items())
        if not sync_bn and "ref" in refs:  # how far per-device statistics move the run from global ones
            res["vs_sync"] = compare(losses, params, stats, refs["ref"])
        if ARGS.save_params and par.is_main_process():
            np.savez(os.path.join(ARGS.save_params, f"{name}.npz"), **params)
        res["first_step_s"], res["total_s"] = t_first, time.time() - t0
        out["scenarios"][name] = res
    if "memory_x" in names:
        out["scenarios"]["memory_x"] = memory_x()
    text = json.dumps(out, indent=1)
    if ARGS.out and par.is_main_process():
        with open(ARGS.out, "w") as f:
            f.write(text)
    if par.is_main_process():
        for name, res in out["scenarios"].items():
            if "table" in res:
                print(f"== {name} sharding table (params) ==\n{res['table']}")
        print(json.dumps({n: {k: v for k, v in r.items() if k != "table"}
                          for n, r in out["scenarios"].items()}, indent=1))


def compare(losses, params, stats, ref):
    """Deviation from the one-device run: loss_rel (max over steps, relative), param_rel and
    stats_rel (max over leaves of max|x - ref| / max|ref|)."""
    def leaf_rel(a, b):
        return max(float(np.max(np.abs(a[k] - v)) / max(float(np.max(np.abs(v))), 1e-12)) for k, v in b.items())
    return {"loss_rel": max(abs(a - b) / abs(b) for a, b in zip(losses, ref["losses"])),
            "param_rel": leaf_rel(params, ref["params"]), "stats_rel": leaf_rel(stats, ref["batch_stats"])}


def control(step, init, ref):
    """The one-device run again from params scaled by (1 + perturb * N(0, 1)): how far
    rounding-level differences alone carry this problem in 3 steps (its noise floor)."""
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda x: (x * (1 + ARGS.perturb * rng.standard_normal(x.shape))).astype(x.dtype),
                          init.params)
    state = jax.device_put(jax.tree.map(lambda x: np.array(x, copy=True), init.replace(params=params)),
                           jax.devices()[0])
    state, losses, _, _ = run_steps(step, state)
    res = {"losses": losses, "perturb": ARGS.perturb}
    res.update(compare(losses, flat(jax.device_get(state.params)), flat(jax.device_get(state.batch_stats)), ref))
    return res


def memory_x():
    """yolov8x params + optimizer state per device: fsdp over data=8 vs replicated,
    from jax.eval_shape and the shardings' shard_shape (nothing materialised)."""
    model = YOLOv8(scale="x", num_classes=80)

    def create():
        v = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
        return TrainState.create(model.apply, v, recipe())

    abstract = jax.eval_shape(create)
    mesh = par.make_mesh(8, 1, jax.devices()[:8])
    fsdp = par.state_shardings(abstract, mesh, "fsdp")
    rep = par.state_shardings(abstract, mesh, "data")
    part = lambda t: (t.params, t.opt_state)  # noqa: E731
    b_fsdp = par.per_device_bytes(part(abstract), part(fsdp))
    b_rep = par.per_device_bytes(part(abstract), part(rep))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
    return {"params": n_params, "fsdp_bytes": b_fsdp, "replicated_bytes": b_rep,
            "ratio": b_fsdp / b_rep}


if __name__ == "__main__":
    main()
