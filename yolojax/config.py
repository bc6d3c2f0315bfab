"""The one config loader (Python config files by name or path) and the rules of a setting's value.

The configs that ship with yolojax live in the package (``yolojax/configs``, also reachable
as ``configs/`` in a source checkout), so an installed yolojax finds them from any folder:
``yolov8n`` (or ``yolov8n.py``) names ``yolojax/configs/yolov8n.py``; anything else is a path
to a config file of your own, which usually starts from ``yolojax.configs.base.get_config()``.

:class:`Rule` and its makers (:func:`fraction`, :func:`integer`, :func:`image_size` ...) say
what one setting may hold; :mod:`yolojax.train.settings` checks every config field with them,
and the val, predict and export commands their arguments.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ml_collections

from yolojax.console import ConfigError

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"


def config_names() -> list[str]:
    """The names of the configs that ship with yolojax (``base``, ``quickstart``, ``yolov8n`` ...)."""
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.py") if not p.stem.startswith("_"))


def config_path(name_or_path: str | os.PathLike) -> Path:
    """The file of a config: an existing path as it is, else a shipped config's name.

    Raises:
      ConfigError: neither a file nor a shipped config (the message lists the names).
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    if len(path.parts) == 1 and path.suffix in ("", ".py") and (CONFIGS_DIR / f"{path.stem}.py").is_file():
        return CONFIGS_DIR / f"{path.stem}.py"
    raise ConfigError(f"config {name_or_path} not found: give a config file or one of {', '.join(config_names())}")


def load_config(name_or_path: str | os.PathLike) -> ml_collections.ConfigDict:
    """``get_config()`` of a config file or shipped config (:func:`config_path`).

    Raises:
      ConfigError: the config cannot be found, or its file has no ``get_config()``.
    """
    path = config_path(name_or_path)
    spec = importlib.util.spec_from_file_location(f"yolojax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"config file {path} defines no get_config()")
    return module.get_config()


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config (a ConfigDict or its ``to_dict()``) -> ``{dotted name: value}``."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if hasattr(value, "items"):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def default_config() -> ml_collections.ConfigDict:
    """Every default (``yolojax/configs/base.py``: ultralytics' cfg/default.yaml values)."""
    from yolojax.configs.base import get_config

    return get_config()


# ----------------------------------------------------------------------------------------
# Value rules: what a setting may hold (ultralytics 8.4.190 cfg/__init__.py check_cfg where it
# has a rule, else what can have meaning). Train's settings (yolojax.train.settings) and the
# val, predict and export commands check their values with these, so one rule has one text.
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Rule:
    """The type and range of one setting.

    Attributes:
      kinds: the accepted Python types (``int`` never accepts a ``bool``; ``float`` accepts ints).
      ok: the range or choice check of a value of those types (None: any).
      allowed: what the refusal says is allowed, e.g. "a number in [0, 1]".
    """

    kinds: tuple[type, ...]
    ok: Callable[[Any], bool] | None
    allowed: str

    def refusal(self, field: str, value: Any) -> str | None:
        """None when ``value`` may be given to ``field``, else the one-line refusal."""
        typed = isinstance(value, self.kinds) and not (isinstance(value, bool) and bool not in self.kinds)
        if typed and (self.ok is None or self.ok(value)):
            return None
        return f"{field}={value!r}: must be {self.allowed}"

    def check(self, field: str, value: Any) -> Any:
        """``value`` when allowed. Raises :class:`ConfigError` (one line naming ``field``)."""
        reason = self.refusal(field, value)
        if reason is not None:
            raise ConfigError(reason)
        return value


NUMBER = (int, float)


def boolean() -> Rule:
    return Rule((bool,), None, "true or false")


def text() -> Rule:
    return Rule((str,), None, "a string")


def integer(low: int | None = None, high: int | None = None, note: str = "") -> Rule:
    """An int in [low, high] (either bound open when None)."""
    return Rule((int,), lambda v: (low is None or v >= low) and (high is None or v <= high),
                f"an integer{_bounds(low, high)}{note}")


def number(low: float | None = None, high: float | None = None, *, high_open: bool = False, note: str = "") -> Rule:
    """A finite float (or int) in [low, high], or [low, high) with ``high_open``."""
    def ok(v: float) -> bool:
        in_range = (low is None or v >= low) and (high is None or (v < high if high_open else v <= high))
        return math.isfinite(v) and in_range

    return Rule(NUMBER, ok, f"a finite number{_bounds(low, high, high_open)}{note}")


def fraction() -> Rule:
    """ultralytics' fraction keys (lr0, momentum, hsv_*, mosaic, conf, iou, ...): [0, 1]."""
    return number(0.0, 1.0, note=" (ultralytics' fraction settings)")


def one_of(*choices: Any) -> Rule:
    kinds = tuple({type(c) for c in choices})
    return Rule(kinds, lambda v: v in choices, f"one of {', '.join(repr(c) for c in choices)}")


def image_size() -> Rule:
    """imgsz: a positive multiple of the model's largest stride, 32."""
    return Rule((int,), lambda v: v >= STRIDE and v % STRIDE == 0, f"a positive multiple of {STRIDE}")


def _bounds(low: Any, high: Any, high_open: bool = False) -> str:
    if low is not None and high is not None:
        return f" in [{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f" >= {low:g}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high:g}"
    return ""


STRIDE = 32  # YOLOv8's largest stride: image sizes are its multiples
DEFAULT_IMGSZ = 640  # ultralytics 8.4.190 cfg/default.yaml, for weights that record no training size


def weights_imgsz(imgsz: Any, info: Mapping[str, Any]) -> Any:
    """``imgsz`` when given, else the size the weights were trained at (``info["imgsz"]``,
    as ultralytics keeps ``imgsz`` from a checkpoint for val, predict and export), else 640."""
    return imgsz if imgsz is not None else info.get("imgsz") or DEFAULT_IMGSZ


# The val, predict and export arguments (ultralytics' names) and their rules: the commands
# check what they are given with these before loading weights or reading data.
ARGUMENT_RULES: dict[str, Rule] = {
    "imgsz": image_size(), "batch": integer(1), "conf": fraction(), "iou": fraction(), "max_det": integer(1),
    "workers": integer(0), "vid_stride": integer(1), "opset": integer(1), "rect": boolean(), "plots": boolean(),
    "dynamic": boolean(), "agnostic_nms": boolean(), "save": boolean(),
}


def check_arguments(values: Mapping[str, Any]) -> None:
    """Check command arguments by ultralytics' name (:data:`ARGUMENT_RULES`; None means the
    default; ``imgsz`` may also be ``[height, width]``, each checked).

    Raises:
      ConfigError: one line naming the argument, its value and what is allowed.
    """
    for name, value in values.items():
        rule = ARGUMENT_RULES.get(name)
        if rule is None or value is None:
            continue
        if name == "imgsz" and isinstance(value, (list, tuple)) and len(value) in (1, 2):
            for size in value:
                if rule.refusal(name, size) is not None:
                    raise ConfigError(f"{name}={list(value)!r}: must be one or two positive multiples of {STRIDE}")
            continue
        rule.check(name, value)
