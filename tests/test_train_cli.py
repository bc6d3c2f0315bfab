"""python -m yolojax.train end to end on a tiny synthetic dataset (CPU): 3 epochs, metrics,
TensorBoard events, results.png, checkpoints (last K and best), exact resume after SIGKILL,
SIGTERM, the non-finite guard, refusals (bad input, a workdir of another run)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from yolojax.weights.workdir import complete_steps, is_train_workdir, latest_complete_step
from shared_data import COCO8, WEIGHTS, needs

REPO = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 3  # 24 images / batch 8
EPOCHS = 3


@pytest.fixture(scope="module")
def env(train_compile_cache):
    cache = train_compile_cache
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
    from yolojax.data.sources.synthetic import write_synthetic_dataset

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
    """The 3-epoch run the other tests compare with, run as a user runs it: 2 worker processes,
    JAX free to probe for accelerators; its stderr is kept in stderr.txt beside the workdir."""
    workdir = tmp_path_factory.mktemp("reference")
    t0 = time.time()
    user_env = {k: v for k, v in env.items() if k != "JAX_PLATFORMS"}
    proc = run(workdir, data_yaml, user_env, "--config.data.workers=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference_stderr(workdir).write_text(proc.stderr)
    print(f"reference run: {time.time() - t0:.1f}s")
    return workdir


def reference_stderr(workdir: Path) -> Path:
    return workdir.with_name(workdir.name + ".stderr.txt")


def read_tfrecords(path):
    """The payloads of a TFRecord file (8-byte length, its masked crc32c, payload, its masked
    crc32c), stopping at a truncated or corrupt record as TensorBoard does."""
    from tensorboardX.record_writer import masked_crc32c

    data = Path(path).read_bytes()
    records, pos = [], 0
    while pos + 12 <= len(data):
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        end = pos + 12 + length + 4
        if header_crc != masked_crc32c(header) or end > len(data):
            break
        payload = data[pos + 12:pos + 12 + length]
        if struct.unpack("<I", data[end - 4:end])[0] != masked_crc32c(payload):
            break
        records.append(payload)
        pos = end
    return records


def tensorboard_scalars(logdir):
    """{tag: {step: value}} from the event files of ``logdir`` read in name (= time) order,
    with TensorBoard's purge rule: a SessionLog START at step S drops every earlier event at
    a step >= S."""
    from tensorboardX.proto.event_pb2 import Event, SessionLog

    events = []
    for path in sorted(Path(logdir).glob("events.out.tfevents.*")):
        for payload in read_tfrecords(path):
            event = Event.FromString(payload)
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                events = [e for e in events if e[1] < event.step]
            for value in event.summary.value:
                events.append((value.tag, event.step, value.simple_value))
    scalars = {}
    for tag, step, value in events:
        scalars.setdefault(tag, {})[step] = value
    return scalars


def assert_tensorboard_matches_metrics(workdir):
    """The train/ and val/ scalars of DIR/tensorboard are metrics.jsonl's rows (float32)."""
    scalars = tensorboard_scalars(Path(workdir) / "tensorboard")
    rows = read_rows(workdir)
    for group, is_group in (("train", lambda r: "loss" in r), ("val", lambda r: "loss" not in r)):
        group_rows = [r for r in rows if is_group(r)]
        keys = {k for r in group_rows for k, v in r.items() if k not in ("step", "epoch") and v is not None}
        for key in keys:
            expected = {r["step"]: r[key] for r in group_rows if r.get(key) is not None}
            got = scalars.get(f"{group}/{key}")
            assert got is not None, f"{group}/{key} missing from TensorBoard: {sorted(scalars)}"
            assert sorted(got) == sorted(expected), (key, sorted(got), sorted(expected))
            for step, value in expected.items():
                assert got[step] == pytest.approx(value, rel=1e-6, abs=1e-30), (key, step)
    return scalars


def test_tensorboard_log_purges_redone_steps(tmp_path):
    from yolojax.train.logs import TensorBoardLog

    first = TensorBoardLog(tmp_path, resume_step=0)
    for step in (1, 2, 3, 4):
        first.write({"step": step, "epoch": 0, "loss": float(step), "lr": None, "flag": True}, "train")
    first.write({"epoch": 0, "step": 4, "mAP50-95": 0.5}, "val")
    first.close()
    resumed = TensorBoardLog(tmp_path, resume_step=2)  # the run resumes from step 2's checkpoint
    resumed.write({"step": 3, "epoch": 0, "loss": 30.0}, "train")
    resumed.close()
    TensorBoardLog(tmp_path, resume_step=0, enabled=False).write({"step": 9, "loss": 9.0}, "train")
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    assert tensorboard_scalars(tmp_path) == {"train/loss": {1: 1.0, 2: 2.0, 3: 30.0}}


def test_tensorboard_log_does_not_import_torch(tmp_path):
    # tensorboardX imports torch when it is installed; a train run must not pay for it.
    code = ("import importlib.util, sys; from pathlib import Path; installed = importlib.util.find_spec('torch'); "
            "from yolojax.train.logs import TensorBoardLog; "
            f"log = TensorBoardLog(Path({str(tmp_path)!r}), 0); log.write({{'step': 1, 'loss': 1.0}}, 'train'); "
            "log.close(); assert 'torch' not in sys.modules, 'torch imported'; "
            "assert (importlib.util.find_spec('torch') is None) == (installed is None)")  # still importable
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert tensorboard_scalars(tmp_path) == {"train/loss": {1: 1.0}}


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
    from yolojax.train.logs import read_rows as read_metrics  # skips a line cut short mid-write

    return [r["step"] for r in read_metrics(Path(workdir) / "metrics.jsonl") if "loss" in r]


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
    assert all("mAP50-95" in r for r in epoch_rows)
    losses = [r["loss"] for r in step_rows]
    assert np.mean(losses[-STEPS_PER_EPOCH:]) < losses[0]  # the loss falls
    assert (workdir / "results.png").stat().st_size > 1000
    assert (workdir / "config.json").is_file()
    # plots=True (the default): ultralytics' run plots, under its names
    # train_batch6-8: the first batches after mosaic closes (epoch 3 of 3), as ultralytics' plot_idx
    plots = ["labels.jpg", *(f"train_batch{i}.jpg" for i in (0, 1, 2, 6, 7, 8)), "val_batch0_labels.jpg",
             "val_batch0_pred.jpg", "confusion_matrix.png", "confusion_matrix_normalized.png", "BoxPR_curve.png",
             "BoxP_curve.png", "BoxR_curve.png", "BoxF1_curve.png"]
    assert all((workdir / name).stat().st_size > 5000 for name in plots)
    scalars = assert_tensorboard_matches_metrics(workdir)
    assert sorted(scalars["train/loss"]) == list(range(1, total + 1))
    assert {"train/box", "train/cls", "train/dfl", "train/lr", "train/images_per_s"} <= set(scalars)
    steps = complete_steps(workdir / "checkpoints")
    assert steps[-1] == total and len(steps) <= 3  # keep the last 3
    # the workdir serves as weights (EMA of the latest checkpoint)
    from yolojax.weights import load_weights

    variables, info = load_weights(workdir)
    assert info["num_classes"] == 6 and info["scale"] == "n"


def test_run_output_says_each_thing_once_and_no_noise(reference_run, data_yaml):
    """A normal run shows the label-scan summary once per split (not at every validation), what
    optimizer=auto resolved once, no warning, no library noise (JAX's TPU probe, Grain's shared
    memory at exit); config.json records the resolved values."""
    # Orbax's note when a save waits for the previous one: this run checkpoints every 2 steps.
    err = "".join(line + "\n" for line in reference_stderr(reference_run).read_text().splitlines()
                  if not line.startswith("WARNING absl: Waiting for previous save to complete"))
    lines = [line for line in err.splitlines() if line.strip()]
    # the scan summaries (not "max_boxes=... from the label scan"): train and val; 3 validations ran
    assert sum("yolojax.data.sources.label_scan: label scan" in line for line in lines) == 2, err
    assert sum("optimizer=auto chose AdamW with lr0=0.001 and momentum=0.9" in line for line in lines) == 1, err
    for noise in ("WARNING", "Traceback", "leaked shared_memory", "Unable to initialize backend", "absl"):
        assert noise not in err, (noise, err)
    assert lines[-1].startswith("done: 9 steps")
    summary = [line for line in lines if " summary: " in line]  # ultralytics' model summary line, once
    assert len(summary) == 1 and summary[0].endswith("YOLOv8n summary: 129 layers, 3,012,018 parameters, "
                                                     "3,012,002 gradients, 8.2 GFLOPs"), err
    resolved = json.loads((reference_run / "config.json").read_text())["resolved"]
    assert resolved.pop("data") == str(data_yaml)  # the dataset as read (a TFDS one with its version)
    # 24 images, batch 8, 6 classes, 3 epochs: AdamW at round(0.002 * 5 / (4 + 6), 6), accumulate
    # round(64 / 8) = 8 batches, decay 5e-4 * 8 * 8 / 64, warmup round(min(3, 3 - 1) * 3) iterations.
    assert resolved == {"optimizer": "AdamW", "lr0": 0.001, "momentum": 0.9, "weight_decay": 0.0005,
                        "accumulate": 8, "warmup_iters": 6, "warmup_bias_lr": 0.0, "iters_per_epoch": 3,
                        "num_classes": 6, "val_batch_size": 8, "dtype": "float32", "mesh": {"data": 1, "model": 1}}
    assert sum(line.endswith("devices: 1 cpu, mesh data=1 model=1, parallel.mode=jit rules=data; computing in float32 "
                             "(dtype=auto on cpu); BatchNorm statistics over the global batch") for line in lines) == 1


@pytest.mark.parametrize("split, value, message", [
    ("val", "images/vall", "'val:' path {root}/images/vall does not exist"),
    ("val", None, "'val:' names no images; give a folder, a .txt list of image paths, or a list of those"),
    ("train", "images/trian", "'train:' path {root}/images/trian does not exist"),
])
def test_bad_split_refused_within_seconds(tmp_path, data_yaml, env, split, value, message):
    raw = yaml.safe_load(Path(data_yaml).read_text())
    bad_yaml = Path(data_yaml).with_name(f"bad_{split}_{value}.yaml".replace("/", "_"))
    bad_yaml.write_text(yaml.safe_dump({**raw, split: value}))
    t0 = time.time()
    proc = run(tmp_path / "w", bad_yaml, env, timeout=120)
    elapsed = time.time() - t0
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    expected = f"yolojax.train: error: {bad_yaml}: " + message.format(root=Path(data_yaml).parent)
    assert errors == [expected], proc.stderr[-2000:]
    assert elapsed < 30, elapsed  # before the label scan, the model and the compile (~5 s on 2 cores)
    assert not (tmp_path / "w").exists()


def test_unwritable_workdir_and_plot_output_refused(tmp_path, monkeypatch):
    from yolojax.console import ConfigError
    from yolojax.train.preflight import check_plot_output, check_writable

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=f"workdir {blocker / 'w'} is not writable"):
        check_writable(blocker / "w")
    check_writable(tmp_path / "new" / "w")
    assert list((tmp_path / "new" / "w").iterdir()) == []
    check_plot_output(tmp_path)
    assert list(tmp_path.glob(".yolojax-plot-check*")) == []
    from matplotlib.figure import Figure

    def broken(*a, **k):
        raise RuntimeError("no usable font")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(ConfigError, match=f"results.png cannot be drawn in {tmp_path}: RuntimeError: no usable font"):
        check_plot_output(tmp_path)


_BROKEN_VALIDATION = """
import sys
import yolojax.train.run as run
from yolojax.train.__main__ import main

def broken(*args, **kwargs):
    raise RuntimeError("validation broke")

run.validate_ema = broken
sys.argv = ["yolojax.train", *sys.argv[1:]]
main()
"""


def test_failing_validation_keeps_the_epoch_checkpoint(reference_run, tmp_path, data_yaml, env):
    workdir = tmp_path / "broken_val"
    cmd = [sys.executable, "-c", _BROKEN_VALIDATION, *args(workdir, data_yaml, "--config.checkpoint.every_steps=0")[3:]]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert f"validation at step {STEPS_PER_EPOCH} failed; the checkpoint of step {STEPS_PER_EPOCH} is kept" \
        in proc.stderr, proc.stderr[-3000:]
    assert "RuntimeError: validation broke" in proc.stderr
    assert complete_steps(workdir / "checkpoints") == [STEPS_PER_EPOCH]
    np.testing.assert_array_equal(final_state(workdir, STEPS_PER_EPOCH)["step"], STEPS_PER_EPOCH)


def test_resume_and_weights_fall_back_from_a_damaged_checkpoint(reference_run, tmp_path, data_yaml, env, caplog):
    from yolojax.weights import load_weights

    total = STEPS_PER_EPOCH * EPOCHS
    workdir = tmp_path / "damaged"
    shutil.copytree(reference_run, workdir)
    steps = complete_steps(workdir / "checkpoints")
    assert steps[-1] == total
    data_files = sorted((workdir / "checkpoints" / str(total) / "state" / "d").iterdir())
    assert data_files
    for f in data_files:  # truncated after it was written
        with f.open("r+b") as handle:
            handle.truncate(f.stat().st_size // 2)
    previous = steps[-2]
    variables, _ = load_weights(workdir)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= 30]
    assert len(warnings) == 1 and f"checkpoints/{total} is damaged" in warnings[0], warnings
    assert f"using step {previous}" in warnings[0]
    ema = final_state(reference_run, previous)["ema"]
    for a, b in zip(jax.tree.leaves(ema["params"]), jax.tree.leaves(variables["params"])):
        np.testing.assert_array_equal(np.asarray(a, np.float32), b)

    proc = run(workdir, data_yaml, env, "--config.data.workers=2")  # as the reference run
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and f"checkpoints/{total} is damaged" in warnings[0], proc.stderr[-3000:]
    assert f"resumed from {workdir}/checkpoints/{previous}" in proc.stderr
    for noise in ("Traceback", "Event loop is closed", "never awaited", "Exception ignored"):
        assert noise not in proc.stderr, proc.stderr[-3000:]
    assert [p.name.split(".")[0] for p in (workdir / "checkpoints_damaged").iterdir()] == [str(total)]
    assert complete_steps(workdir / "checkpoints")[-1] == total
    ref, got = final_state(reference_run, total), final_state(workdir, total)
    for key in ("params", "batch_stats", "ema", "opt_state"):
        for a, b in zip(jax.tree.leaves(ref[key]), jax.tree.leaves(got[key])):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-6)


def test_best_checkpoint_is_the_best_validation(reference_run):
    from yolojax.train.checkpoints import RunCheckpointer
    from yolojax.weights import load_weights

    workdir = reference_run
    epoch_rows = [r for r in read_rows(workdir) if "mAP50-95" in r]
    assert len(epoch_rows) == EPOCHS
    best_row = max(epoch_rows, key=lambda r: r["mAP50-95"])  # the first of equal maxima, as the run keeps
    best_dir = workdir / "checkpoints_best"
    assert complete_steps(best_dir) == [best_row["step"]]
    ckpt = RunCheckpointer(best_dir, keep=1)
    assert ckpt.read_meta(best_row["step"])["val"] == best_row
    ckpt.close()
    # The best dir serves as weights (its EMA), apart from the workdir (the latest).
    assert is_train_workdir(best_dir)
    variables, info = load_weights(best_dir)
    assert info["num_classes"] == 6 and info["scale"] == "n"
    latest_variables, _ = load_weights(workdir)
    if best_row["step"] != STEPS_PER_EPOCH * EPOCHS:
        assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(latest_variables),
                                                               jax.tree.leaves(variables)))


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
    # Settings that do not define the run (here checkpointing) may change on resume.
    proc2 = run(workdir, data_yaml, env, "--config.val.enabled=False", "--config.checkpoint.every_steps=0",
                "--config.checkpoint.keep=2")
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
    # TensorBoard: one event file per run; the step axis continues, events past the resumed
    # step that the killed run wrote are purged.
    assert len(list((workdir / "tensorboard").glob("events.out.tfevents.*"))) == 2
    scalars = assert_tensorboard_matches_metrics(workdir)
    assert sorted(scalars["train/loss"]) == list(range(1, total + 1))


def test_sigterm_saves_and_exits_resumable(tmp_path, data_yaml, env):
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
    assert proc.returncode == 75, err[-3000:]  # stopped by a signal, checkpointed: a scheduler requeues
    assert "stopped by signal 15" in err and "re-run to resume" in err
    latest = latest_complete_step(workdir / "checkpoints")
    assert latest is not None and latest >= max(logged_steps(workdir)) and latest < STEPS_PER_EPOCH * EPOCHS
    assert not any(".orbax-checkpoint-tmp" in p.name for p in (workdir / "checkpoints").iterdir())


def test_resume_with_other_settings_refused(reference_run, tmp_path, data_yaml, env):
    workdir = tmp_path / "copy"
    shutil.copytree(reference_run, workdir)
    before = {name: (workdir / name).read_bytes() for name in ("metrics.jsonl", "config.json")}
    proc = run(workdir, data_yaml, env, "--config.imgsz=160", "--config.batch_size=4", timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("yolojax.train: error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert "holds a run with other settings" in errors[0]
    assert "imgsz: 128 -> 160" in errors[0] and "batch_size: 8 -> 4" in errors[0]
    assert "data.workers: 2 -> 0" in errors[0]  # the reference run's data position is the 2 workers'
    assert "Traceback" not in proc.stderr
    assert {name: (workdir / name).read_bytes() for name in before} == before
    assert complete_steps(workdir / "checkpoints") == complete_steps(reference_run / "checkpoints")


def test_nonfinite_losses_stop_the_run(reference_run, tmp_path, data_yaml, env):
    # Weights holding NaN (as a diverged run leaves them) make every loss non-finite; the
    # train step is the reference run's (weights are inputs), so it compiles from the cache.
    from yolojax.weights import load_weights, save_converted

    variables, info = load_weights(reference_run)
    weights = tmp_path / "nan_weights"
    save_converted(jax.tree.map(lambda x: np.full_like(x, np.nan), variables), info, weights)
    workdir = tmp_path / "nan"
    proc = run(workdir, data_yaml, env, f"--config.weights={weights}", "--config.max_nonfinite=2",
               "--config.checkpoint.every_steps=1", "--config.val.enabled=False")
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("yolojax.train: error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "2 non-finite losses in a row (max_nonfinite=2) at step 2" in errors[0]
    assert "Traceback" not in proc.stderr
    # every step was a checkpoint step, yet no non-finite state was saved
    assert complete_steps(workdir / "checkpoints") == []
    assert "not checkpointed" in proc.stderr
    assert [(r["step"], r["loss"], r["nonfinite_total"]) for r in read_rows(workdir)] == [(1, None, 1), (2, None, 2)]


def test_single_process_needs_no_coordinator(monkeypatch):
    """No coordinator in the config or the environment: one process, jax.distributed untouched."""
    from yolojax.config import default_config
    from yolojax.train.settings import resolve
    from yolojax.train.setup import start_distributed

    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    config = default_config()
    config.data.synthetic.root = "unused"
    assert start_distributed(resolve(config).distributed) is False
    from yolojax.parallel.distributed import is_distributed

    assert is_distributed() is False


def test_unknown_field_refused(tmp_path, data_yaml, env):
    proc = run(tmp_path / "w", data_yaml, env, "--config.no_such_field=1", timeout=120)
    assert proc.returncode != 0
    assert "no_such_field" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("yolojax.train: error: unknown config field")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("extra, message", [
    (["--config.data.yaml=/nonexistent/data.yaml"], "data.yaml='/nonexistent/data.yaml': must be an existing"),
    (["--config.weights=/nonexistent/w.pt"], "weights"),
    (["--config.imgsz=100"], "multiple of 32"),
    (["--config.distributed.coordinator=localhost"], "host:port"),
])
def test_bad_input_refused_with_one_line(tmp_path, data_yaml, env, extra, message):
    proc = run(tmp_path / "w", data_yaml, env, *extra, timeout=120)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("yolojax.train: error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert not (tmp_path / "w" / "checkpoints").exists()


@needs(WEIGHTS, COCO8)
@pytest.mark.slow
def test_finetune_coco8_keeps_skill(tmp_path, env):
    yaml_path = COCO8 / "coco8.yaml"
    proc = subprocess.run([
        sys.executable, "-m", "yolojax.train", "--config", str(REPO / "configs" / "yolov8n.py"),
        "--workdir", str(tmp_path / "ft"), f"--config.data.yaml={yaml_path}",
        f"--config.weights={WEIGHTS}", "--config.imgsz=160", "--config.epochs=2",
        "--config.batch_size=8", "--config.data.workers=0", "--config.progress=False",
    ], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    epoch_rows = [r for r in read_rows(tmp_path / "ft") if "mAP50-95" in r]
    assert epoch_rows and epoch_rows[-1]["mAP50-95"] > 0.3, epoch_rows
