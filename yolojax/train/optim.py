"""Ultralytics' optimizer recipe: parameter groups, warmup, lr schedule, accumulation.

Everything here reproduces ``ultralytics.engine.trainer.BaseTrainer`` (8.4.190) as
pure functions of the batch iteration ``ni`` (0-based count of batches seen), so the train
step can evaluate the schedule inside ``jit``:

* parameter groups: ``weight`` (conv kernels, with weight decay), ``bn`` (BatchNorm scales,
  no decay), ``bias`` (every bias, no decay, its own warmup start lr) and ``frozen`` (the DFL
  projection, as ultralytics always freezes ``.dfl``, and the layers of ``freeze``: never
  updated, see :mod:`yolojax.train.freeze`);
* nominal batch ``nbs`` = 64: gradients accumulate over ``round(nbs / batch_size)`` batches
  and weight decay scales by ``batch_size * accumulate / nbs``;
* warmup over ``round(min(warmup_epochs, epochs - 1) * iters_per_epoch)`` iterations: lr
  rises linearly from 0 (bias: from ``warmup_bias_lr``), SGD momentum from
  ``warmup_momentum``, and the accumulation count from 1;
* per-epoch decay ``lf(epoch)``, linear or cosine, to ``lrf * lr0``; ultralytics resets its
  LambdaLR to ``last_epoch = -1`` at the end of ``_setup_train`` and steps it at the start of
  every epoch, so epoch ``e`` runs at ``lr0 * lf(e)`` (also the warmup target of epoch ``e``);
* ``optimizer='auto'``: AdamW with ``lr0 = round(0.002 * 5 / (4 + nc), 6)``, momentum 0.9
  and no bias warmup lr for runs of at most 10,000 iterations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

GROUPS = ("weight", "bn", "bias", "frozen")
OPTIMIZERS = ("SGD", "Adam", "AdamW", "auto")
NBS = 64  # ultralytics' nominal batch size.
AUTO_MAX_ITERATIONS = 10_000


@dataclass(frozen=True)
class Recipe:
    """A resolved ultralytics optimisation recipe (all derived numbers already computed).

    Attributes:
      optimizer: "SGD", "Adam" or "AdamW".
      lr0: initial (peak) learning rate.
      lrf: final lr as a fraction of lr0.
      momentum: SGD momentum / Adam beta1.
      weight_decay: decay of the ``weight`` group, already scaled by batch * accumulate / nbs.
      warmup_iters: iterations of warmup (0 for none).
      warmup_momentum: SGD momentum at the start of warmup.
      warmup_bias_lr: learning rate of the ``bias`` group at the start of warmup.
      epochs: number of epochs of the run.
      iters_per_epoch: batches per epoch.
      accumulate: nominal number of batches whose gradients are summed per update.
      cos_lr: cosine instead of linear per-epoch decay.
      grad_clip_norm: global-norm clip applied to the summed gradient before each update.
      frozen: ultralytics name substrings of the frozen layers (:mod:`yolojax.train.freeze`);
        their parameters get no gradient and no update.
    """

    optimizer: str
    lr0: float
    lrf: float
    momentum: float
    weight_decay: float
    warmup_iters: int
    warmup_momentum: float
    warmup_bias_lr: float
    epochs: int
    iters_per_epoch: int
    accumulate: int
    cos_lr: bool = False
    grad_clip_norm: float = 10.0
    frozen: tuple[str, ...] = (".dfl",)


def make_recipe(
    *,
    epochs: int,
    batch_size: int,
    dataset_size: int,
    num_classes: int,
    iters_per_epoch: int | None = None,
    optimizer: str = "auto",
    lr0: float = 0.01,
    lrf: float = 0.01,
    momentum: float = 0.937,
    weight_decay: float = 5e-4,
    warmup_epochs: float = 3.0,
    warmup_momentum: float = 0.8,
    warmup_bias_lr: float = 0.1,
    cos_lr: bool = False,
    nbs: int = NBS,
    frozen: tuple[str, ...] = (".dfl",),
) -> Recipe:
    """Resolve ultralytics' trainer arithmetic into a :class:`Recipe`.

    ``batch_size`` is the global batch; ``iters_per_epoch`` defaults to
    ``ceil(dataset_size / batch_size)`` (ultralytics' dataloader length without drop_last).
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if epochs < 1 or batch_size < 1 or dataset_size < 1:
        raise ValueError(
            f"epochs, batch_size and dataset_size must be >= 1, got {epochs}, {batch_size}, {dataset_size}"
        )
    nb = iters_per_epoch or math.ceil(dataset_size / batch_size)
    accumulate = max(round(nbs / batch_size), 1)
    decay = weight_decay * batch_size * accumulate / nbs
    accumulate = min(accumulate, nb * epochs)
    if optimizer == "auto":
        iterations = math.ceil(dataset_size / max(batch_size, nbs)) * epochs
        if iterations > AUTO_MAX_ITERATIONS:
            # ultralytics 8.4 picks its MuSGD here, which yolojax does not implement; SGD at
            # lr 0.01 is what ultralytics chose for long runs before MuSGD existed.
            optimizer, lr0, momentum = "SGD", 0.01, 0.9
        else:
            optimizer, lr0, momentum = "AdamW", round(0.002 * 5 / (4 + num_classes), 6), 0.9
        warmup_bias_lr = 0.0
    warmup_ep = min(warmup_epochs, max(epochs - 1, 0))
    warmup_iters = round(warmup_ep * nb) if warmup_ep > 0 else 0
    return Recipe(
        optimizer=optimizer, lr0=lr0, lrf=lrf, momentum=momentum, weight_decay=decay,
        warmup_iters=warmup_iters, warmup_momentum=warmup_momentum,
        warmup_bias_lr=warmup_bias_lr, epochs=epochs, iters_per_epoch=nb,
        accumulate=accumulate, cos_lr=cos_lr, frozen=tuple(frozen),
    )


def resolved_settings(recipe: Recipe) -> dict[str, Any]:
    """The optimisation values a run derives from its config (``optimizer='auto'``'s choice,
    the accumulation, the scaled weight decay, the warmup length), as JSON-able numbers."""
    return {"optimizer": recipe.optimizer, "lr0": recipe.lr0, "momentum": recipe.momentum,
            "weight_decay": recipe.weight_decay, "accumulate": recipe.accumulate,
            "warmup_iters": recipe.warmup_iters, "warmup_bias_lr": recipe.warmup_bias_lr,
            "iters_per_epoch": recipe.iters_per_epoch}


def describe_recipe(recipe: Recipe, *, optimizer: str, lr0: float, momentum: float, weight_decay: float) -> list[str]:
    """Lines telling the user what :func:`make_recipe` resolved: with ``optimizer='auto'`` first
    that the configured ``lr0`` and ``momentum`` are replaced (ultralytics prints the same
    notice), then the optimiser, lr0, momentum, scaled weight decay, accumulation and warmup."""
    lines = []
    if optimizer == "auto":
        lines.append(f"optimizer=auto chose {recipe.optimizer} with lr0={recipe.lr0:g} and momentum="
                     f"{recipe.momentum:g} for this run, in place of the configured lr0={lr0:g} and "
                     f"momentum={momentum:g} (set optimizer=SGD, Adam or AdamW to use those)")
    lines.append(f"optimizer {recipe.optimizer}: lr0 {recipe.lr0:g}, momentum {recipe.momentum:g}, weight_decay "
                 f"{recipe.weight_decay:g} ({weight_decay:g} scaled by batch_size x accumulate / nbs), gradients of "
                 f"{recipe.accumulate} batch(es) per update, warmup {recipe.warmup_iters} iterations "
                 f"(bias lr from {recipe.warmup_bias_lr:g})")
    return lines


def _lf(recipe: Recipe, epoch: int) -> float:
    """ultralytics' ``lf(epoch)`` in Python floats (float64), as its trainer evaluates it."""
    if recipe.cos_lr:
        return ((1 - math.cos(epoch * math.pi / recipe.epochs)) / 2) * (recipe.lrf - 1) + 1
    return max(1 - epoch / recipe.epochs, 0) * (1.0 - recipe.lrf) + recipe.lrf


def _per_epoch(recipe: Recipe, values: list[float], epoch: jax.Array | int) -> jax.Array:
    """``values[epoch]`` (one per epoch 0..epochs, rounded once to float32); epochs past the
    run read the last entry. A float64 table rather than float32 arithmetic: evaluating lf in
    float32 lost up to 5e-7 (relative) to cancellation in the last epochs."""
    table = jnp.asarray(values, jnp.float32)
    return table[jnp.clip(jnp.asarray(epoch, jnp.int32), 0, recipe.epochs)]


def lr_factor(recipe: Recipe, epoch: jax.Array | int) -> jax.Array:
    """ultralytics' ``lf(epoch)`` for integer epochs: 1 at epoch 0 decaying to ``lrf`` at ``epochs``."""
    return _per_epoch(recipe, [_lf(recipe, e) for e in range(recipe.epochs + 1)], epoch)


def _interp(x: jax.Array, x1: int, y0: jax.Array | float, y1: jax.Array | float) -> jax.Array:
    """np.interp(x, [0, x1], [y0, y1]) for integer-valued 0 <= x <= x1.

    Stepped from the nearer end, with ``x / x1`` or ``(x1 - x) / x1`` computed from integers:
    exact at both ends and about 1 float32 ulp everywhere. (``y0 + t * (y1 - y0)`` throughout
    lost ~2e-6 of the bias lr at ``x == x1``, where it falls from 0.1 to ~1e-3.)
    """
    d = y1 - y0
    return jnp.where(2 * x <= x1, y0 + (x / x1) * d, y1 - ((x1 - x) / x1) * d)


def _warmup_accumulate(recipe: Recipe, x: jax.Array) -> jax.Array:
    """``max(1, round(np.interp(x, [0, nw], [1, accumulate])))`` exactly as ultralytics
    evaluates it (float64, ties to even): float32 turns ties such as 12.5 into 12.500001.

    The staircase is computed once in numpy from the static recipe; ``thresholds[k]`` is the
    first iteration whose accumulate exceeds ``k + 1``.
    """
    nw = recipe.warmup_iters
    steps = np.maximum(1, np.interp(np.arange(nw + 1), [0, nw], [1, recipe.accumulate]).round()).astype(np.int64)
    thresholds = np.searchsorted(steps, np.arange(2, recipe.accumulate + 1), side="left")
    return (1 + jnp.sum(x >= jnp.asarray(thresholds, jnp.float32))).astype(jnp.int32)


def hyperparams(recipe: Recipe, ni: jax.Array | int) -> dict[str, jax.Array]:
    """The optimiser settings ultralytics uses at batch iteration ``ni``.

    Returns float32 scalars ``lr_weight``, ``lr_bn``, ``lr_bias``, ``momentum`` and int32
    ``accumulate`` (batches per update at this point of warmup).
    """
    ni = jnp.asarray(ni, jnp.int32)
    epoch = ni // recipe.iters_per_epoch
    # ultralytics' initial_lr * lf(epoch), in float64 like LambdaLR and the warmup block.
    target = _per_epoch(recipe, [recipe.lr0 * _lf(recipe, e) for e in range(recipe.epochs + 1)], epoch)
    nw = recipe.warmup_iters
    if nw == 0:
        return {
            "lr_weight": target, "lr_bn": target, "lr_bias": target,
            "momentum": jnp.float32(recipe.momentum), "accumulate": jnp.int32(recipe.accumulate),
        }
    in_warmup = ni <= nw
    x = jnp.minimum(ni, nw).astype(jnp.float32)
    # After warmup the lr is the scheduler's lr0 * lf(epoch); the warmup also ends on it.
    lr = jnp.where(in_warmup, _interp(x, nw, 0.0, target), target)
    lr_bias = jnp.where(in_warmup, _interp(x, nw, recipe.warmup_bias_lr, target), target)
    momentum = _interp(x, nw, recipe.warmup_momentum, recipe.momentum)
    if recipe.optimizer != "SGD":
        momentum = jnp.float32(recipe.momentum)  # ultralytics warms only SGD's momentum.
    accumulate = _warmup_accumulate(recipe, x)
    return {
        "lr_weight": lr, "lr_bn": lr, "lr_bias": lr_bias,
        "momentum": momentum.astype(jnp.float32), "accumulate": accumulate,
    }


def param_groups(params: Any, frozen: tuple[str, ...] = (".dfl",)) -> Any:
    """A pytree like ``params`` whose leaves name each parameter's group (see GROUPS);
    ``frozen``: name substrings of the frozen layers (:func:`yolojax.train.freeze.frozen_mask`)."""
    from yolojax.train.freeze import frozen_mask

    flat = traverse_util.flatten_dict(params)
    is_frozen = traverse_util.flatten_dict(frozen_mask(params, frozen))

    def group(path: tuple[str, ...]) -> str:
        if is_frozen[path]:
            return "frozen"
        if path[-1] == "bias":
            return "bias"
        if path[-1] == "scale":
            return "bn"
        return "weight"

    return traverse_util.unflatten_dict({p: group(p) for p in flat})


def _group_optimizer(name: str) -> optax.GradientTransformation:
    if name == "SGD":
        def factory(learning_rate, momentum, weight_decay):
            return optax.chain(
                optax.add_decayed_weights(weight_decay),
                optax.sgd(learning_rate, momentum, nesterov=True),
            )
    elif name == "Adam":
        def factory(learning_rate, momentum, weight_decay):
            return optax.chain(
                optax.add_decayed_weights(weight_decay),
                optax.adam(learning_rate, b1=momentum, b2=0.999, eps=1e-8),
            )
    elif name == "AdamW":
        def factory(learning_rate, momentum, weight_decay):
            return optax.adamw(learning_rate, b1=momentum, b2=0.999, eps=1e-8, weight_decay=weight_decay)
    else:
        raise ValueError(f"unknown optimizer {name!r}")
    return optax.inject_hyperparams(factory)


def make_optimizer(recipe: Recipe, params: Any) -> optax.GradientTransformation:
    """The per-group optax transformation; its hyperparameters are set each step by
    :func:`set_hyperparams`. Gradient clipping is applied by the train step, before."""
    inner = _group_optimizer(recipe.optimizer)
    transforms = {
        "weight": inner(learning_rate=0.0, momentum=recipe.momentum, weight_decay=recipe.weight_decay),
        "bn": inner(learning_rate=0.0, momentum=recipe.momentum, weight_decay=0.0),
        "bias": inner(learning_rate=0.0, momentum=recipe.momentum, weight_decay=0.0),
        "frozen": optax.set_to_zero(),
    }
    return optax.multi_transform(transforms, param_groups(params, recipe.frozen))


def set_hyperparams(opt_state: Any, hp: dict[str, jax.Array]) -> Any:
    """Write the learning rate of each group and the momentum into ``opt_state``."""
    inner_states = dict(opt_state.inner_states)
    for group in ("weight", "bn", "bias"):
        masked = inner_states[group]
        injected = masked.inner_state
        values = dict(injected.hyperparams)
        values["learning_rate"] = jnp.asarray(hp[f"lr_{group}"], values["learning_rate"].dtype)
        values["momentum"] = jnp.asarray(hp["momentum"], values["momentum"].dtype)
        inner_states[group] = masked._replace(inner_state=injected._replace(hyperparams=values))
    return opt_state._replace(inner_states=inner_states)
