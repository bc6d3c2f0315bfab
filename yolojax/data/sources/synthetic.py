"""A synthetic YOLO-format dataset of coloured shapes, for tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import yaml

SHAPE_NAMES = ("red_box", "green_box", "blue_box", "red_disc", "green_disc", "blue_disc")
_COLOURS_RGB = ((220, 40, 40), (40, 200, 40), (40, 60, 220))


def draw_shapes(
    rng: np.random.Generator, height: int, width: int, max_shapes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A smooth grey background (blotches, compressible like a photo) with 1..max_shapes rectangles / discs.

    Returns:
      uint8 (height, width, 3) RGB image, float32 (n, 4) normalised centre xywh boxes, int32 (n,)
      classes (index into SHAPE_NAMES).
    """
    blotches = rng.integers(80, 150, (height // 16 + 2, width // 16 + 2), dtype=np.uint8)
    grey = cv2.resize(blotches, (width, height), interpolation=cv2.INTER_CUBIC)
    image = np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    n = int(rng.integers(1, max_shapes + 1))
    boxes, classes = [], []
    for _ in range(n):
        cls = int(rng.integers(0, len(SHAPE_NAMES)))
        colour = _COLOURS_RGB[cls % 3]
        bw = int(rng.integers(max(4, width // 10), max(5, width // 2)))
        bh = int(rng.integers(max(4, height // 10), max(5, height // 2)))
        x1 = int(rng.integers(0, width - bw))
        y1 = int(rng.integers(0, height - bh))
        if cls < 3:
            cv2.rectangle(image, (x1, y1), (x1 + bw - 1, y1 + bh - 1), colour, -1)
        else:
            cv2.ellipse(image, (x1 + bw // 2, y1 + bh // 2), (bw // 2, bh // 2), 0, 0, 360, colour, -1)
        boxes.append([(x1 + bw / 2) / width, (y1 + bh / 2) / height, bw / width, bh / height])
        classes.append(cls)
    return image, np.array(boxes, np.float32), np.array(classes, np.int32)


def write_synthetic_dataset(
    root: str | Path,
    num_train: int = 32,
    num_val: int = 8,
    size_range: tuple[int, int] = (96, 200),
    max_shapes: int = 4,
    seed: int = 0,
) -> Path:
    """Write images/{train,val}/*.jpg, labels/{train,val}/*.txt and data.yaml under `root`.

    Images have random sizes (both sides in `size_range`, so various aspect ratios).

    Returns:
      The data.yaml path.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (("train", num_train), ("val", num_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            h, w = (int(x) for x in rng.integers(size_range[0], size_range[1] + 1, 2))
            image, boxes, classes = draw_shapes(rng, h, w, max_shapes)
            cv2.imwrite(str(root / "images" / split / f"{i:05d}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_JPEG_QUALITY, 90])
            rows = [f"{c} {b[0]:.6f} {b[1]:.6f} {b[2]:.6f} {b[3]:.6f}" for c, b in zip(classes, boxes)]
            (root / "labels" / split / f"{i:05d}.txt").write_text("\n".join(rows) + "\n")
    yaml_path = root / "data.yaml"
    yaml_path.write_text(yaml.safe_dump({"train": "images/train", "val": "images/val",
                                         "names": dict(enumerate(SHAPE_NAMES))}, sort_keys=False))
    return yaml_path


def add_broken_files(root: str | Path, split: str = "train", seed: int = 1) -> dict[str, list[str]]:
    """Add the problems a label scan must catch to a dataset written by write_synthetic_dataset.

    Adds to `split`: a corrupt JPEG (with a label), an image whose label has an out-of-range
    class, two images without label files, one with an empty label file, and one whose label
    repeats a row.

    Returns:
      kind ('corrupt', 'missing', 'empty', 'duplicate') -> image paths.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    images, labels = root / "images" / split, root / "labels" / split

    def write(stem: str, rows: list[str] | None) -> str:
        image, boxes, classes = draw_shapes(rng, 120, 160, 2)
        path = images / f"{stem}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if rows is not None:
            rows = rows or [f"{c} {b[0]:.6f} {b[1]:.6f} {b[2]:.6f} {b[3]:.6f}" for c, b in zip(classes, boxes)]
            (labels / f"{stem}.txt").write_text("\n".join(rows) + "\n")
        return str(path)

    corrupt = images / "bad_corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0" + rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())
    (labels / "bad_corrupt.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    out_of_range = write("bad_class", [f"{len(SHAPE_NAMES) + 3} 0.5 0.5 0.2 0.2", "0 0.3 0.3 0.1 0.1"])
    missing = [write("nolabel_a", None), write("nolabel_b", None)]
    empty = write("emptylabel", None)
    (labels / "emptylabel.txt").write_text("")
    duplicate = write("duplicate", ["1 0.5 0.5 0.4 0.4", "1 0.5 0.5 0.4 0.4", "2 0.2 0.2 0.1 0.1"])
    return {"corrupt": [str(corrupt), out_of_range], "missing": missing, "empty": [empty], "duplicate": [duplicate]}


def rectangles_batch(batch_size: int, imgsz: int, num_classes: int = 3, max_boxes: int = 6, seed: int = 0,
                     noise: int = 0) -> dict[str, np.ndarray]:
    """A ready train batch (DESIGN.md's format) of flat grey (114) square images with 1-4
    filled rectangles each, coloured by class (red, green, blue; ``num_classes`` <= 3), for
    train-step tests and benchmarks that need no data pipeline.

    ``noise`` > 0 adds uniform integer pixel noise in [-noise, noise] (clipped), which breaks
    the exact symmetries of flat rectangles on flat grey (mirror-image anchors with equal
    alignment) that the assigner's top-k would otherwise resolve by rounding noise.

    Returns image uint8 (B, imgsz, imgsz, 3), boxes float32 (B, max_boxes, 4) xyxy pixels,
    classes int32 (B, max_boxes), mask bool (B, max_boxes).
    """
    if not 1 <= num_classes <= len(_COLOURS_RGB):
        raise ValueError(f"num_classes must be 1..{len(_COLOURS_RGB)}, got {num_classes}")
    rng = np.random.default_rng(seed)
    colours = np.array([[220, 40, 40], [40, 200, 60], [50, 80, 230]], np.uint8)
    images = np.full((batch_size, imgsz, imgsz, 3), 114, np.uint8)
    boxes = np.zeros((batch_size, max_boxes, 4), np.float32)
    classes = np.zeros((batch_size, max_boxes), np.int32)
    mask = np.zeros((batch_size, max_boxes), bool)
    for b in range(batch_size):
        for j in range(min(int(rng.integers(1, 5)), max_boxes)):
            w, h = rng.integers(16, 56, size=2)
            x1, y1 = rng.integers(0, imgsz - w), rng.integers(0, imgsz - h)
            c = rng.integers(num_classes)
            images[b, y1:y1 + h, x1:x1 + w] = colours[c]
            boxes[b, j] = [x1, y1, x1 + w, y1 + h]
            classes[b, j], mask[b, j] = c, True
    if noise:
        jitter = rng.integers(-noise, noise + 1, size=images.shape)
        images = np.clip(images.astype(np.int16) + jitter, 0, 255).astype(np.uint8)
    return {"image": images, "boxes": boxes, "classes": classes, "mask": mask}
