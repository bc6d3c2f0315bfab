"""Grain pipeline: batch contract, mosaic, close_mosaic, determinism, restore, sharding, validation."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from yolojax.data import AugmentConfig, make_train_iterator, make_val_iterator, yolo_source
from yolojax.data.sources.synthetic import add_broken_files, write_synthetic_dataset
from yolojax.data.train_batches import load_image
from yolojax.data.augment.sample import train_sample

IMGSZ = 128
MAX_BOXES = 32
LOCAL = {"process_index": 0, "process_count": 1}


@pytest.fixture(scope="module")
def broken_yaml(tmp_path_factory):
    root = tmp_path_factory.mktemp("broken")
    yaml_path = write_synthetic_dataset(root, num_train=24, num_val=6, size_range=(64, 160), seed=5)
    add_broken_files(root)
    return yaml_path


@pytest.fixture(scope="module")
def identity_source(tmp_path_factory):
    """12 images; image i has two large boxes of class i, so classes tell source images apart."""
    root = tmp_path_factory.mktemp("identity")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
    for i in range(12):
        h, w = (int(x) for x in rng.integers(80, 160, 2))
        image = np.full((h, w, 3), 120, np.uint8)
        cv2.imwrite(str(root / "images" / "train" / f"{i:03d}.jpg"), image)
        (root / "labels" / "train" / f"{i:03d}.txt").write_text(f"{i} 0.3 0.3 0.5 0.5\n{i} 0.7 0.7 0.5 0.5\n")
    cv2.imwrite(str(root / "images" / "val" / "v.jpg"), np.zeros((64, 64, 3), np.uint8))
    (root / "data.yaml").write_text(yaml.safe_dump({"train": "images/train", "val": "images/val",
                                                    "names": [f"image{i}" for i in range(12)]}))
    return yolo_source(root / "data.yaml", "train")


def classes_per_image(batch):
    return [set(c[m].tolist()) for c, m in zip(batch["classes"], batch["mask"])]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_train_batches_follow_the_contract(broken_yaml):
    batches = make_train_iterator(broken_yaml, imgsz=IMGSZ, batch_size=8, epochs=2, seed=0, max_boxes=MAX_BOXES,
                                  **LOCAL)
    assert batches.steps_per_epoch == 28 // 8 and batches.num_steps == 2 * (28 // 8)
    seen = list(batches.iterator)
    assert len(seen) == batches.num_steps
    for batch in seen:
        assert set(batch) == {"image", "boxes", "classes", "mask"}
        assert batch["image"].shape == (8, IMGSZ, IMGSZ, 3) and batch["image"].dtype == np.uint8
        assert batch["boxes"].shape == (8, MAX_BOXES, 4) and batch["boxes"].dtype == np.float32
        assert batch["classes"].shape == (8, MAX_BOXES) and batch["classes"].dtype == np.int32
        assert batch["mask"].shape == (8, MAX_BOXES) and batch["mask"].dtype == bool
        boxes = batch["boxes"][batch["mask"]]
        assert (boxes >= 0).all() and (boxes <= IMGSZ).all()
        assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()
        assert not batch["boxes"][~batch["mask"]].any()
        assert (batch["classes"][batch["mask"]] < 6).all()
    assert sum(int(b["mask"].sum()) for b in seen) > 0


def test_boxes_sit_on_their_shapes(tmp_path):
    """One shape per image: the centre pixel of every unclipped box has the shape's colour."""
    yaml_path = write_synthetic_dataset(tmp_path, num_train=16, num_val=1, size_range=(96, 160), max_shapes=1)
    batches = make_train_iterator(yaml_path, imgsz=IMGSZ, batch_size=8, epochs=1, seed=1, max_boxes=8, **LOCAL)
    checked = 0
    for batch in batches.iterator:
        for image, boxes, classes, mask in zip(batch["image"], batch["boxes"], batch["classes"], batch["mask"]):
            for (x1, y1, x2, y2), c in zip(boxes[mask], classes[mask]):
                inside = x1 > 1 and y1 > 1 and x2 < IMGSZ - 1 and y2 < IMGSZ - 1
                if inside and min(x2 - x1, y2 - y1) >= 6:
                    pixel = image[int((y1 + y2) / 2), int((x1 + x2) / 2)].astype(int)
                    assert int(np.argmax(pixel)) == c % 3, (pixel, c)
                    checked += 1
    assert checked >= 8


def test_mosaic_batches_hold_boxes_from_four_images(identity_source):
    batches = make_train_iterator(identity_source, imgsz=IMGSZ, batch_size=8, epochs=3, seed=0,
                                  aug=AugmentConfig(close_mosaic=1), max_boxes=MAX_BOXES, **LOCAL)
    mosaic_steps = 2 * batches.steps_per_epoch
    distinct = [len(s) for step in range(mosaic_steps) for s in classes_per_image(next(batches.iterator))]
    assert max(distinct) == 4 and np.mean(distinct) > 2.5
    closed = [len(s) for batch in batches.iterator for s in classes_per_image(batch)]  # the close_mosaic epoch
    assert len(closed) == 8 * batches.steps_per_epoch and max(closed) == 1

    rng = np.random.default_rng(0)
    sample = train_sample(0, lambda i: load_image(identity_source, i, IMGSZ), lambda r, k: [3, 5, 7][:k], rng,
                          AugmentConfig(), IMGSZ, mixing=True)
    assert sample.source_indices == (0, 3, 5, 7)
    assert set(sample.classes.tolist()) <= {0, 3, 5, 7}


def test_one_seed_fixes_the_stream(broken_yaml):
    def first(seed, n=3):
        it = make_train_iterator(broken_yaml, imgsz=IMGSZ, batch_size=4, epochs=1, seed=seed, max_boxes=MAX_BOXES,
                                 **LOCAL).iterator
        return [next(it) for _ in range(n)]

    a, b, c = first(7), first(7), first(8)
    assert_same_batches(a, b)
    assert not np.array_equal(a[0]["image"], c[0]["image"])


def test_restored_iterator_continues_exactly_also_with_workers(broken_yaml):
    def build(workers, start_step=0):
        return make_train_iterator(broken_yaml, imgsz=IMGSZ, batch_size=4, epochs=2, seed=3, max_boxes=MAX_BOXES,
                                   workers=workers, start_step=start_step, **LOCAL).iterator

    reference = list(build(0))
    it = build(0)
    for _ in range(2):
        next(it)
    state = it.get_state()
    fresh = build(0)
    fresh.set_state(state)
    assert_same_batches([next(fresh) for _ in range(3)], reference[2:5])
    assert_same_batches([next(build(0, start_step=5))], reference[5:6])

    with_workers = build(2)
    assert_same_batches([next(with_workers) for _ in range(3)], reference[:3])
    state = json.loads(json.dumps(with_workers.get_state()))  # what Grain's Orbax handler stores
    with_workers.close()
    restored = build(2)
    restored.set_state(state)
    assert_same_batches([next(restored) for _ in range(4)], reference[3:7])
    restored.close()


def test_processes_split_the_global_batch(broken_yaml):
    def first(index, count):
        return next(make_train_iterator(broken_yaml, imgsz=IMGSZ, batch_size=8, epochs=1, seed=0,
                                        max_boxes=MAX_BOXES, mosaic_pool="dataset", process_index=index,
                                        process_count=count).iterator)

    whole, part0, part1 = first(0, 1), first(0, 2), first(1, 2)
    for key in whole:
        np.testing.assert_array_equal(np.concatenate([part0[key], part1[key]]), whole[key], err_msg=key)
    with pytest.raises(ValueError, match="multiple of process_count"):
        first(0, 3)


def test_val_covers_every_image_once(broken_yaml):
    source = yolo_source(broken_yaml, "val")
    for rect in (False, True):
        for count in (1, 2):
            seen, shapes = [], set()
            for index in range(count):
                val = make_val_iterator(source, imgsz=IMGSZ, batch_size=4, rect=rect, max_boxes=MAX_BOXES,
                                        process_index=index, process_count=count)
                assert val.num_steps == 2
                for batch in val.iterator:
                    b = 4 // count
                    assert batch["valid"].shape == (b,) and batch["orig_hw"].shape == (b, 2)
                    assert batch["ratio_hw"].dtype == np.float32 and batch["pad_xy"].shape == (b, 2)
                    h, w = batch["image"].shape[1:3]
                    assert h % 32 == 0 and w % 32 == 0 and max(h, w) <= IMGSZ + 32
                    shapes.add((h, w))
                    assert (batch["index"][~batch["valid"]] == -1).all()
                    assert not batch["mask"][~batch["valid"]].any()
                    seen += batch["index"][batch["valid"]].tolist()
            assert sorted(seen) == list(range(len(source)))
            assert rect or shapes == {(IMGSZ, IMGSZ)}


def test_val_boxes_map_back_to_original_pixels(broken_yaml):
    source = yolo_source(broken_yaml, "val")
    batch = next(make_val_iterator(source, imgsz=IMGSZ, batch_size=4, rect=True, max_boxes=MAX_BOXES,
                                   **LOCAL).iterator)
    compared = 0
    for slot in np.flatnonzero(batch["valid"]):
        index = batch["index"][slot]
        h0, w0 = batch["orig_hw"][slot]
        boxes = batch["boxes"][slot][batch["mask"][slot]]
        (ry, rx), (px, py) = batch["ratio_hw"][slot], batch["pad_xy"][slot]
        original = (boxes - [px, py, px, py]) / [rx, ry, rx, ry]
        expected = source.labels.boxes_of(index) * [w0, h0, w0, h0]
        assert original.shape == expected.shape
        np.testing.assert_allclose(original, expected, atol=1e-3)
        compared += len(boxes)
    assert compared > 0  # some boxes were mapped back (an all-empty batch would prove nothing)


def test_truncated_boxes_are_counted_in_the_log(broken_yaml, caplog):
    with caplog.at_level(logging.WARNING, logger="yolojax.data"):
        batch = next(make_train_iterator(broken_yaml, imgsz=IMGSZ, batch_size=8, epochs=1, max_boxes=1,
                                         **LOCAL).iterator)
    assert batch["mask"].sum(1).max() == 1
    assert "max_boxes=1" in caplog.text and "dropped" in caplog.text


@pytest.fixture(scope="module")
def dense_yaml(tmp_path_factory):
    """8 images of 2 boxes, and in each split one image with a 7 x 6 grid of 42 boxes."""
    root = tmp_path_factory.mktemp("dense")
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(8):
            cv2.imwrite(str(root / "images" / split / f"{i}.jpg"), np.full((120, 160, 3), 90, np.uint8))
            rows = [f"{i % 3} {(c + 0.5) / 7:.5f} {(r + 0.5) / 6:.5f} 0.1 0.12" for r in range(6) for c in range(7)]
            (root / "labels" / split / f"{i}.txt").write_text("\n".join(rows if i == 0 else rows[:2]) + "\n")
    (root / "data.yaml").write_text(yaml.safe_dump({"train": "images/train", "val": "images/val",
                                                    "names": ["a", "b", "c"]}))
    return root / "data.yaml"


def test_box_padding_comes_from_the_label_scan_and_drops_nothing(dense_yaml, caplog):
    from yolojax.data.batching import bucket_boxes

    assert [bucket_boxes(n) for n in (0, 1, 16, 17, 42, 168, 300)] == [16, 16, 16, 32, 64, 256, 512]
    mosaic = make_train_iterator(dense_yaml, imgsz=IMGSZ, batch_size=8, epochs=2, seed=0,
                                 aug=AugmentConfig(close_mosaic=1), **LOCAL)
    assert mosaic.max_boxes == 256  # 42 labels x 4 (mosaic), bucketed
    with_mixup = make_train_iterator(dense_yaml, imgsz=IMGSZ, batch_size=8, epochs=1,
                                     aug=AugmentConfig(mixup=0.5, close_mosaic=0), **LOCAL)
    assert with_mixup.max_boxes == 512
    plain = AugmentConfig(mosaic=0.0, translate=0.0, scale=0.0, fliplr=0.0)
    batches = make_train_iterator(dense_yaml, imgsz=IMGSZ, batch_size=8, epochs=1, seed=0, aug=plain, **LOCAL)
    assert batches.max_boxes == 64
    batch = next(batches.iterator)
    assert sorted(batch["mask"].sum(1).tolist()) == [2] * 7 + [42]  # every box of the dense image is there
    assert batches.truncation.boxes_dropped == 0

    val = make_val_iterator(dense_yaml, imgsz=IMGSZ, batch_size=4, **LOCAL)
    counts = [int(n) for b in val.iterator for n in b["mask"].sum(1)]
    assert sorted(counts) == [2] * 7 + [42]

    with caplog.at_level(logging.WARNING, logger="yolojax.data"):
        capped = make_train_iterator(dense_yaml, imgsz=IMGSZ, batch_size=8, epochs=1, seed=0, aug=plain,
                                     max_boxes=10, **LOCAL)
        assert "max_boxes=10: 1 training images have more labels (up to 42, 32 boxes over)" in caplog.text
        batch = next(capped.iterator)
    assert batch["mask"].shape == (8, 10) and capped.truncation.boxes_dropped == 32
    assert "32 boxes dropped so far" in caplog.text


def test_fewer_images_than_a_batch_still_trains(tmp_path):
    yaml_path = write_synthetic_dataset(tmp_path, num_train=3, num_val=1, size_range=(48, 64))
    batches = make_train_iterator(yaml_path, imgsz=64, batch_size=8, epochs=2, max_boxes=8, **LOCAL)
    assert batches.steps_per_epoch == 1 and len(list(batches.iterator)) == 2


def test_show_batch_writes_a_png(broken_yaml, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("show_batch", Path(__file__).parents[1] / "tools" / "show_batch.py")
    show_batch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(show_batch)
    out = tmp_path / "batch.png"
    assert show_batch.main(["--data", str(broken_yaml), "--imgsz", "64", "--batch", "4", "--out", str(out)]) == 0
    image = cv2.imread(str(out))
    assert image is not None and image.shape == (128, 128, 3)


def test_rotation_shear_perspective_and_mixup_keep_the_contract(broken_yaml):
    aug = AugmentConfig(degrees=10, shear=5, perspective=0.0005, mixup=1.0, flipud=0.5)
    batches = make_train_iterator(broken_yaml, imgsz=IMGSZ, batch_size=8, epochs=1, aug=aug, max_boxes=64, **LOCAL)
    for batch in batches.iterator:
        boxes = batch["boxes"][batch["mask"]]
        assert (boxes >= 0).all() and (boxes <= IMGSZ).all()
        assert ((boxes[:, 2] - boxes[:, 0] > 2) & (boxes[:, 3] - boxes[:, 1] > 2)).all()


def test_mixup_blends_two_mosaics(identity_source):
    rng = np.random.default_rng(1)
    sample = train_sample(0, lambda i: load_image(identity_source, i, IMGSZ),
                          lambda r, k: [int(i) for i in r.choice(np.arange(1, 12), k, replace=False)], rng,
                          AugmentConfig(mixup=1.0), IMGSZ, mixing=True)
    assert len(sample.source_indices) == 8 and len(set(sample.classes.tolist())) > 4


def test_partial_canvas_warp_equals_the_whole_canvas_warp():
    """The mosaic warp fills only the part of the canvas it reads: bit for bit ultralytics' warp of the whole canvas."""
    from yolojax.data.augment.affine import random_affine_matrix, warp_image, warp_layers
    from yolojax.data.augment.mosaic import mosaic_centre, mosaic_tiles, paste_layers

    rng = np.random.default_rng(0)
    for degrees, scale in ((0.0, 0.5), (0.0, 0.9), (20.0, 0.5)):
        for _ in range(20):
            sizes = [tuple(int(x) for x in rng.integers(20, IMGSZ + 1, 2)) for _ in range(4)]
            images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
            tiles = mosaic_tiles(sizes, mosaic_centre(rng, IMGSZ), IMGSZ)
            canvas_hw = (2 * IMGSZ, 2 * IMGSZ)
            m, _ = random_affine_matrix(rng, canvas_hw, (IMGSZ, IMGSZ), degrees=degrees, scale=scale, translate=0.3)
            whole = warp_image(paste_layers(images, tiles, canvas_hw), m, (IMGSZ, IMGSZ), False)
            np.testing.assert_array_equal(warp_layers(images, tiles, canvas_hw, m, (IMGSZ, IMGSZ), False), whole)


_SHARED_MEMORY_SCRIPT = """
import sys
import jax
from yolojax.data import make_train_iterator

def run(data_yaml, consumed, epochs):
    batches = make_train_iterator(data_yaml, imgsz=64, batch_size=4, epochs=epochs, max_boxes=8, workers=2,
                                  process_index=0, process_count=1)
    for _ in range(consumed):
        placed = jax.device_put(next(batches.iterator))  # JAX keeps the buffers it placed until exit
    batches.close()

if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
    print("done")
"""


@pytest.mark.parametrize("consumed, epochs", [
    (3, 2),  # stopped early: batches still prefetched
    (12, 2),  # all of them
    (1, 12),  # stopped at once in a long run: the workers still building ahead
])
def test_worker_shared_memory_is_not_reported_leaked(broken_yaml, tmp_path, consumed, epochs):
    """Batches from worker processes come in shared memory: neither the ones the run used (still
    referenced by JAX at exit) nor the ones prefetched or being built but never used leak
    ("resource_tracker: There appear to be N leaked shared_memory objects")."""
    script = tmp_path / "run.py"  # worker processes are spawned: the script must be importable
    script.write_text(_SHARED_MEMORY_SCRIPT)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join([str(root), os.environ.get(
        "PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(script), str(broken_yaml), str(consumed), str(epochs)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "done", proc.stderr[-2000:]
    assert "leaked shared_memory" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
