"""Time two implementations of the same work side by side, each in its own process.

The benchmarks (``bench_train_step.py``, ``bench_forward.py``) compare yolojax with
ultralytics on one CPU. In one process the two frameworks' thread pools disturb each other:
torch's OpenMP workers keep spinning after a step and slow XLA's next one down (measured:
yolov8n's train step at 5.2 s beside torch in one process, 3.3 s alone). So each side runs in
a worker process of its own, builds its work once, and the parent asks the two for one run
each in turn, ``rounds`` times: both see the same machine state, neither sees the other's
threads.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import time
from typing import Callable, Mapping


def _serve(conn, build: Callable[..., Callable[[], None]], build_args: tuple) -> None:
    """Worker: ``run = build(*build_args)``; report the first run's seconds (compilation,
    warm-up), then time one ``run()`` per request until told to stop (None)."""
    run = build(*build_args)
    t0 = time.perf_counter()
    run()
    conn.send(time.perf_counter() - t0)
    while conn.recv() is not None:
        t0 = time.perf_counter()
        run()
        conn.send(time.perf_counter() - t0)


class Worker:
    """A process that builds ``build(*args)`` -> a no-argument ``run`` callable and times it.

    ``environ`` changes the worker's environment variables (None: unset), e.g. to start it
    without the parent's ``GLIBC_TUNABLES``; glibc and XLA read theirs at process start.
    """

    def __init__(self, build: Callable[..., Callable[[], None]], *args,
                 environ: Mapping[str, str | None] | None = None):
        context = mp.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, build, args), daemon=True)
        saved = {name: os.environ.get(name) for name in environ or {}}
        try:
            _update_environ(environ or {})
            self.process.start()
        finally:
            _update_environ(saved)

    def first_run_seconds(self) -> float:
        """Seconds of the first run (it includes compilation); waits until the worker is built."""
        return self.conn.recv()

    def time_one(self) -> float:
        self.conn.send(True)
        return self.conn.recv()

    def close(self) -> None:
        self.conn.send(None)
        self.process.join(timeout=60)


def ultralytics_environ(same_malloc: bool) -> dict[str, str | None]:
    """Environment changes for the ultralytics worker: without the glibc tunables that
    yolojax's commands add (``yolo train`` runs with glibc's defaults), or, with
    ``same_malloc``, unchanged (the parent's tunables, as the yolojax worker gets them)."""
    from yolojax.runtime import HUGEPAGE_TUNABLE, KEEP_FREED_MEMORY_TUNABLES

    if same_malloc:
        return {}
    ours = {*KEEP_FREED_MEMORY_TUNABLES, HUGEPAGE_TUNABLE}
    kept = [t for t in os.environ.get("GLIBC_TUNABLES", "").split(":") if t and t not in ours]
    return {"GLIBC_TUNABLES": ":".join(kept) or None}


def _update_environ(changes: Mapping[str, str | None]) -> None:
    for name, value in changes.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def alternate(a: Worker, b: Worker, rounds: int) -> tuple[float, float]:
    """Median seconds of ``rounds`` runs of each, a then b in every round."""
    times_a, times_b = [], []
    for _ in range(rounds):
        times_a.append(a.time_one())
        times_b.append(b.time_one())
    return statistics.median(times_a), statistics.median(times_b)
