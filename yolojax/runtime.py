"""Process set-up shared by the command-line entry points (train, val, predict, export).

* :func:`reexec_with_malloc_tunables`: XLA:CPU allocates each run's temporary buffers
  afresh, and glibc serves blocks over 32 MiB with mmap and unmaps them when freed, so
  every train step first-touches its whole working set again (~500k page faults per
  yolov8n step at batch 8 and 640 px). Alone on a machine that cost about a sixth of the
  step; taking turns with another process's work (ultralytics' step in
  tools/bench_train_step.py) the kernel's work per fault grew and a 2.3 s step took
  4.6-5.2 s, 3.3-4.5 s of it system time. :data:`KEEP_FREED_MEMORY_TUNABLES` make glibc
  keep freed blocks in its heap for the next step (the steady-state step then faults almost
  nothing: 0.0-0.1 s system time), and ``glibc.malloc.hugetlb=1`` backs the heap with
  transparent huge pages. glibc reads
  tunables only at start-up, hence the re-exec.
* :func:`enable_compilation_cache`: JAX's persistent compilation cache, so a second run of
  the same program (train step, forward, NMS) loads its executable instead of compiling it.
* :func:`configure_xla_cpu` (run by ``import yolojax``): XLA:CPU (jaxlib 0.10) hands each
  convolution to YNNPACK; its Eigen convolutions ran yolov8's convolutions 1.3-1.5x faster
  on a 2-core x86 CPU (eval forward yolov8n batch 1: 137 -> 92 ms), so the flag
  :data:`EIGEN_CONVOLUTIONS_FLAG` is added to ``XLA_FLAGS`` before JAX starts its backend.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger("yolojax")

HUGEPAGE_TUNABLE = "glibc.malloc.hugetlb=1"
KEEP_FREED_MEMORY_TUNABLES = (
    "glibc.malloc.mmap_max=0",  # large blocks from the heap, not from mmap ...
    "glibc.malloc.arena_max=1",  # ... of the one arena (other arenas' heaps still mmap them) ...
    "glibc.malloc.trim_threshold=1099511627776",  # ... which is never trimmed back to the kernel
)
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")
# A line such as ``always [madvise] never``: the bracketed word is the active mode.


def transparent_hugepage_mode(setting: Path = THP_SETTING) -> str | None:
    """The kernel's transparent huge page mode ("always", "madvise", "never"), or None
    where it cannot be read (not Linux, no THP)."""
    try:
        text = setting.read_text()
    except OSError:
        return None
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return None


def malloc_tunables(environ: dict[str, str] | os._Environ, thp_mode: str | None) -> list[str]:
    """The glibc tunables :func:`reexec_with_malloc_tunables` adds to ``GLIBC_TUNABLES``.

    None off glibc on Linux or with ``YOLOJAX_MALLOC_TUNABLES=0``. Otherwise
    :data:`KEEP_FREED_MEMORY_TUNABLES`, plus :data:`HUGEPAGE_TUNABLE` where THP is in
    "madvise" mode (with "always" every large block gets huge pages anyway) and
    ``YOLOJAX_HUGEPAGES`` is not "0". A tunable the user's ``GLIBC_TUNABLES`` already sets
    is left as the user set it, so a process that re-executed once gets an empty list.
    """
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return []
    if environ.get("YOLOJAX_MALLOC_TUNABLES", "1") == "0":
        return []
    wanted = list(KEEP_FREED_MEMORY_TUNABLES)
    if thp_mode == "madvise" and environ.get("YOLOJAX_HUGEPAGES", "1") != "0":
        wanted.append(HUGEPAGE_TUNABLE)
    already = {t.split("=")[0] for t in environ.get("GLIBC_TUNABLES", "").split(":") if t}
    return [t for t in wanted if t.split("=")[0] not in already]


def reexec_with_malloc_tunables() -> None:
    """Re-execute this process (same interpreter, same ``sys.orig_argv``) with
    :func:`malloc_tunables` added to ``GLIBC_TUNABLES``; return where there are none to add.
    Call it first thing in a command's ``main`` when it is the process's entry point (never
    from library code or tests: it replaces the process)."""
    added = malloc_tunables(os.environ, transparent_hugepage_mode())
    if not added:
        return
    tunables = [t for t in os.environ.get("GLIBC_TUNABLES", "").split(":") if t] + added
    env = {**os.environ, "GLIBC_TUNABLES": ":".join(tunables)}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)


EIGEN_CONVOLUTIONS_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
# jaxlib (major, minor) releases that know the flag: XLA aborts on an unknown flag, so a
# release not measured here is left alone.
EIGEN_CONVOLUTIONS_JAXLIB = ((0, 10),)
_eigen_convolutions = False


def _jaxlib_release() -> tuple[int, int] | None:
    from importlib import metadata

    try:
        major, minor = metadata.version("jaxlib").split(".")[:2]
        return int(major), int(minor)
    except (metadata.PackageNotFoundError, ValueError):
        return None


def wants_eigen_convolutions(environ: dict[str, str] | os._Environ, jaxlib_release: tuple[int, int] | None) -> bool:
    """Whether :func:`configure_xla_cpu` should add :data:`EIGEN_CONVOLUTIONS_FLAG`: a jaxlib
    release in :data:`EIGEN_CONVOLUTIONS_JAXLIB`, ``XLA_FLAGS`` not already choosing YNNPACK's
    fusions (the user's setting wins), and ``YOLOJAX_XLA_CPU_FLAGS`` not "0"."""
    if environ.get("YOLOJAX_XLA_CPU_FLAGS", "1") == "0" or jaxlib_release not in EIGEN_CONVOLUTIONS_JAXLIB:
        return False
    return "xla_cpu_experimental_ynn_fusion_type" not in environ.get("XLA_FLAGS", "")


def _backend_started() -> bool:
    xla_bridge = sys.modules.get("jax._src.xla_bridge")
    return xla_bridge is not None and xla_bridge.backends_are_initialized()


def configure_xla_cpu(environ: dict[str, str] | os._Environ = os.environ) -> bool:
    """Add :data:`EIGEN_CONVOLUTIONS_FLAG` to ``environ["XLA_FLAGS"]`` where
    :func:`wants_eigen_convolutions` says so and JAX has not started its backends yet (XLA
    reads the flags once, then). Returns whether XLA:CPU runs convolutions with Eigen in this
    process (also when the user's own ``XLA_FLAGS`` says so), which
    :func:`cpu_convolutions_use_eigen` reports afterwards. Only the CPU backend reads the flag.
    """
    global _eigen_convolutions
    if not _backend_started() and wants_eigen_convolutions(environ, _jaxlib_release()):
        environ["XLA_FLAGS"] = f"{environ.get('XLA_FLAGS', '')} {EIGEN_CONVOLUTIONS_FLAG}".strip()
    flags = environ.get("XLA_FLAGS", "").split()
    _eigen_convolutions = any(f.startswith("--xla_cpu_experimental_ynn_fusion_type=") and
                              "-individual_convolution" in f for f in flags)
    return _eigen_convolutions


def cpu_convolutions_use_eigen() -> bool:
    """Whether XLA:CPU convolutions run on Eigen in this process (:func:`configure_xla_cpu`),
    which decides :mod:`yolojax.ops.conv`'s CPU kernel gradient."""
    return _eigen_convolutions


def default_cache_root() -> Path:
    """``$XDG_CACHE_HOME/yolojax`` or ``~/.cache/yolojax``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "yolojax"


def compilation_cache_dir(setting: str) -> Path | None:
    """The directory a ``compile_cache`` setting names: "auto" -> ``default_cache_root()/jax``,
    "" or "off" -> None (no cache), anything else -> that path (``~`` expanded)."""
    setting = setting.strip()
    if setting in ("", "off"):
        return None
    if setting == "auto":
        return default_cache_root() / "jax"
    return Path(setting).expanduser()


def enable_compilation_cache(setting: str = "auto") -> Path | None:
    """Turn on JAX's persistent compilation cache in the directory ``setting`` names (see
    :func:`compilation_cache_dir`; created when missing) and return it, or turn it off and
    return None. Every program is cached, however fast it compiles: a run's many small
    programs (initialisers, optimizer set-up, NMS) add up to seconds of its start-up.

    An unusable directory only warns: the run then compiles as without a cache.
    """
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    directory = compilation_cache_dir(setting)
    if directory is not None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            logger.warning("compilation cache %s unusable (%s): compiling without it", directory, e)
            directory = None
    jax.config.update("jax_compilation_cache_dir", str(directory) if directory is not None else None)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    compilation_cache.reset_cache()  # JAX decides once whether to use the cache: decide again
    return directory


def add_compile_cache_argument(parser: argparse.ArgumentParser) -> None:
    """A command's ``--compile-cache DIR|auto|off`` (:func:`enable_compilation_cache`'s setting)."""
    parser.add_argument("--compile-cache", default="auto", metavar="DIR|auto|off",
                        help="persistent XLA compilation cache (auto: ~/.cache/yolojax/jax)")


def start_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """A ``python -m yolojax.MODE`` command's start: re-executed with
    :func:`reexec_with_malloc_tunables` when ``argv`` is None (the process's entry point),
    ``argv`` parsed (a parser with :func:`add_compile_cache_argument`), the compilation cache
    enabled and logging configured (before yolojax.data: absl, via Orbax, would install a
    second handler on first use). Returns the parsed arguments."""
    from yolojax.console import configure_logging

    if argv is None:
        reexec_with_malloc_tunables()
    args = parser.parse_args(argv)
    enable_compilation_cache(args.compile_cache)
    configure_logging()
    return args
