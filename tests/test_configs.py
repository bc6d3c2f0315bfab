"""configs/*.py: every file loads by path, on top of base.py, with its own settings."""

import importlib.util
from pathlib import Path

import pytest

from yolojax.config import base_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", CONFIGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.mark.parametrize("scale", list("nsmlx"))
def test_scale_configs_change_only_the_scale(scale):
    config, base = load(f"yolov8{scale}"), base_config(str(CONFIGS / "base.py"))
    assert config.model.scale == scale
    base.model.scale = scale
    assert config.to_dict() == base.to_dict()


def test_quickstart_is_small_and_self_contained():
    config = load("quickstart")
    assert config.model.scale == "n" and config.data.synthetic.root and not config.data.yaml
    assert config.nbs == config.batch_size  # one optimiser update per batch
    assert config.lr0 == 0.01 and config.epochs == 12  # other fields come from base.py
