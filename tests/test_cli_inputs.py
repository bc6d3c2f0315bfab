"""What val and predict do with every kind of input: videos (frames in, an annotated video
out), in-memory arrays of each dtype, files they skip (each named with its reason), a split
without labels, and the log lines the commands show (once per split, no library noise)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yolojax import predict as yj_predict
from yolojax import val as yj_val
from yolojax.inference import predictor as yj_predictor
from yolojax.console import configure_logging
from yolojax.data.sources.synthetic import SHAPE_NAMES, draw_shapes, write_synthetic_dataset

IMGSZ = 64


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A random YOLOv8n for the 6 shape classes (He-scaled kernels, identity BatchNorm), as a
    converted checkpoint; drawn with numpy from the variables' shapes (no init to compile)."""
    from yolojax.weights import save_converted
    from yolojax.models import YOLOv8

    model = YOLOv8(scale="n", num_classes=len(SHAPE_NAMES))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, IMGSZ, IMGSZ, 3)), train=False))
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            return rng.normal(0, np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape).astype(np.float32)
        return np.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, np.float32)

    variables = jax.tree_util.tree_map_with_path(draw, {k: shapes[k] for k in ("params", "batch_stats")})
    info = {"scale": "n", "num_classes": len(SHAPE_NAMES), "names": list(SHAPE_NAMES), "reg_max": 16}
    return save_converted(variables, info, tmp_path_factory.mktemp("w") / "yolov8n-shapes")


@pytest.fixture(scope="module")
def predictor(weights):
    # conf 0: every box NMS keeps, so a wrong input shows in the numbers.
    return yj_predictor.Predictor(weights, imgsz=IMGSZ, conf=0.0)


def write_video(path: Path, frames: int, size_wh=(96, 64), fps=10.0) -> list[np.ndarray]:
    """An MJPG .avi of synthetic shape frames; returns the RGB frames as OpenCV reads them back."""
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size_wh)
    for _ in range(frames):
        image, _, _ = draw_shapes(rng, size_wh[1], size_wh[0], 3)
        writer.write(np.ascontiguousarray(image[..., ::-1]))
    writer.release()
    return [image for _, image in yj_predictor.read_video_frames(path)]


def stderr_lines(captured) -> list[str]:
    return [line for line in captured.err.splitlines() if line.strip() and not line.startswith("[")]


def test_predict_reads_video_frames_and_writes_an_annotated_video(tmp_path, weights, predictor, capsys):
    source = tmp_path / "source"
    source.mkdir()
    frames = write_video(source / "clip.avi", 5)
    assert len(frames) == 5
    image, _, _ = draw_shapes(np.random.default_rng(1), 80, 70, 3)
    cv2.imwrite(str(source / "still.jpg"), image[..., ::-1])
    (source / "notes.txt").write_text("not an image")
    (source / "broken.png").write_bytes(b"not a png")
    (source / "broken.mp4").write_bytes(b"not a video")
    out = tmp_path / "out"
    args = ["--weights", str(weights), "--source", str(source), "--out", str(out), "--imgsz", str(IMGSZ),
            "--conf", "0"]
    assert yj_predict.main(args) == 0
    captured = capsys.readouterr()
    err = stderr_lines(captured)  # (lines in [] are FFmpeg's own, about broken.mp4)
    assert sum(" summary (fused): " in e for e in err) == 1, err  # ultralytics' model line
    err = [e for e in err if " summary (fused): " not in e]
    assert len(err) == 3, err  # each skipped file, named with its reason
    assert any(f"{source}: 1 files skipped, neither images nor videos" in e and str(source / "notes.txt") in e
               for e in err)
    assert any(f"image {source / 'broken.png'}: skipped, it cannot be read or decoded" in e for e in err)
    assert any(str(source / "broken.mp4") in e and "skipped" in e for e in err)
    results = json.loads((out / "predictions.json").read_text())
    # images first, then the video's frames (ultralytics' order), one entry per frame
    assert [(Path(r["image"]).name, r.get("frame")) for r in results] == [("still.jpg", None)] + [
        ("clip.avi", k) for k in range(1, 6)]
    for k, r in enumerate(results[1:]):
        expected = predictor.predict_array(frames[k])
        np.testing.assert_allclose(r["boxes_xyxy"], expected["boxes_xyxy"], atol=1e-4)
        assert r["classes"] == expected["classes"] and len(r["classes"]) > 0
    suffix, fourcc = yj_predictor.video_writer_format()
    assert (suffix, fourcc) == (".avi", "MJPG")  # Linux, as ultralytics 8.4.190 writes it
    annotated = out / "clip.avi"
    capture = cv2.VideoCapture(str(annotated))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0)
    assert int(capture.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode() == "MJPG"
    capture.release()
    written = [image for _, image in yj_predictor.read_video_frames(annotated)]
    assert len(written) == 5 and written[0].shape == frames[0].shape
    assert (out / "still.jpg").is_file() and not (out / "broken.mp4").exists()
    assert captured.out.strip() == (f"1 images, 5 frames of 1 videos, {sum(len(r['classes']) for r in results)}"
                                               f" detections -> {out / 'predictions.json'}")

    # every 2nd frame: frames 2 and 4 of the 5, numbered 1 and 2, at half the frame rate
    results = yj_predictor.predict(weights, source / "clip.avi", tmp_path / "out2", imgsz=IMGSZ, conf=0.0, vid_stride=2)
    assert [r["frame"] for r in results] == [1, 2]
    np.testing.assert_allclose(results[1]["boxes_xyxy"], predictor.predict_array(frames[3])["boxes_xyxy"], atol=1e-4)
    capture = cv2.VideoCapture(str(tmp_path / "out2" / "clip.avi"))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(5.0)
    capture.release()
    # the Python API takes a video path too
    assert [r["frame"] for r in predictor([source / "clip.avi"])] == [1, 2, 3, 4, 5]


def test_predict_nothing_readable_is_one_line_error(tmp_path, weights, capsys):
    (tmp_path / "a.jpg").write_bytes(b"x")
    code = yj_predict.main(["--weights", str(weights), "--source", str(tmp_path / "a.jpg"), "--out",
                            str(tmp_path / "o"), "--imgsz", str(IMGSZ)])
    err = stderr_lines(capsys.readouterr())
    expected = f"python -m yolojax.predict: error: no image or video frame of {tmp_path / 'a.jpg'} could be read"
    assert code == 1 and err[-1] == expected


def test_predictor_array_dtypes(predictor):
    rng = np.random.default_rng(0)
    image, _, _ = draw_shapes(rng, 72, 90, 3)
    expected = predictor.predict_array(image)
    assert len(expected["boxes_xyxy"]) > 0
    # uint16 is scaled to 8 bits (its high byte), as 16-bit image files are read
    as_uint16 = (image.astype(np.uint16) << 8) | rng.integers(0, 256, image.shape, dtype=np.uint16)
    assert predictor.predict_array(as_uint16) == expected
    grey = image[..., 1]
    assert predictor.predict_array(grey) == predictor.predict_array(np.repeat(grey[..., None], 3, axis=2))
    assert predictor.predict_array(grey[..., None]) == predictor.predict_array(grey)
    for bad, message in [(image.astype(np.float32) / 255, "dtype float32 is not supported"),
                         (image.astype(np.int32), "dtype int32 is not supported"),
                         (image.astype(bool), "dtype bool is not supported"),
                         (np.zeros((8, 8, 4), np.uint8), r"shape \(8, 8, 4\) is not supported")]:
        with pytest.raises(ValueError, match=message) as err:
            predictor.predict_array(bad)
        assert "\n" not in str(err.value)


def test_val_cli_shows_the_label_scan_once_and_why_metrics_are_zero(tmp_path, weights, capsys):
    data_yaml = write_synthetic_dataset(tmp_path / "ds", num_train=2, num_val=3, size_range=(48, 64))
    args = ["--weights", str(weights), "--data", str(data_yaml), "--imgsz", str(IMGSZ), "--batch", "4"]
    assert yj_val.main(args) == 0
    err = stderr_lines(capsys.readouterr())
    labels_dir = tmp_path / "ds" / "labels" / "val"
    assert err[0].startswith("INFO yolojax.evaluation.validator: YOLOv8n summary (fused): "), err  # as ultralytics, first
    assert err[1:] == [f"INFO yolojax.data.sources.label_scan: label scan {labels_dir}: 3 images: 3 label files found (0 empty), "
                   "0 missing, 0 corrupt (skipped)"]
    for f in labels_dir.glob("*.txt"):
        f.rename(f.with_suffix(".TXT"))
    assert yj_val.main(args) == 0
    err = stderr_lines(capsys.readouterr())
    assert sum("label scan" in e for e in err) == 1
    warnings = [e for e in err if e.startswith("WARNING")]
    assert len(warnings) == 1 and "no labels found in the val split" in warnings[0]
    assert "precision, recall and mAP are 0" in warnings[0]


@pytest.mark.parametrize("text, shown", [
    ((logging.INFO, "jax._src.xla_bridge", "Unable to initialize backend 'tpu'"), False),
    ((logging.INFO, "absl", "Saving checkpoint"), False),
    ((logging.WARNING, "absl", "something a library warns about"), True),
    ((logging.INFO, "yolojax.data.sources.label_scan", "label scan x: 3 images"), True),
    ((logging.INFO, "yolojax", "top-level"), True),
    ((logging.INFO, "yolojaxother", "not ours"), False),
])
def test_cli_logging_shows_yolojax_info_and_library_warnings(text, shown, capsys):
    level, name, message = text
    root = logging.getLogger()
    before = list(root.handlers), root.level
    handler = configure_logging()
    try:
        assert configure_logging() is not handler  # a second call replaces the first handler
        assert sum(type(h).__name__ == "_TqdmHandler" for h in root.handlers) == 1
        logging.getLogger(name).log(level, message)
        err = capsys.readouterr().err
        assert (err == f"{logging.getLevelName(level)} {name}: {message}\n") if shown else err == ""
    finally:
        for h in list(root.handlers):
            if h not in before[0]:
                root.removeHandler(h)
        root.setLevel(before[1])


def test_unwritable_outputs_refused_before_the_work(tmp_path, weights, capsys):
    data_yaml = write_synthetic_dataset(tmp_path / "ds", num_train=1, num_val=1, size_range=(48, 64))
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for flag in ("--json", "--plots", "--predictions"):
        target = blocker / ("x.json" if flag != "--plots" else "plots")
        folder = target.parent if flag != "--plots" else target
        assert yj_val.main(["--weights", str(weights), "--data", str(data_yaml), flag, str(target)]) == 1
        err = stderr_lines(capsys.readouterr())
        assert len(err) == 1 and err[0].startswith(f"python -m yolojax.val: error: {flag} folder {folder} is not "
                                                   "writable: "), err
    assert yj_predict.main(["--weights", str(weights), "--source", str(tmp_path / "ds" / "images" / "val"), "--out",
                            str(blocker / "out")]) == 1
    err = stderr_lines(capsys.readouterr())
    assert len(err) == 1 and err[0].startswith(f"python -m yolojax.predict: error: --out folder {blocker / 'out'} is "
                                               "not writable: "), err
