"""The compiled train step, kept across runs and loaded without tracing it again.

JAX's persistent compilation cache (:func:`yolojax.runtime.enable_compilation_cache`) finds an
executable by its lowered program, so every run first traces and lowers the train step (the
README quickstart's yolov8n on a 2-core CPU: 4.5 s and 1.2 s) before the cache answers and
the executable loads (2.8 s). This cache keeps the serialized executable
(``jax.experimental.serialize_executable``) under a key (:func:`step_key`) of everything the
trace reads that is known before tracing:

* yolojax's source files (SHA-256) and the versions of Python, jax, jaxlib, flax, optax,
  numpy and ml_dtypes;
* JAX's configuration values and the ``XLA_*``, ``JAX_*`` and ``YOLOJAX_*`` environment
  variables (XLA's flags, :func:`yolojax.runtime.configure_xla_cpu`'s among them);
* the devices (id, platform, kind);
* the caller's fingerprint: the run's config, model, recipe and loss as their reprs;
* each argument leaf's path, shape, dtype, weak type and sharding.

Only an executable XLA compiled in this process is stored: one that JAX loaded from its own
cache serializes without some of its functions (XLA:CPU, jaxlib 0.10: "Function ... not
found" when run). The cache is used where it was measured, XLA:CPU in one process
(:func:`step_cache_applies`); elsewhere JAX's cache serves as before. Entries are pickles
written by JAX's serializer: the directory must be as trusted as the code. The newest
:data:`KEEP_ENTRIES` entries are kept.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import pickle
import sys
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

FORMAT = 1
SUBDIR = "yolojax-train-steps"
SUFFIX = ".step"
KEEP_ENTRIES = 8
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
_PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "ml_dtypes")
_ENV_PREFIXES = ("XLA_", "JAX_", "YOLOJAX_")


def step_cache_applies() -> bool:
    """Whether this process keeps its train step here: JAX's default backend is XLA:CPU and
    the process is the only one (a multi-host executable is left to JAX's cache)."""
    import jax

    return jax.default_backend() == "cpu" and jax.process_count() == 1


@functools.cache
def source_digest() -> str:
    """SHA-256 (hex) over the path and bytes of every ``.py`` file of the yolojax package."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


def step_key(fingerprint: Mapping[str, Any], args: tuple) -> str:
    """The cache key (64 hex digits) of a step traced with ``args`` under ``fingerprint``
    (the caller's reprs of what the traced function closes over)."""
    import jax

    leaves = [(jax.tree_util.keystr(path), tuple(getattr(x, "shape", ())), str(getattr(x, "dtype", type(x))),
               bool(getattr(x, "weak_type", False)), str(getattr(x, "sharding", None)))
              for path, x in jax.tree_util.tree_flatten_with_path(args)[0]]
    fields = {
        "format": FORMAT, "source": source_digest(), "python": sys.version,
        "packages": [(p, _version(p)) for p in _PACKAGES],
        "jax_config": sorted((k, repr(v)) for k, v in jax.config.values.items()),
        "environ": sorted((k, v) for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)),
        "devices": [(d.id, d.platform, d.device_kind) for d in jax.devices()],
        "fingerprint": sorted((k, repr(v)) for k, v in fingerprint.items()),
        "args": leaves,
    }
    return hashlib.sha256(repr(fields).encode()).hexdigest()


class StepCache:
    """Serialized train-step executables in ``directory / SUBDIR``, one file per key.

    A step returns ``(state, metrics)`` where ``state`` has the structure of its first
    argument; an entry holds the executable and the metrics' structure.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory) / SUBDIR

    def path(self, key: str) -> Path:
        return self.directory / f"{key}{SUFFIX}"

    def load(self, key: str, args: tuple) -> Any | None:
        """The ``jax.stages.Compiled`` stored under ``key`` for ``args``, or None when there is
        none or it cannot be read (named in a warning, then removed)."""
        import jax
        from jax.experimental import serialize_executable

        path = self.path(key)
        if not path.exists():
            return None
        try:
            payload, metrics_skeleton = pickle.loads(path.read_bytes())
            in_tree = jax.tree.structure((tuple(args), {}))
            out_tree = jax.tree.structure((args[0], metrics_skeleton))
            compiled = serialize_executable.deserialize_and_load(payload, in_tree, out_tree)
        except Exception as e:  # noqa: BLE001 - a bad entry only costs the compile it saved
            logger.warning("train step cache entry %s unreadable (%s: %s): compiling the step", path,
                           type(e).__name__, e)
            path.unlink(missing_ok=True)
            return None
        os.utime(path)  # newest first when old entries go
        logger.info("train step loaded without tracing from %s", path)
        return compiled

    def compile(self, step_fn: Callable, args: tuple, key: str) -> Any:
        """``step_fn.lower(*args).compile()``, stored under ``key`` unless JAX's own cache
        supplied it."""
        import jax

        hits = []

        def on_event(event: str, **kwargs: Any) -> None:
            if event == CACHE_HIT_EVENT:
                hits.append(event)

        jax.monitoring.register_event_listener(on_event)
        try:
            compiled = step_fn.lower(*args).compile()
        finally:
            jax.monitoring.unregister_event_listener(on_event)
        if not hits:
            self._store(key, compiled, args)
        return compiled

    def _store(self, key: str, compiled: Any, args: tuple) -> None:
        import jax
        from jax.experimental import serialize_executable

        try:
            payload, _, out_tree = serialize_executable.serialize(compiled)
            _, metrics_tree = out_tree.children()
            metrics_skeleton = jax.tree.unflatten(metrics_tree, [0] * metrics_tree.num_leaves)
            if jax.tree.structure((args[0], metrics_skeleton)) != out_tree:
                raise ValueError("the step's state output differs in structure from its state input")
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = self.path(key).with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(pickle.dumps((payload, metrics_skeleton), protocol=pickle.HIGHEST_PROTOCOL))
            os.replace(tmp, self.path(key))
        except Exception as e:  # noqa: BLE001 - not keeping it only costs the next run the trace
            logger.warning("train step not kept for the next run (%s: %s)", type(e).__name__, e)
            return
        self._evict()

    def _evict(self) -> None:
        entries = sorted(self.directory.glob(f"*{SUFFIX}"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[KEEP_ENTRIES:]:
            old.unlink(missing_ok=True)


class CachedStep:
    """``step_fn(state, batch)`` that on its first call loads its executable from ``cache``
    (no tracing) or compiles and stores it, then runs every batch of the same shapes on that
    executable; batches of other shapes (``rect``, ``multi_scale``) go through ``step_fn``.

    Attributes:
      loaded: whether the first call loaded the executable (None before the first call).
    """

    def __init__(self, step_fn: Callable, cache: StepCache, fingerprint: Mapping[str, Any]):
        self.step_fn, self.cache, self.fingerprint = step_fn, cache, fingerprint
        self.compiled, self.signature, self.loaded = None, None, None

    def __call__(self, state: Any, batch: Any) -> tuple[Any, Any]:
        if self.compiled is None:
            args = (state, batch)
            key = step_key(self.fingerprint, args)
            self.compiled = self.cache.load(key, args)
            self.loaded = self.compiled is not None
            if self.compiled is None:
                self.compiled = self.cache.compile(self.step_fn, args, key)
            self.signature = _signature(batch)
        if _signature(batch) == self.signature:
            return self.compiled(state, batch)
        return self.step_fn(state, batch)


def _signature(batch: Any) -> tuple:
    import jax

    return tuple((tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(batch))
