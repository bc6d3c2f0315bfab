"""yolojax.export: ONNX through onnxruntime, ultralytics .pt through ultralytics, each with equal boxes.

Tolerances (fp32): raw ONNX outputs against yolojax's, on real images: class scores within
1e-4, boxes (input pixels) within 1e-2 px at most and 1e-4 px on average; float32 itself
moves a box this much (yolojax's own fp32 boxes differ from its float64 ones by up to
1.5e-3 px on bus.jpg). Boxes after NMS: same count and classes, coordinates within 1e-2 px.
"""

from __future__ import annotations

import importlib.resources
import re
import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yolojax import export as yj_export
from yolojax.inference import exporters as yj_exporter
from yolojax.weights import torch_pickle
from yolojax.weights import load_ultralytics
from yolojax.weights.torch_file import read_torch_file
from yolojax.models import YOLOv8, get_family
from yolojax.inference.predictor import letterbox_for_predict, Predictor
from shared_data import COCO8, WEIGHTS, needs, require

needs_shared = needs(WEIGHTS, COCO8 / "coco8.yaml")


def _assets() -> list[Path]:
    try:
        root = importlib.resources.files("ultralytics") / "assets"
    except ModuleNotFoundError:
        pytest.skip("ultralytics (test oracle) not installed")
    return [Path(str(root / name)) for name in ("bus.jpg", "zidane.jpg")]


def _letterboxed(paths: list[Path]) -> np.ndarray:
    """float32 (B, 640, 640, 3) in [0, 1]: the images as yolojax predict feeds the model."""
    from yolojax.data.image_io import read_image_rgb
    from yolojax.data.augment.letterbox import apply_letterbox

    out = []
    for p in paths:
        image = read_image_rgb(p)
        out.append(apply_letterbox(image, letterbox_for_predict(image.shape[:2], 640)).astype(np.float32) / 255.0)
    return np.stack(out)


def _assert_same_detections(ours: list[dict], theirs: list[dict]) -> None:
    for a, b in zip(ours, theirs, strict=True):
        assert a["classes"] == b["classes"] and len(a["classes"]) > 0
        np.testing.assert_allclose(a["boxes_xyxy"], b["boxes_xyxy"], atol=1e-2)
        np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-4)


def test_sppf_pools_equal_explicitly_padded_max_pool():
    """SPPF pads with -inf and pools VALID (the form jax2onnx converts): the same numbers as
    max_pool with padding=((2, 2), (2, 2))."""
    from flax import linen as nn

    from yolojax.models.layers import SPPF, Conv

    x = jax.random.normal(jax.random.key(0), (2, 12, 12, 16))
    variables = SPPF(16).init(jax.random.key(1), x, train=False)
    sub = lambda name: {c: variables[c][name] for c in ("params", "batch_stats")}  # noqa: E731
    ys = [Conv(8, 1).apply(sub("cv1"), x, False)]
    for _ in range(3):
        ys.append(nn.max_pool(ys[-1], (5, 5), strides=(1, 1), padding=((2, 2), (2, 2))))
    expected = Conv(16, 1).apply(sub("cv2"), jnp.concatenate(ys, -1), False)
    np.testing.assert_array_equal(SPPF(16).apply(variables, x, train=False), expected)


def test_torch_pickle_round_trips_through_torch_and_our_reader(tmp_path):
    torch = pytest.importorskip("torch")
    arrays = {"f32": np.arange(12, dtype=np.float32).reshape(3, 4), "f16": np.array([1.5, -2], np.float16),
              "i64": np.array(7, np.int64), "u8": np.arange(5, dtype=np.uint8), "b": np.array([True, False])}
    obj = {"ints": [0, 255, 256, 65535, 65536, -1, -2**31, 2**40, -2**40], "float": -0.1, "str": "é/yolo",
           "none": None, "flags": (True, False), "nested": {"t": (1, (2, 3)), "empty": ((), [], {})},
           "set": {1, 2}, "od": torch_pickle.ordered_dict({"z": 1, "a": 2}),
           "tensors": {k: torch_pickle.Tensor(v) for k, v in arrays.items()},
           "param": torch_pickle.parameter(np.ones((2, 2), np.float32), requires_grad=False)}
    path = torch_pickle.save(obj, tmp_path / "x.pt")
    loaded = torch.load(path, weights_only=True)
    assert loaded["ints"] == obj["ints"] and loaded["float"] == -0.1 and loaded["str"] == "é/yolo"
    assert loaded["nested"] == obj["nested"] and loaded["flags"] == (True, False) and loaded["none"] is None
    assert loaded["set"] == {1, 2} and list(loaded["od"].items()) == [("z", 1), ("a", 2)]
    for k, v in arrays.items():
        assert loaded["tensors"][k].numpy().dtype == v.dtype
        np.testing.assert_array_equal(loaded["tensors"][k].numpy(), v)
    assert isinstance(loaded["param"], torch.nn.Parameter) and not loaded["param"].requires_grad
    mine = read_torch_file(path)
    for k, v in arrays.items():
        np.testing.assert_array_equal(mine["tensors"][k], v)
    with pytest.raises(TypeError, match="cannot write a object"):
        torch_pickle.save({"x": object()}, tmp_path / "bad.pt")


@pytest.mark.slow
def test_ultralytics_pt_of_a_fresh_model_runs_in_ultralytics(tmp_path):
    """A model yolojax made (3 classes, random weights) becomes an ultralytics
    checkpoint whose raw outputs equal yolojax's."""
    torch = pytest.importorskip("torch")
    ultralytics = pytest.importorskip("ultralytics")
    from yolojax.weights.ultralytics_pt import save_ultralytics_checkpoint

    model = YOLOv8(scale="n", num_classes=3)
    images = jax.random.uniform(jax.random.key(0), (2, 64, 96, 3))
    variables = jax.device_get(jax.jit(model.init, static_argnames="train")(jax.random.key(1), images, train=False))
    info = {"scale": "n", "num_classes": 3, "names": ["cat", "dog", "bird"], "reg_max": 16}
    path = save_ultralytics_checkpoint(variables, info, tmp_path / "fresh.pt")
    yolo = ultralytics.YOLO(str(path))
    assert yolo.names == {0: "cat", 1: "dog", 2: "bird"} and yolo.task == "detect"
    from ultralytics.nn.tasks import torch_safe_load  # ultralytics' weights_only (allow-list) loader

    assert type(torch_safe_load(str(path), safe_only=True)[0]["model"]).__name__ == "DetectionModel"
    with torch.no_grad():
        theirs = yolo.model.eval()(torch.from_numpy(np.asarray(images).transpose(0, 3, 1, 2)))[0].numpy()
    ours = np.asarray(jax.jit(model.apply, static_argnames="train")(variables, images, train=False)).transpose(0, 2, 1)
    np.testing.assert_allclose(theirs[:, 4:], ours[:, 4:], atol=1e-4)
    np.testing.assert_allclose(theirs[:, :4], ours[:, :4], atol=1e-2)
    reread, reread_info = load_ultralytics(path)
    # the head's width, read back
    assert reread_info == {**info, "family": "yolov8", "cls_width": get_family("yolov8").default_cls_width("n", 3)}
    for a, b in zip(jax.tree.leaves(reread), jax.tree.leaves(variables), strict=True):
        np.testing.assert_array_equal(a, b)


@needs_shared
@pytest.mark.slow
def test_pt_export_round_trips_through_ultralytics(tmp_path):
    ultralytics = pytest.importorskip("ultralytics")
    from yolojax.evaluation.validator import validate

    images = _assets()
    out = tmp_path / "yolov8n_yolojax.pt"
    assert yj_export.main(["--weights", str(WEIGHTS), "--format", "pt", "--out", str(out)]) == 0
    ours = Predictor(WEIGHTS, rect=False)(images)
    yolo = ultralytics.YOLO(str(out))
    theirs = [{"classes": r.boxes.cls.int().tolist(), "boxes_xyxy": r.boxes.xyxy.numpy(),
               "scores": r.boxes.conf.numpy()}
              for r in yolo.predict([str(p) for p in images], rect=False, verbose=False)]
    _assert_same_detections(theirs, ours)
    coco8 = shutil.copytree(COCO8, tmp_path / "coco8")
    ref = yolo.val(data=str(coco8 / "coco8.yaml"), imgsz=640, batch=16, rect=False, plots=False, device="cpu",
                   verbose=False, project=str(tmp_path / "val"))
    mine = validate(WEIGHTS, shutil.copytree(COCO8, tmp_path / "mine") / "coco8.yaml", rect=False, verbose=False)
    assert abs(ref.box.map50 - mine["mAP50"]) < 0.005 and abs(ref.box.map - mine["mAP50-95"]) < 0.005
    # Every ultralytics export target is one step away: `yolo export model=out format=torchscript`.
    script = ultralytics.YOLO(str(out)).export(format="torchscript", imgsz=640)
    exported = ultralytics.YOLO(script, task="detect").predict([str(p) for p in images], verbose=False)
    assert [r.boxes.cls.int().tolist() for r in exported] == [r["classes"] for r in ours]


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    """yolov8n.pt exported to ONNX at 640 with a dynamic batch."""
    pytest.importorskip("jax2onnx")
    pytest.importorskip("onnxruntime")
    require(WEIGHTS)
    out = tmp_path_factory.mktemp("onnx") / "yolov8n.onnx"
    assert yj_export.main(["--weights", str(WEIGHTS), "--out", str(out), "--dynamic"]) == 0
    return out


@needs_shared
def test_onnx_raw_outputs_and_metadata(onnx_model):
    import onnx

    from yolojax.weights import load_weights
    from yolojax.inference.onnx_runtime import OnnxDetector

    detector = OnnxDetector(onnx_model)
    assert detector.batch is None and detector.input_hw == (640, 640)
    assert detector.info["scale"] == "n" and detector.info["names"][:2] == ["person", "bicycle"]
    proto = onnx.load(str(onnx_model))
    assert [i.name for i in proto.graph.input] == ["images"] and [o.name for o in proto.graph.output] == ["output0"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["task"] == "detect" and meta["stride"] == "32" and meta["imgsz"] == "[640, 640]"
    images = _letterboxed(_assets())
    variables, info = load_weights(WEIGHTS)
    ours = np.asarray(jax.jit(YOLOv8(scale="n").apply, static_argnames="train")(variables, images, train=False))
    theirs = detector(images)
    assert theirs.shape == ours.shape == (2, 8400, 84)
    np.testing.assert_allclose(theirs[..., 4:], ours[..., 4:], atol=1e-4)
    box_error = np.abs(theirs[..., :4] - ours[..., :4])
    assert box_error.max() < 1e-2 and box_error.mean() < 1e-4, (box_error.max(), box_error.mean())


@needs_shared
def test_onnx_boxes_after_nms_equal_yolojax_and_ultralytics(onnx_model):
    ultralytics = pytest.importorskip("ultralytics")
    from yolojax.inference.onnx_runtime import OnnxDetector

    images = _assets()
    detector = OnnxDetector(onnx_model)
    ours = Predictor(WEIGHTS, rect=False)(images)  # a fixed-size model takes square letterboxes, as ultralytics
    _assert_same_detections(Predictor(model_fn=detector, info=detector.info)(images), ours)
    # ultralytics' own ONNX consumer reads the file unchanged.
    results = ultralytics.YOLO(str(onnx_model), task="detect").predict([str(p) for p in images], verbose=False)
    theirs = [{"classes": r.boxes.cls.int().tolist(), "boxes_xyxy": r.boxes.xyxy.numpy(),
               "scores": r.boxes.conf.numpy()} for r in results]
    _assert_same_detections(theirs, ours)


@needs_shared
def test_yolojax_predict_command_runs_onnx_models(onnx_model, tmp_path):
    import json

    from yolojax import cli

    bus = _assets()[0]
    assert cli.main(["predict", f"model={onnx_model}", f"source={bus}", f"project={tmp_path}", "name=p"]) == 0
    written = json.loads((tmp_path / "p" / "predictions.json").read_text())
    _assert_same_detections(written, Predictor(WEIGHTS, rect=False)([bus]))


@needs_shared
def test_onnx_val_map_equals_yolojax_val(onnx_model, tmp_path):
    from yolojax.inference.onnx_runtime import OnnxDetector
    from yolojax.evaluation.validator import validate

    detector = OnnxDetector(onnx_model)
    data = shutil.copytree(COCO8, tmp_path / "coco8") / "coco8.yaml"
    via_onnx = validate(data=data, model_fn=detector, info=detector.info, verbose=False)
    via_jax = validate(WEIGHTS, data, rect=False, verbose=False)  # the fixed-size model validates square
    assert via_onnx["mAP50"] == pytest.approx(via_jax["mAP50"], abs=1e-6)
    assert via_onnx["mAP50-95"] == pytest.approx(via_jax["mAP50-95"], abs=1e-6)


@pytest.mark.slow
def test_fixed_batch_onnx_runs_any_batch_in_chunks(tmp_path):
    pytest.importorskip("jax2onnx")
    pytest.importorskip("onnxruntime")
    from yolojax.inference.onnx_runtime import OnnxDetector

    model = YOLOv8(scale="n", num_classes=2)
    images = np.asarray(jax.random.uniform(jax.random.key(0), (3, 64, 96, 3)))
    variables = jax.device_get(jax.jit(model.init, static_argnames="train")(jax.random.key(1), images, train=False))
    info = {"scale": "n", "num_classes": 2, "names": ["a", "b"], "reg_max": 16}
    path = yj_exporter.export_onnx(variables, info, tmp_path / "m.onnx", imgsz=[64, 96], batch=2, opset=17)
    detector = OnnxDetector(path)
    assert detector.batch == 2 and detector.input_hw == (64, 96) and detector.info["names"] == ["a", "b"]
    expected = jax.jit(model.apply, static_argnames="train")(variables, images, train=False)
    np.testing.assert_allclose(detector(images), expected, atol=1e-3)
    with pytest.raises(ValueError, match="takes 64x96 images"):
        detector(images[:, :32])


def test_export_cli_refuses_bad_input_in_one_line(tmp_path, capsys, monkeypatch):
    weights = tmp_path / "w.pt"
    cases = [
        (["--weights", str(tmp_path / "missing.pt")], "weights .*missing.pt not found"),
        (["--weights", str(tmp_path), "--imgsz", "100"], r"imgsz=\[100\]: must be one or two positive multiples of 32"),
        (["--weights", str(tmp_path), "--out", str(tmp_path / "m.onnx.txt")], "must end in .onnx"),
        (["--weights", str(tmp_path), "--format", "pt", "--out", str(tmp_path / "m.onnx")], "must end in .pt"),
        (["--weights", str(tmp_path)], "not a supported source of weights"),
    ]
    weights.write_bytes(b"not a checkpoint")
    for argv, pattern in cases:
        assert yj_export.main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("python -m yolojax.export: error: "), err
        assert re.search(pattern, err), err
    with pytest.raises(SystemExit) as e:
        yj_export.main(["--weights", str(weights), "--format", "tflite"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "jax2onnx", None)
    with pytest.raises(ImportError, match=r"pip install 'yolojax\[export\]'"):
        yj_exporter.export_onnx({}, {"scale": "n"}, tmp_path / "x.onnx")


def test_default_out_is_beside_the_weights(tmp_path):
    (tmp_path / "yolov8n.pt").write_bytes(b"")
    (tmp_path / "run").mkdir()
    assert yj_exporter.default_out(tmp_path / "yolov8n.pt", "onnx") == tmp_path / "yolov8n.onnx"
    assert yj_exporter.default_out(tmp_path / "yolov8n.pt", "pt") == tmp_path / "yolov8n_yolojax.pt"
    assert yj_exporter.default_out(tmp_path / "run", "pt") == tmp_path / "run.pt"


def test_model_yaml_builds_the_same_architecture_in_ultralytics():
    """The yaml stored in the .pt is what ``yolo train model=model.pt`` rebuilds from: at scale m
    (max_channels 768) ultralytics builds exactly yolojax's variables."""
    pytest.importorskip("ultralytics")
    from ultralytics.nn.tasks import DetectionModel

    from yolojax.weights.ultralytics import expected_shapes
    from yolojax.weights.ultralytics_pt import model_yaml, variables_to_state_dict

    theirs = {k: tuple(v.shape) for k, v in DetectionModel(model_yaml("m", 3), verbose=False).state_dict().items()
              if not k.endswith("num_batches_tracked")}
    shapes = expected_shapes("yolov8", "m", 3, 16)
    flat = {}
    for path, shape in shapes.items():
        node = flat.setdefault(path[0], {})
        for part in path[1:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = np.zeros(shape, np.float32)
    ours = {k: v.shape for k, v in variables_to_state_dict(flat).items()}
    assert ours == theirs


def test_image_size_and_onnx_detector_refusals(tmp_path):
    assert yj_exporter.image_size_hw(640) == (640, 640) and yj_exporter.image_size_hw([480, 640]) == (480, 640)
    for bad in (0, 100, [640, 641], [1, 2, 3], "640"):
        with pytest.raises(ValueError, match="imgsz"):
            yj_exporter.image_size_hw(bad)
    pytest.importorskip("onnxruntime")
    from yolojax.inference.onnx_runtime import OnnxDetector

    with pytest.raises(ValueError, match="does not exist"):
        OnnxDetector(tmp_path / "missing.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(ValueError, match="onnxruntime cannot load it"):
        OnnxDetector(tmp_path / "bad.onnx")
