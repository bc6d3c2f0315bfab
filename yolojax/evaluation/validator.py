"""Validation: mAP50 and mAP50-95 exactly as ultralytics val computes them.

    python -m yolojax.val --weights yolov8n.pt --data coco8.yaml [--imgsz 640 --batch 16
        --conf 0.001 --iou 0.7 --max-det 300 --no-rect --json OUT.json]
    python -m yolojax.val --weights yolov8n.pt --data instances_val2017.json --images val2017
        [--predictions OUT/predictions.json --categories-by-order ...]

Pipeline (ultralytics' DetectionValidator): letterboxed batches (long side resized to imgsz,
centred, no upscaling) in ultralytics' rectangular batches (images sorted by aspect ratio,
one shape per batch, stride 32, pad 0.5), as ``yolo val`` and ``YOLO(...).val()`` default to
(``--no-rect``: every image letterboxed to imgsz x imgsz, ultralytics' ``rect=False``) ->
model in fp32 on [0, 1] pixels -> multi-label NMS (conf 0.001, iou 0.7, max_det 300, raised
like ultralytics to the most labels of an image when more) on device -> predictions matched
to every ground-truth box in letterboxed pixels at IoU 0.50:0.95 -> ap_per_class (101-point
interpolation).

With a COCO instances JSON as ``--data`` (and its image folder as ``--images``) the file is
checked before the weights load (:mod:`yolojax.data.sources.coco_check`; its categories are matched
to the model's classes by name), the same numbers come first, then the official COCO ones:
the detections, mapped to original pixels and the file's category ids, go through
pycocotools ``COCOeval`` (bbox) over every image and annotation of the file, and its 12
statistics (AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl) are printed and
returned under ``"coco"``, with what the checks found under ``"coco_file"``. AP differs from
mAP50-95 by COCO's rules: at most 100 detections per image, crowd regions ignored, boxes
matched in original pixels, precision sampled at 101 recall points rather than integrated.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from yolojax.config import check_arguments, weights_imgsz
from yolojax.inference.detector import make_predict_fn

logger = logging.getLogger(__name__)

_ROW = "%22s" + "%11s" * 6
_ROW_VALUES = "%22s" + "%11i" * 2 + "%11.3g" * 4


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


DEFAULT_MAX_DET = 300  # ultralytics' default.yaml


def resolve_max_det(max_det: int | None, source: Any) -> int:
    """``max_det``, or for None ultralytics' default 300 raised to the most labels of one image of
    ``source`` when that is more (ultralytics' ``DetectionValidator._check_max_det``), with a warning."""
    if max_det is not None:
        return int(max_det)
    from yolojax.data.batching import label_counts

    counts = label_counts(source)
    most = int(counts.max()) if counts is not None and len(counts) else 0
    if most <= DEFAULT_MAX_DET:
        return DEFAULT_MAX_DET
    logger.warning("images hold up to %d labels but max_det=%d: max_det set to %d (as ultralytics)", most,
                   DEFAULT_MAX_DET, most)
    return most


def is_coco_json(data: Any) -> bool:
    """True when ``data`` names a COCO JSON annotation file (by its .json suffix)."""
    return isinstance(data, (str, os.PathLike)) and Path(data).suffix.lower() == ".json"


def _open_source(data: Any, split: str):
    """The source to validate on: the split of a data.yaml or a TFDS dataset, or ``data`` itself."""
    from yolojax.data.sources.dataset import open_split
    from yolojax.data.sources.tfds import TfdsSpec

    if isinstance(data, (str, os.PathLike, TfdsSpec)):
        return open_split(data, split)
    return data


def _check_coco_json(data: str | os.PathLike, images: str | os.PathLike | None):
    """The COCO JSON ``data`` read and checked (:mod:`yolojax.data.sources.coco_check`), its image folder present."""
    from yolojax.data.sources.coco_check import read_coco_file

    if images is None:
        raise ValueError(f"{data} is a COCO JSON: give its image folder (--images)")
    if not Path(images).is_dir():
        raise ValueError(f"image folder {images} not found")
    return read_coco_file(data)


def _batch_to_run(batch: int, num_images: int) -> int:
    """``batch``, or less when the whole split fits in one batch: the split's size rounded up to a
    multiple of the local device count, so the model does not run on padding slots."""
    import jax

    devices = jax.local_device_count()
    return min(batch, max(-(-num_images // devices), 1) * devices)


def validate(
    weights: str | os.PathLike | None = None,
    data: Any = "",
    *,
    images: str | os.PathLike | None = None,
    variables: Any = None,
    info: Mapping[str, Any] | None = None,
    imgsz: int | None = None,
    batch: int = 16,
    conf: float = 0.001,
    iou: float = 0.7,
    max_det: int | None = None,
    max_nms: int = 30000,
    rect: bool = True,
    split: str = "val",
    workers: int = 0,
    cache: str | bool | None = "",
    plots_dir: str | os.PathLike | None = None,
    predictions_json: str | os.PathLike | None = None,
    categories_by_order: bool = False,
    verbose: bool = True,
    model_fn: Callable | None = None,
) -> dict[str, Any]:
    """Validate weights (a .pt, a converted dir) or given ``variables``/``info`` on a dataset.

    Args:
      data: a data.yaml (its ``split``), a prepared TFDS dataset ('tfds:NAME' or a
        :class:`yolojax.data.sources.tfds.TfdsSpec`: the TFDS split mapped to ``split``), a COCO
        instances JSON (with ``images``, its image folder), or a source (:mod:`yolojax.data`).
      max_det: detections per image; None: ultralytics' 300, raised (with a warning) to the
        most labels of one image of the split when that is more, as ultralytics does.
      rect: ultralytics' rectangular batches (the default of ``YOLO(...).val()``); False:
        square imgsz x imgsz letterboxes (``rect=False``).
      cache: ultralytics' ``cache`` ("", "ram", "disk"; True means "ram"): the image cache of
        :mod:`yolojax.data.memory.image_cache` (a source already cached is used as it is).
      predictions_json: COCO JSON data only: write the detections here in COCO results format.
      categories_by_order: COCO JSON data only: map the file's categories in increasing id order
        to the model's classes 0..K-1 whatever their names (by default they are matched by
        name, and names that differ from the model's class names are refused).
      model_fn: replaces the Flax model and its weights (give ``info`` with it): float32
        (B, H, W, 3) images in [0, 1] -> (B, N, 4 + nc), e.g. an exported model run by
        :class:`yolojax.inference.onnx_runtime.OnnxDetector`.

    Returns:
      dict with precision, recall, mAP50, mAP50-95, mAP75, fitness, images, instances,
      per_class {name: {images, instances, precision, recall, mAP50, mAP50-95}}, speed
      (ms per image) and ``ap_result`` (curves; not JSON-able). COCO JSON data adds ``coco``:
      {AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl} from pycocotools over
      every image and annotation of the file, and ``coco_file``: {notes (the checks' warning
      lines), yolojax_labels {clipped, dropped, duplicates, crowd}: annotations yolojax's own
      mAP changed or left out, images, images_predicted}. With ``plots_dir``: ultralytics'
      validation plots there (:mod:`yolojax.evaluation.plots`: val_batch{0,1,2}_labels.jpg /
      _pred.jpg, confusion_matrix.png, confusion_matrix_normalized.png, BoxP_curve.png,
      BoxR_curve.png, BoxF1_curve.png, BoxPR_curve.png), their paths under ``plots`` and the
      confusion matrix counts under ``confusion_matrix``. Loading ``weights`` logs ultralytics'
      fused model summary line (verbose).

    Raises:
      ValueError: bad input in one line, e.g. a COCO JSON inconsistency (naming the file, the
        field and the id), checked before the weights load and the model runs.
    """
    from yolojax.data import make_val_iterator
    from yolojax.data.memory.image_cache import cache_mode
    from yolojax.data.sources.dataset import check_splits
    from yolojax.data.sources.tfds import is_tfds
    from yolojax.evaluation.metrics import DetectionMetrics

    check_arguments({"imgsz": imgsz, "batch": batch, "conf": conf, "iou": iou, "max_det": max_det})
    if predictions_json is not None and not is_coco_json(data):
        raise ValueError("predictions in COCO results format need a COCO JSON dataset (--data *.json)")
    coco_file = _check_coco_json(data, images) if is_coco_json(data) else None  # a bad file fails before the model
    if is_tfds(data):
        if cache_mode(cache) == "disk":
            raise ValueError(f"cache=disk: ultralytics' .npy files go beside image files, which {data} has none of: "
                             "use cache=ram (or none)")
        check_splits(data, (split,))  # a dataset not prepared, or without the split, fails before the model
    if model_fn is not None:
        if info is None:
            raise ValueError("model_fn needs info (names, num_classes)")
        variables = {}
        # ultralytics 8.4.190 engine/validator.py: a fixed-size exported model validates square
        rect = rect and getattr(model_fn, "input_hw", None) is None
    elif variables is None or info is None:
        if weights is None:
            raise ValueError("give weights or variables and info")
        from yolojax.weights import load_weights

        variables, info = load_weights(weights)  # unreadable weights fail before the label scan's report
        if verbose:
            from yolojax.models.summary import loaded_summary_line

            logger.info("%s", loaded_summary_line(info))
    imgsz = weights_imgsz(imgsz, info)
    source = _open_source(data, split) if coco_file is None else None
    coco = _CocoCollector.open(coco_file, images, info, categories_by_order) if coco_file is not None else None
    source = coco.dataset.source if coco is not None else source
    run_batch = _batch_to_run(batch, len(source))
    place = _placement(run_batch)
    variables = place(variables, replicated=True)
    max_det = resolve_max_det(max_det, source)
    predict = make_predict_fn(info, conf, iou, max_det, max_nms, model_fn=model_fn)
    batches = make_val_iterator(source, imgsz=imgsz, batch_size=run_batch, rect=rect, split=split,
                                workers=workers, process_index=0, process_count=1, cache=cache)
    source_names = list(getattr(batches.source, "names", []) or [])
    names = list(info.get("names") or source_names)
    if source_names and len(source_names) != int(info["num_classes"]):
        raise ValueError(f"{data} has {len(source_names)} classes but the model has {info['num_classes']}")
    metrics = DetectionMetrics(names)
    plots = None
    if plots_dir is not None:
        from yolojax.evaluation.plots import ValidationPlots

        plots = ValidationPlots(plots_dir, names, conf, getattr(batches.source, "image_paths", None))
    t0 = time.perf_counter()
    n_images = 0
    try:
        for batch_index, b in enumerate(batches):
            dets = predict(variables, place(b["image"]))
            boxes, scores, classes, count = (np.asarray(a) for a in dets)
            if plots is not None:
                plots.add_batch(batch_index, b, boxes, scores, classes, count)
            for s in np.flatnonzero(b["valid"]):
                n = int(count[s])
                m = b["mask"][s]
                metrics.update(boxes[s, :n], scores[s, :n], classes[s, :n], b["boxes"][s][m], b["classes"][s][m])
                if coco is not None:
                    coco.add(b, s, boxes[s, :n], scores[s, :n], classes[s, :n])
                n_images += 1
    finally:
        batches.close() if workers else None
        if batches.owns_cache:
            batches.source.close()  # a RAM cache made for this call
    elapsed = time.perf_counter() - t0
    results = metrics.compute()
    results["speed_ms_per_image"] = 1000 * elapsed / max(n_images, 1)
    results["settings"] = {"imgsz": imgsz, "batch": batch, "conf": conf, "iou": iou, "max_det": max_det, "rect": rect,
                           "split": split}
    if plots is not None:
        results["plots"] = [str(p) for p in plots.finish(results)]
        results["confusion_matrix"] = plots.confusion.matrix.astype(int).tolist()
    if verbose:
        print(format_table(results))
    if coco is not None:
        results["coco"], summary = coco.evaluate(predictions_json)
        results["coco_file"] = coco.report()
        if verbose:
            print(f"COCO bbox metrics (pycocotools) on {data}:\n{summary}")
    return results


class _CocoCollector:
    """Detections of a COCO JSON validation in COCO results format, then their COCOeval over the whole file."""

    def __init__(self, dataset: Any):
        self.dataset = dataset  # a yolojax.data.sources.coco_json.CocoDataset
        self.source_image_ids = np.asarray(dataset.source.image_ids)
        self.detections: list[dict[str, Any]] = []
        self.image_ids: list[int] = []
        self.notes = list(dataset.notes)

    @classmethod
    def open(cls, coco_file: Any, images: str | os.PathLike, info: Mapping[str, Any],
             categories_by_order: bool) -> _CocoCollector:
        """For the checked file ``coco_file`` and its image folder: its categories matched to the
        model's class names (``info["names"]``), or taken in increasing id order."""
        from yolojax.data.sources.coco_json import open_coco_json

        class_names = None if categories_by_order else info.get("names")
        return cls(open_coco_json(coco_file, images, class_names=class_names))

    def add(self, batch: Mapping[str, np.ndarray], slot: int, boxes_xyxy: np.ndarray, scores: np.ndarray,
            classes: np.ndarray) -> None:
        """One image (``slot`` of a val batch) with its detections in letterboxed pixels."""
        from yolojax.evaluation.coco_eval import boxes_to_original, coco_detections

        image_id = int(self.source_image_ids[int(batch["index"][slot])])
        original = boxes_to_original(boxes_xyxy, batch["ratio_hw"][slot], batch["pad_xy"][slot],
                                     batch["orig_hw"][slot])
        self.detections += coco_detections(original, scores, classes, image_id, self.dataset.category_ids)
        self.image_ids.append(image_id)

    def evaluate(self, predictions_json: str | os.PathLike | None) -> tuple[dict[str, float], str]:
        """COCOeval over every image of the file (written to ``predictions_json`` first when given);
        images never predicted (unreadable) score as having no detections, with a warning."""
        from yolojax.evaluation.coco_eval import coco_evaluate, unscored_images_note, write_detections

        note = unscored_images_note(self.dataset.file, self.image_ids)
        if note:
            logger.warning("%s", note)
            self.notes.append(note)
        detections = self.detections
        if predictions_json is not None:
            detections = write_detections(detections, predictions_json)
        return coco_evaluate(self.dataset.file, detections)

    def report(self) -> dict[str, Any]:
        """What the checks found: the warning lines, and the annotations yolojax's own labels (mAP50,
        mAP50-95) changed or left out, which the COCO numbers score as they are."""
        return {"notes": list(self.notes), "yolojax_labels": dict(self.dataset.label_counts),
                "images": len(self.dataset.file.data["images"]), "images_predicted": len(self.image_ids)}


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
