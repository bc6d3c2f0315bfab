"""Data sources: data.yaml resolution, the label scan and its cache, COCO JSON, coco8 (TFDS: test_tfds.py)."""

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from yolojax.data import (
    coco91_to_coco80,
    coco_json_source,
    list_image_files,
    load_data_yaml,
    make_train_iterator,
    make_val_iterator,
    yolo_source,
)
from yolojax.data.sources.label_scan import parse_label_rows
from yolojax.data.sources.synthetic import SHAPE_NAMES, add_broken_files, rectangles_batch, write_synthetic_dataset
from shared_data import SHARED, require

IMGSZ = 128


@pytest.fixture(scope="module")
def broken_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("broken")
    yaml_path = write_synthetic_dataset(root, num_train=24, num_val=6, size_range=(64, 160), seed=3)
    return yaml_path, add_broken_files(root)


def check_batch_contract(batch, batch_size, imgsz_hw, max_boxes):
    assert batch["image"].shape == (batch_size, *imgsz_hw, 3) and batch["image"].dtype == np.uint8
    assert batch["boxes"].shape == (batch_size, max_boxes, 4) and batch["boxes"].dtype == np.float32
    assert batch["classes"].shape == (batch_size, max_boxes) and batch["classes"].dtype == np.int32
    assert batch["mask"].shape == (batch_size, max_boxes) and batch["mask"].dtype == bool
    assert imgsz_hw[0] % 32 == 0 and imgsz_hw[1] % 32 == 0
    assert not batch["boxes"][~batch["mask"]].any() and not batch["classes"][~batch["mask"]].any()


def test_data_yaml_paths_names_and_lists(tmp_path):
    yaml_path = write_synthetic_dataset(tmp_path / "ds", num_train=3, num_val=2, size_range=(32, 48))
    spec = load_data_yaml(yaml_path)  # no 'path': relative to the yaml's folder
    assert spec.root == (tmp_path / "ds").resolve() and spec.names == SHAPE_NAMES
    assert len(list_image_files(spec.splits["train"])) == 3

    listing = tmp_path / "ds" / "some.txt"
    listing.write_text("./images/train/00000.jpg\n./images/val/00001.jpg\n")
    other = tmp_path / "elsewhere" / "data.yaml"
    other.parent.mkdir()
    other.write_text(yaml.safe_dump({"path": str(tmp_path / "ds"), "train": ["images/train", "images/val"],
                                     "val": "some.txt", "names": ["a", "b"], "nc": 2}))
    spec = load_data_yaml(other)
    assert spec.names == ("a", "b")
    assert len(list_image_files(spec.splits["train"])) == 5
    assert [Path(p).name for p in list_image_files(spec.splits["val"])] == ["00000.jpg", "00001.jpg"]

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"train": "x", "val": "x", "names": ["a"], "nc": 3}))
    with pytest.raises(ValueError, match="nc"):
        load_data_yaml(bad)


def test_polygon_rows_become_boxes():
    rows, polygons = parse_label_rows("3 0.1 0.2 0.5 0.2 0.4 0.6 0.1 0.5\n")
    assert polygons is not None and len(polygons) == 1
    np.testing.assert_allclose(rows[0], [3, 0.3, 0.4, 0.4, 0.4], atol=1e-6)


def test_scan_skips_names_and_counts_bad_files(broken_dataset, caplog):
    yaml_path, bad = broken_dataset
    with caplog.at_level(logging.INFO, logger="yolojax.data"):
        source = yolo_source(yaml_path, "train")
    report = source.report
    assert (report.total, report.corrupt, report.missing, report.empty) == (30, 2, 2, 1)
    assert report.found == 30 - 2 - 2
    assert sorted(report.corrupt_files) == sorted(bad["corrupt"])
    assert sorted(report.missing_files) == sorted(bad["missing"]) and list(report.empty_files) == bad["empty"]
    assert len(source) == 28 and not set(bad["corrupt"]) & set(source.image_paths)
    for name in bad["corrupt"] + bad["duplicate"]:
        assert name in caplog.text
    assert "exceeds dataset class count" in caplog.text and "duplicate labels removed" in caplog.text
    dup = source.image_paths.index(bad["duplicate"][0])
    assert len(source[dup]["classes"]) == 2
    assert (source.image_shapes_hw >= 10).all()


def test_scan_cache_is_reused_until_files_change(tmp_path, monkeypatch):
    yaml_path = write_synthetic_dataset(tmp_path, num_train=5, num_val=1, size_range=(32, 48))
    first = yolo_source(yaml_path, "train")
    assert (tmp_path / "labels" / "train.yolojax-cache.npz").is_file()

    import yolojax.data.sources.label_scan as scan

    def must_not_scan(*args, **kwargs):
        raise AssertionError("rescanned although nothing changed")

    monkeypatch.setattr(scan, "run_scan", must_not_scan)
    again = yolo_source(yaml_path, "train")
    assert again.image_paths == first.image_paths
    np.testing.assert_array_equal(again.labels.boxes_xyxy, first.labels.boxes_xyxy)
    monkeypatch.undo()

    label = tmp_path / "labels" / "train" / "00000.txt"
    label.write_text("5 0.5 0.5 0.5 0.5\n")
    os.utime(label, ns=(1, 1))  # a different mtime even on coarse clocks
    changed = yolo_source(yaml_path, "train")
    assert changed.labels.classes_of(0).tolist() == [5]


def write_coco_json(yaml_path, json_path):
    """The synthetic val split as COCO: sparse category ids, a crowd and a zero-size box added."""
    source = yolo_source(yaml_path, "val", use_cache=False)
    category_ids = [1, 3, 7, 13, 40, 90]
    images, annotations = [], []
    for i, path in enumerate(source.image_paths):
        h, w = (int(x) for x in source.image_shapes_hw[i])
        images.append({"id": 100 + i, "file_name": Path(path).name, "height": h, "width": w})
        for box, cls in zip(source.labels.boxes_of(i), source.labels.classes_of(i)):
            x1, y1, x2, y2 = box * [w, h, w, h]
            annotations.append({"id": len(annotations), "image_id": 100 + i, "category_id": category_ids[cls],
                                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)], "iscrowd": 0})
    annotations.append({"id": 998, "image_id": 100, "category_id": 1, "bbox": [1, 1, 20, 20], "iscrowd": 1})
    annotations.append({"id": 999, "image_id": 100, "category_id": 1, "bbox": [1, 1, 0, 20], "iscrowd": 0})
    categories = [{"id": c, "name": SHAPE_NAMES[k]} for k, c in enumerate(category_ids)]
    json_path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return source


def test_coco_json_source_matches_yolo_labels_and_batch_format(tmp_path):
    yaml_path = write_synthetic_dataset(tmp_path / "ds", num_train=1, num_val=6, size_range=(64, 160))
    json_path = tmp_path / "instances_val.json"
    yolo = write_coco_json(yaml_path, json_path)
    coco = coco_json_source(json_path, tmp_path / "ds" / "images" / "val")
    assert coco.names == SHAPE_NAMES and len(coco) == len(yolo)
    assert coco.image_ids.tolist() == list(range(100, 100 + len(yolo)))
    for i in range(len(coco)):  # crowd and zero-size boxes dropped, classes mapped back to 0..5
        np.testing.assert_array_equal(coco.labels.classes_of(i), yolo.labels.classes_of(i))
        np.testing.assert_allclose(coco.labels.boxes_of(i), yolo.labels.boxes_of(i), atol=1e-5)
    train = make_train_iterator(coco, imgsz=IMGSZ, batch_size=4, epochs=1, max_boxes=16,
                                process_index=0, process_count=1)
    check_batch_contract(next(train.iterator), 4, (IMGSZ, IMGSZ), 16)
    val = make_val_iterator(coco, imgsz=IMGSZ, batch_size=4, rect=True, max_boxes=16, process_index=0, process_count=1)
    batch = next(val.iterator)
    check_batch_contract(batch, 4, batch["image"].shape[1:3], 16)
    assert coco.image_ids[batch["index"][batch["valid"]]].min() >= 100


def test_coco91_to_coco80():
    assert coco91_to_coco80(1) == 0 and coco91_to_coco80(13) == 11 and coco91_to_coco80(90) == 79
    assert coco91_to_coco80(12) is None


def test_coco8_loads_through_its_yaml():
    yaml_path = SHARED / "coco8" / "coco8.yaml"
    require(yaml_path)
    for split in ("train", "val"):
        source = yolo_source(yaml_path, split, use_cache=False)  # never write into the shared folder
        assert len(source) == 4 and len(source.names) == 80 and source.report.corrupt == 0
    train = make_train_iterator(source, imgsz=160, batch_size=4, epochs=1, max_boxes=64,
                                process_index=0, process_count=1)
    check_batch_contract(next(train.iterator), 4, (160, 160), 64)
    val = make_val_iterator(source, imgsz=160, batch_size=4, rect=True, max_boxes=64,
                            process_index=0, process_count=1)
    batch = next(val.iterator)
    assert batch["valid"].all() and batch["mask"].sum() == sum(len(source[i]["classes"]) for i in range(4))


def test_unreadable_image_after_scan_is_a_clear_error(tmp_path):
    yaml_path = write_synthetic_dataset(tmp_path, num_train=2, num_val=1, size_range=(32, 48))
    source = yolo_source(yaml_path, "train", use_cache=False)
    Path(source.image_paths[0]).write_bytes(b"")
    with pytest.raises(OSError, match="cannot read image"):
        source[0]


def test_scan_cache_is_not_written_into_read_only_folders(tmp_path):
    yaml_path = write_synthetic_dataset(tmp_path, num_train=3, num_val=1, size_range=(32, 48))
    labels = tmp_path / "labels"
    labels.chmod(0o555)
    try:
        source = yolo_source(yaml_path, "train")
    finally:
        labels.chmod(0o755)
    assert len(source) == 3 and not (labels / "train.yolojax-cache.npz").exists()


def test_rectangles_batch():
    batch = rectangles_batch(5, 128, num_classes=3, max_boxes=6, seed=3)
    assert batch["image"].shape == (5, 128, 128, 3) and batch["image"].dtype == np.uint8
    assert batch["boxes"].shape == (5, 6, 4) and batch["classes"].shape == batch["mask"].shape == (5, 6)
    assert np.all(batch["mask"].sum(1) >= 1) and np.all(batch["mask"].sum(1) <= 4)
    colours = np.array([[220, 40, 40], [40, 200, 60], [50, 80, 230]])
    for b in range(5):  # the last-drawn box's pixels have its class colour; padded rows are zero
        n = int(batch["mask"][b].sum())
        x1, y1, x2, y2 = batch["boxes"][b, n - 1].astype(int)
        assert np.all(batch["image"][b, y1:y2, x1:x2] == colours[batch["classes"][b, n - 1]])
        assert np.all(batch["boxes"][b, n:] == 0)
    noisy = rectangles_batch(5, 128, seed=3, noise=40)
    diff = noisy["image"].astype(int) - batch["image"].astype(int)
    assert 0 < np.abs(diff).max() <= 40
    np.testing.assert_array_equal(noisy["boxes"], batch["boxes"])
    with pytest.raises(ValueError):
        rectangles_batch(1, 64, num_classes=4)


def warning_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_split_paths_refused_in_one_line_naming_field_and_path(tmp_path):
    from yolojax.data.sources.data_yaml import split_paths

    yaml_path = write_synthetic_dataset(tmp_path / "ds", num_train=2, num_val=1, size_range=(32, 48))
    for text, split, message in [
        ("val: images/vall", "val", f"{yaml_path}: 'val:' path {tmp_path / 'ds' / 'images' / 'vall'} does not exist"),
        ("val:", "val", f"{yaml_path}: 'val:' names no images"),
        ("val: images/val", "test", f"{yaml_path}: 'test:' names no images"),
    ]:
        raw = yaml.safe_load(Path(yaml_path).read_text())
        raw.update(yaml.safe_load(text))
        Path(yaml_path).write_text(yaml.safe_dump(raw))
        with pytest.raises(ValueError) as err:
            yolo_source(yaml_path, split)
        assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)
    assert split_paths(load_data_yaml(yaml_path), "train") == (str((tmp_path / "ds" / "images" / "train").resolve()),)


def test_skipped_files_and_list_lines_are_named(tmp_path, caplog):
    yaml_path = write_synthetic_dataset(tmp_path / "ds", num_train=3, num_val=2, size_range=(32, 48))
    train_dir = tmp_path / "ds" / "images" / "train"
    (train_dir / "clip.mp4").write_bytes(b"\0")
    (train_dir / "notes.txt").write_text("x")
    (train_dir / "README").write_text("x")
    listing = tmp_path / "ds" / "val.txt"
    listing.write_text("./images/val/00000.jpg\n./images/val/clip.mov\n\n./images/val/missing.jpg\n")
    caplog.set_level(logging.INFO)
    assert len(list_image_files(str(train_dir))) == 3
    warnings = warning_lines(caplog)
    assert len(warnings) == 1 and f"{train_dir}: 3 files skipped, not images" in warnings[0]
    for name in ("clip.mp4", "notes.txt", "README"):
        assert str(train_dir / name) in warnings[0]
    caplog.clear()
    assert [Path(p).name for p in list_image_files(str(listing))] == ["00000.jpg", "missing.jpg"]
    warnings = warning_lines(caplog)
    assert len(warnings) == 1 and f"{listing}: 1 lines skipped" in warnings[0]
    assert f"{listing}:2: ./images/val/clip.mov" in warnings[0]
    # a listed image that is not there is named by the label scan with its reason
    raw = yaml.safe_load(Path(yaml_path).read_text())
    Path(yaml_path).write_text(yaml.safe_dump({**raw, "val": "val.txt"}))
    caplog.clear()
    source = yolo_source(yaml_path, "val", use_cache=False)
    assert len(source) == 1
    assert any(f"{tmp_path / 'ds' / 'images' / 'val' / 'missing.jpg'}: ignoring corrupt image/label: image file does "
               "not exist" in w for w in warning_lines(caplog))


@pytest.mark.parametrize("split", ["train", "val"])
def test_split_without_labels_warns_why_its_metrics_are_zero(tmp_path, caplog, split):
    yaml_path = write_synthetic_dataset(tmp_path / "ds", num_train=3, num_val=2, size_range=(32, 48))
    labels = tmp_path / "ds" / "labels" / split
    for f in sorted(labels.glob("*.txt")):
        f.rename(f.with_suffix(".TXT"))  # as some labelling tools name them
    caplog.set_level(logging.INFO)
    source = yolo_source(yaml_path, split)
    assert len(source) == (3 if split == "train" else 2) and len(source.labels.classes) == 0
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert sum("label scan" in m for m in infos) == 1
    warnings = warning_lines(caplog)
    assert len(warnings) == 1, warnings
    first = sorted((tmp_path / "ds" / "images" / split).glob("*.jpg"))[0]
    assert warnings[0].startswith(f"no labels found in the {split} split of ")
    assert f"e.g. {first} has no label file {labels / first.with_suffix('.txt').name}" in warnings[0]
    effect = "training learns no objects" if split == "train" else "precision, recall and mAP are 0"
    assert effect in warnings[0]
    caplog.clear()
    other = "val" if split == "train" else "train"
    yolo_source(yaml_path, other)  # a labelled split: no warning
    assert warning_lines(caplog) == []
