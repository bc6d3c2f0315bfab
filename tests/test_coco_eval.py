"""COCO results format and pycocotools COCOeval (yolojax.evaluation.coco_eval) on a synthetic COCO JSON dataset."""

from __future__ import annotations

import contextlib
import io
import json

import cv2
import numpy as np
import pytest

from yolojax.evaluation.coco_eval import (
    COCO_STAT_NAMES,
    boxes_to_original,
    class_to_category_ids,
    coco_detections,
    coco_evaluate,
    load_coco_annotations,
    write_detections,
)
from yolojax.data import coco_json_source, make_val_iterator

CATEGORY_IDS = (1, 3, 7)
# (height, width) per image and its boxes [x, y, w, h, category]: small (< 32^2), medium and large
# (> 96^2) areas, one crowd region (ignored by COCOeval).
IMAGES = {
    11: ((150, 200), [[10, 12, 20, 15, 1], [60, 30, 110, 100, 3], [20, 100, 40, 30, 7]]),
    25: ((180, 120), [[5, 5, 100, 150, 7], [30, 20, 25, 25, 1]]),
    40: ((96, 160), [[70, 10, 60, 70, 3], [8, 40, 30, 40, 3], [100, 60, 22, 18, 7]]),
}
CROWD = {"id": 99, "image_id": 11, "category_id": 1, "bbox": [150, 100, 40, 40], "area": 1600.0, "iscrowd": 1}


def _annotations() -> dict:
    images, anns = [], []
    for image_id, ((h, w), boxes) in IMAGES.items():
        images.append({"id": image_id, "file_name": f"im{image_id}.png", "height": h, "width": w})
        for x, y, bw, bh, cat in boxes:
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat,
                         "bbox": [float(x), float(y), float(bw), float(bh)], "area": float(bw * bh), "iscrowd": 0})
    anns.append(CROWD)
    categories = [{"id": c, "name": f"cat{c}"} for c in CATEGORY_IDS]
    return {"images": images, "annotations": anns, "categories": categories}


@pytest.fixture()
def coco_dataset(tmp_path):
    """The synthetic dataset on disk: (annotations JSON path, image folder)."""
    (tmp_path / "images").mkdir()
    for image_id, ((h, w), _) in IMAGES.items():
        cv2.imwrite(str(tmp_path / "images" / f"im{image_id}.png"), np.full((h, w, 3), 90, np.uint8))
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(_annotations()))
    return path, tmp_path / "images"


def _pycocotools_stats(annotations_path, detections, image_ids=None) -> np.ndarray:
    """pycocotools used directly, as its README shows."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotations_path))
        evaluator = COCOeval(gt, gt.loadRes(json.loads(json.dumps(detections))), iouType="bbox")
        if image_ids is not None:
            evaluator.params.imgIds = list(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def _gt_detections_via_val_batches(annotations_path, images_dir, rect: bool) -> list[dict]:
    """Ground truth as a validator sees it (letterboxed val batches), mapped back and written as detections."""
    source = coco_json_source(annotations_path, images_dir, use_cache=False)
    category_ids = class_to_category_ids(json.loads(annotations_path.read_text())["categories"])
    batches = make_val_iterator(source, imgsz=128, batch_size=2, rect=rect, max_boxes=8, process_index=0,
                                process_count=1)
    detections = []
    for b in batches:
        for s in np.flatnonzero(b["valid"]):
            m = b["mask"][s]
            boxes = boxes_to_original(b["boxes"][s][m], b["ratio_hw"][s], b["pad_xy"][s], b["orig_hw"][s])
            scores = np.linspace(0.9, 0.5, int(m.sum()))
            image_id = int(source.image_ids[b["index"][s]])
            detections += coco_detections(boxes, scores, b["classes"][s][m], image_id, category_ids)
    return detections


@pytest.mark.parametrize("rect", [False, True])
def test_ground_truth_through_val_batches_scores_one(coco_dataset, rect):
    path, images_dir = coco_dataset
    detections = _gt_detections_via_val_batches(path, images_dir, rect)
    assert len(detections) == sum(len(boxes) for _, boxes in IMAGES.values())
    assert {d["category_id"] for d in detections} == set(CATEGORY_IDS)
    truth = {(a["image_id"], a["category_id"], tuple(a["bbox"])) for a in _annotations()["annotations"]
             if not a["iscrowd"]}
    for d in detections:  # original pixels within letterbox rounding
        near = [t for t in truth if t[:2] == (d["image_id"], d["category_id"])
                and np.allclose(t[2], d["bbox"], atol=0.02)]
        assert len(near) == 1, d
    stats, summary = coco_evaluate(path, detections)
    assert list(stats) == list(COCO_STAT_NAMES)
    for name, value in stats.items():  # AR1: one detection per image and category finds 2 of the 3 boxes of
        expected = (1 + 2 / 3 + 1) / 3 if name == "AR1" else 1.0  # category 3 (two are in image 40)
        assert value == pytest.approx(expected), (name, value)
    assert "Average Precision" in summary and len(summary.splitlines()) == 12


def _perturbed(detections: list[dict], seed: int = 0) -> list[dict]:
    """Shifted and rescaled boxes, new scores, some dropped, some with the wrong category, some false positives."""
    rng = np.random.default_rng(seed)
    out = []
    for d in detections:
        if rng.random() < 0.2:
            continue
        x, y, w, h = d["bbox"]
        s = rng.uniform(0.8, 1.2, 2)
        box = [x + rng.normal(0, 0.1) * w, y + rng.normal(0, 0.1) * h, w * s[0], h * s[1]]
        cat = d["category_id"] if rng.random() < 0.85 else int(rng.choice(CATEGORY_IDS))
        out.append({**d, "bbox": box, "category_id": cat, "score": float(rng.uniform(0.05, 1))})
    for image_id, ((h, w), _) in IMAGES.items():
        for _ in range(4):
            x, y = rng.uniform(0, w - 20), rng.uniform(0, h - 20)
            out.append({"image_id": image_id, "category_id": int(rng.choice(CATEGORY_IDS)),
                        "bbox": [x, y, rng.uniform(5, w - x), rng.uniform(5, h - y)],
                        "score": float(rng.uniform(0, 1))})
    return out


def test_perturbed_detections_match_pycocotools(coco_dataset, tmp_path):
    path, images_dir = coco_dataset
    detections = _perturbed(_gt_detections_via_val_batches(path, images_dir, rect=False))
    stats, _ = coco_evaluate(path, detections)
    reference = _pycocotools_stats(path, detections)
    np.testing.assert_allclose([stats[k] for k in COCO_STAT_NAMES], reference, rtol=0, atol=1e-12)
    assert 0.05 < stats["AP"] < 0.95 and stats["AP"] < stats["AP50"]
    written = write_detections(detections, tmp_path / "out" / "predictions.json")
    from_file, _ = coco_evaluate(load_coco_annotations(path), written)
    assert from_file == stats
    subset, _ = coco_evaluate(path, detections, image_ids=[25, 40])
    np.testing.assert_allclose([subset[k] for k in COCO_STAT_NAMES], _pycocotools_stats(path, detections, [25, 40]),
                               rtol=0, atol=1e-12)
    assert subset != stats


def test_no_detections_score_zero_where_there_is_ground_truth(coco_dataset):
    path, _ = coco_dataset
    stats, _ = coco_evaluate(path, [])
    assert all(v == 0.0 for v in stats.values()), stats


def test_detections_of_unknown_images_are_refused(coco_dataset):
    path, _ = coco_dataset
    with pytest.raises(ValueError, match="image ids not in the annotations"):
        coco_evaluate(path, [{"image_id": 5, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}])


def test_coco_detections_format_and_category_mapping():
    category_ids = class_to_category_ids([{"id": 7, "name": "c"}, {"id": 1, "name": "a"}, {"id": 3, "name": "b"}])
    assert category_ids == {0: 1, 1: 3, 2: 7}
    minus_one = class_to_category_ids([{"id": 7, "name": "c"}, {"id": 1, "name": "a"}], "minus_one")
    assert minus_one == {0: 1, 6: 7}
    dets = coco_detections(np.array([[10.0, 20.0, 40.5, 60.25], [0, 0, 1, 1], [1, 2, 3, 4]]),
                           np.array([0.9, 0.123456789, 0.5]), np.array([2, 0, 5]), 42, category_ids)
    assert dets == [{"image_id": 42, "category_id": 7, "bbox": [10.0, 20.0, 30.5, 40.25], "score": 0.9},
                    {"image_id": 42, "category_id": 1, "bbox": [0.0, 0.0, 1.0, 1.0], "score": 0.12346}]


def test_boxes_to_original_inverts_letterbox_and_clips():
    # a 100 x 200 (h, w) image scaled by 0.64 and 0.635 into a 128 x 128 canvas, padded 32 px on top
    boxes = np.array([[0.0, 32.0, 127.0, 95.5], [-5.0, 0.0, 200.0, 128.0]])
    out = boxes_to_original(boxes, ratio_hw=(0.635, 0.64), pad_xy=(0.0, 32.0), orig_hw=(100, 200))
    np.testing.assert_allclose(out[0], [0.0, 0.0, 127 / 0.64, 63.5 / 0.635], rtol=1e-6)
    np.testing.assert_allclose(out[1], [0.0, 0.0, 200.0, 100.0])


def test_load_coco_annotations_fills_fields_and_names_bad_files(tmp_path):
    data = _annotations()
    for ann in data["annotations"]:
        ann.pop("area"), ann.pop("iscrowd"), ann.pop("id")
    filled = load_coco_annotations(data)
    assert [a["area"] for a in filled["annotations"]][:2] == [300.0, 11000.0]
    assert len({a["id"] for a in filled["annotations"]}) == len(filled["annotations"])
    assert all(a["iscrowd"] == 0 for a in filled["annotations"])
    assert "area" not in data["annotations"][0]  # the caller's dict is left alone
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match=r"bad\.json.*'images'"):
        load_coco_annotations(bad)
