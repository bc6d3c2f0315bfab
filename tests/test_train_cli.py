"""python -m yolojax.train end to end on a tiny synthetic dataset (CPU): 3 epochs, metrics,
results.png, checkpoints, exact resume after SIGKILL, SIGTERM, refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from yolojax.checkpoint import complete_steps, latest_complete_step

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
STEPS_PER_EPOCH = 3  # 24 images / batch 8
EPOCHS = 3


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("jax_cache")
    out = dict(os.environ)
    out.update({
        # The subprocesses compile the same step: share it through JAX's persistent cache.
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        "JAX_PLATFORMS": "cpu",
        "PYTHONUNBUFFERED": "1",
    })
    return out


@pytest.fixture(scope="module")
def data_yaml(tmp_path_factory):
    from yolojax.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("shapes")
    return write_synthetic_dataset(root, num_train=24, num_val=8, size_range=(96, 160), max_shapes=3, seed=0)


def args(workdir, data_yaml, *extra):
    return [
        sys.executable, "-m", "yolojax.train", "--config", str(REPO / "configs" / "yolov8n.py"),
        "--workdir", str(workdir), f"--config.data.yaml={data_yaml}", "--config.imgsz=128",
        "--config.batch_size=8", f"--config.epochs={EPOCHS}", "--config.data.workers=0",
        "--config.log_every_steps=1", "--config.close_mosaic=1", "--config.checkpoint.every_steps=2",
        "--config.val.rect=False", "--config.val.batch_size=8", "--config.progress=False", *extra,
    ]


def run(workdir, data_yaml, env, *extra, timeout=600):
    return subprocess.run(args(workdir, data_yaml, *extra), cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def read_rows(workdir):
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def final_state(workdir, step):
    import orbax.checkpoint as ocp

    path = Path(workdir) / "checkpoints" / str(step) / "state"
    with ocp.PyTreeCheckpointer() as ckpt:
        meta = ckpt.metadata(path).item_metadata
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
        return ckpt.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, data_yaml, env):
    workdir = tmp_path_factory.mktemp("reference")
    t0 = time.time()
    proc = run(workdir, data_yaml, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"reference run: {time.time() - t0:.1f}s")
    return workdir


def wait_for(predicate, proc, timeout=300, poll=0.02):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(poll)
    return False


def logged_steps(workdir):
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return [r["step"] for r in rows if "loss" in r]


def test_end_to_end_three_epochs(reference_run):
    workdir = reference_run
    total = STEPS_PER_EPOCH * EPOCHS
    rows = read_rows(workdir)
    step_rows = [r for r in rows if "loss" in r]
    epoch_rows = [r for r in rows if "epoch" in r and "loss" not in r]
    assert [r["step"] for r in step_rows] == list(range(1, total + 1))
    for r in step_rows:
        assert {"step", "loss", "box", "cls", "dfl", "lr"} <= set(r)
    assert [r["epoch"] for r in epoch_rows] == list(range(EPOCHS))
    assert [r["step"] for r in epoch_rows] == [STEPS_PER_EPOCH * (e + 1) for e in range(EPOCHS)]
    assert all(("mAP50-95" in r) or ("val_loss" in r) for r in epoch_rows)
    losses = [r["loss"] for r in step_rows]
    assert np.mean(losses[-STEPS_PER_EPOCH:]) < losses[0]  # the loss falls
    assert (workdir / "results.png").stat().st_size > 1000
    assert (workdir / "config.json").is_file()
    steps = complete_steps(workdir / "checkpoints")
    assert steps[-1] == total and len(steps) <= 3  # keep the last 3
    # the workdir serves as weights (EMA of the latest checkpoint)
    from yolojax.convert import load_weights

    variables, info = load_weights(workdir)
    assert info["num_classes"] == 6 and info["scale"] == "n"


def test_exact_resume_after_sigkill(reference_run, tmp_path, data_yaml, env):
    workdir = tmp_path / "killed"
    total = STEPS_PER_EPOCH * EPOCHS
    proc = subprocess.Popen(args(workdir, data_yaml, "--config.val.enabled=False"), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # mid epoch 2 (steps 4..6), after at least one complete checkpoint
        ok = wait_for(lambda: latest_complete_step(workdir / "checkpoints") is not None
                      and any(s > STEPS_PER_EPOCH for s in logged_steps(workdir)), proc)
        assert ok, proc.stderr.read()[-3000:] if proc.poll() is not None else "timed out"
    finally:
        proc.kill()
        proc.wait()
    killed_at = latest_complete_step(workdir / "checkpoints")
    assert killed_at is not None and killed_at < total, killed_at
    proc2 = run(workdir, data_yaml, env, "--config.val.enabled=False")
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    assert "resumed from" in proc2.stderr
    assert latest_complete_step(workdir / "checkpoints") == total
    ref = final_state(reference_run, total)
    got = final_state(workdir, total)
    for key in ("params", "batch_stats", "ema", "opt_state"):
        ref_leaves, got_leaves = jax.tree.leaves(ref[key]), jax.tree.leaves(got[key])
        assert len(ref_leaves) == len(got_leaves) > 0
        for a, b in zip(ref_leaves, got_leaves):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-6)
    # per-step rows are complete and not duplicated after the resume
    assert logged_steps(workdir) == list(range(1, total + 1))
    ref_losses = {r["step"]: r["loss"] for r in read_rows(reference_run) if "loss" in r}
    got_losses = {r["step"]: r["loss"] for r in read_rows(workdir) if "loss" in r}
    for s in ref_losses:
        assert got_losses[s] == pytest.approx(ref_losses[s], abs=1e-5), s


def test_sigterm_saves_and_exits_cleanly(tmp_path, data_yaml, env):
    workdir = tmp_path / "term"
    # Same recipe as the reference run (the compiled step comes from the persistent cache).
    proc = subprocess.Popen(args(workdir, data_yaml, "--config.val.enabled=False", "--config.checkpoint.every_steps=0"),
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        ok = wait_for(lambda: len(logged_steps(workdir)) >= 1, proc, poll=0.005)
        assert ok, proc.stderr.read()[-3000:] if proc.poll() is not None else "timed out"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "stopped by signal" in err
    latest = latest_complete_step(workdir / "checkpoints")
    assert latest is not None and latest >= max(logged_steps(workdir)) and latest < STEPS_PER_EPOCH * EPOCHS
    assert not any(".orbax-checkpoint-tmp" in p.name for p in (workdir / "checkpoints").iterdir())


def test_unknown_field_refused(tmp_path, data_yaml, env):
    proc = run(tmp_path / "w", data_yaml, env, "--config.no_such_field=1", timeout=120)
    assert proc.returncode != 0
    assert "no_such_field" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("yolojax.train: error: unknown config field")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("extra, message", [
    (["--config.data.yaml=/nonexistent/data.yaml"], "does not exist"),
    (["--config.weights=/nonexistent/w.pt"], "weights"),
    (["--config.imgsz=100"], "multiple of 32"),
])
def test_bad_input_refused_with_one_line(tmp_path, data_yaml, env, extra, message):
    proc = run(tmp_path / "w", data_yaml, env, *extra, timeout=120)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("yolojax.train: error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert not (tmp_path / "w" / "checkpoints").exists()


@pytest.mark.skipif(not (SHARED / "yolov8n.pt").is_file() or not (SHARED / "coco8").is_dir(),
                    reason="../shared/data/yolov8n.pt or coco8 absent")
@pytest.mark.slow
def test_finetune_coco8_keeps_skill(tmp_path, env):
    yaml_path = next((SHARED / "coco8").glob("*.yaml"), None) or SHARED / "coco8.yaml"
    proc = subprocess.run([
        sys.executable, "-m", "yolojax.train", "--config", str(REPO / "configs" / "yolov8n.py"),
        "--workdir", str(tmp_path / "ft"), f"--config.data.yaml={yaml_path}",
        f"--config.weights={SHARED / 'yolov8n.pt'}", "--config.imgsz=160", "--config.epochs=2",
        "--config.batch_size=8", "--config.data.workers=0", "--config.progress=False",
    ], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    epoch_rows = [r for r in read_rows(tmp_path / "ft") if "mAP50-95" in r]
    assert epoch_rows and epoch_rows[-1]["mAP50-95"] > 0.3, epoch_rows
