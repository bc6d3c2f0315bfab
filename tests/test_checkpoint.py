"""yolojax.weights.workdir and yolojax.train.checkpoints: complete-only latest step, interrupted writes, iterator position,
workdir weights, the best checkpoint; and the train step's non-finite guard."""

from __future__ import annotations

import gc
import logging
import shutil
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from yolojax.train.checkpoints import BestCheckpointer, RunCheckpointer
from yolojax.weights.workdir import CheckpointError, complete_steps, incomplete_entries, is_train_workdir, latest_complete_step, load_workdir_weights
from yolojax.weights import load_weights

INFO = {"scale": "n", "num_classes": 2, "names": ["a", "b"], "reg_max": 16}
# A record without "family" (as runs before YOLO11 wrote) reads back as a YOLOv8's.
READ_INFO = {"family": "yolov8", **INFO}


@struct.dataclass
class FakeState:
    step: jax.Array
    params: dict
    batch_stats: dict
    opt_state: tuple
    grad_accum: dict
    last_opt_step: jax.Array
    ema: dict
    ema_updates: jax.Array


def fake_state(value: float, step: int) -> FakeState:
    params = {"conv": {"kernel": jnp.full((3, 3, 2, 4), value), "bias": jnp.full((4,), value)}}
    bs = {"bn": {"mean": jnp.full((4,), value / 2)}}
    return FakeState(
        step=jnp.int32(step), params=params, batch_stats=bs,
        opt_state=(jnp.zeros(()), {"mu": jax.tree.map(jnp.zeros_like, params)}),
        grad_accum=jax.tree.map(jnp.zeros_like, params), last_opt_step=jnp.int32(step - 1),
        ema={"params": jax.tree.map(lambda x: x + 1, params), "batch_stats": bs}, ema_updates=jnp.int32(step),
    )


def make_iterator():
    return grain.MapDataset.range(100).to_iter_dataset().__iter__()


def save_steps(directory: Path, steps: list[int]) -> list:
    ckpt = RunCheckpointer(directory, keep=5)
    it = make_iterator()
    positions = []
    for s in steps:
        while len(positions) < s:  # consume up to this step
            positions.append(next(it))
        ckpt.save(s, fake_state(float(s), s), it, {"step": s, "info": INFO}, {"seed": 0})
    ckpt.close()
    return positions


def test_save_restore_roundtrip_with_iterator_position(tmp_path):
    save_steps(tmp_path / "checkpoints", [2, 5])
    assert complete_steps(tmp_path / "checkpoints") == [2, 5]
    ckpt = RunCheckpointer(tmp_path / "checkpoints", keep=5)
    it = make_iterator()
    state, meta = ckpt.restore(5, fake_state(0.0, 0), it)
    ckpt.close()
    assert meta["step"] == 5 and int(state.step) == 5
    np.testing.assert_array_equal(state.params["conv"]["kernel"], np.full((3, 3, 2, 4), 5.0))
    assert next(it) == 5  # the exact data position: items 0..4 were consumed before the save


def test_interrupted_write_is_never_latest(tmp_path, caplog):
    root = tmp_path / "checkpoints"
    save_steps(root, [2, 4])
    # An async write killed before finalisation leaves Orbax's temporary directory ...
    tmp_dir = root / "6.orbax-checkpoint-tmp-1234567"
    shutil.copytree(root / "4", tmp_dir)
    # ... and a step directory without its commit files must not count either.
    partial = root / "8"
    shutil.copytree(root / "4", partial)
    (partial / "commit_success.txt").unlink()
    (partial / "_CHECKPOINT_METADATA").unlink()
    assert latest_complete_step(root) == 4
    assert {p.name for p in incomplete_entries(root)} == {tmp_dir.name, "8"}

    # load_weights on the workdir reads step 4's EMA.
    variables, info = load_weights(tmp_path)
    assert info == READ_INFO
    np.testing.assert_array_equal(variables["params"]["conv"]["bias"], np.full((4,), 5.0))
    assert is_train_workdir(tmp_path) and is_train_workdir(root)

    # Opening the run removes the leftovers (one line each); restoring uses step 4; new saves work.
    with caplog.at_level(logging.WARNING, logger="yolojax.weights.workdir"):
        ckpt = RunCheckpointer(root, keep=5)
    assert ckpt.latest_step() == 4
    assert not (root / "8").exists() and not tmp_dir.exists()
    removed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("removed ")]
    assert len(removed) == 2 and all("half-written by an interrupted save" in m for m in removed), removed
    it = make_iterator()
    state, meta = ckpt.restore(ckpt.latest_step(), fake_state(0.0, 0), it)
    assert meta["step"] == 4 and next(it) == 4
    ckpt.save(5, fake_state(5.0, 5), it, {"step": 5, "info": INFO}, {})
    ckpt.close()
    assert complete_steps(root) == [2, 4, 5]


def test_keep_last_k(tmp_path):
    root = tmp_path / "checkpoints"
    ckpt = RunCheckpointer(root, keep=2)
    it = make_iterator()
    for s in (1, 2, 3, 4):
        next(it)
        ckpt.save(s, fake_state(float(s), s), it, {"step": s, "info": INFO}, {})
    ckpt.close()
    assert complete_steps(root) == [3, 4]


def offer_all(best: BestCheckpointer, values: dict) -> list[int]:
    """Offer {step: mAP50-95 or None} in step order; the steps that were saved."""
    it = make_iterator()
    saved = []
    for s, value in values.items():
        next(it)
        row = {"epoch": s - 1, "step": s, "mAP50-95": value}
        if best.offer(s, row, fake_state(float(s), s), it, {"step": s, "info": INFO}, {}):
            saved.append(s)
    return saved


def test_best_checkpoint_keeps_the_highest_metric(tmp_path):
    root = tmp_path / "checkpoints_best"
    best = BestCheckpointer(root, "mAP50-95", resume_step=0)
    assert best.step is None
    assert offer_all(best, {1: 0.1, 2: 0.3, 3: 0.2, 4: 0.3, 5: None}) == [1, 2]  # a tie keeps the earlier
    best.close()
    assert complete_steps(root) == [2] and best.latest_step() == 2
    assert best.checkpointer.read_meta(2)["val"] == {"epoch": 1, "step": 2, "mAP50-95": 0.3}
    # The directory serves as weights: step 2's EMA.
    assert is_train_workdir(root)
    variables, info = load_weights(root)
    assert info == READ_INFO
    np.testing.assert_array_equal(variables["params"]["conv"]["bias"], np.full((4,), 3.0))

    # Resuming at step 4 keeps the best and its value: a lower one is not saved, a higher one is.
    best = BestCheckpointer(root, "mAP50-95", resume_step=4)
    assert (best.step, best.value) == (2, 0.3)
    assert offer_all(best, {5: 0.25, 6: 0.5}) == [6]
    best.close()
    assert complete_steps(root) == [6]

    # Resuming at step 5 drops the best of step 6 (that part of the run is redone).
    best = BestCheckpointer(root, "mAP50-95", resume_step=5)
    assert best.step is None and best.value == -np.inf
    best.close()
    assert complete_steps(root) == []


def test_drop_after(tmp_path):
    root = tmp_path / "checkpoints"
    save_steps(root, [1, 2, 3, 4])
    ckpt = RunCheckpointer(root, keep=5)
    assert ckpt.drop_after(2) == [3, 4]
    assert ckpt.latest_step() == 2 and complete_steps(root) == [1, 2]
    assert ckpt.read_meta(2) == {"step": 2, "info": INFO}
    it = make_iterator()
    next(it)
    assert ckpt.save(3, fake_state(3.0, 3), it, {"step": 3, "info": INFO}, {})  # a dropped step is saved again
    ckpt.close()
    assert complete_steps(root) == [1, 2, 3]


def test_workdir_without_checkpoint_is_refused(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ValueError, match="supported source of weights"):
        load_weights(tmp_path)
    with pytest.raises(ValueError, match="no complete"):
        load_workdir_weights(tmp_path)


def state_data_files(step_dir: Path) -> list[Path]:
    """The OCDBT data files of a step's state (state/d/* and state/ocdbt.process_*/d/*)."""
    return sorted(p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d")


def damage(path: Path, how: str) -> None:
    if how == "truncate":
        with path.open("r+b") as f:
            f.truncate(path.stat().st_size // 2)
    else:
        path.unlink()


# What a failed read leaves (tensorstore callbacks on a closed loop, read coroutines closed
# unfinished) must not surface as tracebacks: pytest reports those as this warning.
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("how", ["truncate", "delete"])
def test_damaged_latest_checkpoint_falls_back_to_the_newest_intact(tmp_path, caplog, how):
    """Each data file of the latest step in turn: truncated (or deleted), load_weights and the
    resume either read the step as before (the file held nothing they need) or fall back to the
    previous step with one warning naming the damaged step; at least one file must matter."""
    root = tmp_path / "checkpoints"
    save_steps(root, [1, 2])
    pristine = tmp_path / "pristine"
    shutil.copytree(root, pristine)
    files = [p.relative_to(root) for p in state_data_files(root / "2")]
    assert len(files) >= 2
    fallbacks = 0
    for rel in files:
        shutil.rmtree(root)
        shutil.copytree(pristine, root)
        damage(root / rel, how)
        caplog.clear()
        variables, info = load_workdir_weights(tmp_path)
        used = float(variables["params"]["conv"]["bias"][0]) - 1  # EMA = step value + 1
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        if used == 1.0:
            fallbacks += 1
            assert len(warnings) == 1 and f"{root}/2 is damaged" in warnings[0] and "using step 1" in warnings[0]
            assert complete_steps(root) == [1, 2]  # loading weights moves nothing
        else:
            assert used == 2.0 and warnings == [], (rel, warnings)
        assert info == READ_INFO
        caplog.clear()
        ckpt = RunCheckpointer(root, keep=5)
        it = make_iterator()
        state, meta = ckpt.restore_newest_intact(fake_state(0.0, 0), it)
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        if meta["step"] == 1:
            assert len(warnings) == 1 and f"{root}/2 is damaged" in warnings[0], warnings
            assert complete_steps(root) == [1] and (tmp_path / "checkpoints_damaged").is_dir()
            assert next(it) == 1  # the data position of step 1
            # the resumed run saves step 2 again
            assert ckpt.save(2, fake_state(2.0, 2), it, {"step": 2, "info": INFO}, {})
            ckpt.wait()
            assert complete_steps(root) == [1, 2]
        else:
            assert meta["step"] == 2 and warnings == [] and next(it) == 2
        ckpt.close()
        shutil.rmtree(tmp_path / "checkpoints_damaged", ignore_errors=True)
        gc.collect()  # the abandoned reads are collected within the test
    assert fallbacks >= 1, fallbacks


def test_no_intact_checkpoint_is_one_line_error(tmp_path):
    root = tmp_path / "checkpoints"
    save_steps(root, [1, 2])
    for step in (1, 2):
        for f in state_data_files(root / str(step)):
            damage(f, "delete")
        (root / str(step) / "meta" / "metadata").write_text("{not json")
    with pytest.raises(ValueError) as err:
        load_workdir_weights(tmp_path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"no intact checkpoint in {root}")
    assert "step 2 is damaged" in message and "step 1 is damaged" in message
    ckpt = RunCheckpointer(root, keep=5)
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        ckpt.restore_newest_intact(fake_state(0.0, 0), make_iterator())
    ckpt.close()


def test_a_step_that_reads_but_does_not_fit_is_not_called_damaged(tmp_path, caplog):
    root = tmp_path / "checkpoints"
    save_steps(root, [1, 2])
    other = fake_state(0.0, 0)
    other = other.replace(params={"conv": {"kernel": jnp.zeros((3, 3, 2, 8)), "bias": jnp.zeros((8,))}})
    ckpt = RunCheckpointer(root, keep=5)
    with pytest.raises(CheckpointError, match=f"{root}/2 reads but cannot be restored into this run") as err:
        ckpt.restore_newest_intact(other, make_iterator())
    ckpt.close()
    assert "\n" not in str(err.value)
    assert complete_steps(root) == [1, 2] and not (tmp_path / "checkpoints_damaged").exists()
    assert not [r for r in caplog.records if "damaged" in r.getMessage()]


def test_damaged_best_checkpoint_is_replaced(tmp_path, caplog):
    best = BestCheckpointer(tmp_path / "checkpoints_best", "mAP50-95", resume_step=0, async_save=False)
    offer_all(best, {1: 0.5})
    best.close()
    (tmp_path / "checkpoints_best" / "1" / "meta" / "metadata").unlink()
    best = BestCheckpointer(tmp_path / "checkpoints_best", "mAP50-95", resume_step=1, async_save=False)
    assert best.step is None and best.value == -float("inf")
    assert any("checkpoints_best/1 is damaged" in r.getMessage() for r in caplog.records)
    assert offer_all(best, {2: 0.1}) == [2]
    best.close()


def test_train_step_skips_non_finite_batch():
    from yolojax.train import TrainState, make_recipe, train_step

    recipe = make_recipe(epochs=2, batch_size=64, dataset_size=128, num_classes=2, optimizer="SGD", warmup_epochs=0)

    def apply_fn(variables, images, train=True, mutable=()):
        out = jnp.mean(images) * variables["params"]["w"]["kernel"]
        new_mean = variables["batch_stats"]["bn"]["mean"] * 0.5 + jnp.mean(images)
        return [out], {"batch_stats": {"bn": {"mean": new_mean}}}

    def loss_fn(feats, batch):
        total = jnp.sum(feats[0] ** 2) * batch["scale"][0]
        return total, {"box": total, "cls": jnp.zeros(()), "dfl": jnp.zeros(())}

    variables = {"params": {"w": {"kernel": jnp.ones((2, 2))}}, "batch_stats": {"bn": {"mean": jnp.zeros(())}}}
    state = TrainState.create(apply_fn, variables, recipe)
    images = jnp.full((16, 4, 4, 3), 128, jnp.uint8)
    step = jax.jit(lambda s, b: train_step(s, b, loss_fn))
    good, m_good = step(state, {"image": images, "scale": jnp.ones((1,))})
    assert np.isfinite(float(m_good["loss"])) and float(m_good["updated"]) == 1.0
    bad, m_bad = step(good, {"image": images, "scale": jnp.full((1,), jnp.nan)})
    assert not np.isfinite(float(m_bad["loss"])) and float(m_bad["updated"]) == 0.0
    assert int(bad.step) == int(good.step) + 1
    for a, b in zip(jax.tree.leaves((good.params, good.batch_stats, good.grad_accum, good.ema, good.opt_state)),
                    jax.tree.leaves((bad.params, bad.batch_stats, bad.grad_accum, bad.ema, bad.opt_state))):
        np.testing.assert_array_equal(a, b)
    # An infinite gradient with a finite loss is skipped too.
    inf_images = images.at[0, 0, 0, 0].set(255)

    def loss_inf(feats, batch):
        total = jnp.sum(jnp.sqrt(jnp.abs(feats[0] - feats[0])))  # finite value, infinite gradient at 0
        return total, {"box": total, "cls": jnp.zeros(()), "dfl": jnp.zeros(())}

    bad2, m2 = jax.jit(lambda s, b: train_step(s, b, loss_inf))(good, {"image": inf_images})
    assert np.isfinite(float(m2["loss"])) and not np.isfinite(float(m2["grad_norm"]))
    np.testing.assert_array_equal(bad2.params["w"]["kernel"], good.params["w"]["kernel"])


def test_unretrieved_errors_of_a_damaged_steps_reads_are_not_logged():
    """asyncio's "Task exception was never retrieved" of the other reads of a damaged step is
    dropped once a possibly failing read was prepared; other asyncio errors still show."""
    import logging

    from yolojax.weights.workdir import quiet_failed_read_callbacks as _quiet_failed_read_callbacks

    def record(message: str, error: BaseException) -> logging.LogRecord:
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, None,
                                 (type(error), error, None))

    _quiet_failed_read_callbacks()
    asyncio_logger = logging.getLogger("asyncio")
    read_error = ValueError('OUT_OF_RANGE: Error opening "zarr" driver: Error reading "ema.x/.zarray" in OCDBT')
    assert not asyncio_logger.filter(record("Task exception was never retrieved\nfuture: <Task>", read_error))
    assert asyncio_logger.filter(record("Task exception was never retrieved\nfuture: <Task>", ValueError("mine")))
    assert asyncio_logger.filter(record("Exception in callback", read_error))


def test_workdir_weights_carry_the_run_imgsz(tmp_path):
    """The size a run trained at comes with its weights (val, predict and export default to it,
    as ultralytics does): from the meta's info, or for older runs from the step's config."""
    for name, info, config, expected in (("info", {**INFO, "imgsz": 192}, {"imgsz": 640}, 192),
                                         ("config", INFO, {"imgsz": 320}, 320), ("none", INFO, {}, None)):
        ckpt = RunCheckpointer(tmp_path / name / "checkpoints", keep=1)
        ckpt.save(1, fake_state(1.0, 1), make_iterator(), {"step": 1, "info": info}, config)
        ckpt.close()
        assert load_weights(tmp_path / name)[1].get("imgsz") == expected, name
