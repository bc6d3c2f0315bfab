"""Structured pruning, measured: size, speed and COCO8 mAP of YOLOv8 before and after pruning.

    python tools/bench_prune.py [--models n s --ratios 0.1 0.2 0.4 0.6 --epochs 30 --runs 10
        --work runs/bench_prune --plot docs/images/prune_map_gflops.png]

Per model (``/work/shared/data/yolov8{m}.pt`` unless ``--weights-dir``) and ratio, with the
yolojax commands themselves (each printed before it runs):

1. ``yolojax prune model=W ratio=R out=DIR`` (bn_scale, the default method);
2. ``yolojax train model=DIR data=coco8.yaml epochs=E imgsz=640 batch=4 nbs=4 warmup_epochs=0
   val=False plots=False``, a short fine-tune with ultralytics' recipe otherwise
   (optimizer=auto: AdamW at its small-run learning rate): one step and one optimiser update
   per epoch (COCO8's train split is 4 images: a small-data indicator only; nbs=4, or
   ultralytics' nbs=64 would update once every 16 steps), no warm-up (ultralytics' 100 warm-up
   steps would cover the whole run at a near-zero learning rate); ``--ratios 0`` fine-tunes
   the unpruned model the same way, the recipe's own effect;
3. ``python -m yolojax.val --weights ... --data coco8.yaml --json OUT`` of the original, the pruned and the
   fine-tuned weights (mAP50-95 on COCO8's 4 val images);
4. for the original and pruned weights: parameters and GFLOPs at 640 (fused, as val prints
   them), and the CPU latency of a batch-1 640x640 forward, with JAX (jit, median of ``--runs``
   after a warm-up) and with onnxruntime on ``python -m yolojax.export``'s ONNX file.

The steps run one after another (never two measurements at once); results are kept in
``WORK/results.json`` so a rerun skips what is done; ``--retime`` measures only the latencies
again (e.g. on a quieter machine). Prints ``uptime`` before and after, the
markdown table, and writes the plot (mAP50-95 against GFLOPs, one line per model and stage).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def _run(args: list[str]) -> None:
    """Run a yolojax command (``["yolojax", ...]`` as ``python -m yolojax ...``) of this checkout."""
    print("$", " ".join(args), flush=True)
    argv = [sys.executable, "-m", "yolojax", *args[1:]] if args[0] == "yolojax" else args
    env = {**os.environ, "PYTHONPATH": str(ROOT), "YOLO_OFFLINE": "1"}
    subprocess.run(argv, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def _map(weights: Path, data: Path, work: Path, name: str) -> float:
    out = work / "val" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "yolojax.val", "--weights", str(weights), "--data", str(data), "--json", str(out)])
    return float(json.loads(out.read_text())["mAP50-95"])


def _size(weights: Path) -> tuple[int, float]:
    from yolojax.models import model_from_info
    from yolojax.models.summary import model_summary
    from yolojax.weights import load_weights

    summary = model_summary(model_from_info(load_weights(weights)[1]), fused=True, trainable=False)
    return summary.parameters, summary.gflops


def _jax_ms(weights: Path, runs: int) -> float:
    import jax
    import jax.numpy as jnp

    from yolojax.models import model_from_info
    from yolojax.weights import load_weights

    variables, info = load_weights(weights)
    fn = jax.jit(lambda v, x: model_from_info(info).apply(v, x, train=False))
    x = jnp.asarray(np.random.default_rng(0).random((1, 640, 640, 3), dtype=np.float32))
    variables = jax.device_put(variables)
    fn(variables, x).block_until_ready()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(variables, x).block_until_ready()
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def _ort_ms(weights: Path, work: Path, name: str, runs: int) -> float:
    import onnxruntime as ort

    onnx = work / "onnx" / f"{name}.onnx"
    if not onnx.is_file():
        onnx.parent.mkdir(parents=True, exist_ok=True)
        _run([sys.executable, "-m", "yolojax.export", "--weights", str(weights), "--out", str(onnx), "--imgsz", "640"])
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).random((1, 3, 640, 640), dtype=np.float32)}
    session.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def _measure(key: str, results: dict, path: Path, fn) -> None:
    """Run ``fn() -> dict`` unless ``results`` has ``key``; keep the results file current."""
    if key in results:
        return
    results[key] = fn()
    path.write_text(json.dumps(results, indent=1) + "\n")


def _row(model: str, stage: str, ratio: float, weights: Path, work: Path, data: Path, runs: int,
         timed: bool) -> dict:
    name = f"{model}_{stage}_{round(ratio * 100)}"
    params, gflops = _size(weights)
    row = {"model": model, "stage": stage, "ratio": ratio, "params": params, "gflops": gflops,
           "map": _map(weights, data, work, name)}
    if timed:
        row.update(jax_ms=_jax_ms(weights, runs), ort_ms=_ort_ms(weights, work, name, runs))
    return row


def retime(results: dict, weights_dir: Path, work: Path, runs: int) -> None:
    """The JAX and onnxruntime latencies of every timed row, measured again, one row after another."""
    for r in results.values():
        if "jax_ms" not in r:
            continue
        pruned = work / f"yolov8{r['model']}_pruned{round(r['ratio'] * 100)}"
        weights = weights_dir / f"yolov8{r['model']}.pt" if r["stage"] == "original" else pruned
        name = f"{r['model']}_{r['stage']}_{round(r['ratio'] * 100)}"
        r.update(jax_ms=_jax_ms(weights, runs), ort_ms=_ort_ms(weights, work, name, runs))
        print(name, f"{r['jax_ms']:.1f} ms JAX, {r['ort_ms']:.1f} ms onnxruntime", flush=True)


def table(results: dict) -> str:
    """The markdown table of the results, by model, then ratio and stage."""
    lines = ["| model | ratio | stage | params | GFLOPs (640) | JAX CPU ms (b1, 640) | onnxruntime CPU ms | "
             "COCO8 mAP50-95 |", "|---|---|---|---|---|---|---|---|"]
    order = {"original": 0, "pruned": 1, "fine-tuned": 2}
    for r in sorted(results.values(), key=lambda r: (r["model"], r["ratio"], order[r["stage"]])):
        ms = lambda k: f"{r[k]:.0f}" if k in r else "(as pruned)"  # noqa: E731
        lines.append(f"| yolov8{r['model']} | {r['ratio']:g} | {r['stage']} | {r['params']:,} | {r['gflops']:.1f} | "
                     f"{ms('jax_ms')} | {ms('ort_ms')} | {r['map']:.3f} |")
    return "\n".join(lines)


def plot(results: dict, out: Path) -> None:
    """mAP50-95 against GFLOPs: per model, the pruned and the fine-tuned lines (from the original)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for model, color in (("n", "tab:blue"), ("s", "tab:orange")):
        rows = [r for r in results.values() if r["model"] == model]
        original = [r for r in rows if r["stage"] == "original"]
        for stage, style in (("pruned", "--"), ("fine-tuned", "-")):
            line = sorted(original + [r for r in rows if r["stage"] == stage], key=lambda r: -r["gflops"])
            if len(line) > 1:
                ax.plot([r["gflops"] for r in line], [r["map"] for r in line], style, marker="o", color=color,
                        label=f"yolov8{model} {stage}")
                for r in line[1:]:
                    ax.annotate(f"{r['ratio']:g}", (r["gflops"], r["map"]), fontsize=7, xytext=(3, 3),
                                textcoords="offset points")
    ax.set_xlabel("GFLOPs at 640 (fused)")
    ax.set_ylabel("COCO8 val mAP50-95 (4 images)")
    ax.set_title("Structured pruning (bn_scale): labels are the pruning ratio")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["n", "s"])
    p.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.2, 0.4, 0.6])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--weights-dir", type=Path, default=SHARED)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_prune")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "images" / "prune_map_gflops.png")
    p.add_argument("--retime", action="store_true",
                   help="only measure the latencies of the rows WORK/results.json holds again (on a quiet machine)")
    args = p.parse_args()
    data = args.weights_dir / "coco8" / "coco8.yaml"
    args.work.mkdir(parents=True, exist_ok=True)
    path = args.work / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    print(f"before: {_uptime()}", flush=True)
    if args.retime:
        retime(results, args.weights_dir, args.work, args.runs)
        path.write_text(json.dumps(results, indent=1) + "\n")
        print(f"after: {_uptime()}")
        print(table(results))
        return
    for model in args.models:
        weights = args.weights_dir / f"yolov8{model}.pt"
        _measure(f"{model}/original", results, path,
                 lambda: _row(model, "original", 0.0, weights, args.work, data, args.runs, True))
        for ratio in args.ratios:
            pruned = args.work / f"yolov8{model}_pruned{round(ratio * 100)}"
            if not (pruned / "info.json").is_file():
                _run(["yolojax", "prune", f"model={weights}", f"ratio={ratio}", f"out={pruned}"])
            _measure(f"{model}/pruned/{ratio}", results, path,
                     lambda: _row(model, "pruned", ratio, pruned, args.work, data, args.runs, True))
            tuned = args.work / "train" / pruned.name
            if not (tuned / "checkpoints").is_dir():
                _run(["yolojax", "train", f"model={pruned}", f"data={data}", f"epochs={args.epochs}", "imgsz=640",
                      "batch=4", "nbs=4", "warmup_epochs=0", "val=False",
                      "plots=False", f"project={args.work / 'train'}", f"name={pruned.name}", "exist_ok=True"])
            _measure(f"{model}/fine-tuned/{ratio}", results, path,
                     lambda: _row(model, "fine-tuned", ratio, tuned, args.work, data, args.runs, False))
            plot(results, args.plot)
    print(f"after: {_uptime()}")
    print(table(results))
    plot(results, args.plot)


if __name__ == "__main__":
    main()
