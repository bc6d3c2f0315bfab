"""Optimiser recipe, EMA, TrainState and the jit-compiled train step."""

from yolojax.train.ema import ema_decay, ema_update
from yolojax.train.optim import Recipe, hyperparams, lr_factor, make_optimizer, make_recipe, param_groups
from yolojax.train.state import TrainState
from yolojax.train.step import clip_coefficient, make_train_step, train_step

__all__ = [
    "Recipe", "TrainState", "clip_coefficient", "ema_decay", "ema_update", "hyperparams",
    "lr_factor", "make_optimizer", "make_recipe", "make_train_step", "param_groups", "train_step",
]
