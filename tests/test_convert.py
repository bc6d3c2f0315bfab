"""yolojax.convert: safe .pt reading, weight mapping, parity with ultralytics, CLI.

Parity tolerances (fp32, same input tensor to both models): boxes (xywh, input pixels)
within 1e-2 px absolute, sigmoid class scores within 1e-4 absolute, for every anchor.
"""

from __future__ import annotations

import collections
import copy
import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from datetime import datetime
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
ultralytics = pytest.importorskip("ultralytics")

from ultralytics.cfg import DEFAULT_CFG_DICT  # noqa: E402
from ultralytics.nn.tasks import DetectionModel, SegmentationModel, load_checkpoint  # noqa: E402
from ultralytics.utils import IterableSimpleNamespace  # noqa: E402

import yolojax  # noqa: E402
from yolojax.convert import main
from yolojax.weights import count_params, load_ultralytics, save_converted
from yolojax.weights.torch_file import read_torch_file
from yolojax.models import YOLOv8  # noqa: E402

from torch_zip import write_torch_zip  # noqa: E402
from shared_data import SHARED, require

ASSETS = Path(ultralytics.__file__).parent / "assets"
REPO_ROOT = Path(__file__).resolve().parents[1]

BOX_TOL_PX = 1e-2
SCORE_TOL = 1e-4

SLOW = pytest.mark.slow

# --------------------------------------------------------------------------------------
# Helpers.
# --------------------------------------------------------------------------------------


def random_detection_model(scale: str, nc: int = 80, seed: int = 0) -> DetectionModel:
    """ultralytics' YOLOv8 with random weights and BatchNorm statistics, in eval mode.

    Conv weights N(0, (1.3 / sqrt(fan_in))^2); BN scale in [0.5, 1.5], shift and running
    mean ~N(0, 0.2), running var in [0.5, 2]; head output biases ~N(0, 0.5) instead of the
    class prior (-9 ...), so scores spread over (0, 1). The gain 1.3 keeps every scale
    between the two useless regimes: at 1.0 the signal fades with depth (flipping the stem
    kernel moves the output by < 1e-2 px, under the parity tolerance) and at 1.5 the deeper
    scales turn chaotic (fp32 rounding grows to pixels, scores saturate). At 1.3 a flipped
    stem kernel moves boxes by 0.3-1 px and scores by 6e-3-2e-2 at every scale. The frozen
    DFL projection (arange) is left alone.
    """
    torch.manual_seed(seed)
    model = DetectionModel(f"yolov8{scale}.yaml", nc=nc, verbose=False)
    return randomize(model, 1.3, seed=None).eval()


def randomize(model: torch.nn.Module, gain: float, seed: int | None = 0) -> torch.nn.Module:
    """``model``'s conv weights N(0, (gain / sqrt(fan_in))^2) and biases N(0, 0.5^2), BatchNorm
    scale in [0.5, 1.5], shift and running mean ~N(0, 0.2), running var in [0.5, 2], in place
    (:func:`random_detection_model`), from torch's generator seeded with ``seed`` (None: as it
    stands); the frozen DFL projection is left alone."""
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d) and m.weight.requires_grad:
                m.weight.normal_(0.0, gain * m.weight[0].numel() ** -0.5)
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.5)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model


def save_like_trainer(model: torch.nn.Module, path: Path, use_ema: bool = True) -> Path:
    """torch.save a checkpoint dict shaped like ultralytics' BaseTrainer.save_model (8.4):
    an fp16 deep copy of the model under 'ema' ('model' None), or under 'model' as
    strip_optimizer leaves it; plus train_args, metrics (with a numpy scalar), metadata."""
    half = copy.deepcopy(model).half()
    half.args = IterableSimpleNamespace(**DEFAULT_CFG_DICT)  # as the trainer attaches it
    ckpt = {
        "epoch": 3,
        "best_fitness": 0.25,
        "stopper": {"best_fitness": 0.25, "best_epoch": 2},
        "model": None if use_ema else half,
        "ema": half if use_ema else None,
        "updates": 12,
        "modelopt": None,
        "optimizer": {
            "state": {0: {"momentum_buffer": torch.zeros(4, dtype=torch.half)}},
            "param_groups": [{"lr": 0.01, "momentum": 0.937, "params": [0]}],
        },
        "scaler": {},
        "train_args": dict(DEFAULT_CFG_DICT),
        "train_metrics": {"metrics/mAP50(B)": 0.5, "fitness": np.float64(0.25)},
        "train_results": {"epoch": [1, 2, 3], "train/box_loss": [3.0, 2.5, 2.0]},
        "date": datetime.now().astimezone().isoformat(),
        "version": ultralytics.__version__,
        "git": {"root": None, "branch": None, "commit": None, "message": None, "origin": None},
        "license": "AGPL-3.0 (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com",
    }
    torch.save(ckpt, path)
    return path


def torch_predict(model: torch.nn.Module, images_nhwc: np.ndarray) -> np.ndarray:
    """ultralytics' eval output (B, 4 + nc, N) transposed to (B, N, 4 + nc)."""
    with torch.no_grad():
        out = model(torch.from_numpy(images_nhwc).permute(0, 3, 1, 2))[0]
    return out.permute(0, 2, 1).numpy()


_FORWARDS: dict[tuple, object] = {}


def flax_predict(variables, info, images_nhwc: np.ndarray, dtype=jnp.float32) -> np.ndarray:
    """Our jit-compiled eval forward, (B, N, 4 + nc) float32."""
    key = (info["scale"], info["num_classes"], info["reg_max"], jnp.dtype(dtype).name)
    if key not in _FORWARDS:
        model = YOLOv8(scale=key[0], num_classes=key[1], reg_max=key[2], dtype=dtype)
        _FORWARDS[key] = jax.jit(lambda v, x: model.apply(v, x, train=False))
    return np.asarray(_FORWARDS[key](variables, images_nhwc))


def assert_parity(
    ours: np.ndarray, ref: np.ndarray, box_tol: float = BOX_TOL_PX, score_tol: float = SCORE_TOL
) -> None:
    assert ours.shape == ref.shape
    box_err = float(np.abs(ours[..., :4] - ref[..., :4]).max())
    score_err = float(np.abs(ours[..., 4:] - ref[..., 4:]).max())
    assert box_err <= box_tol and score_err <= score_tol, (
        f"max box error {box_err:.3g} px (tol {box_tol}), "
        f"max score error {score_err:.3g} (tol {score_tol})"
    )


def random_images(h: int, w: int, batch: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, h, w, 3), dtype=np.float32)


def letterbox(path: Path, size: int = 640) -> np.ndarray:
    """An image file -> RGB float32 (size, size, 3) in [0, 1], aspect kept, grey padding."""
    import cv2

    bgr = cv2.imread(str(path))
    h, w = bgr.shape[:2]
    r = min(size / h, size / w)
    nh, nw = round(h * r), round(w * r)
    canvas = np.full((size, size, 3), 114, np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas[top : top + nh, left : left + nw] = cv2.resize(
        bgr, (nw, nh), interpolation=cv2.INTER_LINEAR
    )
    return canvas[..., ::-1].astype(np.float32) / 255.0


class Reduce:
    """Pickles as ``fn(*args)``: how a malicious checkpoint smuggles in a call."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def flat(tree, prefix=()):
    out = {}
    for k, v in tree.items():
        out.update(flat(v, (*prefix, k)) if isinstance(v, dict) else {(*prefix, k): np.asarray(v)})
    return out


def assert_same_variables(a, b) -> None:
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        assert fa[k].dtype == fb[k].dtype == np.float32, k
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=str(k))


# --------------------------------------------------------------------------------------
# Random-weight checkpoints, one per (scale, nc), shared across the module's tests.
# --------------------------------------------------------------------------------------


class RandomCase:
    def __init__(self, root: Path, scale: str, nc: int, use_ema: bool):
        self.path = save_like_trainer(
            random_detection_model(scale, nc), root / f"v8{scale}_{nc}.pt", use_ema
        )
        self.reference, _ = load_checkpoint(self.path)  # ultralytics' own loader: fp32, eval
        self.variables, self.info = load_ultralytics(self.path)


@pytest.fixture(scope="module")
def random_case(tmp_path_factory):
    cache: dict[tuple[str, int], RandomCase] = {}

    def get(scale: str, nc: int = 80) -> RandomCase:
        if (scale, nc) not in cache:
            root = tmp_path_factory.mktemp(f"ckpt_{scale}_{nc}")
            cache[(scale, nc)] = RandomCase(root, scale, nc, use_ema=nc == 80)
        return cache[(scale, nc)]

    return get


SQUARE, WIDE = (320, 320), (256, 416)


def parity_case(scale: str, nc: int, hw: tuple[int, int], slow: bool = False):
    return pytest.param(
        scale, nc, hw, marks=[SLOW] if slow else [], id=f"{scale}-nc{nc}-{hw[0]}x{hw[1]}"
    )


PARITY_CASES = [
    parity_case("n", 80, SQUARE),
    parity_case("n", 80, WIDE),
    parity_case("s", 80, SQUARE),
    parity_case("s", 80, WIDE),
    parity_case("n", 3, WIDE),
    parity_case("n", 3, SQUARE, slow=True),
    *(parity_case(s, 80, hw, slow=True) for s in "mlx" for hw in (SQUARE, WIDE)),
]


@pytest.mark.parametrize("scale,nc,hw", PARITY_CASES)
def test_random_weights_match_ultralytics(random_case, scale, nc, hw):
    case = random_case(scale, nc)
    assert case.info["scale"] == scale and case.info["num_classes"] == nc
    assert case.info["reg_max"] == 16
    assert case.info["names"] == [str(i) for i in range(nc)]  # DetectionModel's default names
    images = random_images(*hw, seed=hw[1])
    ref = torch_predict(case.reference, images)
    scores = ref[..., 4:]
    assert scores.std() > 0.05 and 0.2 < scores.mean() < 0.8  # scores vary, not saturated
    assert ref[..., 2:4].std() > 1.0  # nor are the boxes all alike
    assert_parity(flax_predict(case.variables, case.info, images), ref)


def test_parity_check_catches_a_flipped_stem_kernel(random_case):
    """The random weights are sensitive enough: a subtle conversion bug in the very first
    layer (a spatially flipped 3x3 kernel) fails the parity tolerances."""
    case = random_case("n")
    images = random_images(*WIDE, seed=WIDE[1])
    variables = copy.deepcopy(case.variables)
    stem = variables["params"]["model_0"]["conv"]
    stem["kernel"] = stem["kernel"][::-1, ::-1].copy()
    with pytest.raises(AssertionError, match="max box error"):
        assert_parity(
            flax_predict(variables, case.info, images), torch_predict(case.reference, images)
        )


def test_param_counts_match_ultralytics():
    expected = {"n": 3_157_200, "s": 11_166_560, "m": 25_902_640, "l": 43_691_520, "x": 68_229_648}
    for scale, count in expected.items():
        model = YOLOv8(scale=scale, num_classes=80)
        shapes = jax.eval_shape(
            lambda m=model: m.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
        )
        assert count_params(shapes) == count, scale


def test_converted_variables_are_float32_and_complete(random_case):
    case = random_case("n")
    fv = flat(case.variables)
    assert all(v.dtype == np.float32 for v in fv.values())
    assert set(case.variables) == {"params", "batch_stats"}
    # fp16 checkpoint values survive exactly; OIHW -> HWIO.
    w = case.reference.model[22].cv2[0][2].weight.detach().numpy()
    np.testing.assert_array_equal(
        fv[("params", "model_22", "cv2_0_2", "kernel")], w.transpose(2, 3, 1, 0)
    )
    bn = case.reference.model[2].m[0].cv1.bn
    np.testing.assert_array_equal(
        fv[("batch_stats", "model_2", "m_0", "cv1", "bn", "var")], bn.running_var.numpy()
    )
    np.testing.assert_array_equal(
        fv[("params", "model_2", "m_0", "cv1", "bn", "scale")], bn.weight.detach().numpy()
    )


@pytest.mark.parametrize("wrap", ["plain", "under_state_dict", "pickled_model"])
def test_state_dict_and_pickled_model_load(random_case, tmp_path, wrap):
    case = random_case("n")
    sd = case.reference.state_dict()
    obj = {"plain": sd, "under_state_dict": {"state_dict": sd}, "pickled_model": case.reference}[
        wrap
    ]
    torch.save(obj, tmp_path / "w.pt")
    variables, info = load_ultralytics(tmp_path / "w.pt")
    assert_same_variables(variables, case.variables)
    # float32 tensors are read as read-only views of the file; the variables are copies
    assert all(v.flags.writeable and v.flags.owndata for v in jax.tree.leaves(variables))
    assert info["scale"] == "n" and info["num_classes"] == 80 and info["reg_max"] == 16
    if wrap == "pickled_model":
        assert info["names"] == case.info["names"]
    else:  # no names in a bare state dict
        assert info["names"][:2] == ["class0", "class1"] and len(info["names"]) == 80


# --------------------------------------------------------------------------------------
# Real ultralytics COCO checkpoints (saved by ultralytics 8.0.0).
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def coco_images():
    """bus.jpg and zidane.jpg letterboxed to 640x640: (2, 640, 640, 3) float32."""
    return np.stack([letterbox(ASSETS / "bus.jpg"), letterbox(ASSETS / "zidane.jpg")])


def real_checkpoint(name: str) -> Path:
    path = SHARED / name
    require(path)
    return path


@pytest.mark.parametrize("name", ["yolov8n.pt", "yolov8s.pt"])
def test_real_checkpoints_match_ultralytics(name, coco_images):
    path = real_checkpoint(name)
    variables, info = load_ultralytics(path)
    assert info["scale"] == name[6] and info["num_classes"] == 80 and info["reg_max"] == 16
    assert info["names"][0] == "person" and info["names"][79] == "toothbrush"
    assert info["imgsz"] == 640  # train_args' imgsz: val, predict and export default to it
    reference, _ = load_checkpoint(path)
    ref = torch_predict(reference, coco_images)
    assert ref[..., 4:].max() > 0.8  # real, confident detections
    assert_parity(flax_predict(variables, info, coco_images), ref)


@pytest.fixture(scope="module")
def real_nano():
    return load_ultralytics(real_checkpoint("yolov8n.pt"))


def test_bf16_forward_stays_close_to_fp32(real_nano, coco_images):
    variables, info = real_nano
    fp32 = flax_predict(variables, info, coco_images)
    bf16 = flax_predict(variables, info, coco_images, dtype=jnp.bfloat16)
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape
    # bfloat16 keeps 8 significant bits (rounding error up to 2^-8 ~ 0.4% per op) and the
    # errors compound over ~60 conv/BN layers, so logits drift by up to ~0.2 (measured on
    # yolov8n, bus + zidane at 640: max score error 0.052 over anchors with fp32 score >
    # 0.5, where the sigmoid's slope is largest, 0.016 above 0.7; boxes within 1.3 px, 0.4%
    # of the box size). What must hold is that confident detections barely move: for anchors
    # whose best fp32 score exceeds 0.5, every class score within 0.08 (a logit error of
    # ~0.3 at the sigmoid's steepest point), box xywh within 2 px + 1% of the box size
    # (far below anything that changes an IoU-0.5 match), and the same top class.
    confident = fp32[..., 4:].max(-1) > 0.5
    assert confident.sum() >= 10
    a, b = fp32[confident], bf16[confident]
    assert np.abs(a[:, 4:] - b[:, 4:]).max() <= 0.08
    box_tol = 2.0 + 0.01 * np.maximum(a[:, 2:3], a[:, 3:4])
    assert (np.abs(a[:, :4] - b[:, :4]) <= box_tol).all()
    assert (a[:, 4:].argmax(-1) == b[:, 4:].argmax(-1)).all()  # same class wherever confident


# --------------------------------------------------------------------------------------
# Safety: nothing from the file is executed; only allow-listed globals resolve.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "attack", ["os.system", "eval", "subprocess.Popen", "getattr", "nested", "ultralytics"]
)
def test_malicious_pickles_are_refused(tmp_path, attack):
    sentinel = tmp_path / "SENTINEL"
    cmd = f"touch {sentinel}"
    payloads = {
        "os.system": (Reduce(os.system, (cmd,)), 2, r"'(posix|nt|os)\.system'"),
        "eval": (Reduce(eval, (f"__import__('os').system({cmd!r})",)), 4, r"'builtins\.eval'"),
        "subprocess.Popen": (
            Reduce(subprocess.Popen, (["touch", str(sentinel)],)),
            4,
            r"'subprocess\.Popen'",
        ),
        "getattr": (Reduce(getattr, ("abc", "upper")), 4, r"'builtins\.getattr'"),
        "nested": (
            collections.OrderedDict(model=[{"x": Reduce(os.system, (cmd,))}]),
            2,
            r"'(posix|nt|os)\.system'",
        ),
        "ultralytics": (
            Reduce(ultralytics.utils.checks.check_requirements, ("evil",)),
            2,
            r"'ultralytics\.utils\.checks\.check_requirements'",
        ),
    }
    obj, protocol, pattern = payloads[attack]
    path = write_torch_zip(tmp_path / "evil.pt", pickle.dumps(obj, protocol=protocol))
    with pytest.raises(ValueError, match=r"evil\.pt: archive/data\.pkl at byte \d+ \(\w+\): "
                       r"refusing global " + pattern + ": not an allow-listed global"):
        load_ultralytics(path)
    assert not sentinel.exists()


def test_numpy_object_dtype_and_out_of_range_tensors_are_refused(tmp_path):
    path = write_torch_zip(tmp_path / "obj.pt", pickle.dumps({"m": np.dtype(object)}, protocol=2))
    with pytest.raises(ValueError, match="numpy dtype"):
        read_torch_file(path)

    class StoragePickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", 4) if obj == "STORAGE" else None

    buf = io.BytesIO()
    rebuild = Reduce(
        torch._utils._rebuild_tensor_v2,
        ("STORAGE", 2, (3,), (1,), False, collections.OrderedDict()),
    )
    StoragePickler(buf, protocol=2).dump({"w": rebuild})
    path = write_torch_zip(
        tmp_path / "oob.pt", buf.getvalue(), {"0": np.zeros(4, np.float32).tobytes()}
    )
    with pytest.raises(ValueError, match="exceeds its storage"):
        read_torch_file(path)


def test_tensor_storages_dtypes_and_views(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    obj = {
        "view": base.t()[1:, 1:3],  # non-contiguous, offset into a shared storage
        "whole": base,
        "f16": torch.linspace(-2, 2, 5).half(),
        "bf16": torch.linspace(-2, 2, 5).bfloat16(),
        "f64": torch.tensor([1.5, -2.25], dtype=torch.float64),
        "i64": torch.tensor([-3, 2**40]),
        "i32": torch.tensor([7, -8], dtype=torch.int32),
        "u8": torch.tensor([0, 255], dtype=torch.uint8),
        "b": torch.tensor([True, False]),
        "scalar": torch.tensor(3.0),
        "empty": torch.zeros(0, 3),
        "param": torch.nn.Parameter(torch.ones(2, 2)),
        "size": torch.Size([1, 2]),
        "set": {1, 2},
        "np": np.float64(0.125),
    }
    torch.save(obj, tmp_path / "t.pt")
    got = read_torch_file(tmp_path / "t.pt")
    for key in ("view", "whole", "f16", "f64", "i64", "i32", "u8", "b", "scalar", "empty", "param"):
        want = obj[key].detach().numpy()
        assert got[key].dtype == want.dtype and got[key].shape == want.shape, key
        np.testing.assert_array_equal(got[key], want, err_msg=key)
    assert str(got["bf16"].dtype) == "bfloat16"
    np.testing.assert_array_equal(got["bf16"].astype(np.float32), obj["bf16"].float().numpy())
    assert got["size"] == (1, 2) and got["set"] == {1, 2} and got["np"] == 0.125


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64, torch.float16])
def test_big_endian_files_are_byteswapped(tmp_path, dtype):
    tensor = torch.tensor([[1.5, -2.0, 3.0], [0.25, 8.0, -1.0]]).to(dtype)
    torch.save({"t": tensor}, tmp_path / "le.pt")
    with (
        zipfile.ZipFile(tmp_path / "le.pt") as src,
        zipfile.ZipFile(tmp_path / "be.pt", "w") as dst,
    ):
        for item in src.infolist():
            raw = src.read(item)
            if item.filename.endswith("/byteorder"):
                raw = b"big"
            elif "/data/" in item.filename:  # the one storage: reverse each element's bytes
                size = tensor.element_size()
                raw = np.frombuffer(raw, np.uint8).reshape(-1, size)[:, ::-1].tobytes()
            dst.writestr(item, raw)
    got = read_torch_file(tmp_path / "be.pt")["t"]
    np.testing.assert_array_equal(got.astype(np.float64), tensor.double().numpy())


def test_legacy_and_non_torch_files_are_refused(tmp_path):
    torch.save({"a": torch.ones(2)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match="legacy"):
        load_ultralytics(tmp_path / "legacy.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ValueError, match="not a torch.save checkpoint"):
        load_ultralytics(tmp_path / "text.pt")


# --------------------------------------------------------------------------------------
# Non-YOLOv8 models and mismatched weights.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build,pattern",
    [
        (lambda: DetectionModel("yolo26n.yaml", verbose=False), "end-to-end \\(NMS-free\\) head"),
        (lambda: DetectionModel("yolov10n.yaml", verbose=False), "v10Detect"),
        (lambda: SegmentationModel("yolov8n-seg.yaml", verbose=False), "SegmentationModel"),
    ],
    ids=["yolo26n", "yolov10n", "yolov8n-seg"],
)
def test_other_architectures_are_refused(tmp_path, build, pattern):
    path = save_like_trainer(build(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match=pattern):
        load_ultralytics(path)


@pytest.mark.parametrize(
    "edit,pattern",
    [
        ("drop", r"missing params/model_22/cv3_0_2/bias \(model\.22\.cv3\.0\.2\.bias\)"),
        ("extra", r"unexpected model\.23\.foo\.weight"),
        ("reshape", r"mis-shaped model\.9\.cv2\.bn\.running_var \(257,\)"),
    ],
    ids=["missing", "unexpected", "mis-shaped"],
)
def test_mismatched_state_dicts_name_the_key(random_case, tmp_path, edit, pattern):
    sd = dict(random_case("n").reference.state_dict())
    if edit == "drop":
        del sd["model.22.cv3.0.2.bias"]
    elif edit == "extra":
        sd["model.23.foo.weight"] = torch.zeros(3, 3, 1, 1)
    else:
        sd["model.9.cv2.bn.running_var"] = torch.ones(257)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=pattern):
        load_ultralytics(tmp_path / "bad.pt")


# --------------------------------------------------------------------------------------
# Converted directories, load_weights and the command line.
# --------------------------------------------------------------------------------------


def test_cli_converts_without_torch_and_load_weights_roundtrips(random_case, tmp_path):
    case = random_case("n", 3)
    out = tmp_path / "converted"
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "yolojax.convert", str(case.path), str(out)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "YOLOv8n, 3 classes" in proc.stdout and "parameters" in proc.stdout
    imported = {
        line.rsplit("|", 1)[-1].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "jax" in imported and not imported & {"torch", "ultralytics"}
    info = json.loads((out / "info.json").read_text())
    assert info["scale"] == "n" and info["num_classes"] == 3 and info["names"] == ["0", "1", "2"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left

    variables, info = yolojax.load_weights(out)
    assert info == case.info
    assert all(type(v) is np.ndarray for v in jax.tree.leaves(variables))
    assert_same_variables(variables, case.variables)
    variables_pt, info_pt = yolojax.load_weights(case.path)
    assert info_pt == case.info
    assert_same_variables(variables_pt, case.variables)


def test_save_converted_replaces_only_previous_conversions(random_case, tmp_path):
    case = random_case("n", 3)
    out = save_converted(case.variables, case.info, tmp_path / "out")
    save_converted(case.variables, case.info, out)  # a re-run replaces it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        save_converted(case.variables, case.info, tmp_path / "other")
    assert (tmp_path / "other" / "keep.txt").exists()


def test_load_weights_rejects_unknown_sources(tmp_path):
    with pytest.raises(ValueError, match=r"does not exist: expected an ultralytics \.pt"):
        yolojax.load_weights(tmp_path / "nope.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty is not a supported source of weights"):
        yolojax.load_weights(tmp_path / "empty")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="x.txt is not a supported source"):
        yolojax.load_weights(tmp_path / "x.txt")


def test_cli_help_and_bad_input(tmp_path, capsys):
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "yolojax.convert", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    proc = run("--help")
    assert (
        proc.returncode == 0
        and "usage:" in proc.stdout
        and "OUT_DIR".lower() in proc.stdout.lower()
    )
    proc = run(str(tmp_path / "missing.pt"), str(tmp_path / "out"))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("python -m yolojax.convert: error: ")
    assert not (tmp_path / "out").exists()

    (tmp_path / "bad.pt").write_text("not a checkpoint")
    assert main([str(tmp_path / "bad.pt"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("python -m yolojax.convert: error: ") and err.count("\n") == 1
        and "not a torch.save checkpoint" in err
    )
    with pytest.raises(SystemExit) as exc:
        main(["--bogus", str(tmp_path / "bad.pt"), str(tmp_path / "out")])
    assert exc.value.code == 2
