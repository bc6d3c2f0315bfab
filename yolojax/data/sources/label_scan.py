"""One-time verification of every image and label, with a cache next to the labels.

The checks are ultralytics' ``verify_image_label``: the image decodes and is at least 10
pixels on each side; label rows are ``cls cx cy w h`` (normalised) or polygons
``cls x1 y1 x2 y2 ...`` (turned into their enclosing box); coordinates are at most 1.01 and
not negative (-0.01 is tolerated for the centre when width and height are positive);
classes are integers below the class count; duplicate rows are removed. An image that
fails any check is skipped and counted corrupt; an image without a label file (missing) or
with an empty one (empty) is kept as a background image.

The result is cached as an ``.npz`` (no pickle) beside the labels folder, e.g.
``labels/train.yolojax-cache.npz``, keyed by a hash of every image and label path with its
size and modification time, and reused while nothing changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import stat
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from yolojax.data.image_io import decode_image_rgb, read_image_rgb
from yolojax.data.sources.label_table import LabelTable, xywh_to_xyxy

logger = logging.getLogger(__name__)

CACHE_VERSION = "yolojax-scan-1"
_MIN_IMAGE_SIDE = 10
_MAX_NAMED = 20


@dataclasses.dataclass(frozen=True)
class ScanReport:
    """Counts and offending files of one scan.

    Attributes:
      found: images whose label file exists (empty or not).
      missing: images without a label file (kept as backgrounds).
      empty: images with an empty label file (kept as backgrounds).
      corrupt: images skipped because the image or its label failed a check.
      total: images scanned.
      corrupt_files: the skipped image paths.
      missing_files: image paths without a label file.
      empty_files: image paths with an empty label file.
      messages: one line per problem (skipped file and reason, duplicates removed).
    """

    found: int
    missing: int
    empty: int
    corrupt: int
    total: int
    corrupt_files: tuple[str, ...]
    missing_files: tuple[str, ...]
    empty_files: tuple[str, ...]
    messages: tuple[str, ...]

    def summary(self, records: bool = False) -> str:
        """The counts in one line; ``records``: of records that carry their labels (TFDS), which
        have objects or none instead of label files."""
        if records:
            return (f"{self.total} records: {self.found - self.empty} with objects, {self.empty} without (kept as "
                    f"backgrounds), {self.corrupt} corrupt (skipped)")
        return (
            f"{self.total} images: {self.found} label files found ({self.empty} empty), "
            f"{self.missing} missing, {self.corrupt} corrupt (skipped)"
        )


@dataclasses.dataclass(frozen=True)
class ScanResult:
    """The images that passed the scan and their labels.

    Attributes:
      image_paths: kept image paths, in scan order.
      shapes_hw: int32 (N, 2) original image height, width in pixels.
      labels: boxes (normalised xyxy) and classes per kept image.
      has_polygons: True when the labels were polygons (ultralytics then uses segments in the
        affine transform and a 0.01 area threshold in the candidate filter).
      report: counts and offending files.
      record_indices: int64 (N,) where each kept image is in the scanned collection, for records
        named by their position (a TFDS split); None for files.
    """

    image_paths: tuple[str, ...]
    shapes_hw: np.ndarray
    labels: LabelTable
    has_polygons: bool
    report: ScanReport
    record_indices: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class _ImageVerdict:
    """Outcome of verifying one image and its labels."""

    image_path: str
    status: str  # 'found' | 'missing' | 'empty' | 'corrupt'
    shape_hw: tuple[int, int] | None
    boxes_xyxy: np.ndarray | None
    classes: np.ndarray | None
    has_polygons: bool
    message: str


class LabelError(ValueError):
    """A label file or array that fails a check."""


def parse_label_rows(text: str) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """Parse YOLO label text into (n, 5) float32 rows ``cls cx cy w h`` and optional polygons.

    Polygon rows (more than 6 values) become their enclosing boxes; the polygons (each
    (k, 2) normalised x, y) are returned too. Raises LabelError on malformed rows.
    """
    rows = [line.split() for line in text.strip().splitlines() if line.strip()]
    if not rows:
        return np.zeros((0, 5), np.float32), None
    try:
        if any(len(r) > 6 for r in rows):
            if any(len(r) == 5 for r in rows):
                raise LabelError("labels mix segment and detection rows")
            classes = np.array([r[0] for r in rows], dtype=np.float32)
            polygons = [np.array(r[1:], dtype=np.float32).reshape(-1, 2) for r in rows]
            corners = np.array([[p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()] for p in polygons])
            xywh = np.concatenate([(corners[:, :2] + corners[:, 2:]) / 2, corners[:, 2:] - corners[:, :2]], 1)
            return np.concatenate([classes[:, None], xywh], 1).astype(np.float32), polygons
        lengths = {len(r) for r in rows}
        if lengths != {5}:
            raise LabelError(f"labels require 5 columns, {sorted(lengths)} columns detected")
        return np.array(rows, dtype=np.float32), None
    except ValueError as e:
        if isinstance(e, LabelError):
            raise
        raise LabelError(f"unparsable label values: {e}") from e


def check_label_rows(
    rows: np.ndarray, num_classes: int, polygons: list[np.ndarray] | None = None
) -> tuple[np.ndarray, int]:
    """Check (n, 5) ``cls cx cy w h`` rows like ultralytics and drop duplicate rows.

    Returns:
      The rows without duplicates, and how many duplicates were removed.

    Raises:
      LabelError: out-of-bounds or negative coordinates, non-integer or out-of-range classes.
    """
    if len(rows) == 0:
        return rows, 0
    coords = rows[:, 1:]
    if coords.max() > 1.01:
        raise LabelError(f"non-normalized or out of bounds coordinates {coords[coords > 1.01]}")
    if not (rows.min() >= 0 or (rows.min() >= -0.01 and rows[:, 3:5].min() >= 0)):
        raise LabelError(f"negative label values {rows[rows < 0]}")
    if not (rows[:, 0] % 1 == 0).all():
        raise LabelError(f"non-integer class labels {rows[:, 0][rows[:, 0] % 1 != 0]}")
    if rows[:, 0].max() >= num_classes:
        raise LabelError(
            f"Label class {int(rows[:, 0].max())} exceeds dataset class count {num_classes}. "
            f"Possible class labels are 0-{num_classes - 1}"
        )
    _, keep = np.unique(rows, axis=0, return_index=True)
    if len(keep) < len(rows) and polygons:
        keys = np.array([c.tobytes() + p.tobytes() for c, p in zip(rows[:, 0], polygons)], dtype=object)
        _, keep = np.unique(keys, return_index=True)
    if len(keep) < len(rows):
        return rows[keep], len(rows) - len(keep)
    return rows, 0


def _verify_image(image_path: str, encoded: bytes | None = None) -> tuple[int, int]:
    if encoded is not None:
        image = decode_image_rgb(encoded)
    elif not os.path.isfile(image_path):
        raise LabelError("image file does not exist")
    else:
        image = read_image_rgb(image_path)
    if image is None:
        raise LabelError("image cannot be read or decoded")
    h, w = image.shape[:2]
    if h < _MIN_IMAGE_SIDE or w < _MIN_IMAGE_SIDE:
        raise LabelError(f"image size {(h, w)} <{_MIN_IMAGE_SIDE} pixels")
    return h, w


def verify_yolo_pair(image_path: str, label_path: str, num_classes: int) -> _ImageVerdict:
    """Verify one image and its YOLO label file (see the module docstring)."""
    try:
        shape = _verify_image(image_path)
        if not os.path.isfile(label_path):
            return _ImageVerdict(image_path, "missing", shape, np.zeros((0, 4), np.float32),
                                 np.zeros((0,), np.int32), False, "")
        with open(label_path, encoding="utf-8-sig") as f:
            rows, polygons = parse_label_rows(f.read())
        if len(rows) == 0:
            return _ImageVerdict(image_path, "empty", shape, np.zeros((0, 4), np.float32),
                                 np.zeros((0,), np.int32), False, "")
        rows, duplicates = check_label_rows(rows, num_classes, polygons)
        message = f"{image_path}: {duplicates} duplicate labels removed" if duplicates else ""
        return _ImageVerdict(image_path, "found", shape, xywh_to_xyxy(rows[:, 1:]), rows[:, 0].astype(np.int32),
                             polygons is not None, message)
    except (LabelError, OSError, UnicodeDecodeError) as e:
        return _ImageVerdict(image_path, "corrupt", None, None, None, False,
                             f"{image_path}: ignoring corrupt image/label: {e}")


def corrupt_verdict(name: str, error: Exception) -> _ImageVerdict:
    """The verdict on an image or label that cannot be used: skipped, with ``error`` as the reason."""
    return _ImageVerdict(name, "corrupt", None, None, None, False, f"{name}: ignoring corrupt image/label: {error}")


def verify_array_labels(
    image_path: str, classes: np.ndarray, boxes_xywh: np.ndarray, num_classes: int, encoded: bytes | None = None
) -> _ImageVerdict:
    """Verify one image with labels given as arrays (normalised centre xywh), e.g. from COCO JSON.
    With ``encoded`` (the image file's bytes, e.g. a TFDS record's), those are decoded instead of
    reading ``image_path``, which then only names the image."""
    try:
        shape = _verify_image(image_path, encoded)
        rows = np.concatenate([np.asarray(classes, np.float32).reshape(-1, 1),
                               np.asarray(boxes_xywh, np.float32).reshape(-1, 4)], 1)
        if len(rows) == 0:
            return _ImageVerdict(image_path, "empty", shape, np.zeros((0, 4), np.float32),
                                 np.zeros((0,), np.int32), False, "")
        rows, duplicates = check_label_rows(rows, num_classes)
        message = f"{image_path}: {duplicates} duplicate labels removed" if duplicates else ""
        return _ImageVerdict(image_path, "found", shape, xywh_to_xyxy(rows[:, 1:]), rows[:, 0].astype(np.int32),
                             False, message)
    except (LabelError, OSError) as e:
        return corrupt_verdict(image_path, e)


def files_hash(paths: Iterable[str], extra: str = "") -> str:
    """sha256 over paths with their sizes and modification times, plus `extra`."""
    h = hashlib.sha256()
    for p in paths:
        h.update(os.fsencode(p))
        h.update(b"\0")
        try:
            st = os.stat(p)
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        except OSError:
            h.update(b"-")
        h.update(b"\0")
    h.update(extra.encode())
    return h.hexdigest()


def _str_array(items: Sequence[str]) -> np.ndarray:
    return np.array(list(items), dtype=str) if len(items) else np.zeros((0,), dtype="<U1")


def _writable_dir(folder: Path) -> bool:
    """Writable, and not marked read-only by its mode bits (which root would otherwise ignore)."""
    try:
        return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & stat.S_IWUSR)
    except OSError:
        return False


def save_scan_cache(path: Path, result: ScanResult, key: str) -> None:
    """Write `result` to `path` (.npz, no pickled objects); skipped with a log line when the folder is read-only."""
    if not _writable_dir(path.parent):
        logger.info("label scan cache not saved: %s is read-only", path.parent)
        return
    r = result.report
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.npz")  # processes may scan at once
    try:
        np.savez_compressed(
            tmp,
            version=np.array(CACHE_VERSION),
            key=np.array(key),
            image_paths=_str_array(result.image_paths),
            shapes_hw=result.shapes_hw.astype(np.int32),
            boxes_xyxy=result.labels.boxes_xyxy,
            classes=result.labels.classes,
            offsets=result.labels.offsets,
            has_polygons=np.array(result.has_polygons),
            counts=np.array([r.found, r.missing, r.empty, r.corrupt, r.total], np.int64),
            corrupt_files=_str_array(r.corrupt_files),
            missing_files=_str_array(r.missing_files),
            empty_files=_str_array(r.empty_files),
            messages=_str_array(r.messages),
            **({} if result.record_indices is None else {"record_indices": result.record_indices.astype(np.int64)}),
        )
        os.replace(tmp, path)
    except OSError as e:
        logger.warning("label scan cache not saved to %s: %s", path, e)
        tmp.unlink(missing_ok=True)


def load_scan_cache(path: Path, key: str) -> ScanResult | None:
    """The cached result at `path` if it exists, is readable and matches `key`; else None."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["version"]) != CACHE_VERSION or str(z["key"]) != key:
                return None
            found, missing, empty, corrupt, total = (int(x) for x in z["counts"])
            report = ScanReport(found, missing, empty, corrupt, total,
                                tuple(z["corrupt_files"].tolist()), tuple(z["missing_files"].tolist()),
                                tuple(z["empty_files"].tolist()), tuple(z["messages"].tolist()))
            return ScanResult(
                image_paths=tuple(z["image_paths"].tolist()),
                shapes_hw=z["shapes_hw"].astype(np.int32),
                labels=LabelTable(z["boxes_xyxy"].astype(np.float32), z["classes"].astype(np.int32),
                                  z["offsets"].astype(np.int64)),
                has_polygons=bool(z["has_polygons"]),
                report=report,
                record_indices=z["record_indices"].astype(np.int64) if "record_indices" in z.files else None,
            )
    except (OSError, KeyError, ValueError):
        return None


def collect_verdicts(verdicts: Sequence[_ImageVerdict], record_indices: bool = False) -> ScanResult:
    """Fold per-image verdicts (in order) into a ScanResult; with ``record_indices``, it also holds
    the position of each kept image among the verdicts."""
    kept = [v for v in verdicts if v.status != "corrupt"]
    by_status = {s: tuple(v.image_path for v in verdicts if v.status == s) for s in ("missing", "empty", "corrupt")}
    found = sum(v.status in ("found", "empty") for v in verdicts)
    report = ScanReport(
        found=found,
        missing=len(by_status["missing"]),
        empty=len(by_status["empty"]),
        corrupt=len(by_status["corrupt"]),
        total=len(verdicts),
        corrupt_files=by_status["corrupt"],
        missing_files=by_status["missing"],
        empty_files=by_status["empty"],
        messages=tuple(v.message for v in verdicts if v.message),
    )
    return ScanResult(
        image_paths=tuple(v.image_path for v in kept),
        shapes_hw=np.array([v.shape_hw for v in kept], np.int32).reshape(-1, 2),
        labels=LabelTable.from_lists([v.boxes_xyxy for v in kept], [v.classes for v in kept]),
        has_polygons=any(v.has_polygons for v in kept),
        report=report,
        record_indices=np.array([i for i, v in enumerate(verdicts) if v.status != "corrupt"], np.int64)
        if record_indices else None,
    )


def log_report(report: ScanReport, where: str, records: bool = False) -> None:
    """Log the summary, every skipped file with its reason, and the background files
    (``records``: of records that carry their labels, :meth:`ScanReport.summary`)."""
    logger.info("label scan %s: %s", where, report.summary(records))
    for message in report.messages:
        logger.warning("%s", message)
    kinds = ((("without objects", report.empty_files),) if records else
             (("with missing label", report.missing_files), ("with empty label", report.empty_files)))
    for kind, files in kinds:
        if files:
            shown = ", ".join(files[:_MAX_NAMED]) + (" ..." if len(files) > _MAX_NAMED else "")
            logger.info("%d %s %s (kept as backgrounds): %s", len(files), "records" if records else "images", kind,
                        shown)


def run_scan(tasks: Sequence, verify, desc: str, threads: int | None = None) -> list[_ImageVerdict]:
    """Apply `verify(*task)` to every task in a thread pool (decoding releases the GIL), in order."""
    threads = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = pool.map(lambda t: verify(*t), tasks)
        return list(tqdm(results, total=len(tasks), desc=desc, leave=False, disable=len(tasks) < 100))


def scan_cache_path(label_paths: Sequence[str]) -> Path:
    """Where the cache of a YOLO split goes: beside its labels folder, e.g. labels/train.yolojax-cache.npz."""
    folder = Path(label_paths[0]).parent
    return folder.parent / f"{folder.name}.yolojax-cache.npz"


def scan_yolo_split(
    image_paths: Sequence[str], label_paths: Sequence[str], num_classes: int, use_cache: bool = True
) -> ScanResult:
    """Verify a YOLO split (images + label files), or load the unchanged cached result.

    Args:
      image_paths: the split's images (see data_yaml.list_image_files).
      label_paths: their label files (data_yaml.image_to_label_paths).
      num_classes: classes must be below this.
      use_cache: read and write the cache beside the labels.

    Returns:
      The kept images and their labels, with the scan report (also logged).

    Raises:
      ValueError: no image passed the checks.
    """
    cache = scan_cache_path(label_paths)
    key = files_hash(list(label_paths) + list(image_paths), extra=f"{CACHE_VERSION}:nc={num_classes}")
    result = load_scan_cache(cache, key) if use_cache else None
    labels_dir = Path(label_paths[0]).parent
    where = f"{labels_dir} (cached in {cache.name})" if result is not None else str(labels_dir)
    if result is None:
        verdicts = run_scan(list(zip(image_paths, label_paths, [num_classes] * len(image_paths))),
                            verify_yolo_pair, desc=f"Scanning {labels_dir}")
        result = collect_verdicts(verdicts)
        if use_cache and result.image_paths:
            save_scan_cache(cache, result, key)
    log_report(result.report, where)
    if not result.image_paths:
        raise ValueError(f"no valid images in {cache.parent}: " + "; ".join(result.report.messages[:5]))
    return result
