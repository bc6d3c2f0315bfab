"""yolojax.runtime (huge-page malloc re-exec, compilation cache) and the train bar's compile phase."""

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from yolojax.runtime import (
    HUGEPAGE_TUNABLE,
    KEEP_FREED_MEMORY_TUNABLES,
    compilation_cache_dir,
    default_cache_root,
    transparent_hugepage_mode,
    malloc_tunables,
)

ROOT = Path(__file__).resolve().parents[1]


def test_transparent_hugepage_mode_reads_the_bracketed_word(tmp_path):
    setting = tmp_path / "enabled"
    setting.write_text("always [madvise] never\n")
    assert transparent_hugepage_mode(setting) == "madvise"
    setting.write_text("[always] madvise never\n")
    assert transparent_hugepage_mode(setting) == "always"
    assert transparent_hugepage_mode(tmp_path / "missing") is None


@pytest.mark.skipif(sys.platform != "linux", reason="glibc tunables are Linux-only")
def test_malloc_tunables_keep_freed_memory_and_add_huge_pages_where_they_help():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    keep = list(KEEP_FREED_MEMORY_TUNABLES)
    assert malloc_tunables({}, "madvise") == keep + [HUGEPAGE_TUNABLE]
    assert malloc_tunables({}, "always") == keep
    assert malloc_tunables({}, "never") == keep
    assert malloc_tunables({}, None) == keep
    assert malloc_tunables({"YOLOJAX_HUGEPAGES": "0"}, "madvise") == keep
    assert malloc_tunables({"YOLOJAX_MALLOC_TUNABLES": "0"}, "madvise") == []
    # the user's own setting of a tunable wins; the others are still added
    assert malloc_tunables({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "madvise") == [
        keep[0], keep[2], HUGEPAGE_TUNABLE]
    assert malloc_tunables({"GLIBC_TUNABLES": ":".join(keep + [HUGEPAGE_TUNABLE])}, "madvise") == []


def test_reexec_sets_the_tunables_once_and_keeps_the_arguments():
    code = ("import os, sys; from yolojax.runtime import reexec_with_malloc_tunables; "
            "reexec_with_malloc_tunables(); print(os.environ.get('GLIBC_TUNABLES', ''), sys.argv[1:])")
    env = {k: v for k, v in os.environ.items()
           if k not in ("GLIBC_TUNABLES", "YOLOJAX_HUGEPAGES", "YOLOJAX_MALLOC_TUNABLES")}
    out = subprocess.run([sys.executable, "-c", code, "a", "b=1"], capture_output=True, text=True, env=env,
                         cwd=ROOT, check=True).stdout.strip()
    expected = ":".join(malloc_tunables(env, transparent_hugepage_mode()))
    assert out == f"{expected} ['a', 'b=1']"


@pytest.mark.skipif(sys.platform != "linux", reason="glibc tunables are Linux-only")
def test_freed_large_blocks_stay_in_the_process():
    """With the tunables, a freed 256 MiB block is reused by the next allocation without new
    page faults; without them glibc unmaps it and the next one faults every page again (at least
    128 faults even where transparent huge pages are "always", 2 MiB per fault)."""
    code = ("import resource, numpy as np\n"
            "def faults():\n"
            "    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "a = np.ones(64 << 20, np.float32); del a\n"
            "before = faults(); a = np.ones(64 << 20, np.float32); print(faults() - before)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "YOLOJAX_MALLOC_TUNABLES")}
    plain = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                               check=True).stdout)
    env["GLIBC_TUNABLES"] = ":".join(KEEP_FREED_MEMORY_TUNABLES)
    kept = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                              check=True).stdout)
    assert plain > 100 and kept * 10 < plain, (plain, kept)


def test_compilation_cache_dir_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_root() == tmp_path / "yolojax"
    assert compilation_cache_dir("auto") == tmp_path / "yolojax" / "jax"
    assert compilation_cache_dir("off") is None
    assert compilation_cache_dir("") is None
    assert compilation_cache_dir(str(tmp_path / "c")) == tmp_path / "c"


CACHE_PROBE = """
import sys, jax, jax.numpy as jnp
from jax import monitoring
from yolojax.runtime import enable_compilation_cache
events = []
monitoring.register_event_listener(lambda name, **kw: events.append(name))
print(enable_compilation_cache(sys.argv[1]))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # cache even this small program
f = jax.jit(lambda x: jnp.sin(x) @ jnp.cos(x).T + 3.0)
f(jnp.ones((64, 64))).block_until_ready()
print("hit" if "/jax/compilation_cache/cache_hits" in events else "miss")
"""


def test_second_process_loads_the_compiled_program_from_the_cache(tmp_path):
    run = lambda setting: subprocess.run([sys.executable, "-c", CACHE_PROBE, setting], capture_output=True,  # noqa: E731
                                         text=True, cwd=ROOT, check=True).stdout.split()
    cache = str(tmp_path / "cache")
    assert run(cache) == [cache, "miss"]
    assert any((tmp_path / "cache").iterdir())
    assert run(cache) == [cache, "hit"]
    assert run("off") == ["None", "miss"]


def test_progress_bar_leaves_the_compile_out_of_its_rate():
    from tqdm import tqdm

    from yolojax.train.run import compile_first_step

    def slow_first_step(state, batch):
        time.sleep(0.5)
        return state + 1, {"loss": 0.0}

    bar = tqdm(total=10, file=io.StringIO())
    bar.set_description("epoch 1/1")
    state, metrics, seconds = compile_first_step(slow_first_step, 0, None, bar)
    assert state == 1 and seconds >= 0.5
    assert bar.desc.startswith("epoch 1/1")
    assert bar.format_dict["elapsed"] < 0.25  # the bar's clock restarted after the compile
    bar.close()


def test_wants_eigen_convolutions_leaves_user_settings_and_unknown_releases_alone():
    from yolojax.runtime import EIGEN_CONVOLUTIONS_JAXLIB, wants_eigen_convolutions

    known = EIGEN_CONVOLUTIONS_JAXLIB[0]
    assert wants_eigen_convolutions({}, known)
    assert wants_eigen_convolutions({"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}, known)
    assert not wants_eigen_convolutions({"YOLOJAX_XLA_CPU_FLAGS": "0"}, known)
    assert not wants_eigen_convolutions({"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=default"}, known)
    assert not wants_eigen_convolutions({}, (known[0], known[1] + 1))  # XLA aborts on a flag it lacks
    assert not wants_eigen_convolutions({}, None)


_FLAG_SCRIPT = """
import os, sys
import yolojax
import jax, jax.numpy as jnp
from yolojax.runtime import cpu_convolutions_use_eigen
x = jnp.ones((1, 8, 8, 4)); w = jnp.ones((3, 3, 4, 2))
y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
print(os.environ.get("XLA_FLAGS", ""), cpu_convolutions_use_eigen(), float(y[0, 4, 4, 0]), sep="|")
"""


@pytest.mark.parametrize("opt_out", ["1", "0"])
def test_import_yolojax_adds_the_eigen_flag_before_jax_starts(opt_out):
    """``import yolojax`` adds the flag (after the user's own flags), XLA accepts it and
    convolutions still compute; YOLOJAX_XLA_CPU_FLAGS=0 leaves XLA_FLAGS as it was."""
    from yolojax.runtime import EIGEN_CONVOLUTIONS_FLAG, EIGEN_CONVOLUTIONS_JAXLIB, _jaxlib_release

    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "YOLOJAX_XLA_CPU_FLAGS": opt_out, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", _FLAG_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    flags, eigen, value = out.stdout.strip().split("|")
    assert float(value) == 36.0
    added = opt_out == "1" and _jaxlib_release() in EIGEN_CONVOLUTIONS_JAXLIB
    assert flags.split() == ["--xla_force_host_platform_device_count=2"] + ([EIGEN_CONVOLUTIONS_FLAG] if added else [])
    assert eigen == str(added)


def test_start_command_parses_enables_the_cache_and_logs_one_line_per_record(tmp_path):
    import argparse
    import logging

    import jax

    from yolojax.runtime import add_compile_cache_argument, start_command

    from jax.experimental.compilation_cache import compilation_cache

    parser = argparse.ArgumentParser()
    parser.add_argument("--weights")
    add_compile_cache_argument(parser)
    assert parser.parse_args([]).compile_cache == "auto"
    saved = {k: getattr(jax.config, k) for k in ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")}
    try:
        args = start_command(parser, ["--weights", "w.pt", "--compile-cache", str(tmp_path / "cache")])
        assert (args.weights, args.compile_cache) == ("w.pt", str(tmp_path / "cache"))
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache") and (tmp_path / "cache").is_dir()
    finally:
        for k, v in saved.items():
            jax.config.update(k, v)
        compilation_cache.reset_cache()
    shown = [h for h in logging.getLogger().handlers if type(h).__name__ == "_TqdmHandler"]
    assert len(shown) == 1 and logging.getLogger().level == logging.INFO
