"""Sharded train steps: the jit (GSPMD) path and the pmap-style (shard_map) path.

Both wrap a step function ``step_fn(state, batch, axis_name=None) -> (state, metrics)`` (e.g.
:func:`yolojax.train.step.loss_step`'s, over a :class:`yolojax.train.TrainState` and DESIGN.md's
batch) and give the same numbers as one device (BatchNorm statistics and the loss
normaliser over the global batch). With ``sync_bn=False`` BatchNorm normalises each
device's rows with their own statistics instead (ultralytics' DDP), which takes the
BatchNorm all-reduces off the forward pass; the running statistics move by the devices'
mean. The wrappers only place and shard; the step function is the caller's, so this package
imports nothing from yolojax.train.

* ``mode="jit"``: ``jax.jit`` with in/out shardings from the partition rules
  (:func:`yolojax.parallel.rules.state_shardings`), the batch over 'data', the state
  donated. XLA inserts the collectives (gradient all-reduce for replicated params,
  all-gather / reduce-scatter for fsdp, activation collectives for tp).
* ``mode="pmap"``: ``jax.shard_map`` over the 'data' axis with the state replicated and
  explicit collectives: the step function gets ``axis_name='data'``, BatchNorm ``pmean``s
  its moments (``bn_axis_name``), the loss ``psum``s its normaliser, gradients are summed
  over the axis by shard_map's autodiff (the transpose of the replicated params' implicit
  broadcast is a psum) and metrics are psum'ed.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from yolojax.ops.conv import portable_convolutions
from yolojax.parallel.mesh import DATA, MODEL, batch_sharding, replicated
from yolojax.parallel.rules import Rules, state_shardings

MODES = ("jit", "pmap")


# -- placing data ----------------------------------------------------------------------------

def shard_array(x: Any, sharding: NamedSharding) -> jax.Array:
    """A global jax.Array from a host value that every process holds in full (e.g. the
    initial state computed identically everywhere); each process fills its own shards.

    Every shard is a fresh copy: on CPU, XLA may alias a numpy buffer zero-copy, and a train
    step that donates the state would then overwrite the caller's host array in place."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: np.array(x[idx], copy=True))


def shard_state(state: Any, shardings: Any) -> Any:
    """Place a (host or single-device) pytree onto ``shardings`` (a matching pytree)."""
    return jax.tree.map(shard_array, state, shardings)


def init_sharded_state(create_fn: Callable[[], Any], mesh: Mesh, rules: str | Rules):
    """Build the state directly in its sharded layout: ``create_fn()`` (e.g.
    ``lambda: TrainState.create(model.apply, model.init(key, x), recipe)``) runs under
    ``jit`` with the rules' out_shardings, so no device ever holds the whole state.
    Returns ``(state, shardings)``."""
    abstract = jax.eval_shape(create_fn)
    shardings = state_shardings(abstract, mesh, rules)
    return jax.jit(create_fn, out_shardings=shardings)(), shardings


def process_batch_rows(global_batch_size: int, mesh: Mesh) -> slice:
    """The rows of the global batch that this process must load (and pass to
    :func:`place_batch`), as the mesh's 'data' sharding lays them out: a contiguous slice
    (``global/process_count`` rows on a homogeneous multi-host mesh; everything on one)."""
    sharding = batch_sharding(mesh)
    rows = set()
    for index in sharding.addressable_devices_indices_map((global_batch_size,)).values():
        rows.update(range(*index[0].indices(global_batch_size)))
    lo, hi = min(rows), max(rows) + 1
    if hi - lo != len(rows):
        raise ValueError("this process's batch rows are not contiguous on this mesh")
    return slice(lo, hi)


def local_data_shards(mesh: Mesh, global_batch_size: int) -> int:
    """How many distinct 'data' shards of the global batch this process's devices hold (the
    groups of a device-mode batch, :mod:`yolojax.data.device.params`)."""
    sharding = batch_sharding(mesh)
    index_map = sharding.addressable_devices_indices_map((global_batch_size,))
    return len({index[0].indices(global_batch_size) for index in index_map.values()})


def place_batch(local_batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """Process-local batch (this process's rows, :func:`process_batch_rows`) -> global
    arrays sharded over 'data' via ``jax.make_array_from_process_local_data``."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local_batch.items()}


# -- activation sharding constraints ---------------------------------------------------------

def constrained_apply(apply_fn: Callable, mesh: Mesh) -> Callable:
    """``apply_fn`` with the images and head outputs constrained to batch-over-'data'
    (GSPMD propagates the rest; under tp, weights split over 'model' make the conv outputs
    channel-sharded there)."""
    data = NamedSharding(mesh, P(DATA))

    def apply(variables, images, *args, **kwargs):
        images = jax.lax.with_sharding_constraint(images, data)
        out = apply_fn(variables, images, *args, **kwargs)
        if isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], (list, tuple)):
            feats, updates = out
            feats = [jax.lax.with_sharding_constraint(f, data) for f in feats]
            return feats, updates
        return jax.lax.with_sharding_constraint(out, data) if not isinstance(out, (list, tuple)) else out

    return apply


# -- train steps -----------------------------------------------------------------------------

def make_jit_train_step(step_fn: Callable, mesh: Mesh, shardings: Any,
                        constrain_activations: bool = True, sync_bn: bool = True,
                        model: Any | None = None) -> Callable:
    """``jit(step_fn)`` with the state's in/out shardings (from
    :func:`yolojax.parallel.rules.state_shardings`), batch over 'data', replicated
    metrics, and the input state donated. ``step_fn(state, batch)`` runs without an axis
    name: GSPMD inserts the collectives. ``sync_bn=False`` runs ``model`` (default: the
    module of ``state.apply_fn``) with ``bn_groups`` = the mesh's 'data' size, so each
    device's rows are normalised by their own statistics."""
    groups = 1 if sync_bn else mesh.shape[DATA]

    def step(state, batch):
        inner = state
        if groups > 1:
            module = model if model is not None else _module_of(state.apply_fn)
            inner = state.replace(apply_fn=module.clone(bn_groups=groups).apply)
        if constrain_activations:
            inner = inner.replace(apply_fn=constrained_apply(inner.apply_fn, mesh))
        new_state, metrics = step_fn(inner, batch)
        return new_state.replace(apply_fn=state.apply_fn), metrics

    return jax.jit(
        step,
        in_shardings=(shardings, batch_sharding(mesh)),
        out_shardings=(shardings, replicated(mesh)),
        donate_argnums=0,
    )


def _module_of(apply_fn: Callable) -> Any:
    module = getattr(apply_fn, "__self__", None)
    if module is None or not hasattr(module, "clone"):
        raise ValueError("pass model=: state.apply_fn is not a bound Flax module's apply")
    return module


def make_pmap_train_step(step_fn: Callable, mesh: Mesh, model: Any | None = None, sync_bn: bool = True) -> Callable:
    """Data parallel with replicated state and explicit collectives (``parallel.mode='pmap'``).

    ``jit(shard_map(step_fn))`` over the mesh's 'data' axis ('model' must be 1): the
    state is replicated (``P()``), the batch split over 'data'. Inside, the model is
    ``model.clone(bn_axis_name='data')`` (``model`` defaults to the module whose ``apply``
    is ``state.apply_fn``) and ``step_fn(state, batch, axis_name='data')`` reduces its loss
    over the axis (:func:`yolojax.train.step.loss_step` gives the loss that axis name).
    Each device differentiates ``total_local_share * B_global``; the sum over devices of
    that is the one-device objective ``total * B_global``, so the summed gradient, BN
    statistics, loss and update equal the one-device run up to float summation order.
    Place the state with ``replicated(mesh)`` shardings and batches with
    :func:`place_batch`. ``sync_bn=False``: BatchNorm without the axis (each device's own
    statistics), its new running statistics averaged over the axis as the model returns them.
    """
    if mesh.shape.get(MODEL, 1) != 1:
        raise ValueError(f"parallel.mode='pmap' is data parallel only; got mesh {dict(mesh.shape)}")

    def step(state, batch):
        module = model if model is not None else _module_of(state.apply_fn)
        apply = module.clone(bn_axis_name=DATA).apply if sync_bn else _mean_running_stats(module.apply)
        with portable_convolutions():  # XLA's own convolution gradients inside shard_map
            new_state, metrics = step_fn(state.replace(apply_fn=apply), batch, axis_name=DATA)
        return new_state.replace(apply_fn=state.apply_fn), metrics

    mapped = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(DATA)), out_specs=(P(), P()))
    return jax.jit(
        mapped,
        in_shardings=(replicated(mesh), batch_sharding(mesh)),
        out_shardings=(replicated(mesh), replicated(mesh)),
        donate_argnums=0,
    )


def _mean_running_stats(apply_fn: Callable) -> Callable:
    """``apply_fn`` whose returned ``batch_stats`` updates are averaged over 'data' (inside
    shard_map), so that per-device BatchNorm leaves the replicated state replicated."""

    def apply(variables, images, *args, **kwargs):
        out = apply_fn(variables, images, *args, **kwargs)
        if kwargs.get("mutable") and isinstance(out, tuple) and "batch_stats" in out[1]:
            feats, updates = out
            return feats, {**updates, "batch_stats": jax.lax.pmean(updates["batch_stats"], DATA)}
        return out

    return apply


def make_parallel_train_step(mode: str, step_fn: Callable, mesh: Mesh, state: Any,
                             rules: str | Rules = "data", model: Any | None = None, sync_bn: bool = True):
    """Settings-level entry point: returns ``(jitted step, state_shardings)`` for
    ``parallel.mode`` ``"jit"`` (shardings from ``rules``) or ``"pmap"`` (replicated).
    ``step_fn(state, batch, axis_name=None)`` is the step to wrap; ``state`` may be
    concrete or abstract (``jax.eval_shape``), so pass ``model`` (the module) with an
    abstract state and ``sync_bn=False``."""
    if mode == "jit":
        shardings = state_shardings(state, mesh, rules)
        return make_jit_train_step(step_fn, mesh, shardings, sync_bn=sync_bn, model=model), shardings
    if mode == "pmap":
        rep = replicated(mesh)
        shardings = jax.tree.map(lambda _: rep, state)
        return make_pmap_train_step(step_fn, mesh, model, sync_bn=sync_bn), shardings
    raise ValueError(f"parallel.mode must be one of {MODES}, got {mode!r}")
