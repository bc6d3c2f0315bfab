"""Optimiser recipe, EMA, TrainState and the jit-compiled train step.

The names load on first use (PEP 562), so that ``python -m yolojax.train`` and its data
worker processes start without importing JAX, Flax and optax first.
"""

import importlib

_SUBMODULE = {
    "ema_decay": "ema", "ema_update": "ema",
    "Recipe": "optim", "hyperparams": "optim", "lr_factor": "optim", "make_optimizer": "optim",
    "make_recipe": "optim", "param_groups": "optim",
    "TrainState": "state",
    "clip_coefficient": "step", "loss_step": "step", "make_train_step": "step", "train_step": "step",
}

__all__ = sorted(_SUBMODULE)


def __getattr__(name: str):
    if name not in _SUBMODULE:
        raise AttributeError(f"module 'yolojax.train' has no attribute {name!r}")
    return getattr(importlib.import_module(f"yolojax.train.{_SUBMODULE[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
