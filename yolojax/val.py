"""Validation: mAP50 and mAP50-95 exactly as ultralytics val computes them.

    python -m yolojax.val --weights yolov8n.pt --data coco8.yaml [--imgsz 640 --batch 16
        --conf 0.001 --iou 0.7 --max-det 300 --rect --json OUT.json]

Pipeline (ultralytics' DetectionValidator): letterboxed batches (long side resized to imgsz,
centred, no upscaling; ``--rect``: ultralytics' rectangular batches, stride 32, pad 0.5,
as used during training) -> model in fp32 on [0, 1] pixels -> multi-label NMS (conf 0.001,
iou 0.7, max_det 300) on device -> predictions matched to ground truth in letterboxed pixels
at IoU 0.50:0.95 -> ap_per_class (101-point interpolation). Like standalone ``yolo val``,
rect is off by default.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from yolojax.cli import OneLineErrorParser

logger = logging.getLogger(__name__)

_ROW = "%22s" + "%11s" * 6
_ROW_VALUES = "%22s" + "%11i" * 2 + "%11.3g" * 4


def make_predict_fn(info: Mapping[str, Any], conf: float, iou: float, max_det: int, max_nms: int = 30000,
                    multi_label: bool = True, agnostic: bool = False):
    """jit-compiled ``(variables, uint8 images (B, H, W, 3)) -> Detections`` (model + NMS)."""
    import jax

    from yolojax.models import YOLOv8
    from yolojax.ops import non_max_suppression

    model = YOLOv8(scale=info["scale"], num_classes=int(info["num_classes"]), reg_max=int(info.get("reg_max", 16)))

    @jax.jit
    def predict(variables, images):
        out = model.apply(variables, images.astype(jax.numpy.float32) / 255.0, train=False)
        return non_max_suppression(out, conf, iou, agnostic=agnostic, multi_label=multi_label, max_det=max_det,
                                   max_nms=max_nms)

    return predict


def _placement(batch: int):
    """Batch placement: sharded over all local devices along a 'data' mesh axis when the batch
    divides evenly, else the default device. Returns ``place(tree, replicated=False)``."""
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = jax.local_devices()
    if len(devices) == 1 or batch % len(devices):
        if len(devices) > 1:
            logger.warning("batch %d not divisible by %d devices: validating on one device", batch, len(devices))
        return lambda tree, replicated=False: jax.device_put(tree, devices[0])
    mesh = Mesh(np.array(devices), ("data",))
    data, rep = NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())
    return lambda tree, replicated=False: jax.device_put(tree, rep if replicated else data)


def validate(
    weights: str | os.PathLike | None = None,
    data: str | os.PathLike = "",
    *,
    variables: Any = None,
    info: Mapping[str, Any] | None = None,
    imgsz: int = 640,
    batch: int = 16,
    conf: float = 0.001,
    iou: float = 0.7,
    max_det: int = 300,
    max_nms: int = 30000,
    rect: bool = False,
    split: str = "val",
    workers: int = 0,
    plots_dir: str | os.PathLike | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Validate weights (a .pt, a converted dir) or given ``variables``/``info`` on a data.yaml split.

    Returns:
      dict with precision, recall, mAP50, mAP50-95, mAP75, fitness, images, instances,
      per_class {name: {images, instances, precision, recall, mAP50, mAP50-95}}, speed
      (ms per image) and ``ap_result`` (curves; not JSON-able). With ``plots_dir``:
    PR_curve.png and confusion_matrix.png there (needs matplotlib).
    """

    from yolojax.data import make_val_iterator
    from yolojax.metrics import ConfusionMatrix, DetectionMetrics, save_plots

    if variables is None or info is None:
        if weights is None:
            raise ValueError("give weights or variables and info")
        from yolojax.convert import load_weights

        variables, info = load_weights(weights)
    if imgsz % 32:
        raise ValueError(f"imgsz {imgsz} must be a multiple of 32")
    place = _placement(batch)
    variables = place(variables, replicated=True)
    predict = make_predict_fn(info, conf, iou, max_det, max_nms)
    batches = make_val_iterator(data, imgsz=imgsz, batch_size=batch, rect=rect, split=split, workers=workers,
                                max_boxes=max(max_det, 300), process_index=0, process_count=1)
    source_names = list(getattr(batches.source, "names", []) or [])
    names = list(info.get("names") or source_names)
    if source_names and len(source_names) != int(info["num_classes"]):
        raise ValueError(f"{data} has {len(source_names)} classes but the model has {info['num_classes']}")
    metrics = DetectionMetrics(names)
    confusion = ConfusionMatrix(len(names), conf=conf) if plots_dir is not None else None
    t0 = time.perf_counter()
    n_images = 0
    try:
        for b in batches:
            dets = predict(variables, place(b["image"]))
            boxes, scores, classes, count = (np.asarray(a) for a in dets)
            for s in np.flatnonzero(b["valid"]):
                n = int(count[s])
                m = b["mask"][s]
                metrics.update(boxes[s, :n], scores[s, :n], classes[s, :n], b["boxes"][s][m], b["classes"][s][m])
                if confusion is not None:
                    confusion.update(boxes[s, :n], scores[s, :n], classes[s, :n], b["boxes"][s][m],
                                     b["classes"][s][m])
                n_images += 1
    finally:
        batches.close() if workers else None
    elapsed = time.perf_counter() - t0
    results = metrics.compute()
    results["speed_ms_per_image"] = 1000 * elapsed / max(n_images, 1)
    results["settings"] = {"imgsz": imgsz, "batch": batch, "conf": conf, "iou": iou, "max_det": max_det, "rect": rect,
                               "split": split}
    if plots_dir is not None:
        results["plots"] = [str(p) for p in save_plots(results, names, plots_dir, confusion)]
        results["confusion_matrix"] = confusion.matrix.astype(int).tolist()
    if verbose:
        print(format_table(results))
    return results


def format_table(results: Mapping[str, Any]) -> str:
    """ultralytics-style per-class table."""
    lines = [_ROW % ("Class", "Images", "Instances", "Box(P", "R", "mAP50", "mAP50-95)")]
    lines.append(_ROW_VALUES % ("all", results["images"], results["instances"], results["precision"],
                                results["recall"], results["mAP50"], results["mAP50-95"]))
    for name, row in results["per_class"].items():
        lines.append(_ROW_VALUES % (name[:22], row["images"], row["instances"], row["precision"], row["recall"],
                                    row["mAP50"], row["mAP50-95"]))
    return "\n".join(lines)


def json_results(results: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-able part of :func:`validate`'s results (DESIGN.md's OUT.json)."""
    return {k: v for k, v in results.items() if k != "ap_result"}


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="python -m yolojax.val", description="Validate YOLOv8 weights on a data.yaml split "
                "(mAP50, mAP50-95 as ultralytics val).")
    p.add_argument("--weights", required=True, help="ultralytics .pt or yolojax checkpoint directory")
    p.add_argument("--data", required=True, help="ultralytics data.yaml")
    p.add_argument("--imgsz", type=int, default=640, help="image size (multiple of 32)")
    p.add_argument("--batch", type=int, default=16, help="batch size")
    p.add_argument("--conf", type=float, default=0.001, help="confidence threshold")
    p.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=300, help="detections per image")
    p.add_argument("--rect", action="store_true", help="rectangular batches (as during ultralytics training)")
    p.add_argument("--split", default="val", help="data.yaml split")
    p.add_argument("--workers", type=int, default=0, help="data worker processes")
    p.add_argument("--json", default=None, help="write results to this JSON file")
    p.add_argument("--plots", default=None, metavar="DIR", help="write PR_curve.png and confusion_matrix.png here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not Path(args.weights).exists():
            raise ValueError(f"weights {args.weights} not found")
        if not Path(args.data).is_file():
            raise ValueError(f"data file {args.data} not found")
        if args.batch < 1 or args.imgsz < 32 or args.imgsz % 32:
            raise ValueError("--batch must be >= 1 and --imgsz a positive multiple of 32")
        if not (0 <= args.conf <= 1 and 0 <= args.iou <= 1):
            raise ValueError("--conf and --iou must be within [0, 1]")
        results = validate(args.weights, args.data, imgsz=args.imgsz, batch=args.batch, conf=args.conf,
                           iou=args.iou, max_det=args.max_det, rect=args.rect, split=args.split,
                           workers=args.workers, plots_dir=args.plots)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(json_results(results), indent=2))
    except Exception as e:  # noqa: BLE001 - one-line reason for any bad input
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        msg = first if isinstance(e, (ValueError, FileNotFoundError)) and first else f"{type(e).__name__}: {first}"
        print(f"python -m yolojax.val: error: {msg}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
