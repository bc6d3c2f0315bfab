"""The ``yolojax`` command (ultralytics' syntax): config mapping, refusals, help, modes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from shared_data import SHARED, WEIGHTS, needs
from yolojax import cli
from yolojax.config import load_config
from yolojax.console import ConfigError

ROOT = Path(__file__).resolve().parents[1]
needs_weights = needs(WEIGHTS)


def _python_m_train_config(argv: list[str]) -> dict:
    """The config ``python -m yolojax.train`` resolves from ``argv``: the same absl/config_flags
    definition as yolojax.train.__main__.main, parsed without training."""
    from absl import flags
    from ml_collections import config_flags

    values, sys_argv = flags.FlagValues(), ["yolojax.train", *argv]
    config = config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True,
                                             sys_argv=sys_argv)
    values(sys_argv)
    return json.loads(json.dumps(config.value.to_dict()))


@pytest.mark.slow
def test_yolojax_train_writes_the_config_of_the_python_m_form(tmp_path):
    from yolojax.data.sources.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "shapes", num_train=4, num_val=2, size_range=(64, 96))
    ours = ["train", "model=yolov8s.yaml", f"data={data}", "epochs=2", "imgsz=64", "batch=2", "max_steps=1",
            "val=False", "workers=0", "lr0=0.02", "mosaic=0.5", "cos_lr", "checkpoint.keep=1",
            f"project={tmp_path / 'runs'}", "name=cli"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "YOLO_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "yolojax", *ours], env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    # one handler, yolojax's format: no line doubled by logging.basicConfig's (absl calls it when
    # Grain and Orbax log at import onto an empty root logger)
    assert not [line for line in r.stderr.splitlines() if line.startswith(("INFO:", "WARNING:", "DEBUG:"))]
    written = json.loads((tmp_path / "runs" / "cli" / "config.json").read_text())
    assert written.pop("resolved")["iters_per_epoch"] == 2  # what the run resolved (4 images, batch 2)
    python_m = _python_m_train_config([
        "--config", str(ROOT / "configs" / "yolov8s.py"), f"--config.data.yaml={data}", "--config.epochs=2",
        "--config.imgsz=64", "--config.batch_size=2", "--config.max_steps=1", "--config.val.enabled=False",
        "--config.data.workers=0", "--config.lr0=0.02", "--config.mosaic=0.5", "--config.cos_lr=True",
        "--config.checkpoint.keep=1"])
    assert written == python_m
    assert written["model"]["scale"] == "s" and written["batch_size"] == 2 and written["cos_lr"] is True
    # The trained run exports to an ultralytics .pt beside it, which reads back to the run's EMA weights.
    from yolojax.weights import load_weights

    assert cli.main(["export", f"model={tmp_path / 'runs' / 'cli'}", "format=pt"]) == 0
    trained, info = load_weights(tmp_path / "runs" / "cli")
    exported, exported_info = load_weights(tmp_path / "runs" / "cli.pt")
    assert exported_info == info and info["scale"] == "s" and len(info["names"]) == 6
    for a, b in zip(jax.tree.leaves(exported), jax.tree.leaves(trained), strict=True):
        np.testing.assert_array_equal(a, b)


def test_model_key_picks_scale_and_weights(tmp_path):
    config, workdir = cli.train_config(["model=yolov8m.yaml"])
    assert config.model.scale == "m" and config.weights == "" and workdir == Path("runs/detect/train")
    (tmp_path / "yolov8x.pt").write_bytes(b"")
    config, _ = cli.train_config([f"model={tmp_path / 'yolov8x.pt'}", "cfg=" + str(ROOT / "configs/quickstart.py")])
    assert config.model.scale == "x" and config.weights == str(tmp_path / "yolov8x.pt")
    assert config.imgsz == 192  # the rest of the cfg= file stays
    with pytest.raises(ConfigError, match="missing.pt: does not exist"):
        cli.train_config([f"model={tmp_path / 'missing.pt'}"])
    config, _ = cli.train_config(["model=yolo11s.yaml"])
    assert (config.model.family, config.model.scale, config.weights) == ("yolo11", "s", "")
    (tmp_path / "yolo11n.pt").write_bytes(b"")
    config, _ = cli.train_config([f"model={tmp_path / 'yolo11n.pt'}"])
    assert (config.model.family, config.model.scale) == ("yolo11", "n")
    assert config.to_dict() == {**load_config("yolo11n").to_dict(), "weights": str(tmp_path / "yolo11n.pt")}
    with pytest.raises(ConfigError, match=r"model=yolo26n.yaml: must be yolov8\{n,s,m,l,x\}.yaml or "
                                          r"yolo11\{n,s,m,l,x\}.yaml"):
        cli.train_config(["model=yolo26n.yaml"])


@needs_weights
def test_model_key_reads_the_scale_of_unnamed_weights(tmp_path):
    shutil.copy(WEIGHTS, tmp_path / "best.pt")
    config, _ = cli.train_config([f"model={tmp_path / 'best.pt'}", "model.scale=s"])
    assert config.weights == str(tmp_path / "best.pt") and config.model.scale == "s"  # an explicit field wins
    assert cli.model_scale(str(tmp_path / "best.pt")) == ("yolov8", "n", str(tmp_path / "best.pt"))


@pytest.mark.parametrize("argv, message", [
    (["train", "epoch=3"], "unknown argument 'epoch'; did you mean 'epochs'?"),
    (["train", "mesh.dat=2"], "did you mean 'mesh.data'?"),
    (["val", "model=x.pt", "data=d.yaml", "conff=0.1"], "did you mean 'conf'?"),
    (["predict", "model=x.pt"], "missing source=..."),
    (["train", "epochs=three"], "epochs=three: expected an integer"),
    (["train", "cos_lr=maybe"], "cos_lr=maybe: expected true or false"),
    (["train", "epochs="], "'epochs=' has no value"),
    (["trian"], "unknown mode 'trian'; did you mean 'train'?"),
    (["train", "amp=fp16"], "amp=fp16: expected True (dtype=auto: bfloat16 on GPU/TPU), False or fp32"),
    (["plan", "topology=v5e"], "topology='v5e': use ''"),
    (["plan", "json="], "'json=' has no value"),
    (["plan", "topology=cpu:0"], "cpu:N (N >= 1 simulated CPU devices)"),
    (["train", "amp=bf16", "dtype=float32"], "amp=bf16 and dtype=float32 both set the compute dtype"),
])
def test_bad_command_lines_are_refused_in_one_line(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_bad_input_exits_1_in_one_line(tmp_path, capsys):
    assert cli.main(["export", f"model={tmp_path}", "format=pt"]) == 1
    err = capsys.readouterr().err
    assert "not a supported source of weights" in err and err.count("\n") == 1


def test_help_lists_every_key(capsys):
    assert cli.main(["help"]) == 0
    text = capsys.readouterr().out
    for key in [*cli.TRAIN_KEYS, *cli.RUN_KEYS, *cli.VAL_KEYS, *cli.PREDICT_KEYS, *cli.EXPORT_KEYS, *cli.PLAN_KEYS,
                "max_steps", "mesh.data", "parallel.mode", "amp", "plan"]:
        assert key in text, key


@pytest.mark.parametrize("argv", [["plan", "--help"], ["plan", "help"], ["plan", "-h"]])
def test_plan_help_names_its_keys(argv, capsys):
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "topology=" in text and "v5e:2x2" in text and "json=PATH" in text and "sync_bn" in text


@pytest.mark.parametrize("amp, dtype", [("True", "auto"), ("False", "float32"), ("fp32", "float32"),
                                        ("bf16", "bfloat16"), ("BF16", "bfloat16")])
def test_amp_maps_onto_dtype_as_ultralytics_values(amp, dtype):
    config, _ = cli.train_config([f"amp={amp}"])
    assert config.dtype == dtype
    assert cli.train_config([])[0].dtype == "auto"  # ultralytics' amp=True


def test_run_dir_increments_like_ultralytics(tmp_path):
    pairs = {"project": str(tmp_path), "name": "train"}
    assert cli.run_dir(pairs, "train") == tmp_path / "train"
    (tmp_path / "train").mkdir()
    assert cli.run_dir(pairs, "train") == tmp_path / "train"  # empty: used as it is
    (tmp_path / "train" / "config.json").write_text("{}")
    assert cli.run_dir(pairs, "train") == tmp_path / "train2"
    assert cli.run_dir({**pairs, "exist_ok": "True"}, "train") == tmp_path / "train"
    assert cli.run_dir(pairs, "train", reuse=True) == tmp_path / "train"


def test_device_is_taken_and_left_out_with_a_warning(caplog):
    """ultralytics users pass device=0: JAX lays out every visible device instead."""
    with caplog.at_level("WARNING", logger="yolojax.cli"):
        assert cli.parse_pairs(["device=0", "epochs=3"], ["epochs"]) == {"epochs": "3"}
    assert "device=0 is not applicable" in caplog.text
    with pytest.raises(cli.UsageError, match="unknown argument 'devices'"):
        cli.parse_pairs(["devices=0"], ["epochs"])


def test_parse_value_follows_ultralytics():
    assert [cli.parse_value(v) for v in ("3", "0.5", "True", "false", "none", "[480, 640]", "coco8.yaml")] == [
        3, 0.5, True, False, None, [480, 640], "coco8.yaml"]


def test_console_script_is_declared():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["yolojax"].split(":")
    assert module == "yolojax.cli" and callable(getattr(cli, func))


@needs_weights
@pytest.mark.slow
def test_export_then_predict_and_val_through_the_command(tmp_path, capsys):
    """``yolojax export format=pt`` beside the weights, then predict and val read that file."""
    import importlib.resources

    from yolojax.inference.predictor import predict
    from yolojax.evaluation.validator import validate

    weights = Path(shutil.copy(WEIGHTS, tmp_path / "yolov8n.pt"))
    assert cli.main(["export", f"model={weights}", "format=pt"]) == 0
    exported = tmp_path / "yolov8n_yolojax.pt"
    bus = Path(str(importlib.resources.files("ultralytics") / "assets" / "bus.jpg"))
    assert cli.main(["predict", f"model={exported}", f"source={bus}", f"project={tmp_path}", "name=p"]) == 0
    ours = json.loads((tmp_path / "p" / "predictions.json").read_text())
    direct = predict(weights, bus)
    assert [r["classes"] for r in ours] == [r["classes"] for r in direct]
    data = shutil.copytree(SHARED / "coco8", tmp_path / "coco8") / "coco8.yaml"
    assert cli.main(["val", f"model={exported}", f"data={data}", "imgsz=320", "plots=False",
                     f"project={tmp_path}", "name=v"]) == 0
    results = json.loads((tmp_path / "v" / "results.json").read_text())
    assert results["mAP50-95"] == pytest.approx(validate(weights, data, imgsz=320, verbose=False)["mAP50-95"])


@needs_weights
def test_convert_command_writes_a_checkpoint_directory(tmp_path):
    from yolojax.weights import load_weights

    assert cli.main(["convert", f"model={WEIGHTS}", f"out={tmp_path / 'n'}"]) == 0
    converted, info = load_weights(tmp_path / "n")
    original, original_info = load_weights(WEIGHTS)
    assert info == original_info
    for a, b in zip(jax.tree.leaves(converted), jax.tree.leaves(original), strict=True):
        np.testing.assert_array_equal(a, b)
    assert cli.main(["convert", f"model={tmp_path}"]) == 2  # not a .pt file
