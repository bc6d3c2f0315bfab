"""Write a PNG grid of one training (or validation) batch with its boxes and class names.

    python tools/show_batch.py --data coco8.yaml --imgsz 640 --out batch.png [--batch 16
        --seed 0 --step 0 --epochs 1 --no-mosaic --val]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import cv2
import numpy as np

from yolojax.data import AugmentConfig, make_train_iterator, make_val_iterator


def _colour(class_id: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(class_id)
    return tuple(int(c) for c in rng.integers(64, 256, 3))


def draw_image(image_rgb: np.ndarray, boxes: np.ndarray, classes: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """A copy of uint8 (H, W, 3) RGB with (n, 4) xyxy pixel boxes and their class names drawn."""
    out = np.ascontiguousarray(image_rgb).copy()
    scale = max(out.shape[:2]) / 640
    for (x1, y1, x2, y2), c in zip(boxes, classes):
        colour = _colour(int(c))
        p1, p2 = (round(x1), round(y1)), (round(x2), round(y2))
        cv2.rectangle(out, p1, p2, colour, max(1, int(2 * scale)))
        label = names[int(c)] if 0 <= int(c) < len(names) else str(int(c))
        cv2.putText(out, label, (p1[0] + 2, max(p1[1] - 4, 12)), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, colour,
                    max(1, int(scale)), cv2.LINE_AA)
    return out


def grid(images: list[np.ndarray], pad_value: int = 255) -> np.ndarray:
    """Tile equally-sized (H, W, 3) images into a near-square grid."""
    n = len(images)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    h, w = images[0].shape[:2]
    out = np.full((rows * h, cols * w, 3), pad_value, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        out[r * h : (r + 1) * h, c * w : (c + 1) * w] = image
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="ultralytics data.yaml")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--out", default="batch.png", help="PNG to write")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step", type=int, default=0, help="which training step to show")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-boxes", type=int, default=None,
                        help="training box padding (default: from the label scan, nothing dropped)")
    parser.add_argument("--no-mosaic", action="store_true", help="mosaic=0 (as after close_mosaic)")
    parser.add_argument("--val", action="store_true", help="show the first validation batch (rect) instead")
    args = parser.parse_args(argv)
    if not Path(args.data).is_file():
        parser.exit(2, f"error: data yaml not found: {args.data}\n")
    try:
        if args.val:
            batches = make_val_iterator(args.data, imgsz=args.imgsz, batch_size=args.batch, rect=True,
                                        process_index=0, process_count=1)
        else:
            aug = AugmentConfig(mosaic=0.0 if args.no_mosaic else 1.0, close_mosaic=0)
            batches = make_train_iterator(args.data, imgsz=args.imgsz, batch_size=args.batch, epochs=args.epochs,
                                          seed=args.seed, aug=aug, max_boxes=args.max_boxes,
                                          start_step=args.step, process_index=0, process_count=1)
        batch = next(batches.iterator)
    except (OSError, ValueError) as e:
        parser.exit(1, f"error: {e}\n")
    names = batches.source.names
    tiles = [draw_image(img, bx[m], cl[m], names)
             for img, bx, cl, m in zip(batch["image"], batch["boxes"], batch["classes"], batch["mask"])]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(args.out, cv2.cvtColor(grid(tiles), cv2.COLOR_RGB2BGR))
    print(f"wrote {args.out}: {len(tiles)} images, {int(batch['mask'].sum())} boxes")
    batches.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
