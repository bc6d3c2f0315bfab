"""INT8 ONNX export (yolojax.inference.int8): onnxruntime static quantization calibrated on
COCO8's val images; the INT8 model runs, keeps the head's decode float and finds fp32's
confident boxes on bus.jpg (same class, IoU > 0.9); bad requests are refused in one line
before any work."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from yolojax import cli
from yolojax import export as yj_export
from yolojax.inference import int8 as yj_int8
from shared_data import COCO8, WEIGHTS, bus_jpg, needs, require

DATA = COCO8 / "coco8.yaml"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """yolov8n.pt exported with --int8 (calibrated on COCO8 val): (fp32 path, int8 path)."""
    pytest.importorskip("jax2onnx")
    pytest.importorskip("onnxruntime")
    require(WEIGHTS, DATA)
    out = tmp_path_factory.mktemp("int8") / "yolov8n.onnx"
    assert yj_export.main(["--weights", str(WEIGHTS), "--out", str(out), "--int8", "--data", str(DATA)]) == 0
    return out, out.with_name("yolov8n_int8.onnx")



def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box ``a`` with each of ``b`` (n, 4)."""
    lt, rb = np.maximum(a[:2], b[:, :2]), np.minimum(a[2:], b[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = lambda x: np.prod(x[..., 2:] - x[..., :2], axis=-1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


@needs(WEIGHTS, DATA)
def test_int8_model_finds_fp32_boxes_on_bus(exported):
    from yolojax.inference import OnnxDetector, Predictor

    fp32, int8 = exported
    assert int8.is_file() and int8.stat().st_size < fp32.stat().st_size / 2
    bus = [bus_jpg()]
    (ref,) = Predictor(model_fn=(d := OnnxDetector(fp32)), info=d.info)(bus)
    (got,) = Predictor(model_fn=(q := OnnxDetector(int8)), info=q.info)(bus)
    assert q.info == d.info and q.info["scale"] == "n"
    confident = np.asarray(ref["scores"]) > 0.5
    assert confident.sum() >= 4  # bus.jpg: the bus and the people
    boxes, classes = np.asarray(got["boxes_xyxy"]).reshape(-1, 4), np.asarray(got["classes"])
    for box, cls, score in zip(np.asarray(ref["boxes_xyxy"])[confident], np.asarray(ref["classes"])[confident],
                               np.asarray(ref["scores"])[confident]):
        same = classes == cls
        assert same.any(), f"class {cls} ({score:.2f}) missing from the INT8 detections"
        iou = _iou(box, boxes[same]).max()
        assert iou > 0.9, (cls, score, iou)


@needs(WEIGHTS, DATA)
def test_int8_graph_is_qdq_with_the_decode_float(exported):
    import onnx

    fp32, int8 = exported
    model = onnx.load(str(int8))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 50 and ops.count("DequantizeLinear") > 50
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    decode, head = set(yj_int8.decode_nodes(model)), set(yj_int8.head_convs(model))
    assert len(head) == 6  # cv2.{0,1,2}.2 (box DFL logits) and cv3.{0,1,2}.2 (class logits)
    by_name = {n.name: n for n in model.graph.node}
    decode_ops = {by_name[n].op_type for n in decode}  # DFL softmax and expectation, class sigmoid, concats
    assert {"Softmax", "Sigmoid", "Concat"} <= decode_ops and decode_ops & {"Einsum", "MatMul"}
    for name in decode | head:  # float inputs: no DequantizeLinear feeds them
        assert not dequantized & set(by_name[name].input), name
    convs = [n for n in model.graph.node if n.op_type == "Conv" and n.name not in head]
    assert convs and all(n.input[0] in dequantized and n.input[1] in dequantized for n in convs)
    meta = {p.key: p.value for p in model.metadata_props}
    fp32_meta = {p.key: p.value for p in onnx.load(str(fp32), load_external_data=False).metadata_props}
    assert meta["names"] == fp32_meta["names"] and "'int8': True" in meta["args"]


def test_int8_refusals_are_one_line(tmp_path, capsys):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"never read: refused first")
    data = tmp_path / "d.yaml"
    data.write_text("path: .\ntrain: images\nval: images\nnames: [a]\n")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"")
    w = str(weights)
    cases = [
        (["--weights", w, "--int8"], "int8=True needs data="),
        (["--weights", w, "--format", "pt", "--int8", "--data", str(data)], "int8=True is for format=onnx"),
        (["--weights", w, "--int8", "--data", str(data), "--fraction", "0"], r"fraction=0.0: must be a ratio"),
        (["--weights", w, "--int8", "--data", str(data), "--fraction", "2.5"], r"fraction=2.5: must be a ratio"),
        (["--weights", w, "--int8", "--data", str(tmp_path / "no.yaml")], "data yaml not found"),
    ]
    for argv, pattern in cases:
        assert yj_export.main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("python -m yolojax.export: error: "), err
        assert re.search(pattern, err), err
    cli_cases = [
        ([f"model={w}", "int8=True"], 1, "int8=True needs data="),
        ([f"model={w}", "format=pt", "int8", f"data={data}"], 1, "int8=True is for format=onnx"),
        ([f"model={w}", "int8=True", f"data={data}", "fraction=-1"], 1, "fraction=-1: must be a ratio"),
        ([f"model={w}", "int8=True", f"data={data}", "fraction=[1.0, 0]"], 1, r"fraction=\[1.0, 0\]: must be"),
        ([f"model={w}", "quantize=16"], 2, "quantize=16: yolojax exports quantize=8"),
        ([f"model={w}", "quantize=8"], 1, "int8=True needs data="),
    ]
    for argv, code, pattern in cli_cases:
        assert cli.main(["export", *argv]) == code
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("yolojax export: error: "), err
        assert re.search(pattern, err), err


def test_int8_path_and_fraction():
    assert yj_int8.int8_path("runs/m.onnx") == Path("runs/m_int8.onnx")
    assert yj_int8.check_fraction(0.5) == 0.5 and yj_int8.check_fraction(10) == 10
    assert yj_int8.check_fraction([1.0, 0.25]) == 0.25 and yj_int8.check_fraction([0.5]) == 1.0
    for bad in (0, -0.5, 1.5, True, "0.5", float("nan"), [1, 1, 1, 1]):
        with pytest.raises(ValueError, match="fraction="):
            yj_int8.check_fraction(bad)
