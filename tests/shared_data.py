"""The project's shared test data: ultralytics' official yolov8n/s .pt files and COCO8, in
``../shared/data`` beside the checkout.

A user's fresh clone has no such folder, so a test that needs it skips, naming the missing
path. CI sets ``YOLOJAX_REQUIRE_SHARED_DATA=1`` (.ci/run): there the same test fails instead,
so a missing fixture can never pass as green. Mark a test ``@needs(path, ...)`` or call
:func:`require` inside it or its fixture.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
WEIGHTS = SHARED / "yolov8n.pt"
COCO8 = SHARED / "coco8"
REQUIRED_ENV = "YOLOJAX_REQUIRE_SHARED_DATA"


def require(*paths: Path) -> None:
    """Skip the running test unless every path exists; with ``YOLOJAX_REQUIRE_SHARED_DATA=1``
    fail it instead."""
    missing = [p for p in paths if not Path(p).exists()]
    if not missing:
        return
    reason = f"needs {missing[0]} (the project's shared test data, ../shared/data)"
    if os.environ.get(REQUIRED_ENV) == "1":
        pytest.fail(f"{reason}; {REQUIRED_ENV}=1 turns this skip into a failure")
    pytest.skip(reason)


def needs(*paths: Path) -> pytest.MarkDecorator:
    """A mark: the test runs only where ``paths`` exist (:func:`require`, applied by conftest.py)."""
    return pytest.mark.shared_data(*paths)


def bus_jpg() -> Path:
    """ultralytics' bundled bus.jpg (the test oracle's package); skips the test without it."""
    try:
        return Path(str(importlib.resources.files("ultralytics") / "assets" / "bus.jpg"))
    except ModuleNotFoundError:
        pytest.skip("ultralytics (test oracle, for its bus.jpg) not installed")
