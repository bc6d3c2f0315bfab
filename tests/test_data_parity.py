"""Agreement with ultralytics (the oracle, imported only here): validation letterbox and rect
batches pixel for pixel, the COCO 91 -> 80 table, and mosaic + perspective statistics."""

import os
import random

import numpy as np
import pytest

from yolojax.data import AugmentConfig, make_train_iterator, make_val_iterator, yolo_source
from yolojax.data.coco_json import COCO80_CATEGORY_IDS, coco91_to_coco80
from yolojax.data.synthetic import SHAPE_NAMES, write_synthetic_dataset

os.environ.setdefault("YOLO_OFFLINE", "1")
_REASON = "ultralytics (the test oracle) not installed"
get_cfg = pytest.importorskip("ultralytics.cfg", reason=_REASON).get_cfg
coco91_to_coco80_class = pytest.importorskip("ultralytics.data.converter", reason=_REASON).coco91_to_coco80_class
YOLODataset = pytest.importorskip("ultralytics.data.dataset", reason=_REASON).YOLODataset

LOCAL = {"process_index": 0, "process_count": 1}


@pytest.fixture(scope="module")
def shapes_yaml(tmp_path_factory):
    """Images from very wide to very tall (aspect ratios ~0.2 to ~5)."""
    root = tmp_path_factory.mktemp("aspect")
    return write_synthetic_dataset(root, num_train=48, num_val=11, size_range=(40, 260), max_shapes=6, seed=11)


def ultralytics_dataset(yaml_path, split, imgsz, augment, rect=False, batch_size=4):
    cfg = get_cfg(overrides={"imgsz": imgsz})
    return YOLODataset(img_path=str(yaml_path.parent / "images" / split), imgsz=imgsz, augment=augment, hyp=cfg,
                       rect=rect, batch_size=batch_size, stride=32, pad=0.5 if rect else 0.0,
                       data={"names": dict(enumerate(SHAPE_NAMES)), "channels": 3})


@pytest.mark.parametrize("rect", [True, False])
def test_val_batches_match_ultralytics_pixel_for_pixel(shapes_yaml, rect):
    imgsz, batch_size = 160, 4
    theirs = ultralytics_dataset(shapes_yaml, "val", imgsz, augment=False, rect=rect, batch_size=batch_size)
    source = yolo_source(shapes_yaml, "val")
    ours = make_val_iterator(source, imgsz=imgsz, batch_size=batch_size, rect=rect, max_boxes=16, **LOCAL)
    position = 0
    for step, batch in enumerate(ours.iterator):
        if rect:
            np.testing.assert_array_equal(batch["image"].shape[1:3], theirs.batch_shapes[step])
        for slot in np.flatnonzero(batch["valid"]):
            item = theirs[position]
            assert source.image_paths[batch["index"][slot]] == item["im_file"]
            image_rgb = item["img"].numpy().transpose(1, 2, 0)  # Format turns BGR into RGB
            np.testing.assert_array_equal(batch["image"][slot], image_rgb)
            h, w = image_rgb.shape[:2]
            cx, cy, bw, bh = item["bboxes"].numpy().T * np.array([[w], [h], [w], [h]])
            expected = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
            np.testing.assert_allclose(batch["boxes"][slot][batch["mask"][slot]], expected, atol=1e-3)
            np.testing.assert_array_equal(batch["classes"][slot][batch["mask"][slot]], item["cls"].numpy()[:, 0])
            (gain_h, gain_w), (pad_w, pad_h) = item["ratio_pad"]
            np.testing.assert_allclose(batch["ratio_hw"][slot], [gain_h, gain_w], rtol=1e-6)
            np.testing.assert_array_equal(batch["pad_xy"][slot], [pad_w, pad_h])
            np.testing.assert_array_equal(batch["orig_hw"][slot], item["ori_shape"])
            position += 1
    assert position == len(theirs) == len(source)


def test_coco91_table_matches_ultralytics():
    table = coco91_to_coco80_class()
    assert [coco91_to_coco80(i + 1) for i in range(91)] == table
    assert [i + 1 for i, c in enumerate(table) if c is not None] == list(COCO80_CATEGORY_IDS)


def box_statistics(boxes_per_image, imgsz):
    """(mean boxes per image, mean box area / image area) over a list of (n, 4) xyxy arrays."""
    counts = [len(b) for b in boxes_per_image]
    areas = np.concatenate([(b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) for b in boxes_per_image]) / imgsz**2
    return float(np.mean(counts)), float(np.mean(areas))


def test_mosaic_perspective_statistics_match_ultralytics(shapes_yaml):
    imgsz, samples = 128, 320
    random.seed(0)
    np.random.seed(0)
    theirs = ultralytics_dataset(shapes_yaml, "train", imgsz, augment=True, batch_size=16)
    order = np.random.default_rng(0).permutation(np.arange(samples) % len(theirs))
    their_boxes = []
    for i in order:
        item = theirs[int(i)]
        cx, cy, w, h = item["bboxes"].numpy().T * imgsz
        their_boxes.append(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1))

    batches = make_train_iterator(shapes_yaml, imgsz=imgsz, batch_size=16, epochs=samples // 48 + 1, seed=0,
                                  aug=AugmentConfig(close_mosaic=0), max_boxes=128, **LOCAL)
    our_boxes = []
    while len(our_boxes) < samples:
        batch = next(batches.iterator)
        our_boxes += [b[m] for b, m in zip(batch["boxes"], batch["mask"])]
    (n_theirs, a_theirs), (n_ours, a_ours) = box_statistics(their_boxes, imgsz), box_statistics(our_boxes, imgsz)
    assert n_ours == pytest.approx(n_theirs, rel=0.10), (n_ours, n_theirs)
    assert a_ours == pytest.approx(a_theirs, rel=0.10), (a_ours, a_theirs)
