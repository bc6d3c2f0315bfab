"""COCO JSON files as labelling tools write them: each inconsistency is refused in one line or fixed with a
warning, and the COCO numbers are pycocotools' on the whole file (coco8's val split, yolov8n.pt, imgsz 320).

The expected numbers come from pycocotools run directly on the file (after the fix the test itself applies,
where the file needs one) with the detections of one validation of the unchanged file."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_coco_eval import _pycocotools_stats
from test_val_predict import COCO8, WEIGHTS, needs_shared, yolo_split_to_coco_json

from yolojax import val as yj_val
from yolojax.evaluation import validator as yj_validator
from yolojax.evaluation.coco_eval import COCO_STAT_NAMES, coco_evaluate
from yolojax.data import coco_json_source
from yolojax.data.sources.coco_check import segmentation_box
from yolojax.data.sources.coco_json import COCO80_CATEGORY_IDS

IMGSZ = 320


@dataclasses.dataclass(frozen=True)
class Base:
    """coco8's val split as a valid COCO JSON, the model, and its validation on that file."""

    data: dict
    images_dir: Path
    variables: Any
    info: dict
    results: dict
    detections: list


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Base:
    from yolojax.weights import load_weights

    root = tmp_path_factory.mktemp("coco_checks")
    path = root / "instances.json"
    images_dir = yolo_split_to_coco_json(COCO8 / "coco8.yaml", path, COCO80_CATEGORY_IDS, first_image_id=36)
    variables, info = load_weights(WEIGHTS)
    results = yj_validator.validate(data=path, images=images_dir, variables=variables, info=info, imgsz=IMGSZ, batch=4,
                              predictions_json=root / "predictions.json", verbose=False)
    detections = json.loads((root / "predictions.json").read_text())
    return Base(json.loads(path.read_text()), images_dir, variables, info, results, detections)


def _write(data: dict, folder: Path, name: str = "instances.json") -> Path:
    path = folder / name
    path.write_text(json.dumps(data))
    return path


def _validate(base: Base, path: Path, **kw) -> dict:
    return yj_validator.validate(data=path, images=base.images_dir, variables=base.variables, info=base.info, imgsz=IMGSZ,
                           batch=4, verbose=False, **kw)


def _pycocotools(data: dict, detections: list, folder: Path, image_ids=None) -> np.ndarray:
    """pycocotools' 12 statistics on ``data`` written as a file."""
    return _pycocotools_stats(_write(data, folder, "expected.json"), detections, image_ids)


def _assert_coco_equal(ours: dict, expected: np.ndarray) -> None:
    np.testing.assert_allclose([ours[k] for k in COCO_STAT_NAMES], expected, rtol=0, atol=1e-12)


@needs_shared
def test_the_valid_file_scores_as_pycocotools_with_no_notes(base, tmp_path):
    _assert_coco_equal(base.results["coco"], _pycocotools(base.data, base.detections, tmp_path))
    assert base.results["coco_file"] == {"notes": [], "images": 4, "images_predicted": 4,
                                         "yolojax_labels": {"clipped": 0, "dropped": 0, "duplicates": 0, "crowd": 0}}
    assert 0.4 < base.results["coco"]["AP"] < 0.5


def _alphabetical_ids(data: dict) -> dict:
    """The same file with category ids 1..80 given in alphabetical order of the names (a valid COCO file)."""
    out = copy.deepcopy(data)
    new_id = {c["id"]: k for k, c in enumerate(sorted(out["categories"], key=lambda c: c["name"]), 1)}
    for entry in out["categories"]:
        entry["id"] = new_id[entry["id"]]
    for ann in out["annotations"]:
        ann["category_id"] = new_id[ann["category_id"]]
    return out


@needs_shared
def test_categories_in_another_id_order_are_matched_by_name(base, tmp_path):
    variant = _alphabetical_ids(base.data)
    path = _write(variant, tmp_path)
    ours = _validate(base, path)
    by_name = {c["name"]: c["id"] for c in variant["categories"]}
    name_of = {c["id"]: c["name"] for c in base.data["categories"]}
    detections = [{**d, "category_id": by_name[name_of[d["category_id"]]]} for d in base.detections]
    _assert_coco_equal(ours["coco"], _pycocotools(variant, detections, tmp_path))
    assert ours["mAP50-95"] == base.results["mAP50-95"] and ours["coco"] == pytest.approx(base.results["coco"])
    assert any("matched to the model's classes by name" in n and "category 1 'airplane' is class 4" in n
               for n in ours["coco_file"]["notes"])
    by_order = _validate(base, path, categories_by_order=True)  # the opt-in keeps id order: 'person' scored as 'apple'
    assert by_order["coco"]["AP"] < 0.01


@needs_shared
def test_category_names_that_differ_are_refused_unless_mapped_by_order(base, tmp_path):
    variant = copy.deepcopy(base.data)
    variant["categories"][0]["name"] = "pedestrian"
    path = _write(variant, tmp_path)
    with pytest.raises(ValueError, match=r"instances\.json: the categories' names are not the model's class names "
                                         r"\(80 categories, 80 classes; only in the file: 'pedestrian'; only in the "
                                         r"model: 'person'\).*--categories-by-order") as e:
        _validate(base, path)
    assert "\n" not in str(e.value)
    ours = _validate(base, path, categories_by_order=True)
    _assert_coco_equal(ours["coco"], _pycocotools(variant, base.detections, tmp_path))
    assert ours["mAP50-95"] == base.results["mAP50-95"]


def _refusal_cases() -> dict:
    """name -> (change to the file, the error's text after '<file>: ')."""

    def duplicate_image_id(d):
        d["images"][1]["id"] = d["images"][0]["id"]

    def shared_file_name(d):
        d["images"][1]["file_name"] = d["images"][0]["file_name"]

    def string_image_id(d):
        d["images"][2]["id"] = "000000000049"

    def string_category_id(d):
        d["categories"][3]["id"] = "4"

    def category_without_name(d):
        del d["categories"][5]["name"]

    def image_without_file_name(d):
        del d["images"][3]["file_name"]

    def unknown_category(d):
        d["annotations"][4]["category_id"] = 12

    def unknown_image(d):
        d["annotations"][5]["image_id"] = 999

    def no_categories(d):
        del d["categories"]

    def no_bbox_no_segmentation(d):
        del d["annotations"][6]["bbox"]

    def bad_bbox(d):
        d["annotations"][7]["bbox"] = [1, 2, 3]

    return {
        "duplicate_image_id": (duplicate_image_id, "images: id 36 is used twice ('000000000036.jpg', "
                                                   "'000000000042.jpg')"),
        "shared_file_name": (shared_file_name, "images: file_name '000000000036.jpg' is used by ids 36 and 43"),
        "string_image_id": (string_image_id, "images[2]: id '000000000049' is not an integer"),
        "string_category_id": (string_category_id, "categories[3]: id '4' is not an integer"),
        "category_without_name": (category_without_name, "categories[5] (id 6) has no 'name'"),
        "image_without_file_name": (image_without_file_name, "images[3] (id 57) has no 'file_name'"),
        "unknown_category": (unknown_category, "annotations[4] (id 5): category_id 12 is not an id in 'categories'"),
        "unknown_image": (unknown_image, "annotations[5] (id 6): image_id 999 is not an id in 'images'"),
        "no_categories": (no_categories, "a COCO instances file needs a 'categories' list"),
        "no_bbox_no_segmentation": (no_bbox_no_segmentation, "annotations[6] (id 7) has no bbox, and no polygon or "
                                                             "RLE segmentation to take one from"),
        "bad_bbox": (bad_bbox, "annotations[7] (id 8): bbox [1, 2, 3] is not [x, y, width, height]"),
    }


@needs_shared
@pytest.mark.parametrize("case", sorted(_refusal_cases()))
def test_inconsistencies_are_refused_in_one_line(base, tmp_path, case):
    change, message = _refusal_cases()[case]
    variant = copy.deepcopy(base.data)
    change(variant)
    path = _write(variant, tmp_path)
    for read in (lambda: coco_json_source(path, base.images_dir, use_cache=False),  # the data API
                 lambda: coco_evaluate(path, base.detections)):  # the COCO metrics
        with pytest.raises(ValueError) as e:
            read()
        assert str(e.value).startswith(f"{path}: {message}") and "\n" not in str(e.value), str(e.value)


@needs_shared
def test_val_refuses_a_bad_file_before_loading_the_weights(base, tmp_path, capsys):
    variant = copy.deepcopy(base.data)
    for image in variant["images"]:
        image["id"] = Path(image["file_name"]).stem
    path = _write(variant, tmp_path)
    weights = tmp_path / "not_weights.pt"
    weights.write_bytes(b"")  # loading it would fail with another error
    argv = ["--weights", str(weights), "--data", str(path), "--images", str(base.images_dir)]
    assert yj_val.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"python -m yolojax.val: error: {path}: images[0]: id '000000000036' is not an integer " \
                  "(renumber the file's images with integer ids)"


def _ids_from_zero(d):
    for i, ann in enumerate(d["annotations"]):
        ann["id"] = i


def _ids_repeated(d):
    for i, ann in enumerate(d["annotations"]):
        ann["id"] = 1 + i // 2


def _ids_strings(d):
    for i, ann in enumerate(d["annotations"]):
        ann["id"] = f"ann-{i}"


@needs_shared
@pytest.mark.parametrize(("change", "counts", "as_is"), [
    (_ids_from_zero, "ids 1 below 1", "lower"), (_ids_repeated, "ids 8 used before", "lower"),
    (_ids_strings, "ids 17 not an integer", "error")])
def test_annotation_ids_pycocotools_mishandles_are_renumbered(base, tmp_path, change, counts, as_is):
    variant = copy.deepcopy(base.data)
    change(variant)
    ours = _validate(base, _write(variant, tmp_path))
    renumbered = copy.deepcopy(variant)
    for i, ann in enumerate(renumbered["annotations"], 1):
        ann["id"] = i
    expected = _pycocotools(renumbered, base.detections, tmp_path)
    _assert_coco_equal(ours["coco"], expected)
    # pycocotools on the file as it is: id 0 and repeated ids lose matches (a lower AP); string ids fail
    if as_is == "lower":
        assert _pycocotools(variant, base.detections, tmp_path)[0] < expected[0] - 0.1
    else:
        with pytest.raises(ValueError, match="could not convert string to float"):
            _pycocotools(variant, base.detections, tmp_path)
    (note,) = ours["coco_file"]["notes"]
    assert "annotation ids renumbered 1..17" in note and note.endswith(counts)


def _octagon(x: float, y: float, w: float, h: float) -> list[float]:
    """A polygon inside the box [x, y, w, h] that touches each of its sides."""
    corners = [(0.3, 0), (0.7, 0), (1, 0.4), (1, 0.6), (0.7, 1), (0.3, 1), (0, 0.6), (0, 0.4)]
    return [v for fx, fy in corners for v in (x + fx * w, y + fy * h)]


@needs_shared
def test_annotations_without_a_bbox_get_their_polygon_extents(base, tmp_path):
    variant = copy.deepcopy(base.data)
    for ann in variant["annotations"][::2]:
        ann["segmentation"] = [_octagon(*ann.pop("bbox"))]
    ours = _validate(base, _write(variant, tmp_path))
    converted = copy.deepcopy(variant)  # as a converter does: the bbox encloses the polygon
    for ann in converted["annotations"]:
        if "bbox" not in ann:
            xy = np.array(ann["segmentation"][0]).reshape(-1, 2)
            ann["bbox"] = [*xy.min(0), *(xy.max(0) - xy.min(0))]
    _assert_coco_equal(ours["coco"], _pycocotools(converted, base.detections, tmp_path))
    assert ours["mAP50-95"] == pytest.approx(base.results["mAP50-95"], abs=1e-6)
    (note,) = ours["coco_file"]["notes"]
    assert "9 annotations have no bbox; each got the extents of its segmentation (first: annotations[0] (id 1))" in note


def test_segmentation_box_of_polygons_and_rle():
    from pycocotools import mask as mask_utils

    assert segmentation_box([[10, 20, 30, 5, 25, 40]], "a") == [10.0, 5.0, 20.0, 35.0]
    assert segmentation_box([1, 2, 5, 9], "a") == [1.0, 2.0, 4.0, 7.0]  # one flat polygon
    mask = np.zeros((10, 12), np.uint8, order="F")
    mask[2:5, 3:9] = 1
    rle = mask_utils.encode(mask)
    assert segmentation_box({"counts": rle["counts"].decode(), "size": [10, 12]}, "a") == [3.0, 2.0, 6.0, 3.0]
    column_major = mask.reshape(-1, order="F").astype(int)
    runs = np.diff(np.flatnonzero(np.diff(np.r_[-1, column_major, -1])))  # uncompressed RLE: run lengths from 0s
    assert segmentation_box({"counts": runs.tolist(), "size": [10, 12]}, "a") == [3.0, 2.0, 6.0, 3.0]
    with pytest.raises(ValueError, match=r"^ann 3 has no bbox, and no polygon or RLE segmentation"):
        segmentation_box([[1, 2, 3]], "ann 3")


@needs_shared
def test_image_sizes_that_differ_from_the_decoded_images(base, tmp_path):
    variant = copy.deepcopy(base.data)
    for image in variant["images"]:
        image["width"], image["height"] = image["height"], image["width"]
    ours = _validate(base, _write(variant, tmp_path))
    _assert_coco_equal(ours["coco"], _pycocotools(variant, base.detections, tmp_path))
    assert ours["mAP50-95"] == base.results["mAP50-95"]  # yolojax's labels follow the decoded images too
    (note,) = ours["coco_file"]["notes"]
    assert ("4 of 4 images have a width/height in the file other than the decoded image's (first: "
            "'000000000036.jpg', 640x481 in the file, 481x640 decoded); their boxes are read as pixels of the "
            "decoded image") in note


@needs_shared
def test_boxes_outside_their_image_stay_in_the_coco_metrics(base, tmp_path):
    variant = copy.deepcopy(base.data)
    horse = variant["annotations"][3]  # image 50, 381 px wide
    horse["bbox"][2] += 200  # now reaches 112 px past the right edge
    variant["annotations"].append({"id": 18, "image_id": 57, "category_id": 1, "bbox": [700, 10, 50, 50],
                                   "area": 2500, "iscrowd": 0})  # wholly right of the 640 px image
    ours = _validate(base, _write(variant, tmp_path))
    expected = _pycocotools(variant, base.detections, tmp_path)
    _assert_coco_equal(ours["coco"], expected)
    without_those_images = _pycocotools(variant, base.detections, tmp_path, image_ids=[36, 43])
    assert abs(without_those_images[0] - expected[0]) > 0.05  # what scoring the images that pass a label check gives
    assert ours["images"] == 4 and ours["instances"] == 17  # yolojax's own mAP: clipped horse kept, outside box dropped
    assert ours["coco_file"]["yolojax_labels"] == {"clipped": 1, "dropped": 1, "duplicates": 0, "crowd": 0}
    (note,) = ours["coco_file"]["notes"]
    assert ("yolojax's labels (its own mAP, training): 1 boxes partly outside their image clipped to it, 1 boxes "
            "with no area inside their image dropped; the COCO metrics (pycocotools) score every annotation") in note


@needs_shared
def test_unreadable_images_stay_in_the_coco_metrics(base, tmp_path):
    variant = copy.deepcopy(base.data)
    variant["images"].append({"id": 99, "file_name": "not_there.jpg", "height": 480, "width": 640})
    for k, box in enumerate([[10, 10, 100, 200], [300, 40, 80, 80]]):  # two dogs (coco8 has one more)
        variant["annotations"].append({"id": 100 + k, "image_id": 99, "category_id": 18, "bbox": box,
                                       "area": box[2] * box[3], "iscrowd": 0})
    ours = _validate(base, _write(variant, tmp_path))
    expected = _pycocotools(variant, base.detections, tmp_path)
    _assert_coco_equal(ours["coco"], expected)
    assert expected[0] < base.results["coco"]["AP"] - 0.01  # the two missed dogs count
    assert ours["coco_file"]["images"] == 5 and ours["coco_file"]["images_predicted"] == 4
    (note,) = ours["coco_file"]["notes"]
    assert note.endswith("the COCO metrics cover all 5 images of the file; 1 could not be read (first: "
                         "'not_there.jpg') and have no detections, so their 2 annotations count as missed")
