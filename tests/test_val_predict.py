"""End to end: yolojax.val and yolojax.predict against ultralytics (test oracle) with real weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

os.environ.setdefault("YOLO_OFFLINE", "1")

from yolojax import predict as yj_predict
from yolojax import val as yj_val
from yolojax.inference import predictor as yj_predictor
from yolojax.inference import detector as yj_detector
from yolojax.evaluation import validator as yj_validator
from yolojax.data.sources.coco_json import COCO80_CATEGORY_IDS
from shared_data import COCO8, WEIGHTS, bus_jpg, needs

needs_shared = needs(WEIGHTS, COCO8 / "coco8.yaml")



def _xyxy_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a[:, None], b[None]
    wh = np.clip(np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2]), 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])
    return inter / (area(a) + area(b) - inter)


@pytest.fixture(scope="module")
def coco8_copies(tmp_path_factory):
    """Separate writable copies of coco8 for yolojax and for ultralytics (each writes label caches)."""
    root = tmp_path_factory.mktemp("coco8")
    return shutil.copytree(COCO8, root / "ours"), shutil.copytree(COCO8, root / "theirs")


# ultralytics' defaults: ``YOLO(...).val()`` / ``.predict()`` (and ``yolo val`` / ``yolo predict``) use
# rectangular batches / the minimum-rectangle letterbox; "square" is their rect=False.
DEFAULTS = {"default": ([], {}), "square": (["--no-rect"], {"rect": False})}


@needs_shared
@pytest.mark.parametrize("mode", list(DEFAULTS))
def test_val_matches_ultralytics(coco8_copies, tmp_path, mode):
    ultralytics = pytest.importorskip("ultralytics")
    ours_dir, theirs_dir = coco8_copies
    flags, kwargs = DEFAULTS[mode]
    out_json = tmp_path / "val.json"
    argv = ["--weights", str(WEIGHTS), "--data", str(ours_dir / "coco8.yaml"), "--json", str(out_json), *flags]
    argv += ["--plots", str(tmp_path)] if mode == "square" else []
    assert yj_val.main(argv) == 0
    ours = json.loads(out_json.read_text())
    ref = ultralytics.YOLO(str(WEIGHTS)).val(data=str(theirs_dir / "coco8.yaml"), plots=False, device="cpu",
                                             verbose=False, project=str(tmp_path / "ultra"), **kwargs)
    print(f"{mode}: yolojax mAP50 {ours['mAP50']:.6f} mAP50-95 {ours['mAP50-95']:.6f} | "
          f"ultralytics mAP50 {ref.box.map50:.6f} mAP50-95 {ref.box.map:.6f}")
    assert abs(ours["mAP50"] - ref.box.map50) < 0.0005
    assert abs(ours["mAP50-95"] - ref.box.map) < 0.0005
    if mode == "default":  # the README's numbers (ultralytics' `yolo val model=yolov8n.pt data=coco8.yaml`)
        assert (round(ours["mAP50"], 3), round(ours["mAP50-95"], 3)) == (0.896, 0.630)
        assert ours["settings"]["rect"] is True
    assert set(ours) >= {"mAP50", "mAP50-95", "precision", "recall", "per_class"}
    assert ours["images"] == 4 and ours["instances"] == 17
    assert {ref.names[c] for c in ref.box.ap_class_index} == set(ours["per_class"])
    if mode == "square":
        # ultralytics 8.4.190's names for val plots=True
        expected = [f"val_batch0_{k}.jpg" for k in ("labels", "pred")] + [
            f"Box{k}_curve.png" for k in ("P", "R", "F1", "PR")] + ["confusion_matrix.png",
                                                                   "confusion_matrix_normalized.png"]
        assert all((tmp_path / name).stat().st_size > 5000 for name in expected)


@needs_shared
def test_val_counts_every_ground_truth_box_like_ultralytics(tmp_path):
    """An image with 314 labels counts 314 instances (none cut at a padding of 300), and max_det is raised to 314
    as ultralytics raises it: the same instances and mAP as ultralytics' val."""
    ultralytics = pytest.importorskip("ultralytics")
    root = shutil.copytree(COCO8, tmp_path / "dense")
    label = root / "labels" / "val" / "000000000049.txt"
    rows = label.read_text().strip().splitlines()
    grid = [f"0 {(c + 0.5) / 18:.6f} {(r + 0.5) / 18:.6f} 0.03 0.03" for r in range(18) for c in range(18)]
    label.write_text("\n".join(rows + grid[: 314 - len(rows)]) + "\n")
    ours = yj_validator.validate(WEIGHTS, root / "coco8.yaml", imgsz=320, verbose=False)
    theirs_root = shutil.copytree(root, tmp_path / "theirs")
    ref = ultralytics.YOLO(str(WEIGHTS)).val(data=str(theirs_root / "coco8.yaml"), imgsz=320, plots=False, device="cpu",
                                             verbose=False, project=str(tmp_path / "ultra"))
    print(f"314 boxes: yolojax instances {ours['instances']} mAP50 {ours['mAP50']:.6f} mAP50-95 "
          f"{ours['mAP50-95']:.6f} | ultralytics instances {int(ref.nt_per_class.sum())} mAP50 "
          f"{ref.box.map50:.6f} mAP50-95 {ref.box.map:.6f}")
    assert ours["instances"] == 17 - len(rows) + 314 == int(ref.nt_per_class.sum())
    assert ours["per_class"]["person"]["instances"] == int(ref.nt_per_class[0])
    assert ours["settings"]["max_det"] == 314
    assert abs(ours["mAP50"] - ref.box.map50) < 0.0005
    assert abs(ours["mAP50-95"] - ref.box.map) < 0.0005


@needs_shared
@pytest.mark.parametrize("mode", list(DEFAULTS))
def test_predict_matches_ultralytics(tmp_path, mode):
    ultralytics = pytest.importorskip("ultralytics")
    bus = bus_jpg()
    flags, kwargs = DEFAULTS[mode]
    argv = ["--weights", str(WEIGHTS), "--source", str(bus), "--out", str(tmp_path / "out")]
    assert yj_predict.main(argv + flags) == 0
    ours = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert len(ours) == 1 and ours[0]["image"] == str(bus)
    assert (tmp_path / "out" / "bus.jpg").is_file()
    ref = ultralytics.YOLO(str(WEIGHTS)).predict(str(bus), device="cpu", save=False, verbose=False, **kwargs)[0]
    if mode == "default":
        assert len(ref.boxes) == 6
    ref_boxes, ref_cls = ref.boxes.xyxy.numpy(), ref.boxes.cls.numpy().astype(int)
    boxes, classes = np.array(ours[0]["boxes_xyxy"]), np.array(ours[0]["classes"])
    assert len(boxes) == len(ref_boxes) > 0
    iou = _xyxy_iou(boxes, ref_boxes)
    match = iou.argmax(1)
    assert np.all(iou[np.arange(len(boxes)), match] >= 0.99), iou
    assert sorted(match.tolist()) == list(range(len(ref_boxes)))
    np.testing.assert_array_equal(classes, ref_cls[match])
    np.testing.assert_allclose(ours[0]["scores"], ref.boxes.conf.numpy()[match], atol=5e-3)
    assert ours[0]["names"] == [ref.names[c] for c in classes]


@needs_shared
def test_predict_api_folder_and_glob(tmp_path):
    bus = bus_jpg()
    (tmp_path / "imgs").mkdir()
    shutil.copy(bus, tmp_path / "imgs" / "a.jpg")
    shutil.copy(bus, tmp_path / "imgs" / "b.jpg")
    assert [p.name for p in yj_predictor.list_sources(tmp_path / "imgs")] == ["a.jpg", "b.jpg"]
    assert [p.name for p in yj_predictor.list_sources(str(tmp_path / "imgs" / "b*"))] == ["b.jpg"]
    predictor = yj_predictor.Predictor(str(WEIGHTS))
    from yolojax.data.image_io import read_image_rgb

    res = predictor([tmp_path / "imgs" / "a.jpg", read_image_rgb(bus)])
    assert res[0]["image"].endswith("a.jpg")
    np.testing.assert_allclose(res[0]["boxes_xyxy"], res[1]["boxes_xyxy"])
    # One image alone, as ultralytics' model(source): a path, an (H, W, 3) array, an (N, H, W, 3) stack.
    for single in (tmp_path / "imgs" / "a.jpg", str(tmp_path / "imgs" / "a.jpg"), read_image_rgb(bus),
                   read_image_rgb(bus)[None]):
        (one,) = predictor(single)
        np.testing.assert_allclose(one["boxes_xyxy"], res[0]["boxes_xyxy"])
    # The size the weights were trained at is the default (the official .pt's train_args: 640).
    assert predictor.imgsz == 640
    from yolojax.weights import load_weights

    variables, info = load_weights(WEIGHTS)
    assert yj_predictor.Predictor(variables=variables, info={**info, "imgsz": 320}).imgsz == 320
    assert yj_predictor.Predictor(variables=variables, info={**info, "imgsz": 320}, imgsz=416).imgsz == 416


# YOLO11: a .pt that ultralytics itself writes (yolo11n.yaml, 80 classes: no official weights
# offline), through both commands at imgsz 64 with square letterboxes (one compile each).
YOLO11N_SUMMARY = "YOLO11n summary (fused): 100 layers, 2,616,248 parameters, 0 gradients, 6.5 GFLOPs"


@pytest.fixture(scope="module")
def yolo11n_pt(tmp_path_factory):
    """yolo11n.pt written by ``YOLO("yolo11n.yaml").save(...)`` after test_convert's random-weights
    recipe (tests/test_yolo11.py: gain 1.3 at scale n): ultralytics' own initialisation gives every
    image the same full-image boxes and scores, which would hide a wrong input."""
    torch = pytest.importorskip("torch")
    ultralytics = pytest.importorskip("ultralytics")
    from test_convert import randomize

    torch.manual_seed(0)
    model = ultralytics.YOLO("yolo11n.yaml")
    randomize(model.model, 1.3, seed=None)  # the generator as YOLO(...) left it
    path = tmp_path_factory.mktemp("yolo11") / "yolo11n.pt"
    model.save(str(path))
    return path


def _summary_lines(err: str) -> list[str]:
    return [line.strip() for line in err.splitlines() if " summary (fused): " in line]


@needs(COCO8 / "coco8.yaml")
def test_val_yolo11_pt(yolo11n_pt, coco8_copies, tmp_path, capsys):
    """``yolojax val`` of a YOLO11 .pt: ultralytics' summary line for it, the metrics and the plots."""
    ours_dir, _ = coco8_copies
    out_json = tmp_path / "val.json"
    argv = ["--weights", str(yolo11n_pt), "--data", str(ours_dir / "coco8.yaml"), "--imgsz", "64", "--batch", "4",
            "--no-rect", "--json", str(out_json), "--plots", str(tmp_path / "plots")]
    assert yj_val.main(argv) == 0
    assert [line.endswith(YOLO11N_SUMMARY) for line in _summary_lines(capsys.readouterr().err)] == [True]
    ours = json.loads(out_json.read_text())
    assert ours["images"] == 4 and ours["instances"] == 17
    assert all(0 <= ours[k] <= 1 for k in ("mAP50", "mAP50-95", "precision", "recall"))
    plots = ["val_batch0_labels.jpg", "val_batch0_pred.jpg", "confusion_matrix.png", "BoxPR_curve.png"]
    assert all((tmp_path / "plots" / name).stat().st_size > 5000 for name in plots)


def test_predict_yolo11_pt_images_and_video(yolo11n_pt, tmp_path, capsys):
    """``yolojax predict`` of a YOLO11 .pt on an image and a video: the summary line, a result per
    image and per frame (conf 0: boxes drawn on each), annotated copies of both."""
    from test_cli_inputs import write_video

    from yolojax.data.sources.synthetic import draw_shapes

    source = tmp_path / "source"
    source.mkdir()
    frames = write_video(source / "clip.avi", 3)
    image, _, _ = draw_shapes(np.random.default_rng(1), 80, 70, 3)
    cv2.imwrite(str(source / "still.jpg"), image[..., ::-1])
    out = tmp_path / "out"
    argv = ["--weights", str(yolo11n_pt), "--source", str(source), "--out", str(out), "--imgsz", "64", "--no-rect",
            "--conf", "0", "--max-det", "20"]
    assert yj_predict.main(argv) == 0
    captured = capsys.readouterr()
    assert [line.endswith(YOLO11N_SUMMARY) for line in _summary_lines(captured.err)] == [True]
    results = json.loads((out / "predictions.json").read_text())
    assert [(Path(r["image"]).name, r.get("frame")) for r in results] == [("still.jpg", None)] + [
        ("clip.avi", k) for k in (1, 2, 3)]
    assert all(0 < len(r["classes"]) == len(r["names"]) <= 20 for r in results)  # conf 0: up to max_det each
    count = sum(len(r["classes"]) for r in results)
    assert captured.out.strip() == f"1 images, 3 frames of 1 videos, {count} detections -> {out / 'predictions.json'}"
    predictor = yj_predictor.Predictor(yolo11n_pt, imgsz=64, rect=False, conf=0.0, max_det=20)
    for frame, r in zip(frames, results[1:]):  # each frame's own boxes
        np.testing.assert_allclose(r["boxes_xyxy"], predictor.predict_array(frame)["boxes_xyxy"], atol=1e-4)
    assert results[1]["boxes_xyxy"] != results[2]["boxes_xyxy"]  # the frames differ: so do their boxes
    assert cv2.imread(str(out / "still.jpg")).shape == image.shape
    written = [frame for _, frame in yj_predictor.read_video_frames(out / "clip.avi")]
    assert len(written) == 3 and written[0].shape == frames[0].shape


def test_letterbox_and_scale_boxes_roundtrip():
    lb = yj_predictor.letterbox_for_predict((1080, 810), 640, rect=True)
    assert lb.out_hw == (640, 480) and lb.resized_wh == (480, 640)
    lb = yj_predictor.letterbox_for_predict((1080, 810), 640)
    assert lb.out_hw == (640, 640) and (lb.left, lb.right) == (80, 80)
    box = np.array([[80.0, 0.0, 560.0, 640.0]])
    np.testing.assert_allclose(yj_predictor.scale_boxes_to_original(box, (640, 640), (1080, 810)),
                               [[0, 0, 810, 1080]], atol=1e-3)


@pytest.mark.parametrize("module", ["yolojax.val", "yolojax.predict"])
def test_cli_contract(module, tmp_path, capsys):
    mod = yj_val if module == "yolojax.val" else yj_predict
    with pytest.raises(SystemExit) as e:
        mod.main(["--help"])
    assert e.value.code == 0 and "--weights" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        mod.main(["--weights", "w.pt", "--data", "d.yaml", "--source", "x", "--out", "o", "--bogus", "1"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "--bogus" in err
    extra = ["--data", str(tmp_path / "d.yaml")] if mod is yj_val else ["--source", "x.jpg", "--out", str(tmp_path)]
    assert mod.main(["--weights", str(tmp_path / "missing.pt"), *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing.pt" in err


def test_predict_fn_is_shared_between_validations():
    """Validations with the same model and settings reuse one jitted function (compiled once, e.g. per training)."""
    info = {"scale": "n", "num_classes": 2, "names": ["a", "b"]}
    first = yj_detector.make_predict_fn(info, 0.001, 0.7, 300)
    assert yj_detector.make_predict_fn(dict(info, reg_max=16), 0.001, 0.7, 300) is first
    assert yj_detector.make_predict_fn(info, 0.25, 0.7, 300) is not first
    assert yj_detector.make_predict_fn(dict(info, num_classes=3), 0.001, 0.7, 300) is not first
    assert yj_validator.is_coco_json("a/instances_val2017.JSON") and not yj_validator.is_coco_json("coco8.yaml")


def test_cli_subprocess_bad_input(tmp_path):
    r = subprocess.run([sys.executable, "-m", "yolojax.val", "--weights", str(tmp_path / "nope.pt"), "--data",
                        "x.yaml"], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1


@needs_shared
def test_val_on_8_simulated_devices_matches_one(coco8_copies, tmp_path):
    ours_dir, _ = coco8_copies
    args = ["--weights", str(WEIGHTS), "--data", str(ours_dir / "coco8.yaml"), "--batch", "8", "--rect"]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    code = ("import jax, sys; from yolojax import val; assert jax.local_device_count() == 8; "
            "sys.exit(val.main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, *args, "--json", str(tmp_path / "8.json")], env=env,
                       capture_output=True, text=True, timeout=600, check=False,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr[-2000:]
    assert yj_val.main([*args, "--json", str(tmp_path / "1.json")]) == 0
    eight, one = (json.loads((tmp_path / f).read_text()) for f in ("8.json", "1.json"))
    for k in ("mAP50", "mAP50-95", "precision", "recall"):
        assert abs(eight[k] - one[k]) < 1e-6, (k, eight[k], one[k])


def yolo_split_to_coco_json(data_yaml: Path, out_json: Path, category_ids, first_image_id: int = 1) -> Path:
    """The val split of a YOLO-format dataset as a COCO instances JSON; returns its image folder.

    Class k becomes category ``category_ids[k]``; images get ids first_image_id + 7 * i (sparse, so
    an index used as an id shows)."""
    from yolojax.data import image_to_label_paths, list_image_files, load_data_yaml

    spec = load_data_yaml(data_yaml)
    image_paths = list_image_files(spec.splits["val"])
    images, annotations = [], []
    for i, (image_path, label_path) in enumerate(zip(image_paths, image_to_label_paths(image_paths))):
        h, w = cv2.imread(image_path).shape[:2]
        image_id = first_image_id + 7 * i
        images.append({"id": image_id, "file_name": Path(image_path).name, "height": h, "width": w})
        rows = np.loadtxt(label_path, ndmin=2) if Path(label_path).is_file() else np.zeros((0, 5))
        for cls, cx, cy, bw, bh in rows:
            box = [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category_ids[int(cls)],
                                "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
    categories = [{"id": c, "name": n} for c, n in zip(category_ids, spec.names)]
    out_json.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    folders = {str(Path(p).parent) for p in image_paths}
    assert len(folders) == 1, folders
    return Path(folders.pop())


def check_coco_predictions(predictions_json: Path, annotations_json: Path) -> None:
    """COCO results format: known image and category ids, [x, y, w, h] inside the original image."""
    gt = json.loads(annotations_json.read_text())
    sizes = {im["id"]: (im["width"], im["height"]) for im in gt["images"]}
    predictions = json.loads(predictions_json.read_text())
    assert predictions and set(predictions[0]) == {"image_id", "category_id", "bbox", "score"}
    assert {p["category_id"] for p in predictions} <= {c["id"] for c in gt["categories"]}
    assert {p["image_id"] for p in predictions} == set(sizes)
    for p in predictions:
        x, y, w, h = p["bbox"]
        width, height = sizes[p["image_id"]]
        assert 0 <= x <= x + w <= width + 1e-3 and 0 <= y <= y + h <= height + 1e-3 and 0 < p["score"] <= 1


@needs_shared
def test_val_coco_json_reports_official_coco_metrics(tmp_path):
    """coco8 as a COCO JSON (real category ids 1..90): the same ultralytics-style numbers as from its
    data.yaml, plus pycocotools' AP close to mAP50-95."""
    annotations = tmp_path / "instances_val.json"
    images_dir = yolo_split_to_coco_json(COCO8 / "coco8.yaml", annotations, COCO80_CATEGORY_IDS, first_image_id=36)
    from yolojax.weights import load_weights

    variables, info = load_weights(WEIGHTS)
    kw = {"variables": variables, "info": info, "imgsz": 640, "batch": 4, "verbose": False}
    from_yaml = yj_validator.validate(data=shutil.copytree(COCO8, tmp_path / "coco8") / "coco8.yaml", **kw)
    out_json, predictions = tmp_path / "val.json", tmp_path / "predictions.json"
    argv = ["--weights", str(WEIGHTS), "--data", str(annotations), "--images", str(images_dir), "--imgsz", "640",
            "--batch", "4", "--json", str(out_json), "--predictions", str(predictions)]
    assert yj_val.main(argv) == 0
    ours = json.loads(out_json.read_text())
    for k in ("mAP50", "mAP50-95", "precision", "recall"):
        assert ours[k] == pytest.approx(from_yaml[k], abs=1e-9), k
    assert set(ours["coco"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm",
                                 "ARl"}
    print(f"coco8 JSON: mAP50-95 {ours['mAP50-95']:.4f} COCO AP {ours['coco']['AP']:.4f} | "
          f"mAP50 {ours['mAP50']:.4f} COCO AP50 {ours['coco']['AP50']:.4f}")
    assert abs(ours["coco"]["AP"] - ours["mAP50-95"]) < 0.05
    assert abs(ours["coco"]["AP50"] - ours["mAP50"]) < 0.05
    check_coco_predictions(predictions, annotations)


def test_val_coco_json_cli_errors(tmp_path, capsys):
    annotations = tmp_path / "instances.json"
    annotations.write_text("{}")
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")
    assert yj_val.main(["--weights", str(weights), "--data", str(annotations)]) == 1
    assert "--images" in capsys.readouterr().err
    data_yaml = tmp_path / "d.yaml"
    data_yaml.write_text("train: a\nval: a\nnames: [x]\n")
    assert yj_val.main(["--weights", str(weights), "--data", str(data_yaml), "--images", str(tmp_path)]) == 1
    assert "COCO JSON" in capsys.readouterr().err
    with pytest.raises(ValueError, match="COCO JSON"):
        yj_validator.validate(data=data_yaml, predictions_json=tmp_path / "p.json")


# A model ultralytics trains inside the test (no shared data needed): YOLOv8n from scratch on big,
# high-contrast squares and discs at imgsz 64; the settings below reach mAP50 ~0.9 in ~30 s of CPU.
TRAIN_IMGSZ = 64
TRAIN_NAMES = ("square", "disc")
_TRAIN_SCRIPT = """
import sys
from ultralytics import YOLO
YOLO("yolov8n.yaml").train(
    data=sys.argv[1], project=sys.argv[2], name="train", exist_ok=True, imgsz=int(sys.argv[3]), epochs=12, batch=16,
    workers=0, device="cpu", amp=False, plots=False, val=False, seed=0, deterministic=True, verbose=False,
    optimizer="AdamW", lr0=0.004, nbs=16, warmup_epochs=0, mosaic=0.0, translate=0.0, scale=0.0, hsv_h=0.0,
    hsv_s=0.0, hsv_v=0.0)
"""


def _draw_square_or_disc_image(rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """BGR image (sides 48..96 px, dark background) with 1-2 white squares (class 0) or red discs (class 1)
    of 30-60 % of the short side, and its YOLO label rows."""
    h, w = (int(v) for v in rng.integers(48, 97, 2))
    image = np.full((h, w, 3), 40, np.uint8)
    rows = []
    for _ in range(int(rng.integers(1, 3))):
        cls = int(rng.integers(0, 2))
        side = int(rng.integers(min(h, w) * 3 // 10, min(h, w) * 6 // 10))
        x1, y1 = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
        if cls == 0:
            cv2.rectangle(image, (x1, y1), (x1 + side - 1, y1 + side - 1), (255, 255, 255), -1)
        else:
            cv2.circle(image, (x1 + side // 2, y1 + side // 2), side // 2, (60, 60, 255), -1)
        rows.append(f"{cls} {(x1 + side / 2) / w:.6f} {(y1 + side / 2) / h:.6f} {side / w:.6f} {side / h:.6f}")
    return image, rows


def _write_square_or_disc_dataset(root: Path, num_train: int = 128, num_val: int = 16, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, count in (("train", num_train), ("val", num_val)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(count):
            image, rows = _draw_square_or_disc_image(rng)
            cv2.imwrite(str(root / "images" / split / f"{i:04d}.png"), image)
            (root / "labels" / split / f"{i:04d}.txt").write_text("\n".join(rows) + "\n")
    data_yaml = root / "data.yaml"
    data_yaml.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val",
                                         "names": dict(enumerate(TRAIN_NAMES))}))
    return data_yaml


@pytest.fixture(scope="module")
def ultralytics_trained(tmp_path_factory):
    """Weights ultralytics trained in a subprocess (its settings and runs in a temporary folder), the data.yaml."""
    pytest.importorskip("ultralytics")
    root = tmp_path_factory.mktemp("ultralytics_trained")
    data_yaml = _write_square_or_disc_dataset(root / "data")
    env = dict(os.environ, YOLO_OFFLINE="1", YOLO_CONFIG_DIR=str(root / "settings"))
    r = subprocess.run([sys.executable, "-c", _TRAIN_SCRIPT, str(data_yaml), str(root / "runs"), str(TRAIN_IMGSZ)],
                       cwd=root, env=env, capture_output=True, text=True, timeout=900, check=False)
    weights = root / "runs" / "train" / "weights" / "last.pt"
    assert r.returncode == 0 and weights.is_file(), r.stdout[-3000:] + r.stderr[-3000:]
    return types.SimpleNamespace(weights=weights, data_yaml=data_yaml, root=root)


def _ultralytics_val(weights: Path, data_yaml: Path, project: Path, rect: bool):
    import ultralytics

    return ultralytics.YOLO(str(weights)).val(data=str(data_yaml), imgsz=TRAIN_IMGSZ, batch=16, conf=0.001, iou=0.7,
                                              rect=rect, plots=False, device="cpu", verbose=False,
                                              project=str(project))


@pytest.mark.slow
@pytest.mark.parametrize("rect", [False, True])
def test_val_matches_ultralytics_on_a_model_it_trained(ultralytics_trained, tmp_path, rect):
    ref = _ultralytics_val(ultralytics_trained.weights, ultralytics_trained.data_yaml, tmp_path / "ultra", rect)
    out_json = tmp_path / "val.json"
    argv = ["--weights", str(ultralytics_trained.weights), "--data", str(ultralytics_trained.data_yaml), "--imgsz",
            str(TRAIN_IMGSZ), "--batch", "16", "--json", str(out_json)]
    assert yj_val.main(argv + (["--rect"] if rect else ["--no-rect"])) == 0
    ours = json.loads(out_json.read_text())
    print(f"trained model, rect={rect}: yolojax mAP50 {ours['mAP50']:.6f} mAP50-95 {ours['mAP50-95']:.6f} | "
          f"ultralytics mAP50 {ref.box.map50:.6f} mAP50-95 {ref.box.map:.6f}")
    assert ref.box.map50 > 0.1, "the trained model must detect something for the comparison to mean anything"
    assert abs(ours["mAP50"] - ref.box.map50) < 0.005
    assert abs(ours["mAP50-95"] - ref.box.map) < 0.005
    assert set(ours["per_class"]) == {ref.names[c] for c in ref.box.ap_class_index}


@pytest.mark.slow
def test_predict_matches_ultralytics_on_a_model_it_trained(ultralytics_trained):
    import ultralytics

    images = sorted((ultralytics_trained.data_yaml.parent / "images" / "val").glob("*.png"))[:4]
    ours = yj_predictor.Predictor(ultralytics_trained.weights, imgsz=TRAIN_IMGSZ, conf=0.25)(images)
    refs = ultralytics.YOLO(str(ultralytics_trained.weights)).predict([str(p) for p in images], imgsz=TRAIN_IMGSZ,
                                                                      conf=0.25, iou=0.7, device="cpu", save=False,
                                                                      verbose=False)
    total = 0
    for mine, ref in zip(ours, refs, strict=True):
        ref_boxes, ref_cls = ref.boxes.xyxy.numpy(), ref.boxes.cls.numpy().astype(int)
        boxes, classes = np.array(mine["boxes_xyxy"]).reshape(-1, 4), np.array(mine["classes"])
        assert len(boxes) == len(ref_boxes), (mine["image"], boxes, ref_boxes)
        total += len(boxes)
        if not len(boxes):
            continue
        iou = _xyxy_iou(boxes, ref_boxes)
        match = iou.argmax(1)
        assert np.all(iou[np.arange(len(boxes)), match] >= 0.99), iou
        assert sorted(match.tolist()) == list(range(len(ref_boxes)))
        np.testing.assert_array_equal(classes, ref_cls[match])
    assert total > 0, "no boxes above conf 0.25: the comparison would prove nothing"


@pytest.mark.slow
def test_val_coco_json_on_a_model_ultralytics_trained(ultralytics_trained, tmp_path):
    """The COCO JSON path without shared data: sparse category ids (3, 7) and image ids."""
    annotations = tmp_path / "instances_val.json"
    images_dir = yolo_split_to_coco_json(ultralytics_trained.data_yaml, annotations, (3, 7), first_image_id=1000)
    from_yaml = yj_validator.validate(ultralytics_trained.weights, ultralytics_trained.data_yaml, imgsz=TRAIN_IMGSZ,
                                verbose=False)
    predictions = tmp_path / "predictions.json"
    ours = yj_validator.validate(ultralytics_trained.weights, annotations, images=images_dir, imgsz=TRAIN_IMGSZ,
                           predictions_json=predictions, verbose=False)
    for k in ("mAP50", "mAP50-95", "precision", "recall"):
        assert ours[k] == pytest.approx(from_yaml[k], abs=1e-9), k
    print(f"trained model, COCO JSON: mAP50-95 {ours['mAP50-95']:.4f} COCO AP {ours['coco']['AP']:.4f} | "
          f"mAP50 {ours['mAP50']:.4f} COCO AP50 {ours['coco']['AP50']:.4f}")
    assert abs(ours["coco"]["AP"] - ours["mAP50-95"]) < 0.05
    check_coco_predictions(predictions, annotations)
    from yolojax.evaluation.coco_eval import coco_evaluate

    again, _ = coco_evaluate(annotations, predictions)
    assert again == ours["coco"]
