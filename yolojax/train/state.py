"""TrainState: everything a training run carries from one batch to the next."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct

from yolojax.train.optim import Recipe, make_optimizer


class TrainState(struct.PyTreeNode):
    """Model, optimiser, gradient-accumulation and EMA state.

    Attributes:
      step: int32 scalar, batches seen so far (ultralytics' ``ni`` of the next batch).
      params, batch_stats: the model variables being trained (fp32).
      opt_state: the optax state of :func:`yolojax.train.optim.make_optimizer`.
      grad_accum: fp32 pytree like ``params``, gradients summed since the last update.
      last_opt_step: int32 scalar, the ``step`` of the last optimiser update (-1: none yet).
      ema: {"params", "batch_stats"}, the exponential moving average used for validation.
      ema_updates: int32 scalar, optimiser updates folded into ``ema``.
      apply_fn, tx, recipe: static (not traced, not checkpointed).
      teacher: knowledge distillation's frozen teacher variables {"params", "batch_stats"}
        (:class:`yolojax.loss.distill.Distillation`), or None; traced and sharded like the
        params, never updated or checkpointed (a resume loads them again from distill_model).
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    grad_accum: Any
    last_opt_step: jax.Array
    ema: Any
    ema_updates: jax.Array
    apply_fn: Callable = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    recipe: Recipe = struct.field(pytree_node=False)
    teacher: Any = None

    @classmethod
    def create(cls, apply_fn: Callable, variables: dict, recipe: Recipe, teacher: dict | None = None) -> "TrainState":
        """A fresh state from model ``variables`` ({"params", "batch_stats"}; with distillation
        the projector's parameters among the params), a recipe and the ``teacher``'s variables."""
        params = jax.tree.map(jnp.asarray, variables["params"])
        batch_stats = jax.tree.map(jnp.asarray, variables["batch_stats"])
        tx = make_optimizer(recipe, params)

        @jax.jit  # one program (cached across runs) instead of one small program per leaf shape
        def fresh(params, batch_stats):
            ema = jax.tree.map(jnp.copy, {"params": params, "batch_stats": batch_stats})  # own buffers
            return tx.init(params), jax.tree.map(jnp.zeros_like, params), ema

        opt_state, grad_accum, ema = fresh(params, batch_stats)
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=batch_stats,
            opt_state=opt_state,
            grad_accum=grad_accum,
            last_opt_step=jnp.full((), -1, jnp.int32),
            ema=ema,
            ema_updates=jnp.zeros((), jnp.int32),
            apply_fn=apply_fn,
            tx=tx,
            recipe=recipe,
            teacher=None if teacher is None else jax.tree.map(jnp.asarray, teacher),
        )

    @property
    def variables(self) -> dict:
        """The live model variables {"params", "batch_stats"}."""
        return {"params": self.params, "batch_stats": self.batch_stats}
