"""Prediction on images, videos, folders or globs: boxes in original pixels, annotated copies, JSON.

    python -m yolojax.predict --weights yolov8n.pt --source bus.jpg --out runs/predict
        [--conf 0.25 --iou 0.7 --imgsz 640 --max-det 300 --no-rect --agnostic --vid-stride 1]

As ultralytics predict (8.4, ``YOLO(...).predict()`` and ``yolo predict``): the image is
letterboxed to the minimum rectangle (scaled up or down so its long side is imgsz, centred,
pad 114, padded only to a multiple of the stride: ultralytics' default ``rect=True``;
``--no-rect``: to imgsz x imgsz), the model runs in fp32 on [0, 1] RGB, NMS keeps each box's
best class (conf 0.25, iou 0.7, max_det 300), and boxes are mapped back to original pixels
with ultralytics' ``scale_boxes`` rounding and clipped to the image.

Videos (ultralytics' video suffixes: .mp4, .avi, .mov, .mkv, ...) are read frame by frame
with OpenCV, every ``vid_stride``-th frame, as ultralytics does: each predicted frame is one
result with ``"frame"`` (1-based, counting the predicted frames), and the annotated frames
are written as one video named after the source, as ultralytics 8.4.190 writes it
(engine/predictor.py): ``<stem>.avi`` in Motion JPEG (MJPG) on Linux, ``<stem>.avi`` in WMV2
on Windows, ``<stem>.mp4`` in H.264 (avc1) on macOS, at the source's frame rate divided by
``vid_stride``. In a folder or glob, files that are neither images nor videos are skipped with
one warning naming them; an image or video that cannot be read is skipped with a warning
naming it.

Python API::

    from yolojax.inference.predictor import Predictor
    predictor = Predictor("yolov8n.pt", conf=0.25)
    results = predictor(["bus.jpg", "clip.mp4"])   # or in-memory arrays (see Predictor.predict_array)
    results[0]["boxes_xyxy"], results[0]["scores"], results[0]["classes"], results[0]["names"]
"""

from __future__ import annotations

import glob
import json
import logging
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from yolojax.config import STRIDE, check_arguments, weights_imgsz
from yolojax.plots.annotate import annotate


logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm", ".heic"}
# ultralytics 8.4.190 data/utils.py VID_FORMATS.
VIDEO_SUFFIXES = {".asf", ".avi", ".gif", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".ts", ".wmv", ".webm"}
_MAX_NAMED = 20  # skipped files named per folder or glob


def is_video(path: str | os.PathLike) -> bool:
    """Whether ``path`` has one of ultralytics' video suffixes (VIDEO_SUFFIXES)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _images_then_videos(candidates: Iterable[Path], where: str) -> list[Path]:
    """The image files, then the video files, of ``candidates`` (each group sorted, as
    ultralytics orders a folder); other files are skipped with one warning naming them."""
    files = sorted(f for f in candidates if f.is_file())
    images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
    videos = [f for f in files if is_video(f)]
    others = [str(f) for f in files if f.suffix.lower() not in IMAGE_SUFFIXES and not is_video(f)]
    if others:
        shown = ", ".join(others[:_MAX_NAMED]) + (f" and {len(others) - _MAX_NAMED} more" if len(others) > _MAX_NAMED
                                                 else "")
        logger.warning("%s: %d files skipped, neither images nor videos (by suffix): %s", where, len(others), shown)
    return images + videos


def list_sources(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Image and video files of a file, a folder (not recursive), a glob, or a list of those.

    A folder or glob gives its images, then its videos, each sorted; other files are skipped
    with a warning naming them. A file given by name is taken whatever its suffix (a video by
    its suffix, else an image). Raises FileNotFoundError when a source does not exist or
    holds no image or video.
    """
    if isinstance(source, (list, tuple)):
        return [p for s in source for p in list_sources(s)]
    s = str(source)
    p = Path(s)
    if p.is_dir():
        files = _images_then_videos(p.iterdir(), s)
    elif p.is_file():
        files = [p]
    elif any(ch in s for ch in "*?["):
        files = _images_then_videos((Path(f) for f in glob.glob(s, recursive=True)), s)
    else:
        raise FileNotFoundError(f"source {s} does not exist")
    if not files:
        raise FileNotFoundError(f"no images or videos found in {s}")
    return files


def read_video_frames(path: str | os.PathLike, vid_stride: int = 1) -> Iterator[tuple[int, np.ndarray]]:
    """``(frame, image)`` for every ``vid_stride``-th frame of a video, read with OpenCV.

    ``frame`` counts the frames yielded, from 1 (ultralytics' frame numbers); ``image`` is
    uint8 (H, W, 3) RGB. Raises ValueError when OpenCV cannot open the file.
    """
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"cannot open video {path}")
    try:
        frame = 0
        while True:
            if not all(capture.grab() for _ in range(vid_stride)):
                return
            ok, image_bgr = capture.retrieve()
            if not ok:
                return
            frame += 1
            yield frame, np.ascontiguousarray(image_bgr[..., ::-1])
    finally:
        capture.release()


def video_fps(path: str | os.PathLike) -> float:
    """The frame rate OpenCV reports for a video (0 when unknown)."""
    capture = cv2.VideoCapture(str(path))
    try:
        return float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    finally:
        capture.release()


def video_writer_format() -> tuple[str, str]:
    """(suffix, fourcc) of the annotated video, by platform, as ultralytics 8.4.190's
    ``save_predicted_images``: macOS .mp4 avc1, Windows .avi WMV2, others .avi MJPG."""
    if sys.platform == "darwin":
        return ".mp4", "avc1"
    if sys.platform.startswith("win"):
        return ".avi", "WMV2"
    return ".avi", "MJPG"


def letterbox_for_predict(shape_hw: tuple[int, int], imgsz: int, rect: bool = False, stride: int = STRIDE):
    """ultralytics' predict ``LetterBox`` (scaleup, centred; ``rect``: ``auto`` minimum padding).

    Returns a :class:`yolojax.data.augment.letterbox.Letterbox`.
    """
    from yolojax.data.augment.letterbox import Letterbox

    h, w = int(shape_hw[0]), int(shape_hw[1])
    r = min(imgsz / h, imgsz / w)
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
    dw, dh = imgsz - new_w, imgsz - new_h
    if rect:
        dw, dh = dw % stride, dh % stride
    out_hw = (new_h + dh, new_w + dw)
    dw, dh = dw / 2, dh / 2
    return Letterbox(ratio=r, resized_wh=(new_w, new_h), top=round(dh - 0.1), bottom=round(dh + 0.1),
                     left=round(dw - 0.1), right=round(dw + 0.1), out_hw=out_hw)


def scale_boxes_to_original(boxes: np.ndarray, input_hw: tuple[int, int], orig_hw: tuple[int, int]) -> np.ndarray:
    """xyxy boxes in letterboxed-input pixels -> original pixels (ultralytics' ``scale_boxes``), clipped."""
    boxes = np.array(boxes, np.float32).reshape(-1, 4)
    h0, w0 = orig_hw
    gain = min(input_hw[0] / h0, input_hw[1] / w0)
    new_h, new_w = max(round(h0 * gain), 1), max(round(w0 * gain), 1)
    gain_y, gain_x = new_h / h0, new_w / w0
    pad_x, pad_y = round((input_hw[1] - new_w) / 2 - 0.1), round((input_hw[0] - new_h) / 2 - 0.1)
    boxes[:, [0, 2]] = (boxes[:, [0, 2]] - pad_x) / gain_x
    boxes[:, [1, 3]] = (boxes[:, [1, 3]] - pad_y) / gain_y
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w0)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h0)
    return boxes


class Predictor:
    """Model + NMS + box mapping for a stream of images.

    Args:
      weights: ultralytics .pt or yolojax checkpoint directory (or give ``variables`` and ``info``).
      imgsz: letterbox size (multiple of 32); None: the size the weights were trained at
        (``info["imgsz"]``), else 640, as ultralytics.
      conf, iou, max_det, agnostic: NMS settings (ultralytics predict defaults).
      rect: minimum padding to a stride multiple (ultralytics' default); False: a square imgsz canvas.
      model_fn: replaces the Flax model and its weights (give ``info`` with it): float32
        (B, H, W, 3) images in [0, 1] -> (B, N, 4 + nc), e.g. a
        :class:`yolojax.inference.onnx_runtime.OnnxDetector`.
    """

    def __init__(self, weights: str | os.PathLike | None = None, *, variables: Any = None,
                 info: Mapping[str, Any] | None = None, imgsz: int | None = None, conf: float = 0.25, iou: float = 0.7,
                 max_det: int = 300, agnostic: bool = False, rect: bool = True, model_fn: Any = None):
        import jax

        from yolojax.models.registry import model_from_info
        from yolojax.ops import non_max_suppression

        check_arguments({"imgsz": imgsz, "conf": conf, "iou": iou, "max_det": max_det})
        if model_fn is not None:
            if info is None:
                raise ValueError("model_fn needs info (names, num_classes)")
            variables = {}
        elif variables is None or info is None:
            if weights is None:
                raise ValueError("give weights or variables and info")
            from yolojax.weights import load_weights
            from yolojax.models.summary import loaded_summary_line

            variables, info = load_weights(weights)
            logger.info("%s", loaded_summary_line(info))
        self.info = dict(info)
        self.names = list(info["names"])
        # As ultralytics' predictor (8.4.190 engine/predictor.py): a fixed-size exported model
        # takes square imgsz letterboxes whatever rect says.
        fixed_size = model_fn is not None and getattr(model_fn, "input_hw", None) is not None
        self.imgsz, self.rect = int(weights_imgsz(imgsz, info)), bool(rect) and not fixed_size
        self.variables = jax.device_put(variables)
        if model_fn is not None:
            from yolojax.inference.detector import make_predict_fn

            self._run = make_predict_fn(info, conf, iou, max_det, multi_label=False, agnostic=agnostic,
                                        model_fn=model_fn)
            return
        model = model_from_info(info)

        @jax.jit
        def run(variables, images):
            out = model.apply(variables, images.astype(jax.numpy.float32) / 255.0, train=False)
            return non_max_suppression(out, conf, iou, agnostic=agnostic, max_det=max_det)

        self._run = run

    def preprocess(self, image_rgb: np.ndarray):
        from yolojax.data.augment.letterbox import apply_letterbox

        lb = letterbox_for_predict(image_rgb.shape[:2], self.imgsz, self.rect)
        return apply_letterbox(np.ascontiguousarray(image_rgb), lb), lb

    def predict_array(self, image: np.ndarray) -> dict[str, Any]:
        """One in-memory image -> dict(boxes_xyxy, scores, classes, names) in original pixels.

        ``image``: uint8 (0-255) or uint16 (0-65535, scaled to 8 bits) RGB (H, W, 3), or grey
        (H, W) / (H, W, 1) (:func:`yolojax.data.image_io.as_rgb_uint8`). Note RGB: OpenCV's
        ``cv2.imread`` gives BGR (reverse it with ``[..., ::-1]``). Raises ValueError in one
        line for another dtype (e.g. float) or shape.
        """
        from yolojax.data.image_io import as_rgb_uint8

        image_rgb = as_rgb_uint8(image)
        canvas, lb = self.preprocess(image_rgb)
        dets = self._run(self.variables, canvas[None])
        det = dets.to_list()[0]
        boxes = scale_boxes_to_original(det[:, :4], lb.out_hw, image_rgb.shape[:2])
        classes = det[:, 5].astype(int)
        return {"boxes_xyxy": boxes.tolist(), "scores": det[:, 4].tolist(), "classes": classes.tolist(),
                "names": [self.names[c] if c < len(self.names) else str(c) for c in classes]}

    def predict_video(self, path: str | os.PathLike, vid_stride: int = 1) -> Iterator[tuple[np.ndarray, dict]]:
        """``(frame RGB uint8 (H, W, 3), result)`` for every ``vid_stride``-th frame of a video;
        each result holds "image" (the path) and "frame" (1-based) (:func:`read_video_frames`)."""
        for frame, image in read_video_frames(path, vid_stride):
            yield image, {"image": str(path), "frame": frame, **self.predict_array(image)}

    def __call__(self, images: str | os.PathLike | np.ndarray | Iterable[str | os.PathLike | np.ndarray]
                 ) -> list[dict[str, Any]]:
        """Image or video paths, or in-memory images (:meth:`predict_array`) -> one result dict
        per image or video frame (paths add "image": the path; video frames also "frame").
        One path, one (H, W, 3) / (H, W) array or an (N, H, W, 3) array of images is taken as
        ultralytics' ``model(source)`` takes it. Raises ValueError naming a file that cannot
        be read."""
        from yolojax.data.image_io import read_image_rgb

        if isinstance(images, (str, os.PathLike)) or (isinstance(images, np.ndarray) and images.ndim in (2, 3)):
            images = [images]
        results = []
        for item in images:
            if isinstance(item, np.ndarray):
                results.append(self.predict_array(item))
            elif is_video(item):
                results += [result for _, result in self.predict_video(item)]
            else:
                image = read_image_rgb(item)
                if image is None:
                    raise ValueError(f"cannot read image {item}")
                results.append({"image": str(item), **self.predict_array(image)})
        return results


class _VideoWriter:
    """Annotated frames of one video, written to ``target`` (opened at the first frame, in
    :func:`video_writer_format`'s codec) at ``fps`` frames per second."""

    def __init__(self, target: Path, fps: float):
        self.target, self.fps = target, fps
        self.writer = None

    def write(self, image_rgb: np.ndarray, result: Mapping[str, Any]) -> None:
        frame = annotate(image_rgb, result)
        if self.writer is None:
            fourcc = cv2.VideoWriter_fourcc(*video_writer_format()[1])
            self.writer = cv2.VideoWriter(str(self.target), fourcc, self.fps, (frame.shape[1], frame.shape[0]))
        self.writer.write(frame)

    def release(self) -> None:
        if self.writer is not None:
            self.writer.release()


class _AnnotatedOutput:
    """Annotated copies in ``out_dir``: an image under its own name, a video as ``<stem>`` +
    :func:`video_writer_format`'s suffix; a name already used gets ``_1``, ``_2``, ..."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.used: set[str] = set()

    def _name(self, stem: str, suffix: str) -> str:
        name, k = f"{stem}{suffix}", 1
        while name in self.used:  # the same file name from different folders
            name, k = f"{stem}_{k}{suffix}", k + 1
        self.used.add(name)
        return name

    def image(self, path: Path, image_rgb: np.ndarray, result: Mapping[str, Any]) -> None:
        cv2.imwrite(str(self.out_dir / self._name(path.stem, path.suffix)), annotate(image_rgb, result))

    def video(self, path: Path, fps: float) -> _VideoWriter:
        return _VideoWriter(self.out_dir / self._name(path.stem, video_writer_format()[0]), fps)


def _predict_video(predictor: Predictor, path: Path, output: _AnnotatedOutput | None,
                   vid_stride: int) -> list[dict[str, Any]]:
    """Every ``vid_stride``-th frame's result (and the annotated video in ``output``); a video
    that cannot be opened or holds no frame is skipped with a warning naming it."""
    writer = output.video(path, max(1.0, video_fps(path) / vid_stride)) if output is not None else None
    results = []
    try:
        for image, result in predictor.predict_video(path, vid_stride):
            results.append(result)
            if writer is not None:
                writer.write(image, result)
    except ValueError as e:  # OpenCV cannot open it
        logger.warning("%s: skipped", e)
        return results
    finally:
        if writer is not None:
            writer.release()
    if not results:
        logger.warning("video %s: skipped, OpenCV read no frame from it", path)
    return results


def predict(weights: str | os.PathLike | None, source, out: str | os.PathLike | None = None, *, imgsz: int | None = None,
            conf: float = 0.25, iou: float = 0.7, max_det: int = 300, agnostic: bool = False,
            rect: bool = True, save_images: bool = True, vid_stride: int = 1, model_fn: Any = None,
            info: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Predict every image and video frame of ``source`` (:func:`list_sources`); with ``out``,
    write annotated copies (videos as videos) and predictions.json (one entry per image or frame).

    ``model_fn`` and ``info`` replace the weights as in :class:`Predictor`. Files that cannot be
    read are skipped with a warning naming them. Raises ValueError when nothing could be read,
    or ``vid_stride`` < 1.
    """
    from yolojax.data.image_io import read_image_rgb

    if vid_stride < 1:
        raise ValueError(f"vid_stride must be >= 1, got {vid_stride}")
    files = list_sources(source)
    predictor = Predictor(weights, imgsz=imgsz, conf=conf, iou=iou, max_det=max_det, agnostic=agnostic, rect=rect,
                          model_fn=model_fn, info=info)
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    output = _AnnotatedOutput(out_dir) if out_dir is not None and save_images else None
    results = []
    for f in files:
        if is_video(f):
            results += _predict_video(predictor, f, output, vid_stride)
            continue
        image = read_image_rgb(f)
        if image is None:
            logger.warning("image %s: skipped, it cannot be read or decoded", f)
            continue
        res = {"image": str(f), **predictor.predict_array(image)}
        results.append(res)
        if output is not None:
            output.image(f, image, res)
    if not results:
        raise ValueError(f"no image or video frame of {source} could be read")
    if out_dir is not None:
        (out_dir / "predictions.json").write_text(json.dumps(results, indent=1))
    return results
