"""ultralytics' train options in yolojax: early stopping (patience), the time limit, save_period,
fraction, freeze, single_cls and multi_scale, checked against ultralytics 8.4.190's own rules
where they are plain functions, and in two short in-process train runs (validation replaced by a
scripted mAP sequence, so that the stopping epoch is known)."""

from __future__ import annotations

import json
import logging
import random
import sys
from pathlib import Path

import numpy as np
import pytest

from yolojax.train.callbacks import EarlyStopping, TimeLimit, period_epoch

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------
# Stopping rules against ultralytics' code.
# ----------------------------------------------------------------------------------------


def test_early_stopping_follows_ultralytics():
    torch_utils = pytest.importorskip("ultralytics.utils.torch_utils")
    rng = np.random.default_rng(0)
    for patience in (0, 1, 3, 5):
        for _ in range(20):
            fitness = np.round(rng.uniform(0, 1, 15), 1) * (rng.uniform(size=15) > 0.2)
            theirs, ours = torch_utils.EarlyStopping(patience), EarlyStopping(patience)
            for epoch, f in enumerate(fitness, 1):
                stop = ours(epoch, float(f))
                assert stop == theirs(epoch, float(f))
                assert (ours.best_epoch, ours.possible_stop) == (theirs.best_epoch, theirs.possible_stop)
                if stop:
                    break
    resumed = EarlyStopping(3)
    resumed.load_state_dict({"best_fitness": 0.4, "best_epoch": 2, "possible_stop": False})
    assert not resumed(4, 0.3) and resumed(5, 0.35)
    assert EarlyStopping(3)(1, None) is False


def test_time_limit_and_save_period():
    now = [100.0]
    limit = TimeLimit(0.5, clock=lambda: now[0])
    now[0] += 1800.0
    assert not limit.exceeded()
    now[0] += 0.01
    assert limit.exceeded()
    assert not TimeLimit(0.0, clock=lambda: 1e12).exceeded()
    # ultralytics: epoch{epoch}.pt when save_period > 0 and epoch % save_period == 0 (0-based)
    assert [e for e in range(7) if period_epoch(e, 3)] == [0, 3, 6]
    assert not any(period_epoch(e, -1) or period_epoch(e, 0) for e in range(5))


# ----------------------------------------------------------------------------------------
# freeze: the same parameters as ultralytics' trainer.
# ----------------------------------------------------------------------------------------


def ultralytics_frozen(model, freeze):
    """ultralytics' BaseTrainer._setup_train freeze rule (names of frozen parameters)."""
    freeze_list = freeze if isinstance(freeze, list) else range(freeze) if isinstance(freeze, int) else []
    names = [f"model.{x}." for x in freeze_list] + [".dfl"]
    return {k for k, _ in model.named_parameters() if any(x in k for x in names)}


def test_freeze_selects_ultralytics_parameters():
    pytest.importorskip("torch")
    tasks = pytest.importorskip("ultralytics.nn.tasks")
    import jax
    from flax import traverse_util

    from yolojax.models import YOLOv8
    from yolojax.models.naming import ultralytics_name
    from yolojax.train.freeze import frozen_layer_names, frozen_mask, parse_freeze

    theirs = tasks.DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    shapes = jax.eval_shape(lambda: YOLOv8(scale="n", num_classes=3).init(
        jax.random.key(0), jax.numpy.zeros((1, 32, 32, 3)), train=False))["params"]
    ours_names = {ultralytics_name(p): p for p in traverse_util.flatten_dict(shapes)}
    assert set(ours_names) == {k for k, _ in theirs.named_parameters()}
    for freeze, given in ((None, ""), (3, "3"), (10, 10), ([0, 4, "22.cv2"], "[0, 4, '22.cv2']"),
                          ([1, 2], "1,2")):
        mask = traverse_util.flatten_dict(frozen_mask(shapes, frozen_layer_names(given)))
        frozen = {name for name, path in ours_names.items() if mask[path]}
        assert frozen == ultralytics_frozen(theirs, freeze), freeze
    assert parse_freeze("3") == [0, 1, 2] and parse_freeze(0) == []
    with pytest.raises(ValueError, match="freeze"):
        parse_freeze("-1")


# ----------------------------------------------------------------------------------------
# multi_scale: ultralytics' sizes, a bounded set of compiled shapes.
# ----------------------------------------------------------------------------------------


def test_multi_scale_sizes_match_ultralytics_formula():
    from yolojax.data.augment.multi_scale import draw_size, multi_scale_sizes, scaled_shape

    for imgsz, ms in ((640, 0.5), (320, 0.25), (64, 0.5), (640, 0.1)):
        stride = 32
        low, high = max(stride, int(imgsz * (1.0 - ms))), int(imgsz * (1.0 + ms) + stride)
        random.seed(imgsz)
        theirs = {random.randrange(low, high) // stride * stride for _ in range(3000)}
        assert theirs == set(multi_scale_sizes(imgsz, ms)), (imgsz, ms)
        assert {draw_size(0, step, imgsz, ms) for step in range(3000)} == theirs
    assert len(multi_scale_sizes(640, 0.5)) == 21  # 320 ... 960
    # ultralytics: sf = sz / max(h, w); each side ceil(x * sf / stride) * stride
    assert scaled_shape((640, 640), 320) == (320, 320)
    assert scaled_shape((384, 640), 480) == (288, 480)


def test_multi_scale_batches_rescale_boxes_and_bound_recompiles(tmp_path):
    import jax

    from yolojax.data import AugmentConfig, make_train_iterator
    from yolojax.data.augment.multi_scale import multi_scale_sizes
    from yolojax.data.sources.synthetic import write_synthetic_dataset

    yaml_path = write_synthetic_dataset(tmp_path, num_train=8, num_val=2, size_range=(48, 96), max_shapes=3)
    kw = dict(imgsz=64, batch_size=4, epochs=4, aug=AugmentConfig(mosaic=0.0), max_boxes=8, process_index=0,
              process_count=1)
    plain = make_train_iterator(yaml_path, **kw)
    scaled = make_train_iterator(yaml_path, multi_scale=0.5, **kw)
    sizes = multi_scale_sizes(64, 0.5)
    assert sizes == [32, 64, 96]
    step_fn = jax.jit(lambda image: image.astype("float32").mean())
    seen = set()
    for a, b in zip(plain.iterator, scaled.iterator):
        h, w = b["image"].shape[1:3]
        assert h == w and h in sizes
        seen.add(h)
        step_fn(b["image"])
        np.testing.assert_allclose(b["boxes"], a["boxes"] * (h / 64), rtol=1e-6)
        np.testing.assert_array_equal(b["mask"], a["mask"])
    plain.close()
    scaled.close()
    assert len(seen) >= 2
    assert step_fn._cache_size() == len(seen) <= len(sizes)


# ----------------------------------------------------------------------------------------
# Two short train runs.
# ----------------------------------------------------------------------------------------

STEPS_PER_EPOCH = 2  # fraction=0.5 of 16 images, batch 4
SCRIPTED_MAP = [0.1, 0.3, 0.2, 0.25, 0.6, 0.7]  # patience 2: stops after epoch 4, best epoch 2


@pytest.fixture(scope="module")
def data_yaml(tmp_path_factory):
    from yolojax.data.sources.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("shapes")
    return write_synthetic_dataset(root, num_train=16, num_val=4, size_range=(64, 128), max_shapes=3, seed=0)


def small_config(data_yaml, cache_dir, **overrides):
    from yolojax.config import default_config

    c = default_config()
    c.model.scale = "n"
    c.data.yaml = str(data_yaml)
    c.imgsz, c.batch_size, c.epochs, c.close_mosaic = 64, 4, 6, 0
    c.data.workers, c.progress, c.compile_cache = 0, False, str(cache_dir)
    c.val.rect, c.val.batch_size = False, 4
    c.checkpoint.every_steps, c.checkpoint.async_save = 0, False
    c.fraction, c.single_cls, c.freeze = 0.5, True, "2"
    c.nbs, c.warmup_epochs = 4, 0.0  # an optimiser update at full lr every step: unfrozen weights move
    c.plots = False  # the plots themselves: tests/test_plots.py, test_train_cli.py
    for k, v in overrides.items():
        setattr(c, k, v)
    return c


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One XLA compilation cache for both runs (the same train step)."""
    return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture
def scripted_validation():
    """yolojax.train.run.validate_ema replaced: returns SCRIPTED_MAP in turn, records its inputs."""
    from yolojax.train import run

    calls = []

    def validate(settings, val_source, variables, info):
        calls.append({"info": info, "classes": np.asarray(val_source.labels.classes)})
        value = SCRIPTED_MAP[min(len(calls), len(SCRIPTED_MAP)) - 1]
        return {"mAP50": value, "mAP50-95": value, "precision": 0.5, "recall": 0.5}

    original = run.validate_ema
    run.validate_ema = validate
    yield calls
    run.validate_ema = original


def read_state(step_dir):
    import jax
    import orbax.checkpoint as ocp

    with ocp.PyTreeCheckpointer() as ckpt:
        meta = ckpt.metadata(step_dir / "state").item_metadata
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
        return ckpt.restore(step_dir / "state", args=ocp.args.PyTreeRestore(restore_args=restore_args))


def test_patience_save_period_fraction_single_cls_freeze(tmp_path, data_yaml, cache_dir, scripted_validation):
    from yolojax.models import YOLOv8
    from yolojax.train.run import train
    from yolojax.train.transfer import init_variables

    workdir = tmp_path / "run"
    summary = train(small_config(data_yaml, cache_dir, patience=2, save_period=2), workdir)
    # fraction 0.5 -> 8 of 16 images -> 2 steps per epoch; early stop after epoch 4 (no gain for 2 epochs)
    assert summary["total_steps"] == 6 * STEPS_PER_EPOCH
    assert (summary["step"], summary["stopped_early"]) == (4 * STEPS_PER_EPOCH, "patience")
    assert summary["checkpoint_step"] == 4 * STEPS_PER_EPOCH
    assert summary["best_step"] == 2 * STEPS_PER_EPOCH  # the best mAP50-95 (epoch 2) is kept
    assert summary["period_steps"] == [1 * STEPS_PER_EPOCH, 3 * STEPS_PER_EPOCH]  # epochs 0 and 2 (0-based)
    config_json = json.loads((workdir / "config.json").read_text())
    assert config_json["resolved"]["iters_per_epoch"] == STEPS_PER_EPOCH
    # single_cls: one class named 'item', validated against labels that are all class 0
    assert len(scripted_validation) == 4
    assert all(c["info"]["num_classes"] == 1 and c["info"]["names"] == ["item"] for c in scripted_validation)
    assert all(len(c["classes"]) and not c["classes"].any() for c in scripted_validation)
    # freeze=2: layers 0 and 1 (params and BatchNorm statistics) and the DFL stay as initialised
    state = read_state(workdir / "checkpoints" / str(summary["step"]))
    init = init_variables(YOLOv8(scale="n", num_classes=1), 0)
    for collection in ("params", "batch_stats"):
        for layer in ("model_0", "model_1"):
            for a, b in zip(_leaves(state[collection][layer]), _leaves(init[collection][layer])):
                np.testing.assert_array_equal(a, b)
        assert any(not np.array_equal(a, b) for a, b in zip(_leaves(state[collection]["model_2"]),
                                                               _leaves(init[collection]["model_2"])))
    np.testing.assert_array_equal(state["params"]["model_22"]["dfl"]["conv"]["kernel"],
                                  init["params"]["model_22"]["dfl"]["conv"]["kernel"])


def _leaves(tree):
    import jax

    return jax.tree.leaves(tree)


def test_time_limit_stops_with_a_checkpoint(tmp_path, data_yaml, cache_dir, scripted_validation, monkeypatch):
    from yolojax.train import plots as run_plots
    from yolojax.train.run import train

    plotted = []
    monkeypatch.setattr(run_plots, "write_run_plots", lambda *args: plotted.append(args))
    summary = train(small_config(data_yaml, cache_dir, time=1e-9, plots=True), tmp_path / "run")
    assert (summary["step"], summary["stopped_early"]) == (1, "time")
    assert summary["checkpoint_step"] == 1
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "mAP50-95" in r] == [1]  # validated before stopping, as ultralytics
    # an early stop still plots (ultralytics' final evaluation), with the run's own selected data
    (settings, workdir, source, max_boxes, val_source, _, info, steps_done), = plotted
    assert workdir == tmp_path / "run" and tuple(source.names) == ("item",) and len(source) == 8
    assert steps_done == 1
    assert info["names"] == ["item"] and not np.asarray(val_source.labels.classes).any()


def test_device_mode_refuses_host_only_options(tmp_path, data_yaml):
    from yolojax.console import ConfigError
    from yolojax.train.settings import resolve as check_config

    device = {"fraction": 0.5, "single_cls": True, "freeze": "2", "classes": "[0]", "cls_pw": 0.5, "patience": 3,
              "time": 1.0, "save_period": 2}
    config = small_config(data_yaml, tmp_path, **device)
    config.data.augment_on = "device"
    check_config(config)  # the selection, stopping and loss options work in device mode
    for field, value in (("rect", True), ("multi_scale", 0.5), ("cutmix", 0.5), ("bgr", 0.5)):
        refused = small_config(data_yaml, tmp_path, **{field: value})
        check_config(refused)  # host mode takes it
        refused.data.augment_on = "device"
        with pytest.raises(ConfigError, match=f"augment_on='device' cannot render {field}:"):
            check_config(refused)


def test_new_options_define_the_run_and_old_workdirs_still_resume(tmp_path):
    from yolojax.console import ConfigError
    from yolojax.train.settings import check_resumable

    current = small_config(tmp_path / "data.yaml", tmp_path).to_dict()
    old = {k: v for k, v in current.items() if k not in ("cutmix", "bgr", "cls_pw", "rect", "multi_scale")}
    check_resumable(old, current, tmp_path)  # written before these options existed: their defaults
    with pytest.raises(ConfigError, match="freeze"):
        check_resumable({**current, "freeze": "5"}, current, tmp_path)
    check_resumable({**current, "patience": 7, "time": 2.0, "save_period": 3}, current, tmp_path)


@pytest.mark.parametrize("field,value,message", [
    ("patience", -1, r"patience=-1: must be an integer >= 0 epochs"),
    ("time", -0.5, r"time=-0.5: must be a finite number >= 0 hours"),
    ("cutmix", 1.5, r"cutmix=1.5: must be a finite number in \[0, 1\]"),
    ("bgr", -0.1, r"bgr=-0.1: must be a finite number in \[0, 1\]"),
    ("cls_pw", 2.0, r"cls_pw=2.0: must be a finite number in \[0, 1\]"),
    ("multi_scale", 1.0, r"multi_scale=1.0: must be a finite number in \[0, 1\)")])
def test_bad_option_values_are_refused_naming_the_field(tmp_path, field, value, message):
    from yolojax.console import ConfigError
    from yolojax.train.settings import resolve

    with pytest.raises(ConfigError, match=message):
        resolve(small_config(tmp_path / "data.yaml", tmp_path, **{field: value}))


def test_ram_cache_run_plots_the_batches_it_reached_and_removes_the_cache(tmp_path, data_yaml, cache_dir, caplog):
    """The train_batch plots read the images through the RAM cache, so it goes only after them;
    a run stopped by max_steps plots only the batches it trained (not the close_mosaic ones)."""
    from yolojax.train.run import train

    shm = Path("/dev/shm")
    before = set(shm.glob("yolojax-ram-cache-*"))
    config = small_config(data_yaml, cache_dir, plots=True, max_steps=2, close_mosaic=2)
    config.data.cache = "ram"
    config.val.enabled = False
    with caplog.at_level(logging.WARNING):
        summary = train(config, tmp_path / "run")
    assert summary["step"] == 2
    assert sorted(p.name for p in (tmp_path / "run").glob("train_batch*.jpg")) == ["train_batch0.jpg",
                                                                                   "train_batch1.jpg"]
    assert not [r.getMessage() for r in caplog.records if "not written" in r.getMessage()]
    assert set(shm.glob("yolojax-ram-cache-*")) <= before
