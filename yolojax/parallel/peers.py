"""Multi-process runs: notice a lost peer within seconds (:class:`PeerWatch`), and stop every
process at the same step when one of them is preempted (:class:`PreemptionSync`).

Why (measured with jax 0.10.2 on CPU, two processes on one host):

* When process 1 dies (SIGKILL), the survivor's next collective raises ``ValueError: UNKNOWN:
  Gloo all-reduce failed ... Connection reset by peer``; the interpreter then exits through
  ``jax.distributed.shutdown`` (atexit), whose shutdown barrier waits for the dead task until the
  coordination service misses its heartbeats (``heartbeat_timeout_seconds``, 100 s by default),
  and the service's error polling then aborts the process from C++ (``F... client.h:80]
  Terminating process because the JAX distributed service detected fatal errors``, SIGABRT,
  status 134). No Python hook sees that abort: ``missed_heartbeat_callback`` of
  ``get_distributed_runtime_client`` dies with ``std::bad_cast`` when it is a Python callable,
  and ``client.get_live_nodes`` is a barrier that itself blocks until the heartbeat timeout.
* When process 0 (which hosts the coordination service) dies, every other process is aborted by
  the same error polling ~0.1 s later.

:class:`PeerWatch` keeps one TCP connection from each process to process 0 (a star; the kernel
closes a dead process's sockets at once, and TCP keep-alive notices a vanished host), prints one
line, writes the details to a file and leaves with ``os._exit`` before either abort. When process
0 itself dies abruptly (SIGKILL, OOM killer, crash), the others' watch threads race that C++
abort for the GIL: they win while the main thread is in jitted code or blocked (measured: 20 of
20 runs of a small loop), but can lose when several Python threads hold the GIL (3 of 6 with four
busy threads; 1 of 1 in a real train run saving an Orbax checkpoint): the process then ends with
status 134 after absl's "Terminating process" line. Not covered: a hung but living peer (SIGSTOP,
a deadlock) still answers TCP; jax's heartbeat timeout aborts the run then.

:class:`PreemptionSync` wraps jax's preemption sync manager: a SIGTERM to any one process makes
every process's :meth:`PreemptionSync.should_stop` return True at the same step.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import selectors
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NoReturn

logger = logging.getLogger(__name__)

EXIT_PEER_LOST = 75  # os.EX_TEMPFAIL: "temporary failure, retry": the run resumes from its checkpoints
KV_PREFIX = "yolojax/peerwatch"
_generation = 0  # PeerWatch objects started in this process: one KV key each (same order on every process)
_held: list[socket.socket] = []  # connections of a process that failed: open until it exits


@dataclass
class Peer:
    """A process as the watch knows it (``host``/``pid`` None until it said hello)."""

    index: int
    host: str | None = None
    pid: int | None = None
    sock: socket.socket | None = None
    buffer: bytes = b""
    last_heard: float = 0.0
    departed: bool = False  # said "bye": finished normally, no longer watched


@dataclass(frozen=True)
class LostPeer:
    """What :class:`PeerWatch` noticed.

    Attributes:
      index: the lost process's index.
      host: its host name (None if it never said hello).
      pid: its process id on that host (None likewise).
      how: how it was noticed ("connection closed", "connection reset", "no answer to TCP
        keep-alive", "stopped with an error: ...", "reported by process 0: ...").
      seconds: seconds since :meth:`PeerWatch.start` returned.
    """

    index: int
    host: str | None
    pid: int | None
    how: str
    seconds: float


def _split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _keepalive(sock: socket.socket, seconds: float) -> None:
    """Kernel keep-alive: a peer host that vanishes without closing (power loss, partition) is
    noticed after ~``seconds`` + 3 probes; a busy or hung but living process still answers."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    interval = max(1, int(seconds / 4))
    for name, value in (("TCP_KEEPIDLE", max(1, int(seconds))), ("TCP_KEEPINTVL", interval), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _child_pids() -> list[int]:
    """This process's direct children (Linux /proc; empty elsewhere)."""
    pids: list[int] = []
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as f:
                pids += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return pids


def _write_fd(fd: int, text: str) -> None:
    """Write without Python's stream locks (the main thread may hold sys.stderr's)."""
    data = text.encode(errors="replace")
    while data:
        data = data[os.write(fd, data):]


class PeerWatch:
    """Notice within seconds that another process of a ``jax.distributed`` run died; then print
    one line, write the details and leave this process with ``os._exit(exit_status)``.

    Process 0 accepts one TCP connection from every other process (its port travels through
    the coordination service's key-value store; the host is the coordinator's). A connection
    that closes or resets, or whose host stops answering TCP keep-alive, is a lost process:
    process 0 tells the others before it leaves; the others leave when process 0 is lost. A
    process that ends normally calls :meth:`stop` ("bye"), one that ends with an exception
    ``stop(error=...)`` (its peers then leave too; it should then report its error and end with
    :func:`leave`, and its connection stays open until it does, so that process 0, which hosts
    the coordination service, is the last to go).

    On a loss the watch thread, in this order: writes the line (``yolojax: lost process 1 of 2
    (host h, pid 123): connection closed; coordinator 10.0.0.1:1234; process 0 exits with status
    75; details in LOG``) to stderr, appends the details (who, how, when, every peer, the Python
    stacks of this process's threads) to ``log_file``, calls ``on_lost(line)``, sends SIGTERM to
    its child processes and calls ``os._exit(exit_status)``: no atexit handler, no
    ``jax.distributed.shutdown`` (whose barrier would wait out the heartbeat timeout), no flush
    of Python's buffers (log through handlers that flush per record). Checkpoints already
    committed stay intact; a save in flight stays an uncommitted temporary directory (Orbax's
    ``*.orbax-checkpoint-tmp``, removed when the run resumes).

    Args:
      coordinator: the ``jax.distributed`` coordinator address "host:port" (process 0's host;
        None: the one ``jax.distributed.initialize`` used, as after its cluster auto-detection).
      process_index: this process's index.
      process_count: the number of processes; 1 makes the watch a no-op.
      on_lost: called with the line in the watch thread before the exit (keep it short; an
        exception in it is logged and ignored).
      log_file: the file the details are appended to (None: none are written).
      exit_status: the status to leave with; None leaves the process running after
        ``on_lost`` (tests; the run is then broken: its collectives fail or hang).
      client: a ``DistributedRuntimeClient`` (default: ``jax.distributed``'s).
      keepalive_seconds: TCP keep-alive idle time (a silent host is lost ~1.75x this later).
      connect_timeout: seconds :meth:`start` waits for every process to connect.
      prefix: the line's first word(s) (e.g. "yolojax.train: error").
      suffix: returns text the line carries before "details in ..." (e.g. which checkpoint
        is kept); an exception in it is ignored.
      terminate_children: before the exit, send SIGTERM to this process's child processes
        (data workers would otherwise outlive it; multiprocessing's resource tracker ignores
        SIGTERM and unlinks their shared memory once they are gone).

    Raises (from :meth:`start`):
      RuntimeError: no distributed client (``jax.distributed.initialize`` was not called).
      TimeoutError: the processes did not all connect within ``connect_timeout``.
    """

    def __init__(self, coordinator: str | None, process_index: int, process_count: int,
                 on_lost: Callable[[str], None] | None = None, *, log_file: str | os.PathLike | None = None,
                 exit_status: int | None = EXIT_PEER_LOST, client: Any = None, keepalive_seconds: float = 10.0,
                 connect_timeout: float = 300.0, prefix: str = "yolojax",
                 suffix: Callable[[], str] | None = None, terminate_children: bool = True):
        self.coordinator = coordinator
        self.index = process_index
        self.count = process_count
        self.on_lost = on_lost
        self.log_file = Path(log_file) if log_file is not None else None
        self.exit_status = exit_status
        self.keepalive_seconds = keepalive_seconds
        self.connect_timeout = connect_timeout
        self.prefix = prefix
        self.suffix = suffix
        self.terminate_children = terminate_children
        self.lost: LostPeer | None = None
        self._client = client
        self._peers: dict[int, Peer] = {}
        self._selector: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopping = False
        self._handled = threading.Event()  # set once a loss was handled (or in handling)
        self._started_at = 0.0
        self.host = socket.gethostname()

    # -- public ----------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> PeerWatch:
        """Connect the processes (a barrier: call it at the same point on every process, right
        after ``jax.distributed.initialize``) and start the daemon watch thread."""
        global _generation
        if self.count <= 1 or self._thread is not None:
            return self
        client = self._client
        if client is None:
            from jax._src import distributed
            client = distributed.global_state.client
        if client is None:
            raise RuntimeError("PeerWatch needs jax.distributed.initialize() first")
        if self.coordinator is None:
            from jax._src import distributed
            self.coordinator = distributed.global_state.coordinator_address
        _generation += 1
        key = f"{KV_PREFIX}/{_generation}"
        deadline = time.monotonic() + self.connect_timeout
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        if self.index == 0:
            self._start_hub(client, key, deadline)
        else:
            self._start_spoke(client, key, deadline)
        self._started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="yolojax-peerwatch", daemon=True)
        self._thread.start()
        return self

    def stop(self, error: str | None = None, settle: float = 1.0) -> None:
        """Stop watching: tell the peers this process ends normally (``error`` None) or failed
        with ``error`` (its peers then leave with the lost-peer line). With an error, first
        :meth:`settle` for up to ``settle`` seconds: an error that a lost peer caused (Gloo's
        "Connection reset by peer") ends in the lost-peer exit, not in "fail". Idempotent;
        does nothing after a loss was handled (that thread owns the exit)."""
        if error is not None:
            self.settle(settle)
        with self._lock:
            if self._thread is None or self._stopping or self._handled.is_set():
                return
            self._stopping = True
            text = "bye\n" if error is None else f"fail {' '.join(error.split())[:500]}\n"
            for peer in self._peers.values():
                if peer.sock is not None and not peer.departed:
                    try:
                        peer.sock.settimeout(2.0)
                        peer.sock.sendall(text.encode())
                    except OSError:
                        pass
        if error is not None:
            if self.index == 0:
                # The others leave before this process (and the coordination service in it)
                # does: a process that loses the service is aborted by jax within ~0.1 s.
                self._wait_closed([p for p in self._peers.values() if not p.departed], 2.0)
            else:
                # Open until this process exits: process 0 waits for that before it leaves.
                _held.extend(p.sock for p in self._peers.values() if p.sock is not None)
                self._peers = {}
        self._wake()
        self._thread.join(timeout=5.0)

    def settle(self, timeout: float = 3.0) -> None:
        """Call where a collective raised (Gloo's "Connection reset by peer"): wait up to
        ``timeout`` seconds for the watch to notice a lost peer; when it does, never returns
        (the watch thread exits the process). Returns when nothing was lost: re-raise then."""
        if self._thread is None:
            return
        if self._handled.wait(timeout) and self.exit_status is not None:
            while True:  # the watch thread is writing the details and calls os._exit
                time.sleep(1.0)

    def __enter__(self) -> PeerWatch:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop(None if exc_type is None else f"{exc_type.__name__}: {exc}")

    # -- connecting ------------------------------------------------------------------------

    def _start_hub(self, client: Any, key: str, deadline: float) -> None:
        if socket.has_dualstack_ipv6():
            server = socket.create_server(("", 0), family=socket.AF_INET6, dualstack_ipv6=True)
        else:
            server = socket.create_server(("", 0))
        try:
            client.key_value_set(key, f"{server.getsockname()[1]} {os.getpid()} {self.host}", allow_overwrite=True)
            waiting = set(range(1, self.count))
            while waiting:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"PeerWatch: processes {sorted(waiting)} did not connect to process 0 "
                                       f"within {self.connect_timeout:g} s")
                server.settimeout(left)
                try:
                    sock, _ = server.accept()
                except socket.timeout:
                    continue
                sock.settimeout(max(deadline - time.monotonic(), 1.0))
                hello = b""
                while not hello.endswith(b"\n"):
                    chunk = sock.recv(256)
                    if not chunk:
                        break
                    hello += chunk
                parts = hello.decode(errors="replace").split()
                if len(parts) != 4 or parts[0] != "hello" or int(parts[1]) not in waiting:
                    sock.close()
                    continue
                index = int(parts[1])
                sock.settimeout(None)
                _keepalive(sock, self.keepalive_seconds)
                self._add_peer(Peer(index, parts[3], int(parts[2]), sock))
                waiting.discard(index)
        finally:
            server.close()
        for peer in self._peers.values():  # all connected: release the spokes' start()
            peer.sock.sendall(b"ready\n")

    def _start_spoke(self, client: Any, key: str, deadline: float) -> None:
        left_ms = int(max(deadline - time.monotonic(), 1.0) * 1000)
        try:
            port, pid, host = client.blocking_key_value_get(key, left_ms).split()
        except Exception as e:  # jax's XlaRuntimeError: DEADLINE_EXCEEDED
            raise TimeoutError(f"PeerWatch: process 0 did not publish its port within {self.connect_timeout:g} s: "
                               f"{e}") from e
        address, _ = _split_host_port(self.coordinator)
        sock = socket.create_connection((address, int(port)), timeout=max(deadline - time.monotonic(), 1.0))
        sock.sendall(f"hello {self.index} {os.getpid()} {self.host}\n".encode())
        reply = b""
        while not reply.endswith(b"ready\n"):
            chunk = sock.recv(256)
            if not chunk:
                raise TimeoutError("PeerWatch: process 0 closed the connection before every process connected")
            reply += chunk
        sock.settimeout(None)
        _keepalive(sock, self.keepalive_seconds)
        self._add_peer(Peer(0, host, int(pid), sock))

    def _add_peer(self, peer: Peer) -> None:
        peer.last_heard = time.monotonic()
        self._peers[peer.index] = peer
        self._selector.register(peer.sock, selectors.EVENT_READ, peer)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    # -- watching --------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                for selector_key, _ in self._selector.select():
                    peer = selector_key.data
                    if peer is None:  # woken by stop()
                        self._close()
                        return
                    lost = self._read(peer)
                    if self._stopping:
                        continue
                    if lost is not None:
                        self._handle_lost(*lost)
                        return
                    hub = self._peers.get(0)
                    if self.index != 0 and hub is not None and hub.departed:
                        self._close()  # process 0 ended normally: nothing left to watch
                        return
        except Exception:  # never let the watch die silently
            logger.exception("PeerWatch thread failed; peers are no longer watched")

    def _read(self, peer: Peer) -> tuple[int, str] | None:
        """Read what ``peer`` sent; returns (lost index, how) for a loss."""
        try:
            data = peer.sock.recv(4096)
        except ConnectionResetError:
            return peer.index, "connection reset"
        except TimeoutError:
            return peer.index, f"no answer to TCP keep-alive (host silent for ~{self.keepalive_seconds:g} s)"
        except OSError as e:
            return peer.index, f"connection error ({e})"
        if not data:
            self._selector.unregister(peer.sock)
            if peer.departed:
                return None
            return peer.index, "connection closed"
        peer.last_heard = time.monotonic()
        peer.buffer += data
        while b"\n" in peer.buffer:
            line, peer.buffer = peer.buffer.split(b"\n", 1)
            text = line.decode(errors="replace")
            if text == "bye":
                peer.departed = True
            elif text.startswith("fail "):
                return peer.index, f"stopped with an error: {text[5:]}"
            elif text.startswith("lost ") and peer.index == 0:  # relayed by process 0
                _, index, host, pid, how = text.split(" ", 4)
                if int(index) not in self._peers:
                    self._peers[int(index)] = Peer(int(index), None if host == "-" else host, int(pid) or None)
                return int(index), f"reported by process 0: {how}"
        return None

    def _handle_lost(self, index: int, how: str) -> None:
        with self._lock:
            if self._stopping or self._handled.is_set():
                return
            self._handled.set()
        peer = self._peers.get(index, Peer(index))
        self.lost = LostPeer(index, peer.host, peer.pid, how, time.monotonic() - self._started_at)
        where = ", ".join(x for x in (f"host {peer.host}" if peer.host else "",
                                      f"pid {peer.pid}" if peer.pid else "") if x)
        status = "keeps running" if self.exit_status is None else f"exits with status {self.exit_status}"
        extra = ""
        if self.suffix is not None:
            try:
                extra = f"; {self.suffix()}"
            except Exception:
                pass
        line = (f"{self.prefix}: lost process {index} of {self.count}{f' ({where})' if where else ''}: {how}; "
                f"coordinator {self.coordinator}; process {self.index} {status}{extra}"
                + (f"; details in {self.log_file}" if self.log_file else ""))
        try:
            _write_fd(2, line + "\n")  # first: process 0's loss races the C++ abort (~0.1 s)
        except OSError:
            pass
        if self.index == 0:
            self._relay(index, how)
        self._write_details(line)
        if self.on_lost is not None:
            try:
                self.on_lost(line)
            except Exception:
                logger.exception("PeerWatch on_lost failed")
        if self.exit_status is not None:
            if self.terminate_children:
                for pid in _child_pids():  # data workers: os._exit runs no cleanup that would stop them
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except OSError:
                        pass
            os._exit(self.exit_status)
        self._close()

    def _relay(self, index: int, how: str) -> None:
        """Process 0: tell the other processes, then give them (and a process that reported
        its own failure) up to 5 s to leave before this process, and the coordination service
        in it, goes: a process that loses the service is aborted by jax within ~0.1 s."""
        lost = self._peers.get(index, Peer(index))
        others = [p for i, p in self._peers.items() if i != index and not p.departed and p.sock is not None]
        for peer in others:
            try:
                peer.sock.settimeout(0.5)
                peer.sock.sendall(f"lost {index} {lost.host or '-'} {lost.pid or 0} {how}\n".encode())
            except OSError:
                pass
        self._wait_closed(others + ([lost] if lost.sock is not None else []), 5.0)

    @staticmethod
    def _wait_closed(peers: list[Peer], seconds: float) -> None:
        """Wait up to ``seconds`` for these peers to close their connections."""
        deadline = time.monotonic() + seconds
        for peer in peers:
            try:
                peer.sock.settimeout(max(deadline - time.monotonic(), 0.01))
                while peer.sock.recv(4096):
                    pass
            except OSError:
                pass

    def _write_details(self, line: str) -> None:
        if self.log_file is None:
            return
        now = time.time()
        rows = [line, f"time: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now))} ({now:.3f})",
                f"this process: {self.index} of {self.count}, host {self.host}, pid {os.getpid()}",
                f"coordinator: {self.coordinator}",
                f"lost: process {self.lost.index}, how: {self.lost.how}, "
                f"{self.lost.seconds:.3f} s after the watch started"]
        for peer in sorted(self._peers.values(), key=lambda p: p.index):
            rows.append(f"peer {peer.index}: host {peer.host}, pid {peer.pid}, departed={peer.departed}, "
                        f"last heard {time.monotonic() - peer.last_heard:.3f} s ago")
        rows.append("Python stacks of this process:")
        try:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                _write_fd(fd, "\n".join(rows) + "\n")
                faulthandler.dump_traceback(fd, all_threads=True)
                _write_fd(fd, "\n")
            finally:
                os.close(fd)
        except OSError as e:
            try:
                _write_fd(2, f"yolojax: could not write {self.log_file}: {e}\n")
            except OSError:
                pass

    def _close(self) -> None:
        sockets = [p.sock for p in self._peers.values() if p.sock is not None] + [self._wake_r, self._wake_w]
        _quietly(*(s.close for s in sockets), self._selector.close)


def leave(status: int) -> NoReturn:
    """Flush stdout, stderr and the logging handlers, then ``os._exit(status)``: how a process
    of a multi-process run should end after a fault it has reported. A normal exit would run
    ``jax.distributed.shutdown`` (atexit), whose barrier waits for peers that already left: up to
    the heartbeat timeout (100 s) on process 0, then a C++ abort (status 134); on the other
    processes an abort as soon as process 0 is gone."""
    _quietly(*(h.flush for h in logging.getLogger().handlers), sys.stdout.flush, sys.stderr.flush)
    os._exit(status)


def _quietly(*calls: Callable[[], Any]) -> None:
    """Call each of ``calls``, ignoring what they raise (closing and flushing on the way out)."""
    for call in calls:
        try:
            call()
        except Exception:  # noqa: BLE001 - a process on its way out reports nothing more
            pass


class PreemptionSync:
    """Stop every process at the same step when any one receives SIGTERM (or SIGINT).

    Multi-process (``jax.distributed`` initialised with ``jax_enable_preemption_service``, the
    default): jax's preemption sync manager installed a C++ SIGTERM handler at initialisation
    (it only sets a flag, polled every second; SIGTERM no longer kills the process). A Python
    ``signal.signal(SIGTERM, ...)`` would replace it for good, so this class leaves SIGTERM alone
    and installs a SIGINT handler that sends SIGTERM to this process (a second SIGINT raises
    KeyboardInterrupt). :meth:`should_stop` asks the manager
    (``multihost_utils.reached_preemption_sync_point``, ~10 us a call): after a notice on any
    process the processes agree on the step max(their steps) + 1, and every process's
    ``should_stop`` returns True at that same step (~1-2 s after the signal).

    One process: SIGTERM and SIGINT set a flag that :meth:`should_stop` returns.

    Call :meth:`should_stop` once per step on every process, with the same step numbers (e.g.
    the step just completed), from the first step of the loop. A context manager; on exit
    SIGINT's handler comes back and SIGTERM falls back to the default (kill), since the notice
    is no longer polled.

    Attributes:
      signum: the signal this process received (None, or when only another process was
        signalled; a SIGTERM caught by jax's handler is not seen here: jax logs "SIGTERM caught").
      requested: the reason given to :meth:`request_stop` on this process (None if none).
      stop_step: the step at which :meth:`should_stop` returned True (None before).
    """

    def __init__(self):
        self.signum: int | None = None
        self.stop_step: int | None = None
        self.requested: str | None = None
        self._multi = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Install the signal handlers (main thread; elsewhere none are installed).

        Raises:
          RuntimeError: ``jax.distributed`` runs without its preemption service
            (``jax_enable_preemption_service=False``): the processes could not agree.
        """
        from jax._src import distributed
        state = distributed.global_state
        if state.client is not None and state.preemption_sync_manager is None:
            raise RuntimeError("PreemptionSync needs jax's preemption service in a multi-process run "
                               "(jax_enable_preemption_service is off)")
        self._multi = state.client is not None
        if self._multi and callable(signal.getsignal(signal.SIGTERM)):
            logger.warning("a Python SIGTERM handler replaced jax's preemption notifier: neither SIGTERM nor "
                           "SIGINT will stop the processes together")
        sigs = (signal.SIGINT,) if self._multi else (signal.SIGTERM, signal.SIGINT)
        for sig in sigs:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            self.restore()
            raise KeyboardInterrupt
        self.signum = signum
        logger.warning("signal %d: %s", signum, "every process saves a checkpoint at a common step and stops"
                       if self._multi else "saving a checkpoint after this step and stopping")
        if self._multi:
            os.kill(os.getpid(), signal.SIGTERM)  # jax's C++ handler: the preemption notice

    def request_stop(self, reason: str) -> None:
        """Stop every process at a common step for a decision only this process made (the time
        limit: each process's clock crosses it at its own step). Multi-process: sends SIGTERM
        to this process (jax's notice); one process: :meth:`should_stop` returns True next."""
        if self.requested is not None:
            return
        self.requested = reason
        logger.info("%s: every process saves a checkpoint at a common step and stops", reason)
        if self._multi:
            os.kill(os.getpid(), signal.SIGTERM)

    def should_stop(self, step: int) -> bool:
        """Whether every process stops after ``step`` (True on all of them at the same step)."""
        if self.stop_step is not None:
            return True
        if self._multi:
            from jax.experimental import multihost_utils
            stop = multihost_utils.reached_preemption_sync_point(step)
        else:
            stop = self.signum is not None or self.requested is not None
        if stop:
            self.stop_step = step
        return stop

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}
        if self._multi:
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
            except ValueError:
                pass
            self._multi = False

    def __enter__(self) -> PreemptionSync:
        self.install()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.restore()


__all__ = ["EXIT_PEER_LOST", "LostPeer", "PeerWatch", "PreemptionSync", "leave"]
