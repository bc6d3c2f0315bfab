"""End to end: yolojax.val and yolojax.predict against ultralytics (test oracle) with real weights."""

from __future__ import annotations

import importlib.resources
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")

from yolojax import predict as yj_predict
from yolojax import val as yj_val

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
WEIGHTS = SHARED / "yolov8n.pt"
COCO8 = SHARED / "coco8"
needs_shared = pytest.mark.skipif(not (WEIGHTS.is_file() and (COCO8 / "coco8.yaml").is_file()),
                                  reason=f"needs {WEIGHTS} and {COCO8}/coco8.yaml (shared test data)")


def _bus_jpg() -> Path:
    try:
        return Path(str(importlib.resources.files("ultralytics") / "assets" / "bus.jpg"))
    except ModuleNotFoundError:
        pytest.skip("ultralytics (test oracle) not installed")


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


@needs_shared
@pytest.mark.parametrize("rect", [False, True])
def test_val_matches_ultralytics(coco8_copies, tmp_path, rect):
    ultralytics = pytest.importorskip("ultralytics")
    ours_dir, theirs_dir = coco8_copies
    out_json = tmp_path / "val.json"
    argv = ["--weights", str(WEIGHTS), "--data", str(ours_dir / "coco8.yaml"), "--imgsz", "640", "--batch", "16",
            "--conf", "0.001", "--iou", "0.7", "--json", str(out_json)]
    argv += ["--rect"] if rect else ["--plots", str(tmp_path)]
    assert yj_val.main(argv) == 0
    ours = json.loads(out_json.read_text())
    ref = ultralytics.YOLO(str(WEIGHTS)).val(data=str(theirs_dir / "coco8.yaml"), imgsz=640, batch=16, conf=0.001,
                                             iou=0.7, plots=False, device="cpu", rect=rect, verbose=False,
                                             project=str(tmp_path / "ultra"))
    print(f"rect={rect} yolojax mAP50 {ours['mAP50']:.6f} mAP50-95 {ours['mAP50-95']:.6f} | "
          f"ultralytics mAP50 {ref.box.map50:.6f} mAP50-95 {ref.box.map:.6f}")
    assert abs(ours["mAP50"] - ref.box.map50) < 0.005
    assert abs(ours["mAP50-95"] - ref.box.map) < 0.005
    assert set(ours) >= {"mAP50", "mAP50-95", "precision", "recall", "per_class"}
    assert ours["images"] == 4 and ours["instances"] == 17
    assert {ref.names[c] for c in ref.box.ap_class_index} == set(ours["per_class"])
    if not rect:
        assert (tmp_path / "PR_curve.png").is_file() and (tmp_path / "confusion_matrix.png").is_file()


@needs_shared
@pytest.mark.parametrize("rect", [False, True])
def test_predict_matches_ultralytics(tmp_path, rect):
    ultralytics = pytest.importorskip("ultralytics")
    bus = _bus_jpg()
    argv = ["--weights", str(WEIGHTS), "--source", str(bus), "--out", str(tmp_path / "out")]
    assert yj_predict.main(argv + (["--rect"] if rect else [])) == 0
    ours = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert len(ours) == 1 and ours[0]["image"] == str(bus)
    assert (tmp_path / "out" / "bus.jpg").is_file()
    ref = ultralytics.YOLO(str(WEIGHTS)).predict(str(bus), conf=0.25, iou=0.7, imgsz=640, device="cpu", rect=rect,
                                                 save=False, verbose=False)[0]
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
    bus = _bus_jpg()
    (tmp_path / "imgs").mkdir()
    shutil.copy(bus, tmp_path / "imgs" / "a.jpg")
    shutil.copy(bus, tmp_path / "imgs" / "b.jpg")
    assert [p.name for p in yj_predict.list_sources(tmp_path / "imgs")] == ["a.jpg", "b.jpg"]
    assert [p.name for p in yj_predict.list_sources(str(tmp_path / "imgs" / "b*"))] == ["b.jpg"]
    predictor = yj_predict.Predictor(str(WEIGHTS))
    from yolojax.data.image_io import read_image_rgb

    res = predictor([tmp_path / "imgs" / "a.jpg", read_image_rgb(bus)])
    assert res[0]["image"].endswith("a.jpg")
    np.testing.assert_allclose(res[0]["boxes_xyxy"], res[1]["boxes_xyxy"])


def test_letterbox_and_scale_boxes_roundtrip():
    lb = yj_predict.letterbox_for_predict((1080, 810), 640, rect=True)
    assert lb.out_hw == (640, 480) and lb.resized_wh == (480, 640)
    lb = yj_predict.letterbox_for_predict((1080, 810), 640)
    assert lb.out_hw == (640, 640) and (lb.left, lb.right) == (80, 80)
    box = np.array([[80.0, 0.0, 560.0, 640.0]])
    np.testing.assert_allclose(yj_predict.scale_boxes_to_original(box, (640, 640), (1080, 810)),
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
                       capture_output=True, text=True, timeout=600, check=False, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr[-2000:]
    assert yj_val.main([*args, "--json", str(tmp_path / "1.json")]) == 0
    eight, one = (json.loads((tmp_path / f).read_text()) for f in ("8.json", "1.json"))
    for k in ("mAP50", "mAP50-95", "precision", "recall"):
        assert abs(eight[k] - one[k]) < 1e-6, (k, eight[k], one[k])
