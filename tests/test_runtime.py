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
    compilation_cache_dir,
    default_cache_root,
    transparent_hugepage_mode,
    wants_hugepage_reexec,
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
def test_wants_hugepage_reexec_only_where_it_helps():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert wants_hugepage_reexec({}, "madvise")
    assert wants_hugepage_reexec({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "madvise")
    assert not wants_hugepage_reexec({"GLIBC_TUNABLES": HUGEPAGE_TUNABLE}, "madvise")  # already done
    assert not wants_hugepage_reexec({"YOLOJAX_HUGEPAGES": "0"}, "madvise")
    assert not wants_hugepage_reexec({}, "always")
    assert not wants_hugepage_reexec({}, "never")
    assert not wants_hugepage_reexec({}, None)


def test_reexec_sets_the_tunable_once_and_keeps_the_arguments():
    code = ("import os, sys; from yolojax.runtime import reexec_with_hugepage_malloc; "
            "reexec_with_hugepage_malloc(); print(os.environ.get('GLIBC_TUNABLES', ''), sys.argv[1:])")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "YOLOJAX_HUGEPAGES")}
    out = subprocess.run([sys.executable, "-c", code, "a", "b=1"], capture_output=True, text=True, env=env,
                         cwd=ROOT, check=True).stdout.strip()
    expected = HUGEPAGE_TUNABLE if wants_hugepage_reexec(env, transparent_hugepage_mode()) else ""
    assert out == f"{expected} ['a', 'b=1']"


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
