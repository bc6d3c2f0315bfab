"""Process set-up shared by the command-line entry points (train, val, predict, export).

* :func:`reexec_with_hugepage_malloc`: XLA:CPU allocates each run's temporary buffers
  afresh (glibc serves large blocks with mmap), so every train step first-touches its whole
  working set again: ~500k page faults per yolov8n step at batch 8 and 640 px, about a
  sixth of the step on a 2-core machine. glibc's ``glibc.malloc.hugetlb=1`` tunable backs
  those blocks with transparent huge pages (512x fewer faults); glibc reads tunables only at
  start-up, hence the re-exec.
* :func:`enable_compilation_cache`: JAX's persistent compilation cache, so a second run of
  the same program (train step, forward, NMS) loads its executable instead of compiling it.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
from pathlib import Path

logger = logging.getLogger("yolojax")

HUGEPAGE_TUNABLE = "glibc.malloc.hugetlb=1"
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


def wants_hugepage_reexec(environ: dict[str, str] | os._Environ, thp_mode: str | None) -> bool:
    """Whether re-executing with :data:`HUGEPAGE_TUNABLE` would change anything: glibc on
    Linux, THP in "madvise" mode (with "always" every large block gets huge pages anyway),
    the tunable not yet set, and ``YOLOJAX_HUGEPAGES`` not "0"."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc" or thp_mode != "madvise":
        return False
    if environ.get("YOLOJAX_HUGEPAGES", "1") == "0":
        return False
    return "glibc.malloc.hugetlb" not in environ.get("GLIBC_TUNABLES", "")


def reexec_with_hugepage_malloc() -> None:
    """Re-execute this process (same interpreter, same ``sys.orig_argv``) with glibc's
    huge-page malloc tunable, where :func:`wants_hugepage_reexec` says it helps; otherwise
    return. Call it first thing in a command's ``main`` when it is the process's entry point
    (never from library code or tests: it replaces the process). ``YOLOJAX_HUGEPAGES=0``
    turns it off."""
    if not wants_hugepage_reexec(os.environ, transparent_hugepage_mode()):
        return
    tunables = [t for t in os.environ.get("GLIBC_TUNABLES", "").split(":") if t] + [HUGEPAGE_TUNABLE]
    env = {**os.environ, "GLIBC_TUNABLES": ":".join(tunables)}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)


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
    return None. Programs that compile in under a second are not cached (JAX's default).

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
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    compilation_cache.reset_cache()  # JAX decides once whether to use the cache: decide again
    return directory
