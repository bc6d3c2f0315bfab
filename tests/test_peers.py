"""yolojax.parallel.peers: a lost process of a 2-process jax.distributed run (CPU, localhost)
makes the survivor print one line and exit with EXIT_PEER_LOST within seconds; a SIGTERM or
SIGINT to one process stops both at the same step.

Each 2-process test starts two small Python processes (a jitted cross-process sum in a loop)
and takes ~5 s.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from processes import child_env, free_port

from yolojax.parallel.peers import EXIT_PEER_LOST, PeerWatch, PreemptionSync

ROOT = str(Path(__file__).resolve().parents[1])

CHILD = r"""
import os, sys, time, traceback
mode, coordinator, index, log_file = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
jax.distributed.initialize(coordinator, 2, index)
from yolojax.parallel.peers import PeerWatch, PreemptionSync, leave

mesh = Mesh(np.array(jax.devices()), ("d",))
x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("d")), np.ones((1, 4), np.float32))
step_fn = jax.jit(lambda x: x + jnp.sum(x) * 1e-6)  # an all-reduce across the two processes

def say(text):
    print(text, flush=True)

if mode == "broadcast":
    from yolojax.parallel import broadcast_json
    got = broadcast_json({"from": index, "row": {"mAP50-95": 0.5 + index}} if index == 0 else None)
    say(f"GOT {got}")
    sys.exit(0)

if mode in ("preempt", "request"):
    with PreemptionSync() as stop:
        for step in range(1, 100000):
            x = step_fn(x)
            float(np.asarray(x.addressable_data(0)).sum())
            if step == 3:
                say("READY")
            if mode == "request" and index == 1 and step == 10:
                stop.request_stop("time limit")  # a decision of process 1 alone
            if stop.should_stop(step):
                say(f"STOP {step}")
                break
            time.sleep(0.02)
    sys.exit(0)

import subprocess
helper = subprocess.Popen(["sleep", "600"])  # a data worker's stand-in: the lost-peer exit must end it
say(f"CHILD {helper.pid}")
watch = PeerWatch(coordinator, index, 2, log_file=log_file, connect_timeout=60)
try:
    with watch:
        for step in range(1, 100000):
            x = step_fn(x)  # raises when the peer is gone: PeerWatch.__exit__ settles first
            float(np.asarray(x.addressable_data(0)).sum())
            if step == 3:
                say("READY")
            if mode == "finish" and step == 20:
                break
            if mode == f"fail{index}" and step == 20:
                raise ValueError("boom")
            time.sleep(0.02)
except Exception:
    time.sleep(1.0)  # a slow fault report: the peer (even process 0) must wait for it
    traceback.print_exc()
    helper.kill()
    leave(1)
helper.kill()
if mode == "finish" and index == 0:
    time.sleep(1.5)  # process 1 leaves first: its "bye" is no loss
say("FINISHED")
"""




class Pair:
    """Two child processes of one jax.distributed run; stdout/stderr in files."""

    def __init__(self, mode: str, tmp_path: Path):
        self.coordinator = f"127.0.0.1:{free_port()}"
        self.tmp = tmp_path
        self.logs = [tmp_path / f"lost{i}.log" for i in range(2)]
        self.procs = [
            subprocess.Popen([sys.executable, "-c", CHILD, mode, self.coordinator, str(i), str(self.logs[i])],
                             env=child_env(), stdout=open(tmp_path / f"out{i}.txt", "w"),
                             stderr=open(tmp_path / f"err{i}.txt", "w"))
            for i in range(2)
        ]

    def out(self, i: int) -> str:
        return (self.tmp / f"out{i}.txt").read_text()

    def err(self, i: int) -> str:
        return (self.tmp / f"err{i}.txt").read_text()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not all("READY" in self.out(i) for i in range(2)):
            for i, p in enumerate(self.procs):
                assert p.poll() is None, f"process {i} ended early ({p.returncode}): {self.err(i)[-3000:]}"
            assert time.monotonic() < deadline, "the processes did not start"
            time.sleep(0.05)

    def wait(self, i: int, timeout: float) -> tuple[int, float]:
        """(exit status, seconds waited)."""
        start = time.monotonic()
        rc = self.procs[i].wait(timeout=timeout)
        return rc, time.monotonic() - start

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for i in range(2):  # a killed process's helper child is orphaned
            for line in self.out(i).splitlines():
                if line.startswith("CHILD ") and not _gone(int(line.split()[1])):
                    try:
                        os.kill(int(line.split()[1]), signal.SIGKILL)
                    except OSError:
                        pass


@pytest.fixture
def pair(tmp_path):
    made = []

    def make(mode: str) -> Pair:
        made.append(Pair(mode, tmp_path))
        return made[-1]

    yield make
    for p in made:
        p.kill_all()


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # a zombie nobody reaped yet
    except OSError:
        return True


def _lost_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("yolojax:")]


@pytest.mark.parametrize("killed", [1, 0], ids=["lost_worker", "lost_coordinator"])
def test_survivor_of_a_killed_process_says_one_line_and_exits(pair, killed):
    run = pair("loop")
    run.wait_ready()
    survivor = 1 - killed
    run.procs[killed].send_signal(signal.SIGKILL)
    rc, seconds = run.wait(survivor, timeout=30)
    err = run.err(survivor)
    print(f"survivor {survivor}: status {rc} after {seconds:.2f} s\n{err[-2000:]}")
    assert rc == EXIT_PEER_LOST, err[-3000:]
    assert seconds < 5, seconds
    lines = _lost_lines(err)
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith(f"yolojax: lost process {killed} of 2 (host ")
    assert f"coordinator {run.coordinator}" in lines[0]
    assert f"process {survivor} exits with status {EXIT_PEER_LOST}" in lines[0]
    details = run.logs[survivor].read_text()
    assert f"lost: process {killed}, how: connection closed" in details
    assert "Python stacks of this process" in details
    child = int(next(line for line in run.out(survivor).splitlines() if line.startswith("CHILD ")).split()[1])
    deadline = time.monotonic() + 5
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(child), "the survivor's child process outlived it"


def test_normal_end_is_not_a_loss(pair):
    run = pair("finish")
    for i in (1, 0):
        rc, _ = run.wait(i, timeout=60)
        assert rc == 0, run.err(i)[-3000:]
        assert "FINISHED" in run.out(i)
        assert not _lost_lines(run.err(i)), run.err(i)
    assert not any(log.exists() for log in run.logs)


@pytest.mark.parametrize("failing", [1, 0])
def test_a_failing_process_stops_its_peer(pair, failing):
    """An exception in one process (PeerWatch's __exit__ says "fail"): the other leaves with
    the line; the failing one reports its error and leaves through peers.leave(1)."""
    run = pair(f"fail{failing}")
    other = 1 - failing
    rc, _ = run.wait(failing, timeout=60)
    rc_other, seconds = run.wait(other, timeout=30)
    assert rc == 1, run.err(failing)[-3000:]
    assert "ValueError: boom" in run.err(failing)
    assert rc_other == EXIT_PEER_LOST and seconds < 5, run.err(other)[-3000:]
    lines = _lost_lines(run.err(other))
    assert len(lines) == 1 and f"lost process {failing} of 2" in lines[0], run.err(other)
    assert "stopped with an error: ValueError: boom" in lines[0]
    assert "client.h" not in run.err(other) + run.err(failing)  # no C++ abort on either side


@pytest.mark.parametrize("sig,target", [(signal.SIGTERM, 1), (signal.SIGINT, 0), (None, 1)],
                         ids=["sigterm_to_1", "sigint_to_0", "request_stop_on_1"])
def test_one_signalled_process_stops_both_at_the_same_step(pair, sig, target):
    run = pair("preempt" if sig is not None else "request")
    run.wait_ready()
    if sig is not None:
        run.procs[target].send_signal(sig)
    steps = []
    for i in range(2):
        rc, _ = run.wait(i, timeout=30)
        assert rc == 0, run.err(i)[-3000:]
        stops = [line for line in run.out(i).splitlines() if line.startswith("STOP ")]
        assert len(stops) == 1, run.out(i)
        steps.append(int(stops[0].split()[1]))
    assert steps[0] == steps[1], steps
    if sig is None:
        assert steps[0] > 10, steps


def test_single_process_is_a_no_op_and_signals_stop_locally():
    watch = PeerWatch("127.0.0.1:1", 0, 1).start()
    assert not watch.active
    watch.stop()
    with PreemptionSync() as stop:
        assert not stop.should_stop(1)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the Python handler runs between bytecodes
        assert stop.signum == signal.SIGTERM
        assert stop.should_stop(2) and stop.should_stop(3) and stop.stop_step == 2
    with PreemptionSync() as stop:
        assert not stop.should_stop(1)
        stop.request_stop("time limit")
        assert stop.should_stop(2) and stop.signum is None
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None)


def test_broadcast_json_gives_process_0s_value_to_every_process(tmp_path):
    pair = Pair("broadcast", tmp_path)
    try:
        assert [pair.wait(i, 60)[0] for i in range(2)] == [0, 0], pair.err(0)[-2000:] + pair.err(1)[-2000:]
        for i in range(2):
            assert "GOT {'from': 0, 'row': {'mAP50-95': 0.5}}" in pair.out(i)
    finally:
        pair.kill_all()
