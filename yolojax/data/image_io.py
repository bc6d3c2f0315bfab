"""Image decoding and the long-side resize of ultralytics' ``BaseDataset.load_image``."""

from __future__ import annotations

import math
import os

import cv2
import numpy as np

# OpenCV >= 4.10 decodes straight to RGB; older versions decode BGR and we swap.
_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)


def decode_image_rgb(data: bytes | np.ndarray) -> np.ndarray | None:
    """Decode encoded image bytes (JPEG, PNG, ...) to uint8 (H, W, 3) RGB; None if undecodable.

    EXIF orientation is applied (OpenCV's default), grey images are expanded to 3 channels and
    16-bit images keep their high byte, as ultralytics' imread does.
    """
    buffer = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray)) else data
    if buffer.size == 0:
        return None
    try:
        if _IMREAD_RGB is not None:
            image = cv2.imdecode(buffer, _IMREAD_RGB)
        else:
            image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
            if image is not None:
                image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    except cv2.error:
        return None
    if image is None:
        return None
    return as_rgb_uint8(image)


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """An in-memory image as uint8 (H, W, 3) RGB, for the model's [0, 255] input.

    Accepted: dtype uint8 (values 0-255) or uint16 (0-65535, scaled to 8 bits by keeping the
    high byte, as 16-bit image files are read); shape (H, W, 3) RGB, or (H, W) / (H, W, 1) grey
    (repeated to 3 channels). A uint8 (H, W, 3) array is returned as it is.

    Raises:
      ValueError: in one line, for any other dtype (e.g. float: convert first, such as
        ``(x * 255).round().astype(np.uint8)`` for values in [0, 1]) or shape.
    """
    image = np.asarray(image)
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"image array of dtype {image.dtype} is not supported: give uint8 (0-255) or uint16 "
                         f"(0-65535) RGB; e.g. (x * 255).round().astype(np.uint8) for floats in [0, 1]")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"image array of shape {image.shape} is not supported: give (H, W, 3) RGB or (H, W) grey")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return image


class UnreadableImageError(OSError):
    """An image file that cannot be read or decoded; ``path`` names it and ``reason`` says why
    in a few words (e.g. "file not found")."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"cannot read image {path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):  # crosses from a worker process with its fields
        return type(self), (self.path, self.reason)


def _os_reason(e: OSError) -> str:
    if isinstance(e, FileNotFoundError):
        return "file not found"
    if isinstance(e, PermissionError):
        return "permission denied"
    return (e.strerror or type(e).__name__).lower()


def read_image_file(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 (H, W, 3) RGB (:func:`decode_image_rgb`).

    Raises:
      UnreadableImageError: the file is missing, cannot be opened, is empty or does not decode
        (e.g. truncated); its ``reason`` says which.
    """
    try:
        data = np.fromfile(str(path), np.uint8)
    except OSError as e:
        raise UnreadableImageError(path, _os_reason(e)) from None
    image = decode_image_rgb(data)
    if image is None:
        raise UnreadableImageError(path, "empty file" if data.size == 0 else "truncated or corrupt, does not decode")
    return image


def read_image_rgb(path: str | os.PathLike) -> np.ndarray | None:
    """Read an image file as uint8 (H, W, 3) RGB; None when missing or undecodable."""
    try:
        return read_image_file(path)
    except UnreadableImageError:
        return None


def long_side_size(shape_hw: tuple[int, int], imgsz: int) -> tuple[int, int]:
    """(h, w) after resizing the long side to `imgsz` (ultralytics rounds up, capped at imgsz)."""
    h0, w0 = int(shape_hw[0]), int(shape_hw[1])
    r = imgsz / max(h0, w0)
    if r == 1:
        return h0, w0
    return min(math.ceil(h0 * r), imgsz), min(math.ceil(w0 * r), imgsz)


def resize_to(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of uint8 (H, W, C) to (h, w); the input itself when already that size."""
    if tuple(size_hw) == image.shape[:2]:
        return image
    return cv2.resize(image, (int(size_hw[1]), int(size_hw[0])), interpolation=cv2.INTER_LINEAR)


def resize_long_side(image: np.ndarray, imgsz: int) -> np.ndarray:
    """Resize uint8 (H, W, C) so its long side is `imgsz` pixels, keeping the aspect ratio.

    Bilinear (cv2.INTER_LINEAR) both for training and validation, like ultralytics 8.4's
    ``load_image``. Returns the input unchanged when the long side already is `imgsz`.
    """
    return resize_to(image, long_side_size(image.shape[:2], imgsz))
