"""Time from `python -m yolojax.train` starting to its first train step, first and second run.

    YOLO_OFFLINE=1 python tools/time_to_first_step.py [--config configs/quickstart.py] [--runs 2]

Each run trains the README quickstart in a fresh workdir (``--config.max_steps=1``) with one
compilation cache directory shared by the runs (fresh at the start), so the first run
compiles and fills the cache and the later ones load from it. The clock stops when the run
logs "train step compiled in" or "train step loaded in" (the first step has run). Prints
seconds per run, the ratio of each later run to the first, and the load average.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKS = ("train step compiled in", "train step loaded in")


def time_to_first_step(config: str, workdir: Path, cache_dir: Path) -> float:
    """Seconds from the process's start to the log line saying the first step ran."""
    cmd = [sys.executable, "-m", "yolojax.train", "--config", config, "--workdir", str(workdir),
           "--config.max_steps=1", f"--config.compile_cache={cache_dir}"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds, tail = None, []
    for line in proc.stderr:
        tail = (tail + [line])[-20:]
        if seconds is None and any(mark in line for mark in MARKS):
            seconds = time.perf_counter() - t0
    if proc.wait() != 0 or seconds is None:
        raise RuntimeError(f"{' '.join(cmd)} failed or never logged {' or '.join(map(repr, MARKS))}:\n{''.join(tail)}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.py")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        times = []
        for run in range(args.runs):
            times.append(time_to_first_step(args.config, Path(tmp) / f"run{run}", Path(tmp) / "jax-cache"))
            ratio = f" ({times[-1] / times[0]:.0%} of the first)" if run else " (compiles, fills the cache)"
            print(f"run {run + 1}: {times[-1]:.1f} s to the first step{ratio}; load average {os.getloadavg()[0]:.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
