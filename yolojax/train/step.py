"""One training iteration: forward, loss, gradient accumulation, update, EMA."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from yolojax.data.device.augment import batch_images
from yolojax.loss.distill import detect_inputs
from yolojax.train.ema import ema_update
from yolojax.train.freeze import frozen_mask
from yolojax.train.optim import hyperparams, set_hyperparams
from yolojax.train.state import TrainState


def clip_coefficient(grad_norm: jax.Array, max_norm: float) -> jax.Array:
    """torch.nn.utils.clip_grad_norm_'s factor: min(1, max_norm / (grad_norm + 1e-6))."""
    return jnp.minimum(max_norm / (grad_norm + 1e-6), 1.0)


def bn_l1_gradient(params: Any, bn_l1: float) -> Any:
    """Network slimming's sparsity term (Liu et al. 2017, "Learning Efficient Convolutional
    Networks through Network Slimming", its ``updateBN``): ``bn_l1 * sign(gamma)`` for every
    BatchNorm scale (``.../bn/scale``), zeros elsewhere; added to the gradient, it is the
    subgradient of ``bn_l1 * sum(|gamma|)`` and drives unneeded channels' gammas to zero for
    :mod:`yolojax.models.prune` (``method=bn_scale``)."""

    def term(path, leaf):
        names = [getattr(k, "key", None) for k in path]
        is_bn_scale = len(names) >= 2 and names[-2:] == ["bn", "scale"]
        return bn_l1 * jnp.sign(leaf) if is_bn_scale else jnp.zeros_like(leaf)

    return jax.tree_util.tree_map_with_path(term, params)


def train_step(
    state: TrainState, batch: dict[str, jax.Array], loss_fn: Callable,
    axis_name: str | None = None, distill: Any = None, bn_l1: float = 0.0,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One batch of ultralytics-style training.

    Args:
      state: the current :class:`TrainState`.
      batch: DESIGN.md's train batch: ``image`` uint8 (B, H, W, 3), ``boxes`` float32
        (B, M, 4) xyxy pixels, ``classes`` int32 (B, M), ``mask`` bool (B, M); or a
        device-mode batch (``aug_*`` arrays in place of ``image``, rendered here by
        :func:`yolojax.data.device.augment.render_batch`).
      loss_fn: ``loss_fn(feats, batch) -> (total, {"box", "cls", "dfl"})``, e.g. a
        :class:`yolojax.loss.DetectionLoss`.
      axis_name: set only inside ``jax.shard_map`` (check_vma=True) over the batch axis
        (:mod:`yolojax.parallel`'s pmap path), with ``state.apply_fn`` using
        ``bn_axis_name`` and ``loss_fn`` using ``axis_name``. ``B`` is then the global batch
        (local rows times the axis size), so each device differentiates its share of the
        global objective; the gradient with respect to the replicated (axis-invariant)
        params comes out already summed over the axis (shard_map's transpose of the implicit
        broadcast is a psum), and the reported loss and parts are psum'ed.
      distill: a :class:`yolojax.loss.distill.Distillation` (with ``state.teacher`` its
        teacher's variables) or None: the teacher runs in eval mode on the same images and
        ultralytics' ``dis_loss`` joins the loss (metric ``dis``), as its DistillationModel adds it.
      bn_l1: the gradient of every BatchNorm scale gets ``bn_l1 * sign(scale)`` (network
        slimming's sparsity training, :func:`bn_l1_gradient`; 0: off). Not part of ``loss``.

    The gradient is that of ``total * B`` (ultralytics backpropagates its loss items summed
    and multiplied by the batch size); it is summed into ``grad_accum``, and once
    ``accumulate`` batches have gathered since the last update the sum is clipped to global
    norm ``recipe.grad_clip_norm``, applied with this iteration's learning rates and
    momentum, and folded into the EMA. BatchNorm statistics update on every batch. A batch
    whose loss or gradient is not finite is skipped (only ``step`` advances); its ``loss``
    or ``grad_norm`` metric is then non-finite.

    Returns the new state and float32 metrics: loss, box, cls, dfl (and dis), lr (of the weight
    group), grad_norm (of the gradient sum at this batch, before clipping) and updated (1.0
    where this batch ended in an optimiser update).
    """
    recipe = state.recipe
    hp = hyperparams(recipe, state.step)
    images = batch_images(batch).astype(jnp.float32) / 255.0
    batch_size = images.shape[0]
    if axis_name is not None:
        batch_size = batch_size * jax.lax.psum(1, axis_name)

    teacher = distill.teacher_forward(state.teacher, images) if distill is not None else None

    def objective(params):
        feats, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            images, train=True, mutable=["batch_stats", "intermediates"] if distill else ["batch_stats"],
        )
        total, parts = loss_fn(feats, batch)
        if distill is not None:
            dis = distill(params, detect_inputs(updates), *teacher)
            total, parts = total + dis, {**parts, "dis": dis}
        return total * batch_size, (total, parts, updates["batch_stats"])

    grads, (total, parts, batch_stats) = jax.grad(objective, has_aux=True)(state.params)
    if bn_l1:
        grads = jax.tree.map(jnp.add, grads, bn_l1_gradient(state.params, bn_l1))
    # Frozen layers (ultralytics' requires_grad=False) have no gradient: none is accumulated,
    # clipped or counted in grad_norm.
    frozen = frozen_mask(state.params, recipe.frozen)
    grads = jax.tree.map(lambda g, f: jnp.zeros_like(g) if f else g, grads, frozen)
    if axis_name is not None:
        total, parts = jax.lax.psum((total, parts), axis_name)
    grad_accum = jax.tree.map(jnp.add, state.grad_accum, grads)
    grad_norm = optax.global_norm(grad_accum)
    # Non-finite guard: a batch whose loss or gradient is not finite changes nothing but
    # ``step`` (no accumulation, no BatchNorm statistics, no update); its metrics show a
    # non-finite loss or grad_norm, which the train loop counts.
    finite = jnp.isfinite(total) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
    grad_accum = jax.tree.map(keep, grad_accum, state.grad_accum)
    batch_stats = jax.tree.map(keep, batch_stats, state.batch_stats)
    do_update = finite & (state.step - state.last_opt_step >= hp["accumulate"])

    def update(operands):
        params, opt_state, ema, ema_updates, grad_accum = operands
        coef = clip_coefficient(grad_norm, recipe.grad_clip_norm)
        clipped = jax.tree.map(lambda g: g * coef, grad_accum)
        opt_state = set_hyperparams(opt_state, hp)
        updates, opt_state = state.tx.update(clipped, opt_state, params)
        params = optax.apply_updates(params, updates)
        ema_updates = ema_updates + 1
        ema = ema_update(ema, {"params": params, "batch_stats": batch_stats}, ema_updates)
        grad_accum = jax.tree.map(jnp.zeros_like, grad_accum)
        return params, opt_state, ema, ema_updates, grad_accum

    operands = (state.params, state.opt_state, state.ema, state.ema_updates, grad_accum)
    params, opt_state, ema, ema_updates, grad_accum = jax.lax.cond(
        do_update, update, lambda ops: ops, operands
    )
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        batch_stats=batch_stats,
        opt_state=opt_state,
        grad_accum=grad_accum,
        last_opt_step=jnp.where(do_update, state.step, state.last_opt_step),
        ema=ema,
        ema_updates=ema_updates,
    )
    metrics = {
        "loss": total,
        **parts,
        "lr": hp["lr_weight"],
        "grad_norm": grad_norm,
        "updated": do_update.astype(jnp.float32),
    }
    return new_state, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), metrics)


def loss_step(loss_fn: Callable, distill: Any = None, bn_l1: float = 0.0) -> Callable:
    """``step_fn(state, batch, axis_name=None)``: :func:`train_step` with ``loss_fn`` (and
    ``distill``, ``bn_l1``), whose ``axis_name`` becomes the step's (the shape
    :mod:`yolojax.parallel`'s wrappers take)."""

    def step_fn(state: TrainState, batch: dict[str, jax.Array], axis_name: str | None = None):
        loss = loss_fn if axis_name is None else dataclasses.replace(loss_fn, axis_name=axis_name)
        dist = distill if distill is None or axis_name is None else distill.with_axis_name(axis_name)
        return train_step(state, batch, loss, axis_name=axis_name, distill=dist, bn_l1=bn_l1)

    return step_fn


def make_train_step(loss_fn: Callable) -> Callable:
    """``jit(train_step)`` bound to ``loss_fn`` on one device, donating the input state's buffers."""
    return jax.jit(lambda state, batch: train_step(state, batch, loss_fn), donate_argnums=0)
