"""What tests that start Python processes share: their environment and a free local port."""

from __future__ import annotations

import os
import socket
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])


def child_env() -> dict[str, str]:
    """This environment for a child process on the CPU: JAX on the CPU, no inherited XLA_FLAGS
    (a simulated device count), the checkout first on ``PYTHONPATH``."""
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (e.g. for a jax.distributed coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
