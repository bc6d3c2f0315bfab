"""The jit-compiled train step: overfitting, accumulation, EMA, bf16."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yolojax.data.sources.synthetic import rectangles_batch
from yolojax.loss import DetectionLoss
from yolojax.models import YOLOv8
from yolojax.train import TrainState, ema_decay, make_recipe, make_train_step

IMGSZ = 128
NUM_CLASSES = 3


def synthetic_batch(batch_size: int = 4, max_boxes: int = 6, seed: int = 0) -> dict:
    """Grey images with 1-4 filled rectangles whose colour is their class."""
    return rectangles_batch(batch_size, IMGSZ, NUM_CLASSES, max_boxes, seed)


def fresh_state(recipe, dtype=jnp.float32) -> TrainState:
    model = YOLOv8(scale="n", num_classes=NUM_CLASSES, dtype=dtype)
    variables = model.init(jax.random.key(0), jnp.zeros((1, IMGSZ, IMGSZ, 3)), train=False)
    return TrainState.create(model.apply, variables, recipe)


def one_update_per_batch(**overrides):
    recipe = make_recipe(
        epochs=100, batch_size=4, dataset_size=4, num_classes=NUM_CLASSES, optimizer="AdamW",
        lr0=0.002, momentum=0.9, warmup_epochs=0,
    )
    return dataclasses.replace(recipe, **{"accumulate": 1, **overrides})


@pytest.fixture(scope="module")
def step_fn():
    return make_train_step(DetectionLoss(NUM_CLASSES))


def run(step_fn, state, batch, steps):
    losses = []
    for _ in range(steps):
        state, metrics = step_fn(state, batch)
        losses.append(float(metrics["loss"]))
    return state, losses, metrics


def test_overfits_one_batch(step_fn):
    batch = synthetic_batch()
    state, losses, metrics = run(step_fn, fresh_state(one_update_per_batch()), batch, 60)
    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < 0.4 * losses[0], (losses[0], losses[-1])
    assert set(metrics) == {"loss", "box", "cls", "dfl", "lr", "grad_norm", "updated"}
    np.testing.assert_allclose(
        float(metrics["loss"]), float(metrics["box"] + metrics["cls"] + metrics["dfl"]), rtol=1e-6
    )
    assert int(state.step) == 60 and int(state.ema_updates) == 60
    # The EMA trails the live weights, by the documented decay.
    kernel = ("model_0", "conv", "kernel")
    live, ema = state.params, state.ema["params"]
    for k in kernel:
        live, ema = live[k], ema[k]
    assert not np.allclose(live, ema)
    assert float(ema_decay(60)) == pytest.approx(0.9999 * (1 - np.exp(-60 / 2000)))


def test_gradient_accumulation_updates_every_k_batches(step_fn):
    recipe = one_update_per_batch(accumulate=3)
    state = fresh_state(recipe)
    batch = synthetic_batch(seed=1)
    kernel0 = np.asarray(state.params["model_0"]["conv"]["kernel"])
    updated, changed = [], []
    for _ in range(6):
        before = np.asarray(state.params["model_0"]["conv"]["kernel"])
        state, metrics = step_fn(state, batch)
        updated.append(float(metrics["updated"]))
        changed.append(not np.array_equal(before, np.asarray(state.params["model_0"]["conv"]["kernel"])))
    # ultralytics steps when ni - last_opt_step >= accumulate, with last_opt_step = -1 at start.
    assert updated == [0.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    assert changed == [bool(u) for u in updated]
    assert int(state.ema_updates) == 2 and int(state.last_opt_step) == 5
    assert not np.array_equal(kernel0, np.asarray(state.params["model_0"]["conv"]["kernel"]))
    # The DFL projection is frozen.
    np.testing.assert_array_equal(
        np.asarray(state.params["model_22"]["dfl"]["conv"]["kernel"]).reshape(-1), np.arange(16)
    )


def test_bf16_step_tracks_fp32(step_fn):
    batch = synthetic_batch(seed=2)
    recipe = one_update_per_batch()
    _, losses32, _ = run(step_fn, fresh_state(recipe), batch, 10)
    _, losses16, _ = run(step_fn, fresh_state(recipe, jnp.bfloat16), batch, 10)
    assert np.all(np.isfinite(losses16))
    assert abs(losses16[-1] - losses32[-1]) <= 0.05 * losses32[-1], (losses16, losses32)
