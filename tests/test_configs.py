"""The configs that ship with yolojax: loaded by name or path (the one loader,
yolojax.config), from any folder, each on top of base.py with its own settings."""

from pathlib import Path

import pytest

from yolojax.config import CONFIGS_DIR, config_names, config_path, default_config, load_config
from yolojax.console import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("family", ["yolov8", "yolo11"])
@pytest.mark.parametrize("scale", list("nsmlx"))
def test_model_configs_change_only_the_family_and_scale(family, scale):
    config, base = load_config(f"{family}{scale}"), default_config()
    assert config.model.family == family and config.model.scale == scale
    base.model.family, base.model.scale = family, scale
    assert config.to_dict() == base.to_dict()


def test_quickstart_is_small_and_self_contained():
    config = load_config("quickstart")
    assert config.model.scale == "n" and config.data.synthetic.root and not config.data.yaml
    assert config.nbs == config.batch_size  # one optimiser update per batch
    assert config.lr0 == 0.01 and config.epochs == 12  # other fields come from base.py


def test_names_paths_and_the_source_checkout_reach_the_same_files(tmp_path, monkeypatch):
    assert config_names() == ["base", "quickstart", *(f"yolo11{s}" for s in "lmnsx"),
                              *(f"yolov8{s}" for s in "lmnsx")]
    assert CONFIGS_DIR.parent.name == "yolojax"  # the configs are part of the package
    monkeypatch.chdir(tmp_path)  # a name works from any folder
    assert config_path("yolov8s") == config_path("yolov8s.py") == CONFIGS_DIR / "yolov8s.py"
    assert load_config("yolov8s").to_dict() == load_config(REPO / "configs" / "yolov8s.py").to_dict()
    own = tmp_path / "mine.py"
    own.write_text("from yolojax.configs import base\n\n\ndef get_config():\n    c = base.get_config()\n"
                   "    c.epochs = 7\n    return c\n")
    assert load_config(own).epochs == 7 and load_config("mine.py").epochs == 7  # a path wins over a name
    with pytest.raises(ConfigError, match="config yolov9 not found: give a config file or one of base, quickstart"):
        load_config("yolov9")
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(ConfigError, match="defines no get_config"):
        load_config(tmp_path / "empty.py")
