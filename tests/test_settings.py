"""yolojax.train.settings: every field of configs/base.py checked once, refusals in one line
naming the field and the value, derived values, the run / step roles, and the refusals of
both train commands before any data is read."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from yolojax.config import default_config, flatten
from yolojax.console import ConfigError
from yolojax.train.settings import check_resumable, field_rules, resolve

REPO = Path(__file__).resolve().parents[1]

# Every field of configs/base.py -> bad values it must refuse, each with a fragment of the
# refusal (what is allowed). A field added to base.py without an entry here fails
# test_every_field_has_bad_values.
BAD_VALUES: dict[str, list[tuple[object, str]]] = {
    "model.family": [("yolo26", "one of 'yolov8', 'yolo11'"), (11, "one of")],
    "model.scale": [("q", "one of 'n', 's', 'm', 'l', 'x'"), (1, "one of")],
    "model.num_classes": [(-2, "integer >= -1"), (2.5, "integer")],
    "model.reg_max": [(0, "in [1, 64]"), (65, "in [1, 64]")],
    "weights": [(3, "a string"), ("/nonexistent/w.pt", "existing .pt")],
    "cls_remap": [("yes", "true or false"), (1, "true or false")],
    "dtype": [("float16", "one of 'auto', 'float32', 'bfloat16'"), ("fp32", "one of")],
    "data.yaml": [(3, "a string"), ("/nonexistent/data.yaml", "existing data.yaml file"),
                  ("tfds:coco/2017", "a TFDS dataset goes in data.tfds.name")],
    "data.workers": [(-1, "integer >= 0"), (True, "integer")],
    "data.threads": [(0, "integer >= 1")],
    "data.prefetch": [(0, "integer >= 1")],
    "data.max_boxes": [(-1, "integer >= 0")],
    "data.mosaic_pool": [("all", "one of 'batch', 'dataset'")],
    "data.augment_on": [("gpu", "one of 'host', 'device'")],
    "data.cache": [("memory", "cache must be '', 'ram' or 'disk'"), (3, "'', 'ram' or 'disk'")],
    "data.synthetic.root": [(1, "a string")],
    "data.tfds.name": [(3, "a string"), ("coco/../x", "name a prepared TFDS dataset"), ("coco/2017", "give one")],
    "data.tfds.data_dir": [(3, "a string"), ("/data/tfds", "is for a TFDS dataset, and none is named")],
    "data.tfds.train": [(3, "a string")],
    "data.tfds.val": [(3, "a string")],
    "data.synthetic.num_train": [(0, "integer >= 1")],
    "data.synthetic.num_val": [(0, "integer >= 1")],
    "data.synthetic.min_size": [(8, "integer >= 32"), (400, "must be <= data.synthetic.max_size")],
    "data.synthetic.max_size": [(16, "integer >= 32"), (100, "<= data.synthetic.max_size=100")],
    "data.synthetic.max_shapes": [(0, "integer >= 1")],
    "data.synthetic.seed": [(-1, "integer >= 0")],
    "fraction": [(0.0, "ratio in (0, 1]"), (2.5, "whole image count"), (-1, "ratio")],
    "single_cls": [("no", "true or false")],
    "classes": [("[-1]", "class ids >= 0"), ("a", "class id or a list"), (1.5, "a class id or a list of ids")],
    "rect": [(0, "true or false")],
    "multi_scale": [(1.0, "in [0, 1)"), (-0.5, "in [0, 1)")],
    "imgsz": [(100, "positive multiple of 32"), (0, "positive multiple of 32"), (640.0, "multiple of 32")],
    "batch_size": [(0, "integer >= 1")],
    "epochs": [(0, "integer >= 1")],
    "max_steps": [(-1, "integer >= 0")],
    "patience": [(-1, "integer >= 0 epochs")],
    "time": [(-0.5, "finite number >= 0 hours"), (math.inf, "finite")],
    "save_period": [(1.5, "an integer")],
    "seed": [(-1, "integer >= 0")],
    "optimizer": [("MuSGD", "one of 'SGD', 'Adam', 'AdamW', 'auto'"), ("sgd", "one of")],
    "lr0": [(-1.0, "in [0, 1]"), (1.5, "fraction settings")],
    "lrf": [(-0.5, "in [0, 1]"), (1.5, "in [0, 1]")],
    "momentum": [(1.5, "in [0, 1]")],
    "weight_decay": [(-0.1, "in [0, 1]")],
    "warmup_epochs": [(-1.0, ">= 0"), (math.nan, "finite")],
    "warmup_momentum": [(1.5, "in [0, 1]")],
    "warmup_bias_lr": [(-0.5, "in [0, 1]")],
    "cos_lr": [("true", "true or false")],
    "nbs": [(0, "integer >= 1")],
    "freeze": [("[1.5]", "layer indices or names"), (-1, "freeze must be >= 0"), (2.0, "layer count or a list"),
               (1000, "fewer than YOLOv8's 23 layers"), ("[0, 23]", "fewer than YOLOv8's 23 layers")],
    "box": [(-1.0, ">= 0")],
    "cls": [(-1.0, ">= 0")],
    "dfl": [(-1.0, ">= 0")],
    "cls_pw": [(2.0, "in [0, 1]")],
    "distill_model": [(3, "a string"), ("/nonexistent/t.pt", "the teacher's existing .pt")],
    "dis": [(-1.0, ">= 0"), (math.nan, "finite")],
    "bn_l1": [(-1e-4, ">= 0")],
    "hsv_h": [(1.5, "in [0, 1]")],
    "hsv_s": [(-0.5, "in [0, 1]")],
    "hsv_v": [(1.5, "in [0, 1]")],
    "degrees": [(-10.0, "in [0, 180]"), (200.0, "in [0, 180]")],
    "translate": [(1.5, "in [0, 1]")],
    "scale": [(-0.5, "in [0, 1]")],
    "shear": [(-1.0, "in [0, 90)"), (90.0, "in [0, 90)")],
    "perspective": [(1.5, "in [0, 1]")],
    "flipud": [(-0.5, "in [0, 1]")],
    "fliplr": [(1.5, "in [0, 1]")],
    "mosaic": [(1.5, "in [0, 1]")],
    "mixup": [(-0.5, "in [0, 1]")],
    "cutmix": [(1.5, "in [0, 1]")],
    "bgr": [(-0.1, "in [0, 1]")],
    "close_mosaic": [(-1, "integer >= 0")],
    "val.enabled": [("yes", "true or false")],
    "val.every_epochs": [(0, "integer >= 1")],
    "val.batch_size": [(-1, "integer >= 0")],
    "val.conf": [(1.5, "in [0, 1]")],
    "val.iou": [(-0.1, "in [0, 1]")],
    "val.max_det": [(-1, "integer >= 0")],
    "val.rect": [(1, "true or false")],
    "mesh.data": [(0, "-1 (the remaining devices) or an integer >= 1"), (-2, "-1")],
    "mesh.model": [(0, "-1 (the remaining devices) or an integer >= 1")],
    "distributed.coordinator": [("localhost", "host:port"), ("host:port", "host:port")],
    "distributed.num_processes": [(-1, "integer >= 0")],
    "distributed.process_id": [(-2, "integer >= -1")],
    "distributed.auto": [("no", "true or false")],
    "parallel.mode": [("pjit", "one of 'jit', 'pmap'")],
    "parallel.rules": [("bogus", "one of 'data', 'fsdp', 'tp'")],
    "parallel.sync_bn": [("yes", "true or false"), (1, "true or false")],
    "checkpoint.every_steps": [(-1, "integer >= 0")],
    "checkpoint.keep": [(-1, "integer >= 0")],
    "checkpoint.keep_best": [("yes", "true or false")],
    "checkpoint.async_save": [(0, "true or false")],
    "log_every_steps": [(0, "integer >= 1")],
    "progress": [("no", "true or false")],
    "plots": [(1, "true or false")],
    "max_nonfinite": [(0, "integer >= 1")],
    "compile_cache": [(1, "a string")],
}


@pytest.fixture(scope="module")
def data_yaml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "data.yaml"
    path.write_text("train: images\nval: images\nnames: [a, b]\n")
    return path


def good_config(data_yaml: Path) -> dict:
    config = default_config().to_dict()
    config["data"]["yaml"] = str(data_yaml)
    return config


def with_value(config: dict, field: str, value: object) -> dict:
    out = copy.deepcopy(config)
    *groups, name = field.split(".")
    node = out
    for group in groups:
        node = node[group]
    node[name] = value
    return out


def test_every_field_has_bad_values():
    assert set(flatten(default_config().to_dict())) == set(field_rules()) == set(BAD_VALUES)


@pytest.mark.parametrize("field", sorted(BAD_VALUES))
def test_each_bad_value_is_refused_in_one_line_naming_the_field(field, data_yaml):
    config = good_config(data_yaml)
    for value, allowed in BAD_VALUES[field]:
        with pytest.raises(ConfigError) as refusal:
            resolve(with_value(config, field, value))
        message = str(refusal.value)
        assert "\n" not in message and allowed in message and f"{field}=" in message, message


def test_defaults_and_loose_forms_resolve(data_yaml):
    settings = resolve(good_config(data_yaml))
    assert (settings.imgsz, settings.batch_size, settings.val_batch_size, settings.val_max_det) == (640, 16, 32, None)
    assert settings.frozen == (".dfl",) and settings.classes is None and settings.compute_dtype is None
    assert settings.augment.mosaic == 1.0 and settings.augment.close_mosaic == 10
    loose = {"classes": "0, 2", "freeze": "3", "data.cache": True, "val.batch_size": 6, "val.max_det": 50,
             "fraction": 8}
    config = good_config(data_yaml)
    for field, value in loose.items():
        config = with_value(config, field, value)
    settings = resolve(config)
    assert settings.classes == (0, 2) and settings.freeze == (0, 1, 2) and settings.data.cache == "ram"
    assert settings.frozen == ("model.0.", "model.1.", "model.2.", ".dfl")
    assert (settings.val_batch_size, settings.val_max_det, settings.fraction) == (6, 50, 8.0)
    assert settings.raw["classes"] == "0, 2"  # the config as given is kept for config.json
    with pytest.raises(Exception):
        settings.imgsz = 320  # frozen


def test_python_m_train_names_an_unknown_field_in_one_line():
    from yolojax.train.__main__ import unknown_field_text

    near = AttributeError(KeyError('\'epoch\'\nDid you mean "epochs" instead of "epoch"?'))
    assert unknown_field_text(near) == "'epoch' (did you mean \"epochs\" instead of \"epoch\"?)"
    assert unknown_field_text(AttributeError(KeyError("'nonexistent'"))) == "'nonexistent'"


def test_unknown_and_missing_fields_are_refused(data_yaml):
    config = good_config(data_yaml)
    with pytest.raises(ConfigError, match="unknown config field epoch "):
        resolve({**config, "epoch": 3})
    del config["val"]["conf"]
    with pytest.raises(ConfigError, match="the config has no field val.conf"):
        resolve(config)


@pytest.mark.parametrize("fields, message", [
    ({"data.augment_on": "device", "rect": True}, "augment_on='device' cannot render rect"),
    ({"parallel.mode": "pmap", "mesh.model": 2}, "mesh.model=2: parallel.mode='pmap' is data parallel only"),
    ({"data.yaml": "", "data.synthetic.root": ""}, "no dataset"),
])
def test_settings_that_cannot_go_together(data_yaml, fields, message):
    config = good_config(data_yaml)
    for field, value in fields.items():
        config = with_value(config, field, value)
    with pytest.raises(ConfigError, match=message):
        resolve(config)


def test_the_mesh_and_the_batch_must_fit_the_devices(data_yaml):
    settings = resolve(with_value(good_config(data_yaml), "batch_size", 12))
    assert settings.mesh_shape is None
    with pytest.raises(ConfigError, match=r"batch_size=12: must divide over the mesh's 8 'data' shards"):
        settings.on_devices(8, 1)
    assert settings.on_devices(4, 2).mesh_shape == (4, 1)
    with pytest.raises(ConfigError, match="must divide over the 5 processes"):
        settings.on_devices(5, 5)
    wide = resolve(with_value(with_value(with_value(good_config(data_yaml), "mesh.data", 3), "mesh.model", 2),
                              "batch_size", 12))
    with pytest.raises(ConfigError, match=r"mesh.data=3, mesh.model=2: mesh data=3 x model=2 does not fit 4 devices"):
        wide.on_devices(4, 1)
    assert wide.on_devices(6, 1).mesh_shape == (3, 2)
    both = resolve(with_value(good_config(data_yaml), "mesh.model", -1))
    with pytest.raises(ConfigError, match="mesh.data=-1, mesh.model=-1: at most one mesh axis may be -1"):
        both.on_devices(4, 1)


@pytest.mark.parametrize("dtype, platform, compute", [
    ("auto", "cpu", "float32"), ("auto", "gpu", "bfloat16"), ("auto", "tpu", "bfloat16"), ("auto", "cuda", "bfloat16"),
    ("float32", "tpu", "float32"), ("bfloat16", "cpu", "bfloat16"),
])
def test_dtype_auto_is_bfloat16_on_accelerators_and_float32_on_cpu(data_yaml, dtype, platform, compute):
    settings = resolve(with_value(good_config(data_yaml), "dtype", dtype))
    assert settings.dtype == dtype and settings.compute_dtype == (None if dtype == "auto" else dtype)
    assert settings.on_devices(1, 1, platform).compute_dtype == compute


def test_the_default_dtype_is_auto_and_resolves_per_platform():
    from yolojax.config import default_config
    from yolojax.train.settings import auto_dtype

    assert default_config().dtype == "auto" and default_config().parallel.sync_bn is True
    assert (auto_dtype("cpu"), auto_dtype("gpu"), auto_dtype("tpu")) == ("float32", "bfloat16", "bfloat16")


def test_a_plan_needs_no_dataset(data_yaml):
    config = with_value(with_value(good_config(data_yaml), "data.yaml", ""), "data.synthetic.root", "")
    with pytest.raises(ConfigError, match="no dataset"):
        resolve(config)
    assert resolve(config, need_data=False).data.yaml == ""


def test_roles_are_the_fields_metadata(data_yaml):
    settings = resolve(good_config(data_yaml))
    run, step = settings.run_view(), settings.step_view()
    # A resume must match what shapes the data order, the model and the recipe...
    for name in ("model.family", "model.scale", "weights", "imgsz", "batch_size", "epochs", "seed", "lr0", "mosaic",
                 "data.yaml", "data.workers", "data.synthetic.seed", "freeze", "classes"):
        assert name in run, name
    # ...while logging, checkpointing, validation, the loaders and the mesh may change.
    for name in ("max_steps", "log_every_steps", "checkpoint.keep", "val.conf", "data.threads", "data.cache",
                 "mesh.data", "parallel.mode", "compile_cache", "plots", "dtype", "parallel.sync_bn"):
        assert name not in run, name
    assert "mesh.data" in step and "parallel.rules" in step and "parallel.sync_bn" in step and "dtype" in step
    assert "seed" not in step and "val.iou" not in step


def test_resume_compares_the_run_fields(tmp_path, data_yaml):
    current = good_config(data_yaml)
    check_resumable(with_value(current, "max_steps", 5), current, tmp_path)
    with pytest.raises(ConfigError, match=r"\(lr0: 0.01 -> 0.02\)"):
        check_resumable(current, with_value(current, "lr0", 0.02), tmp_path)
    with pytest.raises(ConfigError, match=r"data.workers: 8 -> 0"):
        check_resumable(current, with_value(current, "data.workers", 0), tmp_path)
    old = copy.deepcopy(current)
    del old["cutmix"]  # a workdir written before cutmix existed resumes with its default
    check_resumable(old, current, tmp_path)


ISSUE_REFUSALS = [  # issue 23's measured cases, each refused before the dataset scan
    ("parallel.rules", "bogus", "parallel.rules='bogus': must be one of"),
    ("val.every_epochs", "0", "val.every_epochs=0: must be an integer >= 1"),
    ("mesh.data", "3", "mesh.data=3, mesh.model=1: mesh data=3 x model=1 does not fit 1 device"),
    ("lr0", "-1", "lr0=-1.0: must be a finite number in [0, 1]"),
]


def _train_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "YOLO_OFFLINE": "1", "JAX_PLATFORMS": "cpu"}


@pytest.mark.parametrize("field, value, message", ISSUE_REFUSALS)
def test_python_m_train_refuses_before_the_scan(tmp_path, data_yaml, field, value, message):
    proc = subprocess.run([sys.executable, "-m", "yolojax.train", "--config", "yolov8n", "--workdir",
                           str(tmp_path / "w"), f"--config.data.yaml={data_yaml}", f"--config.{field}={value}"],
                          capture_output=True, text=True, env=_train_env(), timeout=300, cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith(f"yolojax.train: error: {message}"), lines
    assert "label scan" not in proc.stderr and not (tmp_path / "w").exists()


@pytest.mark.parametrize("field, value, message", ISSUE_REFUSALS)
def test_yolojax_train_refuses_before_the_scan(tmp_path, data_yaml, field, value, message, capsys):
    from yolojax import cli

    code = cli.main(["train", f"data={data_yaml}", f"{field}={value}", f"project={tmp_path}", "name=w"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith(f"yolojax train: error: {message}"), err
    assert not (tmp_path / "w").exists()
