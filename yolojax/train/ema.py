"""Exponential moving average of the model variables, as ultralytics' ModelEMA."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

EMA_DECAY = 0.9999
EMA_TAU = 2000.0


def ema_decay(updates: jax.Array | int, decay: float = EMA_DECAY, tau: float = EMA_TAU) -> jax.Array:
    """Decay after ``updates`` optimiser steps: decay * (1 - exp(-updates / tau))."""
    return decay * (1.0 - jnp.exp(-jnp.asarray(updates, jnp.float32) / tau))


def ema_update(ema: Any, new: Any, updates: jax.Array) -> Any:
    """One EMA step of every floating leaf: ema * d + new * (1 - d), d = ema_decay(updates).

    ``updates`` counts optimiser steps including this one (ultralytics increments first).
    """
    d = ema_decay(updates)
    return jax.tree.map(lambda e, n: (e * d + n.astype(e.dtype) * (1.0 - d)).astype(e.dtype), ema, new)
