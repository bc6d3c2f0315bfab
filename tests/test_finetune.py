"""Fine-tuning to another class count, as ultralytics 8.4.190 does it, tensor for tensor.

* A yolov8n that ultralytics fine-tuned to 2 classes (one tiny step, here) keeps the class
  branch width of yolov8n (80, where a fresh 2-class yolov8n has 64): yolojax converts it
  and gives ultralytics' outputs.
* yolojax's transfer of yolov8n.pt into a model for another dataset equals ultralytics' model
  state after its own weight loading (``DetectionTrainer.get_model``: the pretrained class
  branch, class rows remapped by name, everything else of matching shape).
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import cv2
import jax
import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")
ultralytics = pytest.importorskip("ultralytics")

from ultralytics.models.yolo.detect import DetectionTrainer  # noqa: E402
from ultralytics.nn.tasks import load_checkpoint  # noqa: E402

from shared_data import WEIGHTS, needs, require  # noqa: E402
from yolojax.convert import main as convert_main  # noqa: E402
from yolojax.weights import load_ultralytics, load_weights
from yolojax.weights.ultralytics import state_dict_to_variables
from yolojax.models import get_family, model_from_info  # noqa: E402
from yolojax.train.transfer import (  # noqa: E402
    finetune_cls_width,
    head_in_widths,
    init_variables,
    transfer_pretrained,
)

needs_weights = needs(WEIGHTS)


def _torch_state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().float().numpy() for k, v in model.state_dict().items()
            if not k.endswith("num_batches_tracked")}


def _flat(tree, prefix=()):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, (*prefix, k)))
        else:
            out[(*prefix, k)] = np.asarray(v)
    return out


def ultralytics_finetune_model(weights: Path, names: list[str], cls_remap: bool = True):
    """The model ultralytics' trainer starts fine-tuning from: ``DetectionTrainer.get_model(cfg=the
    checkpoint's yaml, weights=the checkpoint's model)`` for a dataset with ``names``, as
    ``YOLO(weights).train(data=...)`` calls it."""
    source, _ = load_checkpoint(str(weights))
    trainer = DetectionTrainer.__new__(DetectionTrainer)  # only what get_model reads
    trainer.data = {"nc": len(names), "names": dict(enumerate(names)), "channels": 3}
    trainer.args = types.SimpleNamespace(cls_remap=cls_remap)
    torch.manual_seed(0)
    return trainer.get_model(cfg=source.yaml, weights=source, verbose=False), source


_FRESH: dict[tuple[int, int], dict] = {}  # (num_classes, cls_width) -> fresh variables: one init compile each


def yolojax_finetune_variables(weights: Path, names: list[str], cls_remap: bool = True):
    """yolojax's train set-up (yolojax.train.run): the model's class-branch width and the transfer."""
    from yolojax.models import YOLOv8

    pretrained, winfo = load_weights(weights)
    width = (finetune_cls_width(head_in_widths("yolov8", "n"), pretrained)
             or get_family("yolov8").default_cls_width("n", len(names)))
    if (len(names), width) not in _FRESH:
        _FRESH[len(names), width] = init_variables(YOLOv8(scale="n", num_classes=len(names), cls_width=width), 0)
    variables, copied, kept, remapped = transfer_pretrained(_FRESH[len(names), width], pretrained, winfo["names"],
                                                            names, cls_remap=cls_remap)
    info = {"scale": "n", "num_classes": len(names), "names": names, "reg_max": 16, "cls_width": width}
    return variables, info, copied, kept, remapped


@needs_weights
@pytest.mark.parametrize("names, unmatched", [
    (["person", "car"], []),                  # both rows remapped by name (COCO classes 0 and 2)
    (["Car ", "widget", "person"], [1]),      # case / space-insensitive; "widget" keeps its fresh row
    (["0", "1"], [0, 1]),                     # placeholder names: no remap, fresh rows
])
def test_transfer_equals_ultralytics_model_after_weight_loading(names, unmatched):
    theirs, _ = ultralytics_finetune_model(WEIGHTS, names)
    ours, info, copied, kept, remapped = yolojax_finetune_variables(WEIGHTS, names)
    assert info["cls_width"] == 80  # yolov8n's class branch kept (a fresh 2- or 3-class yolov8n has 64)
    expected = _flat(state_dict_to_variables(_torch_state(theirs), info, "ultralytics' fine-tune model"))
    got = _flat(ours)
    assert expected.keys() == got.keys()
    cls_last = {("params", "model_22", f"cv3_{i}_2", leaf) for i in range(3) for leaf in ("kernel", "bias")}
    assert remapped == (0 if len(unmatched) == len(names) else 6)
    assert len(kept) == (6 if remapped == 0 else 0)  # fresh: the class convs when nothing was remapped
    assert copied == len(got) - 6
    fresh_rows = np.zeros(len(names), bool)
    fresh_rows[unmatched] = True
    for path, value in expected.items():
        if path in cls_last and path[-1] == "kernel":
            # rows (output channels) of classes without a pretrained name are each framework's random init
            np.testing.assert_array_equal(got[path][..., ~fresh_rows], value[..., ~fresh_rows], err_msg=str(path))
            assert got[path].shape == value.shape
        elif path in cls_last:  # biases: remapped rows, or the class prior log(5 / nc / (640 / stride)^2)
            np.testing.assert_allclose(got[path], value, rtol=1e-6, err_msg=str(path))
        else:
            np.testing.assert_array_equal(got[path], value, err_msg=str(path))


# ----------------------------------------------------------------------------------------
# A model ultralytics fine-tuned to 2 classes.
# ----------------------------------------------------------------------------------------

_FINETUNE_SCRIPT = """
import sys
from ultralytics import YOLO
YOLO(sys.argv[1]).train(data=sys.argv[2], project=sys.argv[3], name="ft", exist_ok=True, imgsz=64, epochs=1,
                        batch=4, workers=0, device="cpu", amp=False, plots=False, val=False, seed=0, verbose=False,
                        optimizer="SGD", lr0=0.01, warmup_epochs=0, nbs=4, mosaic=0.0)
"""


@pytest.fixture(scope="module")
def finetuned_2class(tmp_path_factory):
    """yolov8n.pt fine-tuned by ultralytics to a 2-class dataset ("person", "car") for one step of 4 images."""
    require(WEIGHTS)
    root = tmp_path_factory.mktemp("finetune_2class")
    for split in ("train", "val"):
        (root / "data" / "images" / split).mkdir(parents=True)
        (root / "data" / "labels" / split).mkdir(parents=True)
        for i in range(4):
            image = np.full((64, 64, 3), 60, np.uint8)
            cls = i % 2
            cv2.rectangle(image, (8, 8), (40, 48), (200, 200, 200) if cls == 0 else (40, 40, 220), -1)
            cv2.imwrite(str(root / "data" / "images" / split / f"{i}.jpg"), image)
            (root / "data" / "labels" / split / f"{i}.txt").write_text(f"{cls} 0.375 0.4375 0.5 0.625\n")
    data_yaml = root / "data" / "data.yaml"
    data_yaml.write_text(yaml.safe_dump({"path": str(root / "data"), "train": "images/train", "val": "images/val",
                                         "names": {0: "person", 1: "car"}}))
    env = dict(os.environ, YOLO_OFFLINE="1", YOLO_CONFIG_DIR=str(root / "settings"))
    r = subprocess.run([sys.executable, "-c", _FINETUNE_SCRIPT, str(WEIGHTS), str(data_yaml), str(root / "runs")],
                       cwd=root, env=env, capture_output=True, text=True, timeout=600, check=False)
    weights = root / "runs" / "ft" / "weights" / "last.pt"
    assert r.returncode == 0 and weights.is_file(), r.stdout[-3000:] + r.stderr[-3000:]
    return types.SimpleNamespace(weights=weights, data_yaml=data_yaml, root=root)


def test_a_model_ultralytics_finetuned_to_2_classes_converts_and_matches(finetuned_2class, tmp_path):
    variables, info = load_ultralytics(finetuned_2class.weights)
    assert (info["num_classes"], info["cls_width"], info["names"]) == (2, 80, ["person", "car"])
    model, _ = load_checkpoint(str(finetuned_2class.weights))
    model = model.float().eval()
    images = np.random.default_rng(0).random((2, 96, 128, 3), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(images).permute(0, 3, 1, 2))[0].permute(0, 2, 1).numpy()
    ours = np.asarray(jax.jit(lambda v, x: model_from_info(info).apply(v, x, train=False))(variables, images))
    assert ours.shape == ref.shape == (2, 12 * 16 + 6 * 8 + 3 * 4, 4 + 2)
    box_err, score_err = np.abs(ours[..., :4] - ref[..., :4]).max(), np.abs(ours[..., 4:] - ref[..., 4:]).max()
    print(f"2-class fine-tuned yolov8n: max box error {box_err:.2e} px, max score error {score_err:.2e}")
    assert box_err < 1e-2 and score_err < 1e-4

    # convert -> converted dir -> load_weights, and predict, both accept it
    assert convert_main([str(finetuned_2class.weights), str(tmp_path / "conv")]) == 0
    again, info_again = load_weights(tmp_path / "conv")
    assert info_again["cls_width"] == 80
    from yolojax.inference.predictor import Predictor

    image = cv2.imread(str(finetuned_2class.data_yaml.parent / "images" / "val" / "0.jpg"))[..., ::-1]
    result = Predictor(variables=again, info=info_again, imgsz=64, conf=0.001)([np.ascontiguousarray(image)])[0]
    assert set(result["names"]) <= {"person", "car"}

    # yolojax fine-tuning from it onto the same classes keeps every array (train's set-up)
    ours_ft, ft_info, copied, kept, remapped = yolojax_finetune_variables(finetuned_2class.weights, ["person", "car"])
    assert ft_info["cls_width"] == 80 and kept == [] and remapped == 0
    for path, value in _flat(variables).items():
        np.testing.assert_array_equal(_flat(ours_ft)[path], value, err_msg=str(path))
