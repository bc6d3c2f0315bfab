"""Memory of a long training run: RSS of the process tree and /dev/shm, sampled while it trains.

    python tools/soak.py [--config quickstart] [--workdir DIR] [--epochs N] [--minutes M]
        [--interval 5] [--warmup-epochs 2] [--png PATH] [-- --config.FIELD=VALUE ...]
    nice -n 19 python tools/soak.py --minutes 60 --epochs 250     # ~40-60 min of quickstart
    python tools/soak.py --replot DIR [--png PATH]                 # summary and plot again

Runs ``python -m yolojax.train --config CONFIG --workdir DIR [--config.epochs=N] [ARGS]`` in
a subprocess (its own session, in this directory) and every ``--interval`` seconds samples,
from ``/proc`` only (no psutil):

* RSS of the main process and of its descendants (the Grain data workers and the
  multiprocessing resource tracker: "workers"), the main process's RssAnon, RssShmem, VmHWM
  (peak RSS) and AnonHugePages, and the PSS and USS (private pages) of the tree from
  ``smaps_rollup`` (~30 ms more per sample; ``--no-pss`` skips them);
* /dev/shm: files and bytes in it (every process's), and the run's files in it (those its
  processes map or hold open, and yolojax's blocks named after one of them);
* the epoch and step of the newest row of ``DIR/metrics.jsonl`` and the load average.

The run ends by itself (after ``--epochs``, passed as ``--config.epochs``) or after
``--minutes``: then one SIGTERM (the run finishes its step, saves a checkpoint and exits 75), up
to ``--stop-timeout`` seconds of waiting and only then SIGKILL of the run's own session.
Ctrl-C here does the same (twice: at once). Nothing is removed: a stopped run resumes with
the train command. The run's output goes to ``DIR/soak_train.log`` with ``JAX_LOG_COMPILES=1``
(``--no-log-compiles``: without), so that compilations are events. Also written in DIR:

    soak.csv          one row per sample, written as it is taken (MiB; t: seconds from the start)
    soak_events.csv   t, kind, detail: metrics rows (train, val), compilations, best checkpoints
                      saved, mosaic off, the SIGTERM, the exit
    soak.png          RSS of the main process, the workers and the tree against time, epoch
                      starts, validations, compilations and mosaic off marked; /dev/shm below
                      (also written to --png)
    soak.json         the summary, the command, the git commit and ``git status --short``
    soak_git.diff     the working tree's changes to that commit (the code the run imported)

and a summary is printed: RSS after warm-up (the samples from the start of epoch
``--warmup-epochs``, 0-based, to the start of the last epoch, whose end has the workers
exiting, the final validation and plots, or the stop): start, end, max, growth and
least-squares slope in MiB/hour for the main process, the workers, the tree and the tree's
PSS; the largest change of the tree's median RSS from one epoch to the next; /dev/shm before,
during and after the run (files of the run left behind are named); ``uptime`` before and
after. Exit status: the run's (0 also when the SIGTERM stopped it).

Reading the figures: yolojax's commands keep freed memory in the process (glibc tunables,
docs/speed.md), so RSS is the peak of the heap rather than what is in use, and a one-time step
is the heap growing once, not a leak; a leak shows as growth epoch after epoch (and in
VmHWM). Where protobuf's upb runtime is loaded (tensorboardX), it calls ``malloc_trim(0)``
every 10000 frees of its arenas (~1667 TensorBoard scalars), which hands the free pages back:
RSS then drops by the free part of the heap and climbs back as the steps touch it again.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

MIB = 1024 * 1024
SHM_DIR = Path("/dev/shm")
# Lines of the run's output that mark an event (JAX_LOG_COMPILES=1 logs "Compiling NAME ...").
COMPILE_LINE = re.compile(r"Compiling (\S+)")
FINISHED_COMPILE_LINE = re.compile(r"Finished XLA compilation of (\S+) in ([0-9.e+-]+) ?s")
BEST_SAVED_LINE = re.compile(r"step (\d+): best mAP50-95 so far")  # yolojax.train.checkpoints
CSV_FIELDS = ("t", "epoch", "step", "main_rss", "main_anon", "main_shmem", "main_hwm", "main_thp", "workers_rss",
              "workers", "tree_rss", "tree_pss", "tree_uss", "shm_files", "shm_mib", "shm_run_files", "load1")
BYTE_FIELDS = {"main_rss", "main_anon", "main_shmem", "main_hwm", "main_thp", "workers_rss", "tree_rss", "tree_pss",
               "tree_uss", "shm_bytes"}


# --------------------------------------------------------------------------------------------
# /proc readers (Linux). Every reader returns None or an empty result for a process that went
# away between listing and reading.


def children_of() -> dict[int, list[int]]:
    """Parent pid -> child pids, from ``/proc/*/stat`` (one pass over /proc)."""
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(b")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants (``pid`` first; empty when it is gone)."""
    if not os.path.exists(f"/proc/{pid}"):
        return []
    tree = children_of()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(tree.get(p, ()))
    return out


def _kib_fields(path: str, names: Sequence[str]) -> dict[str, int] | None:
    """``Name: N kB`` lines of a /proc file as bytes (missing names are 0); None if unreadable."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode()
    except (OSError, UnicodeDecodeError):
        return None
    out = dict.fromkeys(names, 0)
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in out:
            out[key] = int(rest.split()[0]) * 1024
    return out


def process_memory(pid: int, pss: bool = True) -> dict[str, int] | None:
    """Bytes of one process: ``rss``, ``anon``, ``file``, ``shmem`` (``/proc/PID/status``'s
    VmRSS, RssAnon, RssFile, RssShmem), ``hwm`` (VmHWM, the peak RSS), and with ``pss``
    ``pss``, ``uss`` and ``thp`` (Pss, Private_Clean + Private_Dirty and AnonHugePages of
    ``smaps_rollup``); None if the process is gone."""
    status = _kib_fields(f"/proc/{pid}/status", ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"))
    if status is None:
        return None
    out = {"rss": status["VmRSS"], "anon": status["RssAnon"], "file": status["RssFile"], "shmem": status["RssShmem"],
           "hwm": status["VmHWM"]}
    if pss:
        rollup = _kib_fields(f"/proc/{pid}/smaps_rollup", ("Pss", "Private_Clean", "Private_Dirty", "AnonHugePages"))
        if rollup is None:
            return None
        out["pss"] = rollup["Pss"]
        out["uss"] = rollup["Private_Clean"] + rollup["Private_Dirty"]
        out["thp"] = rollup["AnonHugePages"]
    return out


def command_name(pid: int) -> str:
    """The process's command line, space-separated ('' if gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def shm_usage(directory: Path = SHM_DIR) -> tuple[int, int, set[str]]:
    """(files, bytes allocated, names) of ``directory`` (every process's files, not only the
    run's: bytes are blocks in use, as ``du`` counts them)."""
    files, used, names = 0, 0, set()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0, 0, set()
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        files += 1
        used += st.st_blocks * 512
        names.add(entry.name)
    return files, used, names


def shm_mapped(pids: Iterable[int], directory: Path = SHM_DIR) -> set[str]:
    """Names of the files in ``directory`` that the processes map or hold open."""
    prefix = str(directory) + "/"
    names: set[str] = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps", "rb") as f:
                for line in f:
                    i = line.find(prefix.encode())
                    if i >= 0:
                        names.add(line[i + len(prefix):].split(b" (deleted)")[0].strip().decode(errors="replace"))
        except OSError:
            pass
        try:
            for fd in os.scandir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(fd.path)
                except OSError:
                    continue
                if target.startswith(prefix):
                    names.add(target[len(prefix):].split(" (deleted)")[0])
        except OSError:
            pass
    return names


# yolojax's shared-memory blocks are named after the worker that made them (yolojax.data.memory.shm_pool).
PID_NAMED = re.compile(r"yjx(?:pool|shm)_(\d+)_")


class RunFiles:
    """Which /dev/shm files belong to one run: those its processes were seen to map or hold
    open, and those named after one of its processes (``yjxpool_PID_*``, ``yjxshm_PID_*``)."""

    def __init__(self):
        self.pids: set[int] = set()
        self.names: set[str] = set()

    def update(self, pids: Iterable[int], mapped: Iterable[str]) -> None:
        self.pids.update(pids)
        self.names.update(mapped)

    def owns(self, name: str) -> bool:
        if name in self.names:
            return True
        m = PID_NAMED.match(name)
        return m is not None and int(m.group(1)) in self.pids

    def of(self, names: Iterable[str]) -> list[str]:
        """The run's among ``names``, sorted."""
        return sorted(n for n in names if self.owns(n))


@dataclasses.dataclass
class Sample:
    """One sample of the run (bytes; ``t`` in seconds from the start of the run)."""

    t: float
    epoch: int | None
    step: int | None
    main_rss: int
    main_anon: int
    main_shmem: int
    main_hwm: int
    main_thp: int | None
    workers_rss: int
    workers: int
    tree_rss: int
    tree_pss: int | None
    tree_uss: int | None
    shm_files: int
    shm_bytes: int
    shm_run_files: int
    load1: float

    def csv_row(self) -> dict[str, object]:
        """The CSV row: byte counts in MiB (``shm_bytes`` as ``shm_mib``), ``t`` rounded."""
        row: dict[str, object] = {}
        for key, value in dataclasses.asdict(self).items():
            if key in BYTE_FIELDS:
                key, value = key.replace("_bytes", "_mib"), None if value is None else round(value / MIB, 2)
            row[key] = round(value, 2) if isinstance(value, float) else value
        return row


def sample_tree(pid: int, t: float, epoch: int | None = None, step: int | None = None, pss: bool = True,
                run_files: RunFiles | None = None) -> Sample | None:
    """One :class:`Sample` of ``pid``'s process tree (None when ``pid`` is gone). ``run_files``
    (a new one when None) learns the tree's processes and the /dev/shm files they map or hold
    open; ``shm_run_files`` counts the files in /dev/shm it says are the run's."""
    pids = process_tree(pid)
    if not pids:
        return None
    main = process_memory(pid, pss)
    if main is None:
        return None
    workers = [m for m in (process_memory(p, pss) for p in pids[1:]) if m is not None]
    every = [main, *workers]
    run_files = RunFiles() if run_files is None else run_files
    run_files.update(pids, shm_mapped(pids))
    files, used, names = shm_usage()
    return Sample(t=t, epoch=epoch, step=step, main_rss=main["rss"], main_anon=main["anon"], main_shmem=main["shmem"],
                  main_hwm=main["hwm"], main_thp=main.get("thp"), workers_rss=sum(m["rss"] for m in workers),
                  workers=len(workers), tree_rss=sum(m["rss"] for m in every),
                  tree_pss=sum(m["pss"] for m in every) if pss else None,
                  tree_uss=sum(m["uss"] for m in every) if pss else None,
                  shm_files=files, shm_bytes=used, shm_run_files=len(run_files.of(names)), load1=os.getloadavg()[0])


# --------------------------------------------------------------------------------------------
# Following the run: metrics.jsonl rows and output lines, as timed events.


class Events:
    """Timed events (``t``, ``kind``, ``detail``) from threads; thread-safe appends."""

    def __init__(self, t0: float):
        self.t0 = t0
        self.rows: list[tuple[float, str, str]] = []
        self.lock = threading.Lock()
        self.epoch: int | None = None
        self.step: int | None = None

    def add(self, kind: str, detail: str = "", t: float | None = None) -> None:
        with self.lock:
            self.rows.append((round((time.monotonic() if t is None else t) - self.t0, 2), kind, detail))

    def of(self, kind: str) -> list[tuple[float, str]]:
        with self.lock:
            return [(t, d) for t, k, d in self.rows if k == kind]


def follow_metrics(path: Path, events: Events, stop: threading.Event, poll: float = 0.5) -> None:
    """Tail ``metrics.jsonl``: each train row an event ``train`` ("epoch step"), each
    validation row (it has ``mAP50``) an event ``val`` ("epoch step"); keeps the newest epoch
    and step in ``events``."""
    offset, partial = 0, b""
    while True:
        done = stop.is_set()
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
        except OSError:
            chunk = b""
        offset += len(chunk)
        *lines, partial = (partial + chunk).split(b"\n")
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            epoch, step = row.get("epoch"), row.get("step")
            kind = "val" if "mAP50" in row else "train"
            events.add(kind, f"{epoch} {step}")
            if kind == "train":
                events.epoch, events.step = epoch, step
        if done:
            return
        stop.wait(poll)


def follow_output(stream, log_path: Path, events: Events) -> None:
    """Copy the run's output to ``log_path``; compilations become ``compile`` events
    (``NAME``) and ``compiled`` events (``NAME SECONDS``), a checkpoint saved as the best so
    far a ``best_saved`` event (``STEP``)."""
    with open(log_path, "wb") as log:
        buffer = b""
        for chunk in iter(lambda: stream.read1(65536), b""):
            log.write(chunk)
            log.flush()
            buffer += chunk
            *lines, buffer = re.split(rb"[\r\n]", buffer)
            for line in lines:
                text = line.decode(errors="replace")
                if (m := FINISHED_COMPILE_LINE.search(text)) is not None:
                    events.add("compiled", f"{m.group(1)} {m.group(2)}")
                elif (m := COMPILE_LINE.search(text)) is not None:
                    events.add("compile", m.group(1))
                elif (m := BEST_SAVED_LINE.search(text)) is not None:
                    events.add("best_saved", m.group(1))


# --------------------------------------------------------------------------------------------
# The run.


@dataclasses.dataclass
class SoakResult:
    """What :func:`soak` measured. Bytes; times in seconds from the run's start.

    Attributes:
      samples: the samples, in time order.
      events: (t, kind, detail) rows: ``train`` / ``val`` (metrics rows, "epoch step"),
        ``compile`` / ``compiled``, ``best_saved`` (step), ``mosaic_off`` (the first epoch without mosaic), ``sigterm``,
        ``sigkill``, ``exit`` (the return code).
      returncode: the run's exit status.
      shm_before / shm_after: (files, bytes) of /dev/shm before the run and after it exited.
      shm_left: the run's /dev/shm files (:class:`RunFiles`) still there after it exited.
      shm_new: files that appeared during the run and are still there (any process's).
      uptime_before / uptime_after: ``uptime``'s line.
      command: the train command.
    """

    samples: list[Sample]
    events: list[tuple[float, str, str]]
    returncode: int
    shm_before: tuple[int, int]
    shm_after: tuple[int, int]
    shm_left: list[str]
    shm_new: list[str]
    uptime_before: str
    uptime_after: str
    command: list[str]


def load_average() -> str:
    """``uptime``'s line, else the load average from os.getloadavg()."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


TRAIN = (sys.executable, "-m", "yolojax.train")


def train_command(config: str, workdir: Path, epochs: int | None = None, extra: Sequence[str] = (),
                  launcher: Sequence[str] = TRAIN) -> list[str]:
    """``python -m yolojax.train --config CONFIG --workdir DIR [--config.epochs=N] [EXTRA]``
    (``launcher`` in place of ``python -m yolojax.train``)."""
    cmd = [*launcher, "--config", config, "--workdir", str(workdir)]
    if epochs is not None:
        cmd.append(f"--config.epochs={epochs}")
    return cmd + list(extra)


def soak(command: Sequence[str], workdir: Path, minutes: float | None = None, interval: float = 5.0,
         pss: bool = True, stop_timeout: float = 300.0, log_compiles: bool = True, env: dict | None = None,
         quiet: bool = False, csv_path: Path | None = None) -> SoakResult:
    """Run ``command`` (a train command writing to ``workdir``) and sample its process tree
    every ``interval`` seconds until it exits, or until ``minutes`` have passed: then one
    SIGTERM, up to ``stop_timeout`` seconds of waiting (still sampling) and SIGKILL of the
    run's session after that. SIGINT / SIGTERM to this process stop the run the same way (a
    second one kills it); so does an error here. The run's output goes to
    ``workdir/soak_train.log``; each sample is a line on stdout unless ``quiet`` and, with
    ``csv_path``, a CSV row written as it is taken."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **(env or {})}
    if log_compiles:
        env.setdefault("JAX_LOG_COMPILES", "1")
    files, used, names_before = shm_usage()
    uptime_before = load_average()
    t0 = time.monotonic()
    events = Events(t0)
    proc = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, start_new_session=True)
    stop_following = threading.Event()
    threads = [threading.Thread(target=follow_output, args=(proc.stdout, workdir / "soak_train.log", events),
                                daemon=True),
               threading.Thread(target=follow_metrics, args=(workdir / "metrics.jsonl", events, stop_following),
                                daemon=True)]
    for thread in threads:
        thread.start()

    asked_to_stop = threading.Event()

    def handle(signum, frame):  # noqa: ARG001
        if asked_to_stop.is_set():
            raise KeyboardInterrupt
        asked_to_stop.set()

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    samples: list[Sample] = []
    run_files = RunFiles()
    sigterm_at = None
    mosaic_marked = False
    csv_file = open(csv_path, "w", newline="") if csv_path is not None else None  # noqa: SIM115
    try:
        writer = csv.DictWriter(csv_file, fieldnames=CSV_FIELDS) if csv_file is not None else None
        if writer is not None:
            writer.writeheader()
        next_at = t0
        while proc.poll() is None:
            now = time.monotonic()
            if sigterm_at is None and (asked_to_stop.is_set() or (minutes is not None and now - t0 >= 60 * minutes)):
                proc.send_signal(signal.SIGTERM)
                sigterm_at = now
                events.add("sigterm", "")
                if not quiet:
                    print(f"[soak] SIGTERM sent to {proc.pid} at {now - t0:.0f} s; waiting up to {stop_timeout:.0f} s",
                          flush=True)
            if sigterm_at is not None and now - sigterm_at > stop_timeout:
                events.add("sigkill", "")
                os.killpg(proc.pid, signal.SIGKILL)
                break
            if not mosaic_marked:
                mosaic_marked = _mark_mosaic_off(workdir, events)
            if now >= next_at:
                s = sample_tree(proc.pid, now - t0, events.epoch, events.step, pss, run_files)
                if s is not None:
                    samples.append(s)
                    if writer is not None:
                        writer.writerow(s.csv_row())
                        csv_file.flush()
                    if not quiet:
                        print(progress_line(s), flush=True)
                next_at += interval * (int((now - next_at) // interval) + 1)
            time.sleep(min(0.5, max(0.05, next_at - time.monotonic())))
    except BaseException:
        _stop(proc, stop_timeout if not asked_to_stop.is_set() else 0.0)
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if csv_file is not None:
            csv_file.close()
    returncode = proc.wait()
    events.add("exit", str(returncode))
    time.sleep(1.0)  # Grain's / the resource tracker's last unlinks
    stop_following.set()
    for thread in threads:
        thread.join(timeout=10)
    files_after, used_after, names_after = shm_usage()
    return SoakResult(samples=samples, events=sorted(events.rows), returncode=returncode, shm_before=(files, used),
                      shm_after=(files_after, used_after), shm_left=run_files.of(names_after),
                      shm_new=sorted(names_after - names_before), uptime_before=uptime_before,
                      uptime_after=load_average(), command=list(command))


def _stop(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM to the run, then SIGKILL of its session after ``timeout`` seconds (at once with 0)."""
    if proc.poll() is None and timeout > 0:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def progress_line(s: Sample) -> str:
    """One sample as a line: minutes, epoch, step, RSS, /dev/shm, load."""
    return (f"[soak] {s.t / 60:6.1f} min  epoch {s.epoch}  step {s.step}  main {s.main_rss / MIB:.0f} MiB  "
            f"workers({s.workers}) {s.workers_rss / MIB:.0f} MiB  /dev/shm {s.shm_files} files "
            f"{s.shm_bytes / MIB:.1f} MiB (the run's {s.shm_run_files})  load {s.load1:.2f}")


def _mark_mosaic_off(workdir: Path, events: Events) -> bool:
    """Once config.json is written and the first row of the first epoch without mosaic (the
    last ``close_mosaic``; 0-based EPOCH) has arrived: a ``mosaic_off`` event ("EPOCH") at the
    start of that epoch (:func:`epoch_starts`' rule). Returns True when nothing is left to
    mark (also when the run never closes mosaic)."""
    try:
        config = json.loads((workdir / "config.json").read_text())
    except (OSError, ValueError):
        return False
    close, epochs = int(config.get("close_mosaic", 0)), int(config.get("epochs", 0))
    if close <= 0 or float(config.get("mosaic", 0)) <= 0 or close >= epochs:
        return True
    off = epochs - close
    first = [t for t, d in events.of("train") if int(d.split()[0]) == off]
    if not first:
        return False
    ends = [t for t, d in events.of("val") if int(d.split()[0]) == off - 1]
    events.add("mosaic_off", str(off), t=events.t0 + (ends[0] if ends else first[0]))
    return True


# --------------------------------------------------------------------------------------------
# Summary, CSV, plot.


def epoch_starts(events: Sequence[tuple[float, str, str]]) -> dict[int, float]:
    """0-based epoch -> the time it started: the previous epoch's validation row, else the
    first train row of the epoch (metrics rows arrive every log_every_steps)."""
    starts: dict[int, float] = {}
    val_end = {int(d.split()[0]): t for t, k, d in events if k == "val"}
    for t, k, d in events:
        if k == "train":
            e = int(d.split()[0])
            if e not in starts:
                starts[e] = val_end.get(e - 1, t)
    return starts


def samples_by_epoch(result: SoakResult, samples: Sequence[Sample] | None = None) -> dict[int, list[Sample]]:
    """0-based epoch -> its samples (``samples``, else all), by the epochs' start times
    (:func:`epoch_starts`); samples before the first epoch's start are left out."""
    starts = sorted((t, e) for e, t in epoch_starts(result.events).items())
    times = [t for t, _ in starts]
    out: dict[int, list[Sample]] = {}
    for s in result.samples if samples is None else samples:
        i = bisect.bisect_right(times, s.t) - 1
        if i >= 0:
            out.setdefault(starts[i][1], []).append(s)
    return out


def validation_spans(events: Sequence[tuple[float, str, str]]) -> list[tuple[float, float, int]]:
    """(start, end, epoch) of each validation: from the last train row before its row."""
    spans, last_train = [], None
    for t, k, d in events:
        if k == "train":
            last_train = t
        elif k == "val" and last_train is not None:
            spans.append((last_train, t, int(d.split()[0])))
    return spans


def median(values: Sequence[float]) -> float:
    """The middle value (the upper one of an even count)."""
    return sorted(values)[len(values) // 2]


def slope_per_hour(ts: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys against ts (seconds), per hour (0 for fewer than 2 points)."""
    n = len(ts)
    if n < 2:
        return 0.0
    mt, my = sum(ts) / n, sum(ys) / n
    var = sum((t - mt) ** 2 for t in ts)
    return 0.0 if var == 0 else 3600 * sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / var


def steady_window(result: SoakResult, warmup_epochs: int) -> tuple[float, float] | None:
    """(start, end) seconds of the steady part of the run: from the start of epoch
    ``warmup_epochs`` (0-based) to the start of the last epoch the run began (whose end has
    the workers exiting as their batches run out, the final validation and plots, or the
    stop); None when the run never got that far."""
    starts = epoch_starts(result.events)
    if warmup_epochs not in starts or max(starts) <= warmup_epochs:
        return None
    return starts[warmup_epochs], starts[max(starts)]


def after_warmup(result: SoakResult, warmup_epochs: int) -> list[Sample]:
    """The samples in :func:`steady_window`."""
    window = steady_window(result, warmup_epochs)
    return [] if window is None else [s for s in result.samples if window[0] <= s.t < window[1]]


def summarize(result: SoakResult, warmup_epochs: int) -> dict:
    """The summary's figures (MiB, MiB/hour) as a JSON-able dict."""
    kept = after_warmup(result, warmup_epochs)
    window = steady_window(result, warmup_epochs)
    out: dict = {"samples": len(result.samples), "warmup_epochs": warmup_epochs, "samples_after_warmup": len(kept),
                 "window_s": None if window is None else [round(window[0], 1), round(window[1], 1)],
                 "returncode": result.returncode, "uptime_before": result.uptime_before,
                 "uptime_after": result.uptime_after, "command": result.command,
                 "shm_before": {"files": result.shm_before[0], "mib": round(result.shm_before[1] / MIB, 2)},
                 "shm_after": {"files": result.shm_after[0], "mib": round(result.shm_after[1] / MIB, 2)},
                 "shm_left_by_run": result.shm_left, "shm_new_files": result.shm_new,
                 "epochs_seen": max((s.epoch for s in result.samples if s.epoch is not None), default=None),
                 "compilations": len([e for e in result.events if e[1] == "compile"])}
    if result.samples:
        out["shm_max_during"] = {"files": max(s.shm_files for s in result.samples),
                                 "mib": round(max(s.shm_bytes for s in result.samples) / MIB, 2)}
    for name, get in (("main", lambda s: s.main_rss), ("main_hwm", lambda s: s.main_hwm),
                      ("workers", lambda s: s.workers_rss), ("tree", lambda s: s.tree_rss),
                      ("tree_pss", lambda s: s.tree_pss)):
        pts = [(s.t, get(s) / MIB) for s in kept if get(s) is not None]
        if pts:
            ys = [y for _, y in pts]
            out[name] = {"start": round(ys[0], 1), "end": round(ys[-1], 1), "max": round(max(ys), 1),
                         "growth": round(ys[-1] - ys[0], 1),
                         "slope_mib_per_hour": round(slope_per_hour([t for t, _ in pts], ys), 1)}
    medians = {e: median([s.tree_rss / MIB for s in v]) for e, v in sorted(samples_by_epoch(result).items())}
    out["tree_rss_median_per_epoch"] = {str(e): round(v, 1) for e, v in medians.items()}
    steady = {e: median([s.tree_rss / MIB for s in v]) for e, v in samples_by_epoch(result, kept).items()}
    jumps = [(steady[e] - steady[e - 1], e) for e in steady if e - 1 in steady]
    if jumps:
        jump, epoch = max(jumps, key=lambda j: abs(j[0]))
        out["largest_epoch_jump"] = {"from_epoch": epoch - 1, "to_epoch": epoch, "mib": round(jump, 1)}
    return out


def summary_lines(summary: dict) -> list[str]:
    """The printed summary."""
    window = summary["window_s"]
    span = "none" if window is None else f"{window[0] / 60:.1f}-{window[1] / 60:.1f} min"
    lines = [f"samples: {summary['samples']} ({summary['samples_after_warmup']} after warm-up: from the start of "
             f"epoch {summary['warmup_epochs']} (0-based) to that of the last, {span}); "
             f"epochs seen: {summary['epochs_seen']}; "
             f"compilations logged: {summary['compilations']}; exit status {summary['returncode']}"]
    labels = {"main": "main RSS", "main_hwm": "main VmHWM", "workers": "workers RSS", "tree": "tree RSS",
              "tree_pss": "tree PSS"}
    for name, label in labels.items():
        if name in summary:
            s = summary[name]
            lines.append(f"{label:12s} after warm-up: start {s['start']:.0f} MiB, end {s['end']:.0f} MiB, "
                         f"max {s['max']:.0f} MiB, growth {s['growth']:+.0f} MiB, "
                         f"slope {s['slope_mib_per_hour']:+.1f} MiB/hour")
    if "largest_epoch_jump" in summary:
        j = summary["largest_epoch_jump"]
        lines.append(f"largest change of the median tree RSS from one epoch to the next after warm-up: "
                     f"{j['from_epoch']} -> {j['to_epoch']} (0-based): {j['mib']:+.0f} MiB")
    b, a = summary["shm_before"], summary["shm_after"]
    during = summary.get("shm_max_during", {})
    lines.append(f"/dev/shm: before {b['files']} files {b['mib']:.1f} MiB, during at most {during.get('files')} files "
                 f"{during.get('mib', 0):.1f} MiB, after {a['files']} files {a['mib']:.1f} MiB; left by the run: "
                 f"{len(summary['shm_left_by_run'])} {summary['shm_left_by_run'][:5]}")
    lines.append(f"before: {summary['uptime_before']}")
    lines.append(f"after:  {summary['uptime_after']}")
    return lines


def write_events(events: Sequence[tuple[float, str, str]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("t", "kind", "detail"))
        writer.writerows(events)


def plot(result: SoakResult, path: Path, title: str = "") -> None:
    """RSS of the main process (and its RssAnon and VmHWM), the workers and the tree (and the
    tree's PSS) against time, epoch starts (dotted, numbered 0-based; every k-th of many),
    validations (shaded), compilations and best checkpoints (ticks at the bottom) and mosaic
    off (red); /dev/shm below."""
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    samples = result.samples
    minutes = [s.t / 60 for s in samples]
    fig, (ax, ax_shm) = plt.subplots(2, 1, figsize=(12, 7.5), sharex=True, height_ratios=(3, 1))
    ax.plot(minutes, [s.main_rss / MIB for s in samples], label="main RSS", color="C0")
    ax.plot(minutes, [s.main_anon / MIB for s in samples], label="main RssAnon", color="C0", lw=0.8, ls="--")
    ax.plot(minutes, [s.main_hwm / MIB for s in samples], label="main VmHWM (peak RSS)", color="C9", lw=0.8)
    ax.plot(minutes, [s.workers_rss / MIB for s in samples], label="workers RSS (sum)", color="C1")
    ax.plot(minutes, [s.tree_rss / MIB for s in samples], label="tree RSS", color="C2")
    if samples and samples[0].tree_pss is not None:
        ax.plot(minutes, [s.tree_pss / MIB for s in samples], label="tree PSS", color="C2", ls=":")
    starts = epoch_starts(result.events)
    every = next(k for k in (1, 2, 5, 10, 20, 25, 50, 100, 200, 500, 1000, 10 ** 9) if len(starts) / k <= 25)
    for e, t in starts.items():
        if e % every == 0:
            ax.axvline(t / 60, color="0.6", lw=0.6, ls=":")
            ax.text(t / 60, 1.0, str(e), transform=ax.get_xaxis_transform(), fontsize=7, ha="center", va="bottom")
    for t0, t1, _ in validation_spans(result.events):
        ax.axvspan(t0 / 60, t1 / 60, color="C4", alpha=0.12, lw=0)
    for kind, y, color, label in (("compile", 0.01, "C3", "compilation"),
                                  ("best_saved", 0.04, "C8", "best checkpoint saved")):
        ts = [t / 60 for t, k, _ in result.events if k == kind]
        if ts:
            ax.plot(ts, [y] * len(ts), "|", color=color, ms=8, transform=ax.get_xaxis_transform(), label=label)
    for t, k, d in result.events:
        if k == "mosaic_off":
            ax.axvline(t / 60, color="C3", lw=1.2, label=f"mosaic off (epoch {d})")
        elif k in ("sigterm", "exit"):
            ax.axvline(t / 60, color="k", lw=1, ls="--", label=k)
    ax.set_ylabel("MiB")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="center right", fontsize=8)
    ax.set_title((title + "\n" if title else "") + f"epoch starts dotted (every {every}, 0-based numbers above), "
                 "validations shaded", fontsize=9, pad=14)
    ax_shm.plot(minutes, [s.shm_bytes / MIB for s in samples], color="C5", label="/dev/shm MiB (all)")
    ax_shm.set_ylabel("/dev/shm MiB")
    ax_shm.set_ylim(bottom=0)
    files = ax_shm.twinx()
    files.plot(minutes, [s.shm_files for s in samples], color="C6", ls="--", label="/dev/shm files (all)")
    files.plot(minutes, [s.shm_run_files for s in samples], color="C7", ls=":", label="files of the run")
    files.set_ylabel("files")
    files.set_ylim(bottom=0)
    handles = ax_shm.get_legend_handles_labels()[0] + files.get_legend_handles_labels()[0]
    ax_shm.legend(handles, [h.get_label() for h in handles], loc="upper right", fontsize=8)
    ax_shm.set_xlabel("minutes")
    ax_shm.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def git_state(cwd: Path) -> dict:
    """``git rev-parse HEAD``, ``git status --short`` and the working tree's changes (``git
    diff HEAD``, then each untracked file as a new file) of ``cwd`` (empty where not a repo)."""
    def git(*args: str, ok: tuple[int, ...] = (0,)) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout.strip() if done.returncode in ok else ""

    untracked = git("ls-files", "--others", "--exclude-standard").splitlines()
    diff = [git("diff", "HEAD")] + [git("diff", "--no-index", "/dev/null", f, ok=(0, 1)) for f in untracked]
    return {"commit": git("rev-parse", "HEAD"), "status": git("status", "--short").splitlines(),
            "diff": "\n".join(d for d in diff if d)}


def load_result(workdir: Path) -> tuple[SoakResult, dict]:
    """The :class:`SoakResult` and the summary of an earlier soak, from ``workdir``'s
    soak.csv, soak_events.csv and soak.json (MiB back to bytes, to the CSV's 0.01 MiB)."""
    samples = []
    with open(workdir / "soak.csv", newline="") as f:
        for row in csv.DictReader(f):
            values: dict = {}
            for key, text in row.items():
                key = "shm_bytes" if key == "shm_mib" else key
                if text == "":
                    values[key] = None
                elif key in BYTE_FIELDS:
                    values[key] = round(float(text) * MIB)
                else:
                    values[key] = float(text) if key in ("t", "load1") else int(text)
            samples.append(Sample(**values))
    with open(workdir / "soak_events.csv", newline="") as f:
        events = [(float(r["t"]), r["kind"], r["detail"]) for r in csv.DictReader(f)]
    saved = json.loads((workdir / "soak.json").read_text())
    exits = [int(d) for _, k, d in events if k == "exit"]
    shm = lambda key: (saved[key]["files"], round(saved[key]["mib"] * MIB))  # noqa: E731
    result = SoakResult(samples, events, exits[-1] if exits else saved.get("returncode", 0), shm("shm_before"),
                        shm("shm_after"), saved.get("shm_left_by_run", []), saved.get("shm_new_files", []),
                        saved.get("uptime_before", ""), saved.get("uptime_after", ""), saved.get("command", []))
    return result, saved


def report(result: SoakResult, workdir: Path, git: dict, warmup_epochs: int, png: Path | None) -> None:
    """soak_events.csv, soak.json and soak.png (and ``png``) in ``workdir``; the summary printed."""
    summary = {**summarize(result, warmup_epochs), "git": git, "workdir": str(workdir)}
    write_events(result.events, workdir / "soak_events.csv")
    (workdir / "soak.json").write_text(json.dumps(summary, indent=1) + "\n")
    command = " ".join(Path(c).name if i == 0 else c for i, c in enumerate(result.command))
    title = (f"{command}\ngit {git.get('commit', '?')[:10]}{' +changes' if git.get('status') else ''}, "
             f"{result.uptime_after}")
    if result.samples:
        for path in (workdir / "soak.png", png):
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                plot(result, path, title)
    for line in summary_lines(summary):
        print(line)
    print(f"written: {workdir}/soak.csv, soak_events.csv, soak.json, soak_git.diff, soak.png, soak_train.log"
          + (f", {png}" if png else ""))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="quickstart", help="train config (file or name; default: %(default)s)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="the run's directory (default: runs/soak-YYYYmmdd-HHMMSS); must be new or empty")
    parser.add_argument("--epochs", type=int, default=None,
                        help="--config.epochs for the run (default: the config's)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="stop the run (SIGTERM) after this long, if it has not ended by itself")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples (default: %(default)s)")
    parser.add_argument("--warmup-epochs", type=int, default=2,
                        help="the summary's figures start at this 0-based epoch (default: %(default)s)")
    parser.add_argument("--stop-timeout", type=float, default=300.0,
                        help="seconds to wait after the SIGTERM before SIGKILL (default: %(default)s)")
    parser.add_argument("--no-pss", action="store_true", help="skip PSS / USS (smaps_rollup) in the samples")
    parser.add_argument("--no-log-compiles", action="store_true", help="do not set JAX_LOG_COMPILES=1 for the run")
    parser.add_argument("--png", type=Path, default=None, help="also write the plot here")
    parser.add_argument("--quiet", action="store_true", help="no line per sample")
    parser.add_argument("--replot", type=Path, default=None, metavar="DIR",
                        help="run nothing: the summary and plot of the earlier soak in DIR again")
    parser.add_argument("train_args", nargs="*", metavar="-- ARGS",
                        help="more arguments for the train command, after --, e.g. -- --config.data.workers=4")
    args = parser.parse_args(argv)
    if args.minutes is not None and args.minutes <= 0 or args.interval <= 0:
        parser.exit(2, "error: --minutes and --interval must be positive\n")
    if args.replot is not None:
        if not (args.replot / "soak.csv").is_file():
            parser.exit(2, f"error: no soak.csv in {args.replot}\n")
        result, saved = load_result(args.replot)
        report(result, args.replot.absolute(), saved.get("git", {}), args.warmup_epochs, args.png)
        return 0
    if not Path("/proc/self/status").exists():
        parser.exit(2, "error: soak reads /proc: Linux only\n")
    workdir = (args.workdir or Path("runs") / time.strftime("soak-%Y%m%d-%H%M%S")).absolute()
    if workdir.exists() and any(workdir.iterdir()):
        parser.exit(2, f"error: {workdir} is not empty (a soak starts a fresh run)\n")

    command = train_command(args.config, workdir, args.epochs, args.train_args)
    git = git_state(Path.cwd())
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "soak_git.diff").write_text(git.pop("diff") + "\n")
    print(f"[soak] {' '.join(command)}", flush=True)
    changes = f" (with changes: {', '.join(git['status'])})" if git["status"] else ""
    print(f"[soak] git {git['commit'] or '?'}{changes}", flush=True)
    try:
        result = soak(command, workdir, minutes=args.minutes, interval=args.interval, pss=not args.no_pss,
                      stop_timeout=args.stop_timeout, log_compiles=not args.no_log_compiles, quiet=args.quiet,
                      csv_path=workdir / "soak.csv")
    except KeyboardInterrupt:
        print(f"[soak] interrupted twice: the run was killed; its samples so far are in {workdir}/soak.csv",
              file=sys.stderr)
        return 130
    report(result, workdir, git, args.warmup_epochs, args.png)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
