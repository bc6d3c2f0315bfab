"""YOLO11 (yolojax.models.yolo11) against ultralytics 8.4.190, end to end.

Every checkpoint here is written by ultralytics' own code (``YOLO(...).save``: fp16, as its
trainer and ``strip_optimizer`` leave them) from a model with random weights and BatchNorm
statistics, read by yolojax's converter (``load_weights``) and checked on real images
(ultralytics' bus.jpg and zidane.jpg, letterboxed to 320x320 or 256x416):

* parity at all five scales, a 3-class model with names and a "fine-tuned" one whose class
  branch kept its 80-class source's width (ultralytics' ``DetectionModel.load``): the raw head
  outputs (each level's 4 * 16 DFL box logits and class logits, before decoding: ultralytics'
  eval ``preds["boxes"]``/``["scores"]``, ours the input of ``Detect.decode``) within
  RAW_TOL = 1e-4 absolute, and the decoded (B, N, 4 + nc) output within test_convert's
  tolerances (boxes 1e-2 input px, sigmoid scores 1e-4);
* ONNX export (``yolojax export format=onnx``) run by onnxruntime and by ultralytics;
* ``.pt`` export (``yolojax export format=pt``) run by ultralytics and read back by yolojax;
* refusals: pruning YOLO11 weights, converting a YOLO26 checkpoint.

Random weights (test_convert.random_detection_model's recipe): conv weights
N(0, (gain / sqrt(fan_in))^2), BN scale U(0.5, 1.5), shift and running mean N(0, 0.2), running
var U(0.5, 2), head biases N(0, 0.5). YOLO11's deeper scales turn chaotic sooner than YOLOv8's
(measured on bus + zidane at 320, max |raw logit| / parity error of the raw logits / stem-flip
shift of the boxes): l at gain 1.3: 17 / 5e-5 / 0.9 px, at 1.25: 6 / 2e-5 / 0.14 px, at 1.2:
3 / 8e-6 / 0.06 px; x alike. So n, s, m take gain 1.3 (max |raw| ~2, raw error ~2e-6) and
l, x 1.25; every case checks its scores are spread and unsaturated, and that a spatially flipped
stem kernel moves the output by more than SENSITIVITY times the tolerances.
"""

from __future__ import annotations

import os

os.environ.setdefault("YOLO_OFFLINE", "1")

import ast
import shutil
from pathlib import Path

import cv2
import jax
import numpy as np
import pytest
from flax import linen as nn

torch = pytest.importorskip("torch")
ultralytics = pytest.importorskip("ultralytics")

from ultralytics import YOLO  # noqa: E402
from ultralytics.nn.tasks import DetectionModel, load_checkpoint  # noqa: E402

from test_convert import BOX_TOL_PX, SCORE_TOL, assert_parity, assert_same_variables, randomize  # noqa: E402
from yolojax import cli  # noqa: E402
from yolojax.inference.predictor import Predictor  # noqa: E402
from yolojax.models.layers import Detect  # noqa: E402
from yolojax.models.registry import model_from_info  # noqa: E402
from yolojax.weights import load_weights  # noqa: E402

ASSETS = Path(ultralytics.__file__).parent / "assets"
IMAGES = (ASSETS / "bus.jpg", ASSETS / "zidane.jpg")
SLOW = pytest.mark.slow

RAW_TOL = 1e-4  # raw head outputs (logits), absolute
SENSITIVITY = 5  # a flipped stem kernel must move boxes and scores by this many tolerances
GAIN = {"n": 1.3, "s": 1.3, "m": 1.3, "l": 1.25, "x": 1.25}
NAMES = ["cat", "dog", "bird"]
SQUARE, WIDE = (320, 320), (256, 416)
# Detections compared after NMS: random weights score every anchor near 0.5 +- 0.15, so a high
# threshold keeps a few dozen well-separated boxes (near-equal scores of overlapping boxes, which
# fp32 rounding could reorder, are then rare).
PREDICT_CONF = 0.75


# --------------------------------------------------------------------------------------
# Checkpoints written by ultralytics, converted by yolojax.
# --------------------------------------------------------------------------------------


def finetuned_model(source: DetectionModel, cfg: str, nc: int, gain: float) -> DetectionModel:
    """``source`` fine-tuned to ``nc`` classes as ultralytics' trainer starts it: a model built
    for ``nc`` loads the source (``DetectionModel.load`` rebuilds the class branch at the
    source's width when the head inputs match), then the new last class convs get random
    weights (ultralytics' class prior would put every score near 0)."""
    model = DetectionModel(cfg, nc=nc, verbose=False)
    model.load(source, verbose=False)
    torch.manual_seed(1)
    with torch.no_grad():
        for branch in model.model[-1].cv3:
            branch[-1].weight.normal_(0.0, gain * branch[-1].weight[0].numel() ** -0.5)
            branch[-1].bias.normal_(0.0, 0.5)
    return model


class Case:
    """One ultralytics checkpoint: ``path`` (written by ``YOLO.save``), ``reference`` (it read
    back by ultralytics' ``load_checkpoint``: fp32, eval) and yolojax's ``variables``, ``info``."""

    def __init__(self, root: Path, scale: str, variant: str):
        self.scale, self.variant = scale, variant
        cfg, gain = f"yolo11{scale}.yaml", GAIN[scale]
        yolo = YOLO(cfg)  # ultralytics' model wrapper: its save() writes the .pt
        if variant == "coco":
            randomize(yolo.model, gain, seed=0)
        elif variant == "3cls":
            yolo.model = randomize(DetectionModel(cfg, nc=len(NAMES), verbose=False), gain, seed=1)
        elif variant == "3cls-finetuned":
            yolo.model = finetuned_model(randomize(yolo.model, gain, seed=2), cfg, len(NAMES), gain)
        else:
            raise ValueError(variant)
        if variant != "coco":  # as the trainer's set_model_attributes leaves them
            yolo.model.nc, yolo.model.names = len(NAMES), dict(enumerate(NAMES))
        self.path = root / f"yolo11{scale}-{variant}.pt"
        yolo.save(self.path)
        self.reference, _ = load_checkpoint(self.path)
        self.variables, self.info = load_weights(self.path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(scale, variant) -> :class:`Case`, each built once per module."""
    cache: dict[tuple[str, str], Case] = {}

    def get(scale: str, variant: str = "coco") -> Case:
        if (scale, variant) not in cache:
            cache[(scale, variant)] = Case(tmp_path_factory.mktemp(f"yolo11{scale}-{variant}"), scale, variant)
        return cache[(scale, variant)]

    return get


def letterbox(path: Path, hw: tuple[int, int]) -> np.ndarray:
    """An image file -> RGB float32 (h, w, 3) in [0, 1]: resized to fit (aspect kept), centred on
    grey 114 (test_convert.letterbox for any h, w)."""
    h, w = hw
    bgr = cv2.imread(str(path))
    r = min(h / bgr.shape[0], w / bgr.shape[1])
    nh, nw = round(bgr.shape[0] * r), round(bgr.shape[1] * r)
    canvas = np.full((h, w, 3), 114, np.uint8)
    top, left = (h - nh) // 2, (w - nw) // 2
    canvas[top : top + nh, left : left + nw] = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return canvas[..., ::-1].astype(np.float32) / 255.0


_IMAGES: dict[tuple[int, int], np.ndarray] = {}


def real_images(hw: tuple[int, int]) -> np.ndarray:
    """bus.jpg and zidane.jpg letterboxed to ``hw``: (2, h, w, 3) float32."""
    if hw not in _IMAGES:
        _IMAGES[hw] = np.stack([letterbox(p, hw) for p in IMAGES])
    return _IMAGES[hw]


# --------------------------------------------------------------------------------------
# Both forwards: raw head outputs and decoded predictions.
# --------------------------------------------------------------------------------------


def _raw_and_decoded(next_fun, args, kwargs, context):
    """Flax interceptor: Detect.decode returns (its input, the raw per-level outputs; its output)."""
    if isinstance(context.module, Detect) and context.method_name == "decode":
        return tuple(args[0]), next_fun(*args, **kwargs)
    return next_fun(*args, **kwargs)


_FORWARDS: dict[tuple, object] = {}


def flax_forward(variables, info, images: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Our eval forward, jit-compiled once per model (and per shape): the raw head outputs, one
    (B, H/s, W/s, 4 * reg_max + nc) per level, and the decoded (B, N, 4 + nc)."""
    key = (info["family"], info["scale"], info["num_classes"], info["reg_max"], info["cls_width"])
    if key not in _FORWARDS:
        model = model_from_info(info)

        def forward(v, x):
            with nn.intercept_methods(_raw_and_decoded):
                return model.apply(v, x, train=False)

        _FORWARDS[key] = jax.jit(forward)
    raw, decoded = _FORWARDS[key](variables, images)
    return [np.asarray(r) for r in raw], np.asarray(decoded)


def torch_forward(model: torch.nn.Module, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ultralytics' eval forward: the raw head outputs (B, N, 4 * reg_max + nc), boxes then
    class logits as its Detect.forward_head concatenates them, and the decoded (B, N, 4 + nc)."""
    with torch.no_grad():
        decoded, preds = model(torch.from_numpy(images).permute(0, 3, 1, 2))
    raw = torch.cat([preds["boxes"], preds["scores"]], 1).permute(0, 2, 1)
    return raw.numpy(), decoded.permute(0, 2, 1).numpy()


def flipped_stem(variables):
    """``variables`` with the stem conv's 3x3 kernel flipped spatially (a subtle conversion bug)."""
    params = variables["params"]
    stem = params["model_0"]["conv"]
    return {**variables, "params": {**params, "model_0": {**params["model_0"], "conv": {
        **stem, "kernel": np.ascontiguousarray(np.asarray(stem["kernel"])[::-1, ::-1])}}}}


# --------------------------------------------------------------------------------------
# Parity.
# --------------------------------------------------------------------------------------


def parity_case(scale: str, variant: str, hw: tuple[int, int], slow: bool = False):
    return pytest.param(scale, variant, hw, marks=[SLOW] if slow else [], id=f"{scale}-{variant}-{hw[0]}x{hw[1]}")


PARITY_CASES = [
    parity_case("n", "coco", SQUARE),
    parity_case("n", "3cls", SQUARE),
    parity_case("n", "3cls-finetuned", WIDE),
    parity_case("s", "coco", WIDE),
    parity_case("m", "coco", SQUARE),
    parity_case("l", "coco", WIDE, slow=True),
    parity_case("x", "coco", SQUARE, slow=True),
]


@pytest.mark.parametrize("scale,variant,hw", PARITY_CASES)
def test_random_weights_match_ultralytics(checkpoint, scale, variant, hw):
    case = checkpoint(scale, variant)
    nc = 80 if variant == "coco" else len(NAMES)
    head = case.reference.model[-1]
    cls_width = head.cv3[0][-1].in_channels  # ultralytics' class branch width
    default_width = max(head.cv2[0][0].conv.in_channels, min(nc, 100))  # Detect's max(ch[0], min(nc, 100))
    assert (cls_width != default_width) == (variant == "3cls-finetuned")
    assert {k: case.info.get(k) for k in ("family", "scale", "num_classes", "reg_max", "cls_width")} == {
        "family": "yolo11", "scale": scale, "num_classes": nc, "reg_max": 16, "cls_width": cls_width}
    assert case.info["names"] == ([str(i) for i in range(nc)] if variant == "coco" else NAMES)

    images = real_images(hw)
    ref_raw, ref = torch_forward(case.reference, images)
    scores = ref[..., 4:]
    saturated = ((scores < 1e-3) | (scores > 1 - 1e-3)).mean()
    assert scores.std() > 0.05 and 0.2 < scores.mean() < 0.8 and saturated < 0.01, (scores.std(), saturated)
    assert ref[..., 2:4].std() > 10.0  # nor are the boxes all alike

    raw, ours = flax_forward(case.variables, case.info, images)
    assert [r.shape for r in raw] == [(2, hw[0] // s, hw[1] // s, 64 + nc) for s in (8, 16, 32)]
    raw_flat = np.concatenate([r.reshape(2, -1, 64 + nc) for r in raw], 1)
    assert raw_flat.shape == ref_raw.shape
    raw_box_err = float(np.abs(raw_flat[..., :64] - ref_raw[..., :64]).max())
    raw_cls_err = float(np.abs(raw_flat[..., 64:] - ref_raw[..., 64:]).max())
    box_err = float(np.abs(ours[..., :4] - ref[..., :4]).max())
    score_err = float(np.abs(ours[..., 4:] - ref[..., 4:]).max())
    print(f"yolo11{scale} {variant} {hw[0]}x{hw[1]}: max |raw| {np.abs(ref_raw).max():.2f}, raw error "
          f"box {raw_box_err:.2e} cls {raw_cls_err:.2e}; decoded error box {box_err:.2e} px, score {score_err:.2e}")
    assert raw_box_err <= RAW_TOL and raw_cls_err <= RAW_TOL, (raw_box_err, raw_cls_err)
    assert_parity(ours, ref)

    # The weights are sensitive enough for these tolerances to catch a subtle conversion bug.
    _, flipped = flax_forward(flipped_stem(case.variables), case.info, images)
    box_shift = float(np.abs(flipped[..., :4] - ours[..., :4]).max())
    score_shift = float(np.abs(flipped[..., 4:] - ours[..., 4:]).max())
    print(f"  flipped stem kernel: boxes move {box_shift:.3f} px, scores {score_shift:.4f}")
    assert box_shift > SENSITIVITY * BOX_TOL_PX and score_shift > SENSITIVITY * SCORE_TOL, (box_shift, score_shift)


# --------------------------------------------------------------------------------------
# Exports: ONNX and ultralytics .pt.
# --------------------------------------------------------------------------------------


def ultralytics_detections(results) -> list[dict]:
    return [{"classes": r.boxes.cls.int().tolist(), "boxes_xyxy": r.boxes.xyxy.numpy(),
             "scores": r.boxes.conf.numpy()} for r in results]


def assert_same_detections(ours: list[dict], theirs: list[dict]) -> None:
    """test_export's rule: same count and classes, boxes within 1e-2 px, scores within 1e-4."""
    print("detections per image:", [len(a["classes"]) for a in ours])
    for a, b in zip(ours, theirs, strict=True):
        assert a["classes"] == b["classes"] and len(a["classes"]) > 0
        np.testing.assert_allclose(a["boxes_xyxy"], b["boxes_xyxy"], atol=1e-2)
        np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-4)


def export_command(source: Path, tmp_path: Path, *args: str) -> Path:
    """``yolojax export model=<a copy of source in tmp_path> ...``; returns the copy's path (the
    output lands beside it)."""
    weights = Path(shutil.copy(source, tmp_path / source.name))
    assert cli.main(["export", f"model={weights}", *args, "compile_cache=off"]) == 0
    return weights


def test_onnx_export_runs_in_onnxruntime_and_ultralytics(checkpoint, tmp_path, capsys):
    pytest.importorskip("jax2onnx")
    pytest.importorskip("onnxruntime")
    import onnx

    from yolojax.inference.onnx_runtime import OnnxDetector

    case = checkpoint("n", "3cls")
    weights = export_command(case.path, tmp_path, "format=onnx", "imgsz=320")
    out = weights.with_suffix(".onnx")
    assert f"wrote {out}" in capsys.readouterr().out

    detector = OnnxDetector(out)
    assert {k: detector.info.get(k) for k in ("family", "scale", "num_classes", "names")} == {
        "family": "yolo11", "scale": "n", "num_classes": 3, "names": NAMES}
    assert detector.input_hw == SQUARE and detector.batch == 1
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert "YOLO11n" in meta["description"] and meta["task"] == "detect" and meta["imgsz"] == "[320, 320]"
    assert ast.literal_eval(meta["names"]) == dict(enumerate(NAMES))

    images = real_images(SQUARE)
    theirs = detector(images)
    _, ours = flax_forward(case.variables, case.info, images)
    assert theirs.shape == ours.shape == (2, 2100, 7)
    np.testing.assert_allclose(theirs[..., 4:], ours[..., 4:], atol=SCORE_TOL)
    box_error = np.abs(theirs[..., :4] - ours[..., :4])
    assert box_error.max() < BOX_TOL_PX and box_error.mean() < 1e-4, (box_error.max(), box_error.mean())

    # After NMS: yolojax's Predictor on the ONNX file equals ultralytics' own ONNX consumer.
    paths = [str(p) for p in IMAGES]
    mine = Predictor(model_fn=detector, info=detector.info, imgsz=320, conf=PREDICT_CONF)(paths)
    results = YOLO(str(out), task="detect").predict(paths, imgsz=320, conf=PREDICT_CONF, verbose=False)
    assert_same_detections(mine, ultralytics_detections(results))


def test_pt_export_runs_in_ultralytics_and_reads_back(checkpoint, tmp_path, capsys):
    case = checkpoint("n", "3cls")
    weights = export_command(case.path, tmp_path, "format=pt")
    out = weights.with_name(f"{weights.stem}_yolojax.pt")
    assert f"wrote {out}" in capsys.readouterr().out

    variables, info = load_weights(out)
    assert_same_variables(variables, case.variables)
    assert {k: info.get(k) for k in case.info} == case.info

    yolo = YOLO(str(out))
    assert yolo.task == "detect" and yolo.names == dict(enumerate(NAMES))
    bus = str(IMAGES[0])
    theirs = yolo.predict(bus, imgsz=320, rect=False, conf=PREDICT_CONF, verbose=False)
    mine = Predictor(out, imgsz=320, rect=False, conf=PREDICT_CONF)(bus)
    assert_same_detections(mine, ultralytics_detections(theirs))


# --------------------------------------------------------------------------------------
# Refusals.
# --------------------------------------------------------------------------------------


def test_pruning_yolo11_is_refused_in_one_line(checkpoint, tmp_path, capsys):
    from yolojax.models.prune import prune

    case = checkpoint("n", "3cls")
    message = "structured pruning supports YOLOv8 weights only, not YOLO11"
    with pytest.raises(ValueError, match=f"^{message}$"):
        prune(case.variables, case.info, 0.3)
    out = tmp_path / "pruned"
    assert cli.main(["prune", f"model={case.path}", "ratio=0.3", f"out={out}", "compile_cache=off"]) == 1
    assert capsys.readouterr().err == f"yolojax prune: error: {message}\n"
    assert not out.exists()


def test_yolo26_checkpoint_is_refused_in_one_line(tmp_path, capsys):
    """test_convert refuses a YOLO26 state through load_ultralytics; here ultralytics' own
    YOLO.save writes it and the export command, which reads it with load_weights, says so in
    one line and writes nothing."""
    path = tmp_path / "yolo26n.pt"
    YOLO("yolo26n.yaml").save(path)
    with pytest.raises(ValueError) as e:
        load_weights(path)
    assert "\n" not in str(e.value) and "end-to-end (NMS-free) head" in str(e.value)
    assert cli.main(["export", f"model={path}", "format=pt", "compile_cache=off"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("yolojax export: error: ") and "NMS-free" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["yolo26n.pt"]
