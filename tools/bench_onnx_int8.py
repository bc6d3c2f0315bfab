"""onnxruntime CPU latency of ONNX detectors, e.g. a float32 export beside its INT8 one.

    python tools/bench_onnx_int8.py yolov8n.onnx yolov8n_int8.onnx [--batch 1 8 --runs 30
        --warmup 5 --threads 0]

Each model gets its own ``InferenceSession`` (CPU provider, all graph optimizations,
``--threads`` intra-op threads, 0: onnxruntime's default, one per core). Per batch size the
models run ``--warmup`` untimed calls, then ``--runs`` timed calls alternating between the
models, so changes in machine load hit all of them; the median counts. Input: float32
(B, 3, H, W) uniform noise at the model's input size (a model with a fixed batch runs only
at that batch). Prints ``uptime`` before and after, then per model and batch the median and
the spread (25th-75th percentile) in ms per call and ms per image, and each model's speed
relative to the first.
"""

from __future__ import annotations

import argparse
import subprocess
import time

import numpy as np


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "uptime unavailable"


def main() -> None:
    import onnxruntime as ort

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sessions = [ort.InferenceSession(m, opts, providers=["CPUExecutionProvider"]) for m in args.models]
    print(f"onnxruntime {ort.__version__}, threads={args.threads or 'default'}; before: {_uptime()}")
    rng = np.random.default_rng(0)
    rows = []
    for b in args.batch:
        runnable = []
        for m, s in zip(args.models, sessions):
            shape = s.get_inputs()[0].shape
            if isinstance(shape[0], int) and shape[0] != b:
                print(f"{m}: fixed batch {shape[0]}, skipping batch {b}")
                continue
            x = rng.random((b, 3, shape[2], shape[3]), dtype=np.float32)
            runnable.append((m, s, {s.get_inputs()[0].name: x}))
        for _, s, feed in runnable:
            for _ in range(args.warmup):
                s.run(None, feed)
        times: dict[str, list[float]] = {m: [] for m, _, _ in runnable}
        for _ in range(args.runs):
            for m, s, feed in runnable:
                t = time.perf_counter()
                s.run(None, feed)
                times[m].append(time.perf_counter() - t)
        for m, _, _ in runnable:
            q25, med, q75 = (1e3 * np.percentile(times[m], q) for q in (25, 50, 75))
            rows.append((m, b, med, q25, q75))
    print(f"after: {_uptime()}")
    print(f"{'model':<48} {'batch':>5} {'ms/call':>9} {'(p25-p75)':>17} {'ms/img':>8} {'vs first':>8}")
    for m, b, med, q25, q75 in rows:
        first = next(r[2] for r in rows if r[1] == b)
        print(f"{m:<48} {b:>5} {med:>9.1f} {f'({q25:.1f}-{q75:.1f})':>17} {med / b:>8.1f} {first / med:>7.2f}x")


if __name__ == "__main__":
    main()
