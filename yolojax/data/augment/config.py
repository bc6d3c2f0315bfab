"""Training augmentation hyperparameters, with ultralytics' defaults (cfg/default.yaml)."""

from __future__ import annotations

import dataclasses
from typing import Any

AUGMENT_ON = ("host", "device")  # data.augment_on: where augmentation's pixel work runs


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Ultralytics' augmentation hyperparameters (same names, same defaults).

    Attributes:
      hsv_h, hsv_s, hsv_v: HSV gains (fractions).
      degrees: rotation range +-degrees.
      translate: translation range +-fraction of the image size.
      scale: scale range 1 +- scale.
      shear: shear range +-degrees.
      perspective: perspective range +-.
      flipud, fliplr: flip probabilities.
      mosaic: probability of a 4-image mosaic.
      mixup: probability of MixUp (after mosaic + perspective).
      cutmix: probability of CutMix (after MixUp, :mod:`yolojax.data.augment.cutmix`).
      bgr: probability of swapping the channels to BGR (ultralytics' ``Format``, last).
      close_mosaic: the last N epochs train without mosaic, mixup and cutmix.
    """

    hsv_h: float = 0.015
    hsv_s: float = 0.7
    hsv_v: float = 0.4
    degrees: float = 0.0
    translate: float = 0.1
    scale: float = 0.5
    shear: float = 0.0
    perspective: float = 0.0
    flipud: float = 0.0
    fliplr: float = 0.5
    mosaic: float = 1.0
    mixup: float = 0.0
    cutmix: float = 0.0
    bgr: float = 0.0
    close_mosaic: int = 10

    @classmethod
    def from_config(cls, config: Any) -> AugmentConfig:
        """Take every field present in `config` (a mapping, ConfigDict or object), defaults for the rest."""
        values = {}
        for field in dataclasses.fields(cls):
            if isinstance(config, dict):
                present, value = field.name in config, config.get(field.name)
            else:
                present, value = hasattr(config, field.name), getattr(config, field.name, None)
            if present and value is not None:
                values[field.name] = int(value) if field.type == "int" else float(value)
        return cls(**values)

    def mixing_on(self, epoch: int, epochs: int) -> bool:
        """Whether `epoch` (0-based) of `epochs` may still use mosaic, mixup and cutmix (not closed yet)."""
        return epoch < epochs - self.close_mosaic
