"""Run one eval forward pass of converted weights on an image and list the top scores.

    python tools/forward.py --weights runs/yolov8n --image ../shared/data/coco8/images/val/000000000049.jpg

A smoke test of converted weights until ``python -m yolojax.predict`` exists: the image is
letterboxed (grey 114 padding) to ``--imgsz``, passed through the jit-compiled model, and the
highest-scoring anchors (no NMS, so one object may appear several times) are printed with
their boxes mapped back to original pixels.
"""

from __future__ import annotations

import argparse
import sys
import time

import cv2
import jax
import numpy as np

from yolojax import load_weights
from yolojax.models import YOLOv8


def letterbox(image_bgr: np.ndarray, size: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Resize keeping the aspect ratio and pad to (size, size). Returns RGB uint8 (size, size,
    3), the scale factor and the (left, top) padding in pixels."""
    h, w = image_bgr.shape[:2]
    ratio = min(size / h, size / w)
    new_w, new_h = round(w * ratio), round(h * ratio)
    resized = cv2.resize(image_bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    left, top = (size - new_w) // 2, (size - new_h) // 2
    canvas = np.full((size, size, 3), 114, np.uint8)
    canvas[top : top + new_h, left : left + new_w] = resized
    return canvas[..., ::-1].copy(), ratio, (left, top)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True, help="a .pt or a converted directory")
    parser.add_argument("--image", required=True)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args(argv)
    if args.imgsz % 32:
        parser.error(f"--imgsz must be a multiple of 32, got {args.imgsz}")
    image = cv2.imread(args.image)
    if image is None:
        print(f"error: cannot read image {args.image}", file=sys.stderr)
        return 1
    try:
        variables, info = load_weights(args.weights)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    model = YOLOv8(scale=info["scale"], num_classes=info["num_classes"], reg_max=info["reg_max"])
    rgb, ratio, (left, top) = letterbox(image, args.imgsz)
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    t0 = time.perf_counter()
    preds = np.asarray(forward(variables, rgb[None].astype(np.float32) / 255.0))[0]
    seconds = time.perf_counter() - t0
    scores = preds[:, 4:].max(-1)
    classes = preds[:, 4:].argmax(-1)
    print(f"yolov8{info['scale']} ({info['num_classes']} classes) on {args.image} "
          f"{image.shape[1]}x{image.shape[0]}: {preds.shape[0]} anchors, "
          f"{int((scores > 0.25).sum())} above 0.25 ({seconds:.1f} s incl. compile)")
    for i in np.argsort(-scores)[: args.top]:
        cx, cy, w, h = preds[i, :4]
        box = (np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]) - [left, top, left, top]) / ratio
        print(f"  {info['names'][classes[i]]:>12} {scores[i]:.3f}  xyxy {np.round(box, 1).tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
