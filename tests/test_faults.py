"""Faults of a train run (python -m yolojax.train, CPU, the tiny dataset of test_train_cli):
each ends in one line from yolojax, with the traceback in WORKDIR/train.log, and leaves the
workdir intact and resumable: two runs on one workdir, a dead run's lock, a full disk at the
best checkpoint's write, the device out of memory. Unit tests of the lock, the fault lines,
the exit statuses and the workdir log."""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from processes import free_port
from test_train_cli import EPOCHS, REPO, STEPS_PER_EPOCH, args, data_yaml, env, logged_steps, read_rows, run, wait_for  # noqa: F401
from yolojax.weights.workdir import complete_steps, incomplete_entries, latest_complete_step, read_step

FAULTY = REPO / "tests" / "faulty_train.py"
TOTAL = STEPS_PER_EPOCH * EPOCHS


def error_line(stderr: str) -> str:
    """The one ``yolojax.train: error:`` line, with no traceback on the terminal."""
    errors = [line for line in stderr.splitlines() if line.startswith("yolojax.train: error:")]
    assert len(errors) == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    return errors[0]


def run_faulty(fault: str, workdir: Path, data_yaml, env, *extra) -> subprocess.CompletedProcess:
    train_args = args(workdir, data_yaml, *extra)[3:]  # after "python -m yolojax.train"
    return subprocess.run([sys.executable, str(FAULTY), fault, "--", *train_args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def test_one_run_per_workdir_and_a_dead_runs_lock_is_taken_over(tmp_path, data_yaml, env):
    workdir = tmp_path / "locked"
    first = subprocess.Popen(args(workdir, data_yaml, "--config.val.enabled=False"), cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        ok = wait_for(lambda: latest_complete_step(workdir / "checkpoints") is not None, first)
        assert ok, first.stderr.read()[-3000:] if first.poll() is not None else "timed out"
        before = (workdir / "metrics.jsonl").read_text()
        second = run(workdir, data_yaml, env, "--config.val.enabled=False", timeout=120)
        assert second.returncode == 1, second.stderr[-3000:]
        line = error_line(second.stderr)
        assert f"workdir {workdir} is in use by another run (pid {first.pid} on host" in line, line
        assert (workdir / "metrics.jsonl").read_text().startswith(before)  # the refused run wrote nothing
    finally:
        first.kill()
        first.wait()
    resume_at = latest_complete_step(workdir / "checkpoints")
    third = run(workdir, data_yaml, env, "--config.val.enabled=False", f"--config.max_steps={resume_at + 1}")
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"taking over the lock of a run that is no longer running (pid {first.pid} on host" in third.stderr
    assert latest_complete_step(workdir / "checkpoints") == resume_at + 1
    assert logged_steps(workdir) == list(range(1, resume_at + 2))
    assert not (workdir / "run.lock").exists()


def test_full_disk_at_the_best_checkpoint_loses_nothing(tmp_path, data_yaml, env):
    workdir = tmp_path / "full"
    proc = run_faulty("disk_full:checkpoints_best", workdir, data_yaml, env)
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = error_line(proc.stderr)
    # The best save of epoch 1 (step 3) fails in Orbax's background commit; the run stops at the
    # next save (step 4) before writing anything newer.
    assert (f"step 4: no space left on device writing the checkpoint of step 3 in {workdir}/checkpoints_best"
            in line), line
    assert f"kept: {workdir}/checkpoints/3 (latest); re-run to resume; traceback in {workdir}/train.log" in line
    log = (workdir / "train.log").read_text()
    assert "Traceback" in log and "No space left on device" in log
    assert complete_steps(workdir / "checkpoints_best") == [] and incomplete_entries(workdir / "checkpoints_best")
    val_row = next(r for r in read_rows(workdir) if "mAP50-95" in r)
    assert val_row["step"] == 3

    resumed = run(workdir, data_yaml, env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"removed {workdir}/checkpoints_best/3" in resumed.stderr
    assert "resumed from" in resumed.stderr
    # Epoch 1's validation is taken from metrics.jsonl (not redone) and its best saved now.
    rows = read_rows(workdir)
    val_rows = [r for r in rows if "mAP50-95" in r]
    assert [r["step"] for r in val_rows] == [3, 6, 9]
    assert logged_steps(workdir) == list(range(1, TOTAL + 1))
    best = max(val_rows, key=lambda r: (r["mAP50-95"] or 0.0, -r["step"]))
    assert complete_steps(workdir / "checkpoints_best") == [best["step"]]
    meta = json.loads((workdir / "checkpoints_best" / str(best["step"]) / "meta" / "metadata").read_text())
    assert meta["val"] == best


def test_device_out_of_memory_is_one_line(tmp_path, data_yaml, env):
    workdir = tmp_path / "oom"
    proc = run_faulty("oom:4", workdir, data_yaml, env, "--config.val.enabled=False")
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = error_line(proc.stderr)
    assert "step 4: the device ran out of memory (RESOURCE_EXHAUSTED: Out of memory" in line, line
    assert "try a smaller batch_size (now 8) or imgsz (now 128)" in line
    assert f"kept: {workdir}/checkpoints/3 (latest)" in line  # the end of epoch 1
    read_step(workdir / "checkpoints" / "3")  # intact
    assert "JaxRuntimeError" in (workdir / "train.log").read_text()
    assert not (workdir / "run.lock").exists()


def data_workers(pid: int) -> list[int]:
    """The live data worker processes of ``pid`` (its children started by multiprocessing's
    spawn; not its resource tracker), from /proc."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z" and b"spawn_main" in cmdline:
            out.append(int(stat.parent.name))
    return out


def test_a_killed_data_worker_is_one_line(tmp_path, data_yaml, env):
    workdir = tmp_path / "worker"
    proc = subprocess.Popen(args(workdir, data_yaml, "--config.data.workers=2", "--config.val.enabled=False",
                                 "--config.epochs=30"),  # long enough that the workers still have batches to make
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        ok = wait_for(lambda: latest_complete_step(workdir / "checkpoints") is not None and data_workers(proc.pid), proc)
        assert ok, proc.stderr.read()[-3000:] if proc.poll() is not None else "timed out"
        workers = data_workers(proc.pid)
        os.kill(workers[0], 9)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err[-3000:]
    line = error_line(err)
    assert f"data worker process {workers[0]} was killed by SIGKILL (often the kernel's out-of-memory killer): try " \
           "fewer data.workers (now 2) or more host memory" in line, line
    latest = latest_complete_step(workdir / "checkpoints")
    assert f"kept: {workdir}/checkpoints/{latest} (latest); re-run to resume" in line
    read_step(workdir / "checkpoints" / str(latest))
    assert "leaked shared_memory" not in err
    assert not any(str(w) in p.name for p in Path("/dev/shm").iterdir() for w in workers)


def test_an_image_deleted_mid_run_is_named_once_and_training_goes_on(tmp_path, data_yaml, env):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(Path(data_yaml).parent, root)  # its data.yaml names its folders relative to itself
    yaml_path = root / Path(data_yaml).name
    gone = sorted((root / "images" / "train").iterdir())[5]
    workdir = tmp_path / "gone"
    proc = subprocess.Popen(args(workdir, yaml_path, "--config.val.enabled=False"), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        ok = wait_for(lambda: len(logged_steps(workdir)) >= 1, proc)
        assert ok, proc.stderr.read()[-3000:] if proc.poll() is not None else "timed out"
        gone.unlink()
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    skipped = [line for line in err.splitlines() if f"skipped {gone}: no longer readable (file not found)" in line]
    assert len(skipped) == 1, err[-3000:]
    assert logged_steps(workdir) == list(range(1, TOTAL + 1))


def start_two_processes(workdir: Path, data_yaml, env, port: int) -> list[subprocess.Popen]:
    extra = ("--config.val.enabled=False", "--config.epochs=10", "--config.imgsz=64", "--config.plots=False",
             f"--config.distributed.coordinator=127.0.0.1:{port}", "--config.distributed.num_processes=2")
    return [subprocess.Popen(args(workdir, data_yaml, *extra, f"--config.distributed.process_id={i}"), cwd=REPO,
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]


def test_two_process_run_that_loses_a_peer_ends_in_one_line(tmp_path, data_yaml, env):
    """Process 1 is killed: process 0 ends within seconds in one line, its checkpoints intact.
    (A SIGTERM to one process stopping both at one step: tests/test_peers.py, the same
    PreemptionSync the train loop uses.)"""
    workdir = tmp_path / "two"
    procs = start_two_processes(workdir, data_yaml, env, free_port())
    try:
        ok = wait_for(lambda: latest_complete_step(workdir / "checkpoints") is not None, procs[0])
        assert ok, procs[0].stderr.read()[-3000:] if procs[0].poll() is not None else "timed out"
        procs[1].kill()
        err = procs[0].communicate(timeout=60)[1]
        procs[1].wait()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[0].returncode == 75, err[-3000:]
    line = error_line(err)
    assert (f"lost process 1 of 2 (host {socket.gethostname()}, pid {procs[1].pid}): connection closed; "
            "coordinator 127.0.0.1:") in line, line
    latest = latest_complete_step(workdir / "checkpoints")
    assert f"kept: {workdir}/checkpoints/{latest} (latest); re-run to resume" in line
    read_step(workdir / "checkpoints" / str(latest))
    assert "lost process 1 of 2" in (workdir / "train.log").read_text()


# -- Units: the lock, the fault lines, the exit statuses, the workdir log.


def test_workdir_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path, caplog):
    from yolojax.console import ConfigError
    from yolojax.train.lock import WorkdirLock

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from yolojax.train.lock import WorkdirLock\n"
        f"lock = WorkdirLock({str(tmp_path)!r}); lock.acquire(); print('held', flush=True); time.sleep(600)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=f"is in use by another run \\(pid {holder.pid} on host"):
            WorkdirLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with caplog.at_level(logging.WARNING, logger="yolojax.train"):
        with WorkdirLock(tmp_path):
            record = json.loads((tmp_path / "run.lock").read_text())
            assert record["pid"] == os.getpid()
    assert f"taking over the lock of a run that is no longer running (pid {holder.pid}" in caplog.text
    assert not (tmp_path / "run.lock").exists()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="yolojax.train"), WorkdirLock(tmp_path):
        pass
    assert "taking over" not in caplog.text  # a clean release leaves nothing to take over


def test_workdir_lock_on_an_unwritable_workdir_is_one_line(tmp_path):
    from yolojax.console import ConfigError
    from yolojax.train.lock import WorkdirLock

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=f"workdir {blocker}/run is not writable"):
        WorkdirLock(blocker / "run").acquire()


class _Settings:
    """The fields :func:`describe_error` reads."""

    class checkpoint:
        keep = 3

    class distributed:
        coordinator = "10.0.0.1:1234"
        num_processes = 4

    batch_size, imgsz = 16, 640


@pytest.mark.parametrize("error, expected", [
    (OSError(errno.ENOSPC, "No space left on device", "/w/metrics.jsonl"),
     "no space left on device writing /w/metrics.jsonl: free space (or lower checkpoint.keep, now 3)"),
    (ValueError("RESOURCE_EXHAUSTED: Error writing ...: Failed to write 32264192 bytes to file 9: No space left on "
                "device [os_error_code='28']"), "no space left on device: free space"),
    (OSError(errno.EROFS, "Read-only file system", "/w/train.log"), "cannot write /w/train.log: Read-only file system"),
    (RuntimeError("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory space hbm."),
     "the device ran out of memory (RESOURCE_EXHAUSTED: XLA:TPU compile permanent error."),
    (RuntimeError("Gloo AllGather failed: Connection closed by peer [10.0.0.2]:5678"),
     "lost contact with another process of this 4-process run (coordinator 10.0.0.1:1234): Gloo AllGather failed"),
    (KeyError("boxes"), "KeyError: 'boxes'"),
])
def test_fault_lines_name_the_cause_and_what_to_try(error, expected):
    from yolojax.train.outcome import describe_error

    assert describe_error(error, _Settings).startswith(expected), describe_error(error, _Settings)


def test_a_checkpoint_write_names_the_step_and_directory_and_the_root_cause():
    from yolojax.train.outcome import CheckpointWriteError, describe_error, fault_line

    try:
        try:
            raise ValueError("Failed writing: ... No space left on device [os_error_code='28']")
        except ValueError as e:
            raise CheckpointWriteError("the checkpoint of step 12 in /w/checkpoints") from e
    except CheckpointWriteError as e:
        error = e
    assert describe_error(error, _Settings).startswith(
        "no space left on device writing the checkpoint of step 12 in /w/checkpoints: ")
    line = fault_line(error, _Settings, "/nonexistent", 13, Path("/w/train.log"))
    assert line.startswith("step 13: no space left") and line.endswith(
        "; no checkpoint was written yet; re-run to start again; traceback in /w/train.log")


def test_exit_statuses():
    from yolojax.train.outcome import EXIT_FINISHED, EXIT_RESUMABLE, exit_status, summary_line

    summary = {"stopped_by_signal": None, "stopped_early": None, "step": 9, "total_steps": 9, "workdir": "/w",
               "checkpoint_step": 9, "best_step": 6}
    assert exit_status(summary) == EXIT_FINISHED == 0
    assert summary_line(summary).startswith("done: 9 steps")
    assert exit_status({**summary, "stopped_early": "patience"}) == 0
    stopped = {**summary, "stopped_by_signal": 15, "step": 4, "checkpoint_step": 4}
    assert exit_status(stopped) == EXIT_RESUMABLE == 75
    assert summary_line(stopped) == ("stopped by signal 15 at step 4; latest checkpoint: /w/checkpoints/4 "
                                     "(re-run to resume; exit status 75)")


def test_log_to_file_keeps_tracebacks_off_the_terminal(tmp_path):
    path = tmp_path / "train.log"
    code = f"""
import logging, threading
from yolojax.console import configure_logging, log_to_file
configure_logging()
log = logging.getLogger("yolojax.test_faults")
with log_to_file({str(path)!r}):
    try:
        raise ValueError("deep cause")
    except ValueError:
        log.exception("saving failed")
    logging.getLogger("absl").error("Orbax's own report of it")
    thread = threading.Thread(target=lambda: 1 / 0, name="writer")
    thread.start()
    thread.join()
log.warning("after the run")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        f"ERROR yolojax.test_faults: saving failed (traceback in {path})",
        f"WARNING yolojax: thread writer failed: ZeroDivisionError: division by zero (traceback in {path})",
        "WARNING yolojax.test_faults: after the run"], proc.stderr
    text = path.read_text()
    assert "ValueError: deep cause" in text and "Orbax's own report of it" in text
    assert "exception in thread writer" in text and "ZeroDivisionError" in text
    assert "after the run" not in text


def test_previous_validation_reads_the_row_of_a_step(tmp_path):
    from yolojax.train.logs import previous_validation, read_rows

    path = tmp_path / "metrics.jsonl"
    assert previous_validation(path, 3) is None and read_rows(path) == []
    path.write_text('{"step": 3, "loss": 1.0}\n{"epoch": 0, "step": 3, "mAP50": 0.2, "mAP50-95": 0.1}\n'
                    '{"epoch": 1, "step": 6, "mAP50": 0.3, "mAP50-95": 0.2}\n{"step": 7, "lo')  # cut by a full disk
    assert previous_validation(path, 3) == {"epoch": 0, "step": 3, "mAP50": 0.2, "mAP50-95": 0.1}
    assert previous_validation(path, 4) is None
    assert len(read_rows(path)) == 3


def test_metrics_log_truncation_keeps_the_file_when_the_write_fails(tmp_path, monkeypatch):
    from yolojax.train.logs import MetricsLog

    path = tmp_path / "metrics.jsonl"
    text = '{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.9}\n'
    path.write_text(text)

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError):
        MetricsLog(path, resume_step=1)
    monkeypatch.undo()
    assert path.read_text() == text and [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]
    MetricsLog(path, resume_step=1)
    assert path.read_text() == '{"step": 1, "loss": 1.0}\n'


def test_stderr_after_the_last_line_goes_to_the_log(tmp_path):
    log = tmp_path / "train.log"
    code = ("import sys; from pathlib import Path; from yolojax.train.outcome import final_status, interrupted_line\n"
            "print('the one line', file=sys.stderr)\n"
            f"status = final_status(1, Path({str(log)!r}))\n"
            "print('a library thread failing at exit', file=sys.stderr)\n"
            f"print(interrupted_line({str(tmp_path)!r}), file=sys.stderr)\n"
            "sys.exit(status)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr == "the one line\n"
    assert log.read_text() == ("a library thread failing at exit\ninterrupted by a second signal; no checkpoint "
                               "was written yet; re-run to start again\n")


def test_the_last_line_is_kept_in_the_run_log(tmp_path):
    from yolojax.train.outcome import log_last_line, summary_line

    summary = {"stopped_by_signal": 15, "stopped_early": None, "step": 4, "total_steps": 9,
               "workdir": str(tmp_path), "checkpoint_step": 4, "best_step": None}
    (tmp_path / "train.log").write_text("earlier lines\n")
    log_last_line(summary, summary_line(summary))
    lines = (tmp_path / "train.log").read_text().splitlines()
    assert lines[0] == "earlier lines" and lines[1].endswith(summary_line(summary))


def test_the_resume_command_of_yolojax_train_names_its_run_directory(tmp_path):
    import shlex

    from yolojax.cli import resume_command, train_config

    args = ["model=yolov8n.yaml", "data=x.yaml", "epochs=3", "name=exp", "exist_ok=True"]
    command = resume_command(args, tmp_path / "runs" / "detect" / "exp2")
    assert command.startswith("yolojax train model=yolov8n.yaml data=x.yaml epochs=3 ") and "exist_ok" not in command
    (tmp_path / "runs" / "detect" / "exp2").mkdir(parents=True)
    (tmp_path / "runs" / "detect" / "exp2" / "metrics.jsonl").write_text("")
    _, workdir = train_config(shlex.split(command)[2:])
    assert workdir == tmp_path / "runs" / "detect" / "exp2"  # resume=True reuses it, not exp3
