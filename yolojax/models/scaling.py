"""Compound scaling of ultralytics' model yamls: one :class:`Scale` per model size."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Scale:
    """One row of a model yaml's ``scales``: [depth, width, max_channels]."""

    depth: float
    width: float
    max_channels: int

    def channels(self, declared: int) -> int:
        """Output channels of a layer declared with ``declared``: ultralytics'
        ``make_divisible(min(c, max_channels) * width, 8)`` (8.4.190 nn/tasks.py parse_model)."""
        return int(math.ceil(min(declared, self.max_channels) * self.width / 8) * 8)

    def repeats(self, declared: int) -> int:
        """Blocks in a layer declared with ``declared`` repeats (parse_model's depth gain)."""
        return max(round(declared * self.depth), 1) if declared > 1 else declared
