"""The train step kept across runs (yolojax.train.step_cache): a second process loads it
without tracing and computes the same; the key follows what the trace reads (the model family
among it); JAX-cache hits, bad entries and other batch shapes fall back to compiling. A YOLO11 run
(device augmentation, plots) keeps its step and the next run loads it."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# A step of the train step's form: (state, batch) -> (state, metrics), the state donated.
# Prints how often Python traced it, its result, and whether the state's buffer was donated.
PROBE = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
from yolojax.runtime import enable_compilation_cache
from yolojax.train.step_cache import CachedStep, StepCache

directory = enable_compilation_cache(sys.argv[1])
traces = []

def step(state, batch):
    traces.append(1)
    w = state["w"] + batch["x"].mean(axis=0)
    return {"w": w, "n": state["n"] + 1}, {"loss": jnp.sum(w * w), "parts": {"n": state["n"]}}

fn = CachedStep(jax.jit(step, donate_argnums=0), StepCache(directory), {"config": sys.argv[2]})
state = {"w": jnp.arange(4.0), "n": jnp.zeros((), jnp.int32)}
batch = {"x": jnp.ones((3, 4))}
first_w = state["w"]
state, metrics = fn(state, batch)
state, metrics = fn(state, batch)
w = np.asarray(state["w"]).tolist()
other = fn(state, {"x": jnp.ones((5, 4))})[1]  # another batch shape: through the jit
print(json.dumps({"traces": len(traces), "loaded": fn.loaded, "w": w,
                  "loss": float(metrics["loss"]), "n": int(metrics["parts"]["n"]), "other": float(other["loss"]),
                  "donated": first_w.is_deleted()}))
"""


def probe(cache: Path, config: str = "a") -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, str(cache), config], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def entries(cache: Path) -> list[Path]:
    from yolojax.train.step_cache import SUBDIR, SUFFIX

    return sorted((cache / SUBDIR).glob(f"*{SUFFIX}"))


def test_a_second_process_runs_the_step_without_tracing_it(tmp_path):
    cache = tmp_path / "cache"
    first = probe(cache)
    assert first["loaded"] is False and first["traces"] == 2  # the step, then the other batch shape
    assert len(entries(cache)) == 1
    second = probe(cache)
    assert second["loaded"] is True and second["traces"] == 1  # only the other batch shape
    assert second == {**first, "loaded": True, "traces": 1}
    assert second["w"] == [2.0, 3.0, 4.0, 5.0] and second["n"] == 1 and second["donated"]
    third = probe(cache, config="b")  # another fingerprint: traced again; the same program comes from
    assert third["loaded"] is False and third["traces"] == 2 and len(entries(cache)) == 1  # JAX's cache


def test_an_executable_from_jaxs_cache_is_not_kept(tmp_path):
    """JAX's cache answers the compile once our entry is gone; such an executable is not
    re-serialized (it would lack functions), and the step still runs."""
    cache = tmp_path / "cache"
    first = probe(cache)
    for entry in entries(cache):
        entry.unlink()
    again = probe(cache)
    assert again["loaded"] is False and again["w"] == first["w"]
    assert entries(cache) == []


def test_an_unreadable_entry_is_named_removed_and_compiled_again(tmp_path, caplog):
    import jax
    import jax.numpy as jnp

    from yolojax.train.step_cache import CachedStep, StepCache, step_key

    cache = StepCache(tmp_path)
    state, batch = {"w": jnp.zeros(2)}, {"x": jnp.ones((2, 2))}
    key = step_key({"config": "c"}, (state, batch))
    cache.path(key).parent.mkdir(parents=True)
    cache.path(key).write_bytes(b"not a pickle")
    step = CachedStep(jax.jit(lambda s, b: ({"w": s["w"] + b["x"][0]}, {"loss": b["x"].sum()})), cache,
                      {"config": "c"})
    with caplog.at_level(logging.WARNING):
        new_state, metrics = step(state, batch)
    assert [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()][0].startswith(
        f"train step cache entry {cache.path(key)} unreadable")
    assert step.loaded is False and float(metrics["loss"]) == 4.0
    np.testing.assert_array_equal(new_state["w"], [1.0, 1.0])


def test_the_key_follows_the_fingerprint_and_each_argument():
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    from yolojax.train.step_cache import step_key

    state, batch = {"w": jnp.zeros((4,))}, {"x": jnp.ones((2, 4))}
    key = step_key({"config": {"lr0": 0.01}}, (state, batch))
    assert key == step_key({"config": {"lr0": 0.01}}, ({"w": jnp.ones((4,))}, {"x": jnp.zeros((2, 4))}))
    mesh = jax.make_mesh((1,), ("data",))
    others = [
        step_key({"config": {"lr0": 0.02}}, (state, batch)),
        step_key({"config": {"lr0": 0.01}, "loss": "class_weights=(1.0,)"}, (state, batch)),
        step_key({"config": {"lr0": 0.01}}, (state, {"x": jnp.ones((3, 4))})),
        step_key({"config": {"lr0": 0.01}}, (state, {"x": jnp.ones((2, 4), jnp.bfloat16)})),
        step_key({"config": {"lr0": 0.01}}, (state, {"y": jnp.ones((2, 4))})),
        step_key({"config": {"lr0": 0.01}}, ({"w": 0.0}, batch)),  # a weak-typed scalar
        step_key({"config": {"lr0": 0.01}}, (state, {"x": jax.device_put(batch["x"], NamedSharding(mesh, P("data")))})),
    ]
    assert len({key, *others}) == len(others) + 1


def test_the_key_follows_the_source_and_the_environment(monkeypatch):
    import jax.numpy as jnp

    from yolojax.train import step_cache

    args = ({"w": jnp.zeros(2)}, {"x": jnp.ones(2)})
    key = step_cache.step_key({}, args)
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_fast_math=false")
    assert step_cache.step_key({}, args) != key
    monkeypatch.undo()
    monkeypatch.setattr(step_cache, "source_digest", lambda: "edited")
    assert step_cache.step_key({}, args) != key


def test_only_the_newest_entries_are_kept(tmp_path):
    from yolojax.train.step_cache import KEEP_ENTRIES, StepCache

    cache = StepCache(tmp_path)
    cache.directory.mkdir(parents=True)
    for i in range(KEEP_ENTRIES + 3):
        path = cache.path(f"{i:064x}")
        path.write_bytes(b"x")
        os.utime(path, (1000 + i, 1000 + i))
    cache._evict()
    assert sorted(p.name for p in cache.directory.iterdir()) == [f"{i:064x}.step" for i in range(3, KEEP_ENTRIES + 3)]


def train_twice(tmp_path, caplog, configure, **fields) -> list[list[dict]]:
    """Two runs of test_train_options' small config on 8 synthetic images sharing one step cache,
    2 then 3 steps (``configure(config, run)`` adjusts each; ``fields`` go to small_config):
    the first compiles the step, the second loads it without tracing. Returns each run's
    metrics.jsonl rows (images_per_s left out)."""
    from test_train_options import small_config

    from yolojax.data.sources.synthetic import write_synthetic_dataset
    from yolojax.train.run import train

    data_yaml = write_synthetic_dataset(tmp_path / "shapes", num_train=8, num_val=2, size_range=(64, 96), seed=1)
    rows = []
    for run, max_steps in (("first", 2), ("second", 3)):
        config = small_config(data_yaml, tmp_path / "jax-cache", max_steps=max_steps, fraction=1.0, freeze="",
                              log_every_steps=1, **{k: v(run) if callable(v) else v for k, v in fields.items()})
        configure(config, run)
        with caplog.at_level(logging.INFO):
            caplog.clear()
            train(config, tmp_path / run)
        messages = [r.getMessage() for r in caplog.records]
        assert sum("loaded without tracing" in m for m in messages) == (run == "second")
        assert any(m.startswith(f"train step {'loaded' if run == 'second' else 'compiled'} in") for m in messages)
        rows.append([{k: v for k, v in json.loads(line).items() if k != "images_per_s"}
                     for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()])
    return rows


def test_a_second_train_run_loads_the_step_and_trains_the_same(tmp_path, caplog):
    """Also with another max_steps, seed of no consequence to the step: a resume may change it."""
    rows = train_twice(tmp_path, caplog, lambda config, run: setattr(config.val, "enabled", False))
    assert [r["step"] for r in rows[1]] == [1, 2, 3]
    assert rows[0] == rows[1][:2]


def test_step_view_leaves_out_only_what_cannot_reach_the_step():
    from yolojax.config import default_config
    from yolojax.config import flatten
    from yolojax.train.settings import resolve

    config = default_config()
    config.data.synthetic.root = "unused"
    kept, every = resolve(config).step_view(), flatten(config.to_dict())
    steering = ("max_steps", "patience", "time", "save_period", "plots", "progress", "log_every_steps",
                "max_nonfinite", "compile_cache", "weights", "seed", "data.workers", "data.threads", "data.prefetch",
                "data.cache", "data.tfds.data_dir", "data.tfds.val")
    groups = ("checkpoint.", "val.", "distributed.")
    assert set(kept) == {k for k in every if k not in steering and not k.startswith(groups)}
    for shaping in ("model.family", "model.scale", "batch_size", "imgsz", "dtype", "lr0", "optimizer", "epochs",
                    "mesh.data", "parallel.rules", "freeze", "cls_pw", "box", "data.max_boxes", "data.augment_on"):
        assert kept[shaping] == every[shaping]


def test_the_key_follows_the_model_family():
    """model.family is part of the key on its own: two configs that differ only in it (same
    scale, image size and batch) key apart even for the same arguments, so a YOLOv8 run's entry
    cannot serve a YOLO11 run (whose parameter tree differs as well)."""
    import jax.numpy as jnp

    from yolojax.config import default_config
    from yolojax.train.settings import resolve
    from yolojax.train.step_cache import step_key

    views = {}
    for family in ("yolov8", "yolo11"):
        config = default_config()
        config.data.synthetic.root = "unused"
        config.model.family = family
        views[family] = resolve(config).step_view()
    assert {k for k in views["yolov8"] if views["yolov8"][k] != views["yolo11"][k]} == {"model.family"}
    args = ({"w": jnp.zeros(2)}, {"x": jnp.ones(2)})
    assert step_key({"config": views["yolov8"]}, args) != step_key({"config": views["yolo11"]}, args)


def test_a_yolo11_run_with_device_augmentation_and_plots_then_its_step_loaded(tmp_path, caplog):
    """yolo11n end to end, also the other downstream paths of a YOLO11 run, in its first run:
    device-mode augmentation (data.augment_on='device': the augmentation is rendered inside
    the step, before the model), the run's plots (labels, train batches, validation's labels and
    predictions, results.png) and the workdir as weights. The second run (one step more, no
    validation or plots: neither reaches the step) loads the step without tracing and repeats
    the first run's steps."""
    from yolojax.weights import load_weights

    def configure(config, run):
        config.model.family = "yolo11"
        config.data.augment_on = "device"
        config.val.enabled = run == "first"

    rows = train_twice(tmp_path, caplog, configure, plots=lambda run: run == "first")
    steps = [[r for r in run_rows if "loss" in r] for run_rows in rows]
    assert [r["step"] for r in steps[1]] == [1, 2, 3]
    assert steps[0] == steps[1][:2]
    assert len(entries(tmp_path / "jax-cache")) == 1
    first = tmp_path / "first"
    assert [r["step"] for r in rows[0] if "mAP50-95" in r] == [2]
    plots = ["results.png", "labels.jpg", "train_batch0.jpg", "train_batch1.jpg", "val_batch0_labels.jpg",
             "val_batch0_pred.jpg"]
    assert all((first / name).stat().st_size > 1000 for name in plots)
    _, info = load_weights(first)
    assert (info["family"], info["scale"]) == ("yolo11", "n")
