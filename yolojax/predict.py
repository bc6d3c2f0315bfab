"""Prediction on images, folders or globs: boxes in original pixels, annotated copies, JSON.

    python -m yolojax.predict --weights yolov8n.pt --source bus.jpg --out runs/predict
        [--conf 0.25 --iou 0.7 --imgsz 640 --max-det 300 --no-rect --agnostic]

As ultralytics predict (8.4, ``YOLO(...).predict()`` and ``yolo predict``): the image is
letterboxed to the minimum rectangle (scaled up or down so its long side is imgsz, centred,
pad 114, padded only to a multiple of the stride: ultralytics' default ``rect=True``;
``--no-rect``: to imgsz x imgsz), the model runs in fp32 on [0, 1] RGB, NMS keeps each box's
best class (conf 0.25, iou 0.7, max_det 300), and boxes are mapped back to original pixels
with ultralytics' ``scale_boxes`` rounding and clipped to the image.

Python API::

    from yolojax.predict import Predictor
    predictor = Predictor("yolov8n.pt", conf=0.25)
    results = predictor(["bus.jpg"])   # or RGB uint8 arrays
    results[0]["boxes_xyxy"], results[0]["scores"], results[0]["classes"], results[0]["names"]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from yolojax.cli import OneLineErrorParser

IMAGE_SUFFIXES = {".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm", ".heic"}
STRIDE = 32


def list_sources(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Image files of a file, a folder (sorted, not recursive), a glob, or a list of those."""
    if isinstance(source, (list, tuple)):
        return [p for s in source for p in list_sources(s)]
    s = str(source)
    p = Path(s)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    elif p.is_file():
        files = [p]
    elif any(ch in s for ch in "*?["):
        files = sorted(Path(f) for f in glob.glob(s, recursive=True) if Path(f).suffix.lower() in IMAGE_SUFFIXES)
    else:
        raise FileNotFoundError(f"source {s} does not exist")
    if not files:
        raise FileNotFoundError(f"no images found in {s}")
    return files


def letterbox_for_predict(shape_hw: tuple[int, int], imgsz: int, rect: bool = False, stride: int = STRIDE):
    """ultralytics' predict ``LetterBox`` (scaleup, centred; ``rect``: ``auto`` minimum padding).

    Returns a :class:`yolojax.data.letterbox.Letterbox`.
    """
    from yolojax.data.letterbox import Letterbox

    h, w = int(shape_hw[0]), int(shape_hw[1])
    r = min(imgsz / h, imgsz / w)
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
    dw, dh = imgsz - new_w, imgsz - new_h
    if rect:
        dw, dh = dw % stride, dh % stride
    out_hw = (new_h + dh, new_w + dw)
    dw, dh = dw / 2, dh / 2
    return Letterbox(ratio=r, resized_wh=(new_w, new_h), top=round(dh - 0.1), bottom=round(dh + 0.1),
                     left=round(dw - 0.1), right=round(dw + 0.1), out_hw=out_hw)


def scale_boxes_to_original(boxes: np.ndarray, input_hw: tuple[int, int], orig_hw: tuple[int, int]) -> np.ndarray:
    """xyxy boxes in letterboxed-input pixels -> original pixels (ultralytics' ``scale_boxes``), clipped."""
    boxes = np.array(boxes, np.float32).reshape(-1, 4)
    h0, w0 = orig_hw
    gain = min(input_hw[0] / h0, input_hw[1] / w0)
    new_h, new_w = max(round(h0 * gain), 1), max(round(w0 * gain), 1)
    gain_y, gain_x = new_h / h0, new_w / w0
    pad_x, pad_y = round((input_hw[1] - new_w) / 2 - 0.1), round((input_hw[0] - new_h) / 2 - 0.1)
    boxes[:, [0, 2]] = (boxes[:, [0, 2]] - pad_x) / gain_x
    boxes[:, [1, 3]] = (boxes[:, [1, 3]] - pad_y) / gain_y
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w0)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h0)
    return boxes


def _color(c: int) -> tuple[int, int, int]:
    """A distinct BGR colour per class."""
    hue = (c * 0.61803398875) % 1.0
    hsv = np.uint8([[[int(hue * 179), 200, 255]]])
    return tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def annotate(image_rgb: np.ndarray, result: Mapping[str, Any]) -> np.ndarray:
    """BGR uint8 copy of the image with boxes, class names and scores drawn."""
    im = np.ascontiguousarray(image_rgb[..., ::-1])
    lw = max(round(sum(im.shape[:2]) / 2 * 0.003), 2)
    font = max(lw / 3, 0.4)
    for box, score, cls, name in zip(result["boxes_xyxy"], result["scores"], result["classes"], result["names"]):
        x1, y1, x2, y2 = (round(v) for v in box)
        color = _color(int(cls))
        cv2.rectangle(im, (x1, y1), (x2, y2), color, lw, cv2.LINE_AA)
        label = f"{name} {score:.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font, max(lw - 1, 1))
        top = y1 - th - base - 2 if y1 - th - base - 2 >= 0 else y1
        cv2.rectangle(im, (x1, top), (x1 + tw + 2, top + th + base + 2), color, -1, cv2.LINE_AA)
        cv2.putText(im, label, (x1 + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, font, (255, 255, 255),
                    max(lw - 1, 1), cv2.LINE_AA)
    return im


class Predictor:
    """Model + NMS + box mapping for a stream of images.

    Args:
      weights: ultralytics .pt or yolojax checkpoint directory (or give ``variables`` and ``info``).
      imgsz: letterbox size (multiple of 32).
      conf, iou, max_det, agnostic: NMS settings (ultralytics predict defaults).
      rect: minimum padding to a stride multiple (ultralytics' default); False: a square imgsz canvas.
    """

    def __init__(self, weights: str | os.PathLike | None = None, *, variables: Any = None,
                 info: Mapping[str, Any] | None = None, imgsz: int = 640, conf: float = 0.25, iou: float = 0.7,
                 max_det: int = 300, agnostic: bool = False, rect: bool = True):
        import jax

        from yolojax.models import yolov8_from_info
        from yolojax.ops import non_max_suppression

        if variables is None or info is None:
            if weights is None:
                raise ValueError("give weights or variables and info")
            from yolojax.convert import load_weights

            variables, info = load_weights(weights)
        if imgsz < STRIDE or imgsz % STRIDE:
            raise ValueError(f"imgsz {imgsz} must be a positive multiple of {STRIDE}")
        if not (0 <= conf <= 1 and 0 <= iou <= 1):
            raise ValueError("conf and iou must be within [0, 1]")
        self.info = dict(info)
        self.names = list(info["names"])
        self.imgsz, self.rect = int(imgsz), bool(rect)
        self.variables = jax.device_put(variables)
        model = yolov8_from_info(info)

        @jax.jit
        def run(variables, images):
            out = model.apply(variables, images.astype(jax.numpy.float32) / 255.0, train=False)
            return non_max_suppression(out, conf, iou, agnostic=agnostic, max_det=max_det)

        self._run = run

    def preprocess(self, image_rgb: np.ndarray):
        from yolojax.data.letterbox import apply_letterbox

        lb = letterbox_for_predict(image_rgb.shape[:2], self.imgsz, self.rect)
        return apply_letterbox(np.ascontiguousarray(image_rgb), lb), lb

    def predict_array(self, image_rgb: np.ndarray) -> dict[str, Any]:
        """One RGB uint8 (H, W, 3) image -> dict(boxes_xyxy, scores, classes, names) in original pixels."""
        if image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image_rgb.shape}")
        canvas, lb = self.preprocess(image_rgb)
        dets = self._run(self.variables, canvas[None])
        det = dets.to_list()[0]
        boxes = scale_boxes_to_original(det[:, :4], lb.out_hw, image_rgb.shape[:2])
        classes = det[:, 5].astype(int)
        return {"boxes_xyxy": boxes.tolist(), "scores": det[:, 4].tolist(), "classes": classes.tolist(),
                "names": [self.names[c] if c < len(self.names) else str(c) for c in classes]}

    def __call__(self, images: Iterable[str | os.PathLike | np.ndarray]) -> list[dict[str, Any]]:
        """Paths or RGB arrays -> one result dict each (paths add "image": the path)."""
        from yolojax.data.image_io import read_image_rgb

        results = []
        for item in images:
            if isinstance(item, np.ndarray):
                results.append(self.predict_array(item))
                continue
            image = read_image_rgb(item)
            if image is None:
                raise ValueError(f"cannot read image {item}")
            results.append({"image": str(item), **self.predict_array(image)})
        return results


def predict(weights: str | os.PathLike, source, out: str | os.PathLike | None = None, *, imgsz: int = 640,
            conf: float = 0.25, iou: float = 0.7, max_det: int = 300, agnostic: bool = False,
            rect: bool = True, save_images: bool = True) -> list[dict[str, Any]]:
    """Predict every image of ``source``; with ``out``, write annotated copies and predictions.json."""
    from yolojax.data.image_io import read_image_rgb

    files = list_sources(source)
    predictor = Predictor(weights, imgsz=imgsz, conf=conf, iou=iou, max_det=max_det, agnostic=agnostic, rect=rect)
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    results, used = [], set()
    for f in files:
        image = read_image_rgb(f)
        if image is None:
            raise ValueError(f"cannot read image {f}")
        res = {"image": str(f), **predictor.predict_array(image)}
        results.append(res)
        if out_dir is not None and save_images:
            name = f.name
            k = 1
            while name in used:  # same file name from different folders
                name, k = f"{f.stem}_{k}{f.suffix}", k + 1
            used.add(name)
            cv2.imwrite(str(out_dir / name), annotate(image, res))
    if out_dir is not None:
        (out_dir / "predictions.json").write_text(json.dumps(results, indent=1))
    return results


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="python -m yolojax.predict", description="Detect objects in images; write annotated copies "
                "and predictions.json.")
    p.add_argument("--weights", required=True, help="ultralytics .pt or yolojax checkpoint directory")
    p.add_argument("--source", required=True, help="image file, folder or glob")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--conf", type=float, default=0.25, help="confidence threshold")
    p.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold")
    p.add_argument("--imgsz", type=int, default=640, help="letterbox size (multiple of 32)")
    p.add_argument("--max-det", type=int, default=300, help="detections per image")
    p.add_argument("--agnostic", action="store_true", help="class-agnostic NMS")
    p.add_argument("--rect", action=argparse.BooleanOptionalAction, default=True,
                   help="minimum padding to a stride multiple, ultralytics' default (--no-rect: square imgsz canvas)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not Path(args.weights).exists():
            raise ValueError(f"weights {args.weights} not found")
        results = predict(args.weights, args.source, args.out, imgsz=args.imgsz, conf=args.conf, iou=args.iou,
                          max_det=args.max_det, agnostic=args.agnostic, rect=args.rect)
    except Exception as e:  # noqa: BLE001 - one-line reason for any bad input
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        msg = first if isinstance(e, (ValueError, FileNotFoundError)) and first else f"{type(e).__name__}: {first}"
        print(f"python -m yolojax.predict: error: {msg}", file=sys.stderr)
        return 1
    n = sum(len(r["classes"]) for r in results)
    print(f"{len(results)} images, {n} detections -> {Path(args.out) / 'predictions.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
