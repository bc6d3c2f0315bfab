"""``python -m yolojax.train`` with one injected fault, for tests/test_faults.py.

    python tests/faulty_train.py FAULT -- TRAIN_ARGS...

FAULT:
  disk_full:DIRNAME  every Orbax JSON item written under WORKDIR/DIRNAME (e.g. checkpoints_best)
                     fails with ENOSPC in Orbax's background commit, as a full disk fails it
  oom:STEP           the train step's call number STEP raises XLA's out-of-memory error
"""

from __future__ import annotations

import dataclasses
import errno
import sys


def disk_full_under(dirname: str) -> None:
    import orbax.checkpoint as ocp

    original = ocp.JsonCheckpointHandler._save_fn

    async def failing_save(self, x, directory):
        if dirname in directory.parts:
            raise OSError(errno.ENOSPC, "No space left on device", str(directory / "metadata"))
        return await original(self, x, directory)

    ocp.JsonCheckpointHandler._save_fn = failing_save


def oom_at_step(step: int) -> None:
    import jax

    from yolojax.train import run, setup

    original = setup.build_step

    def build_step(*args, **kwargs):
        parts = original(*args, **kwargs)
        calls = [0]

        def step_fn(state, batch):
            calls[0] += 1
            if calls[0] == step:
                raise jax.errors.JaxRuntimeError(
                    "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1073741824 bytes.")
            return parts.step_fn(state, batch)

        return dataclasses.replace(parts, step_fn=step_fn)

    run.build_step = build_step


def main() -> None:
    fault, sep, *train_args = sys.argv[1:]
    assert sep == "--", sys.argv
    kind, value = fault.split(":", 1)
    {"disk_full": disk_full_under, "oom": lambda v: oom_at_step(int(v))}[kind](value)
    from yolojax.train.__main__ import main as train_main

    train_main(["yolojax.train", *train_args])


if __name__ == "__main__":
    main()
