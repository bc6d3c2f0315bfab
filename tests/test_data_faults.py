"""Faults of the training input while it runs (yolojax.data.faults): an image that vanishes or
breaks after the label scan is named once and replaced, a split with no readable image is one
error, and a killed data worker is one DataWorkerError that leaves no shared memory behind."""

from __future__ import annotations

import logging
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from yolojax.data import AugmentConfig, DataWorkerError, UnreadableSplitError, make_train_iterator, yolo_source
from yolojax.data.faults import describe_exit
from yolojax.data.memory import shm_pool

LOCAL = {"process_index": 0, "process_count": 1}
PLAIN = AugmentConfig(mosaic=0.0)  # one source image per sample
MOSAIC = AugmentConfig(mosaic=1.0)  # four


@pytest.fixture()
def identity_yaml(tmp_path):
    """8 training images; image i has two large boxes of class i, so classes tell images apart."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "labels" / split).mkdir(parents=True)
    for i in range(8):
        h, w = (int(x) for x in rng.integers(48, 96, 2))
        cv2.imwrite(str(tmp_path / "images" / "train" / f"{i:03d}.jpg"), np.full((h, w, 3), 30 * i, np.uint8))
        (tmp_path / "labels" / "train" / f"{i:03d}.txt").write_text(f"{i} 0.3 0.3 0.5 0.5\n{i} 0.7 0.7 0.5 0.5\n")
    cv2.imwrite(str(tmp_path / "images" / "val" / "v.jpg"), np.zeros((32, 32, 3), np.uint8))
    (tmp_path / "data.yaml").write_text(yaml.safe_dump({"train": "images/train", "val": "images/val",
                                                        "names": [f"image{i}" for i in range(8)]}))
    return tmp_path / "data.yaml"


def break_files(paths) -> tuple[str, str]:
    """Delete image 2 and truncate image 5 (after the label scan); returns their paths."""
    os.remove(paths[2])
    data = Path(paths[5]).read_bytes()
    Path(paths[5]).write_bytes(data[:len(data) // 3])
    return paths[2], paths[5]


def all_batches(batches) -> list[dict]:
    out = list(batches.iterator)
    batches.close()
    return out


def skip_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped ")]


@pytest.mark.parametrize("workers, aug, augment_on", [
    (0, PLAIN, "host"),
    (0, MOSAIC, "host"),
    (0, MOSAIC, "device"),
    (2, MOSAIC, "host"),
])
def test_an_image_gone_mid_run_is_named_once_and_replaced(identity_yaml, caplog, workers, aug, augment_on):
    source = yolo_source(identity_yaml, "train")
    batches = make_train_iterator(source, imgsz=64, batch_size=4, epochs=3, aug=aug, workers=workers,
                                  augment_on=augment_on, **LOCAL)
    gone, truncated = break_files(source.image_paths)
    with caplog.at_level(logging.WARNING, logger="yolojax.data"):
        out = all_batches(batches)
    assert len(out) == batches.num_steps
    assert {b["boxes"].shape for b in out} == {(4, batches.max_boxes, 4)}
    if augment_on == "host":
        assert {b["image"].shape for b in out} == {(4, 64, 64, 3)}
    assert sorted(skip_lines(caplog)) == [  # once per file, not per batch, worker or epoch
        f"skipped {gone}: no longer readable (file not found); using image 3 ({source.image_paths[3]}) instead",
        f"skipped {truncated}: no longer readable (truncated or corrupt, does not decode); using image 6 "
        f"({source.image_paths[6]}) instead",
    ]
    assert set(batches.skips.skipped) == {gone, truncated}
    seen = set().union(*(b["classes"][b["mask"]].tolist() for b in out))
    assert not seen & {2, 5} and {3, 6} <= seen  # the substitutes' labels, never the lost images'


def test_the_substitute_keeps_a_resume_exact(identity_yaml):
    source = yolo_source(identity_yaml, "train")
    break_files(source.image_paths)
    whole = all_batches(make_train_iterator(source, imgsz=64, batch_size=4, epochs=2, aug=MOSAIC, **LOCAL))
    first = make_train_iterator(source, imgsz=64, batch_size=4, epochs=2, aug=MOSAIC, **LOCAL)
    next(first.iterator)
    state = first.iterator.get_state()
    first.close()
    resumed = make_train_iterator(source, imgsz=64, batch_size=4, epochs=2, aug=MOSAIC, **LOCAL)
    resumed.iterator.set_state(state)
    for a, b in zip(whole[1:], all_batches(resumed), strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_a_split_with_no_readable_image_is_one_error(identity_yaml):
    source = yolo_source(identity_yaml, "train")
    batches = make_train_iterator(source, imgsz=64, batch_size=4, epochs=1, aug=MOSAIC, **LOCAL)
    for path in source.image_paths:
        os.remove(path)
    with pytest.raises(UnreadableSplitError) as raised:
        next(batches.iterator)
    batches.close()
    message = str(raised.value)
    assert "\n" not in message and message.startswith("no image of the train split can be read any more (8 images")
    assert "file not found" in message
    crossed = pickle.loads(pickle.dumps(raised.value))  # as Grain sends it from a worker process
    assert type(crossed) is UnreadableSplitError and str(crossed) == message


def test_the_ram_cache_never_reads_the_files_again(identity_yaml, caplog):
    source = yolo_source(identity_yaml, "train")
    batches = make_train_iterator(source, imgsz=64, batch_size=4, epochs=1, aug=MOSAIC, cache="ram", **LOCAL)
    break_files(source.image_paths)
    with caplog.at_level(logging.WARNING, logger="yolojax.data"):
        out = all_batches(batches)
    assert len(out) == 2 and not skip_lines(caplog)
    assert {2, 5} <= set().union(*(b["classes"][b["mask"]].tolist() for b in out))


def test_a_worker_exit_is_described_with_its_signal():
    assert describe_exit(-9) == "was killed by SIGKILL (often the kernel's out-of-memory killer)"
    assert describe_exit(-11) == "was killed by SIGSEGV"
    assert describe_exit(3) == "exited with code 3"


_KILL_SCRIPT = """
import os, signal, sys
import multiprocessing
from yolojax.data import DataWorkerError, make_train_iterator

def worker_blocks(pids):
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(("yjxpool_", "yjxshm_"))
                  and int(n.split("_")[1]) in pids)

def run(data_yaml):
    batches = make_train_iterator(data_yaml, imgsz=64, batch_size=4, epochs=50, workers=2, process_index=0,
                                  process_count=1)
    batch = next(batches.iterator)
    pids = sorted(p.pid for p in multiprocessing.active_children() if p.name.startswith("grain-process-prefetch"))
    print("blocks before", len(worker_blocks(pids)) > 0)
    os.kill(pids[0], signal.SIGKILL)
    try:
        while True:
            batch = next(batches.iterator)
    except DataWorkerError as e:
        print("error", e)
        print("cause", type(e.__cause__).__name__)
    print("blocks after", worker_blocks(pids))
    batches.close()
    batches.close()
    del batch
    print("blocks at the end", worker_blocks(pids))

if __name__ == "__main__":
    run(sys.argv[1])
"""


@pytest.mark.skipif(not shm_pool.available(), reason="POSIX shared memory in /dev/shm (Linux) only")
def test_a_killed_worker_is_one_error_and_leaves_no_shared_memory(identity_yaml, tmp_path):
    """SIGKILL one of two workers mid-run: next() raises DataWorkerError (one line, from Grain's
    RuntimeError) naming the pid and signal; every block of the run's workers is gone from
    /dev/shm, and the interpreter's exit reports no leaked shared memory."""
    script = tmp_path / "kill_worker.py"  # worker processes are spawned: the script must be importable
    script.write_text(_KILL_SCRIPT)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join([str(root), os.environ.get(
        "PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(script), str(identity_yaml)], capture_output=True, text=True,
                          timeout=300, env=env)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and len(lines) == 5, proc.stdout + proc.stderr[-2000:]
    assert lines[0] == "blocks before True"
    assert re.fullmatch(r"error data worker process \d+ was killed by SIGKILL \(often the kernel's out-of-memory "
                        r"killer\): try fewer data.workers \(now 2\) or more host memory", lines[1]), lines[1]
    assert lines[2] == "cause RuntimeError"
    assert lines[3:] == ["blocks after []", "blocks at the end []"]
    assert "leaked shared_memory" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_a_worker_dies_with_its_main_process():
    """die_with_parent (set in every data worker): a process whose parent is SIGKILLed is killed too."""
    import time

    def running(pid: str) -> bool:  # a killed orphan may stay a zombie until pid 1 reaps it
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    parent_code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'from yolojax.data.pipeline import die_with_parent; "
        "import time; print(die_with_parent(), flush=True); time.sleep(120)'], stdout=subprocess.PIPE, text=True)\n"
        "print(child.pid, child.stdout.readline().strip(), flush=True)\n"
        "time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True)
    pid, armed = parent.stdout.readline().split()
    assert armed == "True"
    parent.kill()
    parent.wait()
    deadline = time.time() + 10
    while time.time() < deadline and running(pid):
        time.sleep(0.05)
    assert not running(pid), "the child outlived its killed parent"


def test_iterators_over_one_source_share_its_skip_reporter():
    """The run's plots iterate the training source again: a file is still named once."""
    from yolojax.data.faults import SkipReporter, skip_reporter_for

    class Source:
        pass

    one, other = Source(), Source()
    assert isinstance(skip_reporter_for(one), SkipReporter)
    assert skip_reporter_for(one) is skip_reporter_for(one)
    assert skip_reporter_for(other) is not skip_reporter_for(one)


def test_blocks_of_a_killed_run_are_removed_and_live_ones_kept():
    """A run whose process group was SIGKILLed (resource tracker included) leaves its workers'
    blocks; the next pipeline removes those whose worker and main pids are both gone."""
    import time

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    time.sleep(0.1)
    orphan = Path(shm_pool.SHM_DIR) / f"{shm_pool.ONE_OFF_PREFIX}{dead.pid}_{dead.pid}_test{os.getpid()}"
    live = Path(shm_pool.SHM_DIR) / f"{shm_pool.ONE_OFF_PREFIX}{dead.pid}_{os.getpid()}_test{os.getpid()}"
    try:
        orphan.write_bytes(b"x")
        live.write_bytes(b"x")
        removed = shm_pool.remove_orphaned_blocks()
        assert orphan.name in removed and not orphan.exists()
        assert live.exists() and live.name not in removed
    finally:
        orphan.unlink(missing_ok=True)
        live.unlink(missing_ok=True)
