"""A long run, test-sized (tools/soak.py): many epochs of a tiny synthetic dataset with the
quickstart's 2 worker processes; the RSS of the process tree and the run's /dev/shm files stay
flat after warm-up, and the run leaves no /dev/shm file behind. Also soak's /proc readers on
a small process tree and its summary arithmetic."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("soak", REPO / "tools" / "soak.py")
soak = sys.modules["soak"] = importlib.util.module_from_spec(_spec)  # registered: its dataclasses look it up
_spec.loader.exec_module(soak)

MIB = soak.MIB
# The long run: 24 images / batch 8 = 3 steps per epoch at 64 px, with the quickstart's 2
# worker processes, a validation (8 images) and a checkpoint after every epoch, mosaic closing
# for the last 2 epochs.
EPOCHS = 18
WARMUP_EPOCHS = 4       # the step and the validation compile in epoch 0; the heap settles after
WINDOW_EPOCHS = 3       # the first and the last 3 steady epochs compared
# The main process's RSS after each epoch's trim (TRIM_EACH_EPOCH) changes by a median of
# ~+0.5 MiB from one epoch to the next here (Python objects of orbax's checkpoint saves), flat
# within 1-2 MiB otherwise; a leak of a few MiB per epoch exceeds both bounds.
MAX_MIB_PER_EPOCH = 1.5
MAX_GROWTH_MIB = 20     # main, from the first 3 to the last 3 steady epochs (10 apart); also the workers
MAX_SHM_GROWTH = 2      # files of the run in /dev/shm: the workers' pooled blocks, reused
# The train command, with glibc's malloc_trim(0) after each epoch's validation row, which then
# prints the main process's RSS. yolojax keeps freed memory in the process (glibc tunables): RSS
# is the heap's peak, ~2.5x what is in use, and a leak would fill that free memory before RSS
# showed it. The trim hands the free pages back (protobuf's upb runtime does the same every
# 10000 of its frees in every run), so the RSS printed right after it, at the same point of
# every epoch, follows the memory in use. Nothing else changes.
TRIM_EACH_EPOCH = """
import ctypes, runpy, sys
from yolojax.train import progress
_trim, _row = ctypes.CDLL("libc.so.6").malloc_trim, progress.StepProgress.validation_row
def validation_row(self, row):
    _row(self, row)
    _trim(0)
    rss = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmRSS:"))
    print(f"soak-test epoch {row['epoch']} rss_kib {rss}", flush=True)
progress.StepProgress.validation_row = validation_row
sys.argv[0] = "yolojax.train"
runpy.run_module("yolojax.train", run_name="__main__", alter_sys=True)
"""


def _child_tree_script(shm_name: str) -> str:
    """A parent that starts a child holding 64 MiB of touched memory and a /dev/shm file."""
    child = (f"import time; b = bytearray(64 << 20); b[::4096] = b'x' * len(b[::4096]); "
             f"f = open('/dev/shm/{shm_name}', 'wb'); f.write(b'x' * 65536); f.flush(); time.sleep(60)")
    return (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', {child!r}]); "
            "time.sleep(60)")


def test_sampling_a_process_tree_and_its_shm_file(tmp_path):
    name = f"yjxsoaktest_{os.getpid()}_{time.time_ns()}"
    proc = subprocess.Popen([sys.executable, "-c", _child_tree_script(name)], start_new_session=True)
    try:
        run_files, sample = soak.RunFiles(), None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            sample = soak.sample_tree(proc.pid, 0.0, run_files=run_files)
            if sample is not None and sample.workers == 1 and sample.shm_run_files == 1 \
                    and sample.workers_rss > 64 * MIB:
                break
            time.sleep(0.2)
        assert sample is not None and sample.workers == 1, sample
        assert sample.workers_rss > 64 * MIB and sample.tree_rss == sample.main_rss + sample.workers_rss
        assert sample.tree_pss is not None and sample.tree_uss is not None and sample.tree_uss <= sample.tree_rss
        assert sample.shm_run_files == 1 and run_files.of(os.listdir("/dev/shm")) == [name]
        assert len(soak.process_tree(proc.pid)) == 2
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
    try:
        time.sleep(0.2)
        assert soak.sample_tree(proc.pid, 1.0) is None and soak.process_tree(proc.pid) == []
        assert run_files.of(os.listdir("/dev/shm")) == [name]  # left behind: the test's leak detection sees it
    finally:
        os.unlink(f"/dev/shm/{name}")


def _sample(t: float, epoch: int, tree_mib: float) -> soak.Sample:
    b = int(tree_mib * MIB)
    return soak.Sample(t=t, epoch=epoch, step=None, main_rss=b, main_anon=b, main_shmem=0, main_hwm=b, main_thp=0,
                       workers_rss=0, workers=0, tree_rss=b, tree_pss=b, tree_uss=b, shm_files=0, shm_bytes=0,
                       shm_run_files=0, load1=0.0)


def test_summary_window_slope_and_jump():
    # Epochs of 10 s, each ending with its validation row; RSS 1000 MiB, +150 MiB from epoch 6 on.
    events = []
    for e in range(10):
        events += [(10.0 * e + 1, "train", f"{e} {3 * e + 1}"), (10.0 * e + 9, "val", f"{e} {3 * e + 3}")]
    samples = [_sample(t, int(t // 10), 1000 + (150 if t >= 59 else 0)) for t in range(0, 100)]
    result = soak.SoakResult(samples, events, 0, (0, 0), (0, 0), [], [], "", "", [])
    assert soak.epoch_starts(events)[3] == 29.0  # the end of epoch 2's validation
    assert soak.steady_window(result, 2) == (19.0, 89.0)
    summary = soak.summarize(result, 2)
    assert summary["tree"]["start"] == 1000 and summary["tree"]["end"] == 1150 and summary["tree"]["growth"] == 150
    assert summary["largest_epoch_jump"] == {"from_epoch": 5, "to_epoch": 6, "mib": 150.0}
    assert soak.slope_per_hour([0, 3600], [0, 5]) == 5.0
    assert any("+150 MiB" in line for line in soak.summary_lines(summary))


def _window_median(per_epoch: dict[int, list], epochs: list[int], value) -> float:
    return soak.median([value(s) for e in epochs for s in per_epoch[e]])


@pytest.mark.slow
def test_long_run_memory_and_shm_stay_flat(tmp_path):
    from yolojax.data.sources.synthetic import write_synthetic_dataset

    data_yaml = write_synthetic_dataset(tmp_path / "shapes", num_train=24, num_val=8, size_range=(64, 128),
                                        max_shapes=3, seed=0)
    workdir = tmp_path / "run"
    command = soak.train_command("quickstart", workdir, EPOCHS, [
        f"--config.data.yaml={data_yaml}", "--config.imgsz=64", "--config.val.batch_size=8", "--config.plots=False",
        "--config.progress=False", "--config.checkpoint.keep_best=False",
        # Synchronous saves: a save in flight overlapping the next step makes the heap grow by
        # one step's temporaries at a load-dependent epoch (docs/reliability.md, "Long runs").
        "--config.checkpoint.async_save=False"],
        launcher=[sys.executable, "-c", TRIM_EACH_EPOCH])
    t0 = time.monotonic()
    result = soak.soak(command, workdir, interval=0.5, pss=False, log_compiles=False, quiet=True, stop_timeout=60,
                       csv_path=workdir / "soak.csv")
    seconds = time.monotonic() - t0
    log = (workdir / "soak_train.log").read_text(errors="replace")[-3000:]
    assert result.returncode == 0, log
    assert max(soak.epoch_starts(result.events)) == EPOCHS - 1, log

    # The main process: its RSS after each epoch's trim. A leak adds about the same to every
    # epoch: the median change from one epoch to the next, and the growth from the first to the
    # last steady epochs.
    after_trim = {int(m[1]): int(m[2]) / 1024 for m in re.finditer(r"soak-test epoch (\d+) rss_kib (\d+)",
                                                                      (workdir / "soak_train.log").read_text())}
    steady = [e for e in sorted(after_trim) if WARMUP_EPOCHS <= e < EPOCHS - 1]
    assert len(steady) >= 2 * WINDOW_EPOCHS + 6, sorted(after_trim)
    change = soak.median([after_trim[e] - after_trim[e - 1] for e in steady if e - 1 in after_trim])
    main_growth = (soak.median([after_trim[e] for e in steady[-WINDOW_EPOCHS:]])
                   - soak.median([after_trim[e] for e in steady[:WINDOW_EPOCHS]]))
    # The workers (and /dev/shm) from soak's samples: the steady epochs with both workers alive
    # (they exit once their last batches are built, in the last epochs).
    workers = max(s.workers for s in result.samples)
    per_epoch = soak.samples_by_epoch(result, soak.after_warmup(result, WARMUP_EPOCHS))
    epochs = [e for e in sorted(per_epoch) if all(s.workers == workers for s in per_epoch[e])]
    assert len(epochs) >= 2 * WINDOW_EPOCHS + 4, (sorted(per_epoch), epochs)
    first, last = epochs[:WINDOW_EPOCHS], epochs[-WINDOW_EPOCHS:]
    workers_growth = (_window_median(per_epoch, last, lambda s: s.workers_rss / MIB)
                      - _window_median(per_epoch, first, lambda s: s.workers_rss / MIB))
    table = ", ".join(f"{e}: {after_trim[e]:.1f}" for e in steady)
    print(f"soak test: {seconds:.0f} s; main RSS after the trims: {change:+.2f} MiB per epoch (median), "
          f"{main_growth:+.1f} MiB from epochs {steady[:WINDOW_EPOCHS]} to {steady[-WINDOW_EPOCHS:]}; workers' "
          f"RSS {workers_growth:+.1f} MiB from {first} to {last}; /dev/shm {result.shm_before} -> {result.shm_after}; "
          f"{soak.load_average()}")
    assert change < MAX_MIB_PER_EPOCH, f"main RSS grows {change:.2f} MiB per epoch; after each epoch (MiB): {table}"
    assert main_growth < MAX_GROWTH_MIB, f"main RSS grew {main_growth:.1f} MiB; after each epoch (MiB): {table}"
    assert workers_growth < MAX_GROWTH_MIB, f"the workers' RSS grew {workers_growth:.1f} MiB"

    shm_first = max(s.shm_run_files for e in first for s in per_epoch[e])
    shm_last = max(s.shm_run_files for e in last for s in per_epoch[e])
    assert shm_last <= shm_first + MAX_SHM_GROWTH, f"files of the run in /dev/shm: {shm_first} -> {shm_last}"
    assert result.shm_left == [], f"/dev/shm files of the run left behind: {result.shm_left}"
