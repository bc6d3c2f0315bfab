"""Helpers for the Python config files in configs/."""

import importlib.util
import os

import ml_collections


def base_config(config_file: str) -> ml_collections.ConfigDict:
    """``get_config()`` of the ``base.py`` that sits beside ``config_file`` (a config's
    ``__file__``): config files are loaded by path, so they cannot import their siblings."""
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), "base.py")
    spec = importlib.util.spec_from_file_location("yolojax_configs_base", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
