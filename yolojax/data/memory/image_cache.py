"""Image cache (``data.cache``): ultralytics' ``cache='ram'`` and ``cache='disk'``.

* ``"ram"``: every image of a split decoded and resized to ``imgsz`` on its long side (what
  ultralytics' ``load_image`` gives and what the uncached path makes: the same functions, so
  the same pixels), packed in ONE file that every process maps read-only: the Grain worker
  processes (spawned) share the main process's pages instead of holding a copy each. The file
  lives in ``/dev/shm`` (RAM) when it has twice the room (it also carries the workers'
  batches: ultralytics' rule), else in the temporary directory (the page cache keeps it in
  RAM). It is removed when the cache is closed or garbage-collected, or at exit; a file left
  by a killed run is removed by the next run that caches (it holds no lock any more).
* ``"disk"``: ultralytics' ``image.npy`` files beside the images (the image path with the
  suffix ``.npy``) holding what ultralytics' ``cache_images_to_disk`` writes: the decoded image
  at its original size, BGR, uint8 (H, W, 3). The files are interchangeable with ultralytics'
  (either tool reads the other's), and one file serves every ``imgsz``; loading one replaces
  the decode (the long-side resize still runs, the same as without a cache). A file is
  (re)written, before the first batch, when missing, older than its image (ultralytics' rule),
  or not an array of the image's size (e.g. half-written by a killed writer); writes go to a
  hidden temporary file renamed into place, so a half-written ``.npy`` is never read.

Before caching, :func:`open_image_cache` checks the room with ultralytics' safety margins
(RAM: the images' bytes x 2 against the available memory; disk: x 1.1 against the free space)
and refuses in one line giving the needed and the available figures (ultralytics warns and
trains without the cache instead).

Batches are the same bit for bit with or without a cache: the builders ask
:func:`resized_record` for each image, which a cached source answers from the cache.
"""

from __future__ import annotations

import fcntl
import logging
import math
import mmap
import os
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from yolojax.data.image_io import long_side_size, read_image_rgb, resize_long_side
from yolojax.data.sources.label_table import LabelTable

logger = logging.getLogger(__name__)

CACHE_MODES = ("", "ram", "disk")
RAM_MARGIN = 1.0    # ultralytics' check_cache_ram safety margin (100%)
DISK_MARGIN = 0.1   # ultralytics' check_cache_disk safety margin (10%)
SHM_FACTOR = 2.0    # /dev/shm must hold twice the cache (it also carries the workers' batches), as ultralytics
SAMPLE_IMAGES = 30  # images decoded to estimate the size when a source does not know its image shapes
RAM_FILE_PREFIX = "yolojax-ram-cache-"
STALE_AFTER_S = 60.0  # a RAM cache file is swept only when unlocked and at least this old
GB = float(1 << 30)


class CacheSpaceError(ValueError):
    """Not enough memory or disk for the image cache: one line with the needed and available figures."""


def cache_mode(value: Any) -> str:
    """ultralytics' ``cache`` values -> "", "ram" or "disk": True / "ram" -> "ram"; False / None /
    "" / "false" -> "" (no cache). Raises ValueError (one line) for anything else."""
    if value is None or value is False:
        return ""
    if value is True:
        return "ram"
    text = str(value).strip().lower()
    if text in ("", "false", "none"):
        return ""
    if text in ("true", "ram"):
        return "ram"
    if text == "disk":
        return "disk"
    raise ValueError(f"cache must be '', 'ram' or 'disk' (True means 'ram', False '', as in ultralytics), "
                     f"got {value!r}")


def resized_record(source: Any, index: int, imgsz: int) -> dict[str, Any]:
    """Source record ``index`` with its image as ultralytics' ``load_image`` gives it: decoded and
    resized to ``imgsz`` on its long side (bilinear). Adds ``orig_hw``, the (h, w) before the resize.

    A cached source (:class:`CachedSource`) answers from its cache; any other source decodes.
    The pixels are the same either way.
    """
    method = getattr(source, "resized_record", None)
    if method is not None:
        return method(index, imgsz)
    record = source[int(index)]
    image = record["image"]
    return {**record, "image": resize_long_side(image, imgsz), "orig_hw": (int(image.shape[0]), int(image.shape[1]))}


def _threads() -> int:
    return min(8, max(1, (os.cpu_count() or 1) - 1))  # ultralytics' NUM_THREADS


def _progress(total: int, desc: str):
    return tqdm(total=total, desc=desc, leave=False, disable=total < 100)


# ----------------------------------------------------------------------------------------
# Room checks.
# ----------------------------------------------------------------------------------------


def available_memory() -> tuple[int, int]:
    """(available, total) bytes of RAM: MemAvailable / MemTotal of /proc/meminfo (as psutil), else sysconf."""
    try:
        fields = {}
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                fields[key] = int(rest.split()[0]) * 1024
        return fields["MemAvailable"], fields["MemTotal"]
    except (OSError, KeyError, ValueError, IndexError):
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page


def _sample_indices(n: int, k: int = SAMPLE_IMAGES) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(np.int64)) if n else np.zeros(0, np.int64)


def ram_bytes(source: Any, imgsz: int) -> tuple[int, bool]:
    """(bytes, exact) of ``source``'s images resized to ``imgsz`` on the long side: exact from the
    image shapes of the label scan, else extrapolated from 30 decoded images (as ultralytics)."""
    shapes = getattr(source, "image_shapes_hw", None)
    if shapes is not None:
        return sum(3 * h * w for h, w in (long_side_size(s, imgsz) for s in np.asarray(shapes))), True
    picks = _sample_indices(len(source))
    if not len(picks):
        return 0, True
    sampled = sum(resized_record(source, int(i), imgsz)["image"].nbytes for i in picks)
    return int(math.ceil(sampled * len(source) / len(picks))), False


def ram_cache_dir(nbytes: int) -> tuple[Path, str]:
    """Where a RAM cache of ``nbytes`` goes: /dev/shm when it has room for twice that, else the
    temporary directory (then the page cache holds it); with a note saying why."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        free = shutil.disk_usage(shm).free
        if free >= SHM_FACTOR * nbytes:
            return shm, ""
        note = f"{shm} has {free / GB:.1f}GB free, not {SHM_FACTOR:g}x the cache's {nbytes / GB:.1f}GB"
    else:
        note = f"{shm} is not available"
    return Path(tempfile.gettempdir()), note


def check_ram(sources: Sequence[Any], imgsz: int) -> tuple[int, Path]:
    """Refuse (CacheSpaceError) unless RAM holds ``sources``' resized images with ultralytics'
    100% margin and a folder to map them from has room. Returns (image bytes, folder)."""
    sizes = [ram_bytes(s, imgsz) for s in sources]
    nbytes = sum(b for b, _ in sizes)
    exact = all(e for _, e in sizes)
    needed = nbytes * (1 + RAM_MARGIN)
    available, total = available_memory()
    what = "" if exact else " (estimated from 30 images)"
    if needed > available:
        raise CacheSpaceError(
            f"data.cache='ram': {needed / GB:.1f}GB RAM needed ({nbytes / GB:.1f}GB of images at imgsz {imgsz}"
            f"{what} with ultralytics' {RAM_MARGIN:.0%} safety margin) but only {available / GB:.1f}/"
            f"{total / GB:.1f}GB available; use cache='disk' or cache=''")
    folder, note = ram_cache_dir(nbytes)
    if note:
        free = shutil.disk_usage(folder).free
        if free < nbytes * (1 + DISK_MARGIN):
            raise CacheSpaceError(
                f"data.cache='ram': no room to map {nbytes / GB:.1f}GB of images: {note}, and {folder} has "
                f"{free / GB:.1f}GB free; use cache='disk' or cache=''")
        logger.info("RAM image cache in %s (page cache): %s", folder, note)
    return nbytes, folder


def _header(path: str) -> tuple[tuple[int, ...], np.dtype, bool, int] | None:
    """(shape, dtype, fortran_order, data offset) of a .npy file; None when not one."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                return None
            return tuple(shape), dtype, bool(fortran), f.tell()
    except (OSError, ValueError, SyntaxError, TypeError):
        return None


def npy_path(image_path: str | os.PathLike) -> str:
    """ultralytics' disk cache file of an image: the image path with the suffix ``.npy``."""
    return str(Path(image_path).with_suffix(".npy"))


def npy_is_current(image_path: str, shape_hw: Sequence[int] | None) -> bool:
    """The image's .npy exists, is not older than the image (ultralytics' rule) and is a whole
    uint8 (h, w, 3) array of the image's size (so not a half-written file)."""
    npy = npy_path(image_path)
    try:
        npy_stat, image_stat = os.stat(npy), os.stat(image_path)
    except OSError:
        return False
    if npy_stat.st_mtime < image_stat.st_mtime:
        return False
    header = _header(npy)
    if header is None:
        return False
    shape, dtype, fortran, offset = header
    if dtype != np.uint8 or fortran or len(shape) != 3 or shape[2] != 3:
        return False
    if shape_hw is not None and tuple(shape[:2]) != (int(shape_hw[0]), int(shape_hw[1])):
        return False
    return npy_stat.st_size == offset + int(np.prod(shape))


def _disk_plan(source: Any) -> list[int]:
    """Indices of ``source`` whose .npy must be (re)written."""
    paths = getattr(source, "image_paths", None)
    shapes = getattr(source, "image_shapes_hw", None)
    if paths is None or shapes is None or getattr(source, "labels", None) is None:
        raise ValueError(f"data.cache='disk' needs image files with scanned labels; {type(source).__name__} has "
                         "none: use cache='ram'")
    return [i for i, p in enumerate(paths) if not npy_is_current(p, shapes[i])]


def check_disk(sources: Sequence[Any]) -> list[list[int]]:
    """Refuse (CacheSpaceError) unless every folder that needs .npy files is writable and its file
    system has room for them with ultralytics' 10% margin. Returns the indices to write per source."""
    plans = [_disk_plan(s) for s in sources]
    per_device: dict[int, list] = {}
    device_of: dict[str, int] = {}
    for source, todo in zip(sources, plans):
        shapes = source.image_shapes_hw
        for i in todo:
            npy = npy_path(source.image_paths[i])
            folder = os.path.dirname(os.path.abspath(npy))
            if folder not in device_of:
                if not os.access(folder, os.W_OK):
                    raise CacheSpaceError(f"data.cache='disk': {folder} is not writable, so {npy} cannot be "
                                          "written; use cache='ram' or cache=''")
                device_of[folder] = os.stat(folder).st_dev
            h, w = (int(x) for x in shapes[i])
            entry = per_device.setdefault(device_of[folder], [folder, 0, 0])
            entry[1] += 3 * h * w + 128
            entry[2] += 1
    for folder, nbytes, count in per_device.values():
        usage = shutil.disk_usage(folder)
        needed = nbytes * (1 + DISK_MARGIN)
        if needed > usage.free:
            raise CacheSpaceError(
                f"data.cache='disk': {needed / GB:.1f}GB disk space needed ({count} .npy files, {nbytes / GB:.1f}GB, "
                f"with ultralytics' {DISK_MARGIN:.0%} safety margin) but only {usage.free / GB:.1f}/"
                f"{usage.total / GB:.1f}GB free in {folder}; use cache='ram' or cache=''")
    return plans


# ----------------------------------------------------------------------------------------
# RAM: one file of resized images, mapped read-only by every process.
# ----------------------------------------------------------------------------------------


def _unlocked(path: Path) -> bool:
    """True when nobody holds a lock on ``path`` (its owner is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def sweep_stale_ram_caches(folder: Path) -> int:
    """Remove RAM cache files in ``folder`` left by runs that ended without removing them (killed):
    no process holds their lock and they are older than a minute. Returns the bytes freed."""
    freed = 0
    for path in folder.glob(RAM_FILE_PREFIX + "*"):
        try:
            stat = path.stat()
            if time.time() - stat.st_mtime < STALE_AFTER_S or not _unlocked(path):
                continue
            path.unlink()
            freed += stat.st_size
            logger.info("removed %s (%.1fGB), an image cache left by a run that did not end cleanly", path,
                        stat.st_size / GB)
        except OSError:
            continue
    return freed


def _remove_file(path: str, lock_fd: int) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
    try:
        os.close(lock_fd)
    except OSError:
        pass


class RamImageCache:
    """Resized images packed in one file, mapped read-only (shared pages) in every process.

    Pickles as its file name and layout (a few arrays): a Grain worker maps the file on first use.
    The creating process owns the file (holds a shared lock on it) and removes it in
    :meth:`close`, when garbage-collected, or at exit.

    Attributes:
      path: the file.
      imgsz: the long side the images were resized to.
      offsets: int64 (N + 1,) byte offsets of the images.
      shapes_hw: int32 (N, 2) resized (h, w).
      orig_hw: int32 (N, 2) (h, w) before the resize.
    """

    def __init__(self, path: str, imgsz: int, offsets: np.ndarray, shapes_hw: np.ndarray, orig_hw: np.ndarray):
        self.path = str(path)
        self.imgsz = int(imgsz)
        self.offsets = np.asarray(offsets, np.int64)
        self.shapes_hw = np.asarray(shapes_hw, np.int32).reshape(-1, 2)
        self.orig_hw = np.asarray(orig_hw, np.int32).reshape(-1, 2)
        self._data: np.ndarray | None = None
        self._finalizer = None
        self._map_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.shapes_hw)

    @property
    def nbytes(self) -> int:
        return int(self.offsets[-1])

    def __getstate__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("path", "imgsz", "offsets", "shapes_hw", "orig_hw")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._data, self._finalizer, self._map_lock = None, None, threading.Lock()

    def _mapped(self) -> np.ndarray:
        if self._data is None:
            with self._map_lock:
                if self._data is None:
                    if self.nbytes == 0:
                        self._data = np.zeros(0, np.uint8)
                    else:
                        with open(self.path, "rb") as f:
                            self._data = np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), np.uint8)
        return self._data

    def image(self, index: int) -> np.ndarray:
        """Read-only uint8 (h, w, 3) view of resized image ``index``."""
        h, w = self.shapes_hw[index]
        return self._mapped()[self.offsets[index]:self.offsets[index + 1]].reshape(int(h), int(w), 3)

    def close(self) -> None:
        """Owner: remove the file (mappings keep their pages until they go)."""
        if self._finalizer is not None:
            self._finalizer()

    @classmethod
    def build(cls, source: Any, imgsz: int, folder: Path, threads: int | None = None,
              desc: str = "Caching images") -> tuple[RamImageCache, list[np.ndarray], list[np.ndarray]]:
        """Decode and resize every image of ``source`` (threads) into a new file in ``folder``.

        Returns the cache and, for a source without a label table, the boxes and classes of every
        record (else two empty lists).
        """
        folder = Path(folder)
        sweep_stale_ram_caches(folder)
        fd, path = tempfile.mkstemp(prefix=f"{RAM_FILE_PREFIX}{os.getpid()}-", suffix=".bin", dir=folder)
        fcntl.flock(fd, fcntl.LOCK_SH)  # held while this process owns the file: not stale
        n = len(source)
        keep_labels = getattr(source, "labels", None) is None
        offsets = np.zeros(n + 1, np.int64)
        shapes = np.zeros((n, 2), np.int32)
        orig = np.zeros((n, 2), np.int32)
        boxes: list[np.ndarray] = []
        classes: list[np.ndarray] = []

        def load(i: int):
            record = resized_record(source, i, imgsz)
            return np.ascontiguousarray(record["image"]), record["orig_hw"], record["boxes"], record["classes"]

        try:
            threads = threads or _threads()
            chunk = 4 * threads
            with ThreadPoolExecutor(max_workers=threads) as pool, os.fdopen(os.dup(fd), "wb") as out, \
                    _progress(n, desc) as bar:
                for start in range(0, n, chunk):
                    for i, (image, hw0, b, c) in zip(range(start, min(n, start + chunk)),
                                                     pool.map(load, range(start, min(n, start + chunk)))):
                        out.write(image.data)
                        offsets[i + 1] = offsets[i] + image.nbytes
                        shapes[i], orig[i] = image.shape[:2], hw0
                        if keep_labels:
                            boxes.append(b)
                            classes.append(c)
                    bar.update(min(n, start + chunk) - start)
                    bar.set_description(f"{desc} ({offsets[min(n, start + chunk)] / GB:.1f}GB RAM)", refresh=False)
        except BaseException:
            _remove_file(path, fd)
            raise
        cache = cls(path, imgsz, offsets, shapes, orig)
        cache._finalizer = weakref.finalize(cache, _remove_file, path, fd)
        return cache, boxes, classes


# ----------------------------------------------------------------------------------------
# Disk: ultralytics' image.npy files.
# ----------------------------------------------------------------------------------------


def write_npy(image_path: str) -> str | None:
    """Decode ``image_path`` and write its .npy (ultralytics' content: BGR uint8 (H, W, 3)) through
    a hidden temporary file renamed into place. Returns an error message, or None."""
    image = read_image_rgb(image_path)
    if image is None:
        return f"cannot read image {image_path}"
    npy = Path(npy_path(image_path))
    tmp = npy.with_name(f".{npy.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), allow_pickle=False)
        image_mtime = os.stat(image_path).st_mtime
        if image_mtime > time.time():  # an image dated in the future: keep the file current by ultralytics' rule
            os.utime(tmp, (image_mtime, image_mtime))
        os.replace(tmp, npy)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        return f"cannot write {npy}: {e.strerror or e}"
    return None


def read_npy_rgb(image_path: str, shape_hw: Sequence[int] | None = None) -> np.ndarray | None:
    """The image from its .npy as uint8 (H, W, 3) RGB; None when the file is missing, unreadable or
    not a uint8 (h, w, 3) array of ``shape_hw``."""
    try:
        bgr = np.load(npy_path(image_path), allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if bgr.dtype != np.uint8 or bgr.ndim != 3 or bgr.shape[2] != 3:
        return None
    if shape_hw is not None and tuple(bgr.shape[:2]) != (int(shape_hw[0]), int(shape_hw[1])):
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def build_disk_cache(source: Any, todo: Sequence[int], threads: int | None = None,
                     desc: str = "Caching images") -> None:
    """Write the .npy of the images ``todo`` of ``source`` (threads)."""
    if not len(todo):
        return
    paths = source.image_paths
    with ThreadPoolExecutor(max_workers=threads or _threads()) as pool, _progress(len(todo), desc) as bar:
        for error in pool.map(lambda i: write_npy(paths[i]), todo):
            if error is not None:
                raise OSError(f"data.cache='disk': {error}")
            bar.update(1)


# ----------------------------------------------------------------------------------------
# The cached source.
# ----------------------------------------------------------------------------------------


class CachedSource:
    """A source whose images come from a cache (everything else is the wrapped source's).

    ``resized_record(index, imgsz)`` (what the batch builders use, via :func:`resized_record`)
    reads the RAM cache, or the .npy and resizes; ``source[i]`` gives the original-size image as
    the wrapped source does (from the .npy with the disk cache). An ``imgsz`` other than the RAM
    cache's decodes as without a cache.

    Args:
      source: the wrapped source.
      mode: "ram" or "disk".
      ram: the RAM cache (mode "ram").
      labels: a label table for a source without one (filled while caching).
    """

    def __init__(self, source: Any, mode: str, ram: RamImageCache | None = None, labels: LabelTable | None = None):
        if mode not in ("ram", "disk"):
            raise ValueError(f"mode must be 'ram' or 'disk', not {mode!r}")
        self.source = source
        self.mode = mode
        self.ram = ram
        self._labels = labels

    def __len__(self) -> int:
        return len(self.source)

    def __repr__(self) -> str:
        return f"CachedSource({self.source!r}, cache={self.mode!r})"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or "source" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["source"], name)

    @property
    def labels(self) -> LabelTable | None:
        return self._labels if self._labels is not None else getattr(self.source, "labels", None)

    @property
    def image_shapes_hw(self) -> np.ndarray | None:
        shapes = getattr(self.source, "image_shapes_hw", None)
        if shapes is None and self.ram is not None:
            return self.ram.orig_hw
        return shapes

    def _labels_of(self, index: int) -> tuple[np.ndarray, np.ndarray] | None:
        table = self.labels
        if table is None:
            return None
        return table.boxes_of(index), table.classes_of(index)

    def _from_npy(self, index: int) -> np.ndarray | None:
        shapes = self.image_shapes_hw
        return read_npy_rgb(self.source.image_paths[index], None if shapes is None else shapes[index])

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        image = self._from_npy(index) if self.mode == "disk" else None
        labels = self._labels_of(index)
        if image is None or labels is None:
            return self.source[index]
        return {"image": image, "boxes": labels[0], "classes": labels[1], "index": index}

    def resized_record(self, index: int, imgsz: int) -> dict[str, Any]:
        index = int(index)
        labels = self._labels_of(index)
        if self.ram is not None and int(imgsz) == self.ram.imgsz and labels is not None:
            return {"image": self.ram.image(index), "boxes": labels[0], "classes": labels[1], "index": index,
                    "orig_hw": tuple(int(x) for x in self.ram.orig_hw[index])}
        record = self[index]
        image = record["image"]
        orig_hw = (int(image.shape[0]), int(image.shape[1]))
        return {**record, "image": resize_long_side(image, imgsz), "orig_hw": orig_hw}

    def close(self) -> None:
        """Remove the RAM cache's file (it is also removed when this object is garbage-collected)."""
        if self.ram is not None:
            self.ram.close()


def open_image_cache(mode: Any, imgsz: int, sources: Sequence[Any], names: Sequence[str] | None = None) -> list[Any]:
    """Check the room for caching ``sources`` (together) and cache them.

    Args:
      mode: ultralytics' ``cache`` value (:func:`cache_mode`): "" returns the sources as they are.
      imgsz: the long side the RAM cache resizes to (the training / validation imgsz).
      sources: the sources (e.g. the train and val splits); one already cached the same way is kept.
      names: what to call each source in the progress bar (e.g. "train").

    Returns:
      The sources, cached (:class:`CachedSource`).

    Raises:
      CacheSpaceError: not enough room, in one line with the needed and available figures.
      ValueError: a bad ``mode``, or the disk cache for a source without image files.
      OSError: an image that cannot be read or a .npy that cannot be written.
    """
    mode = cache_mode(mode)
    if not mode:
        return list(sources)
    names = list(names or [""] * len(sources))
    todo = [i for i, s in enumerate(sources)
            if not (isinstance(s, CachedSource) and s.mode == mode and (mode == "disk" or s.ram.imgsz == int(imgsz)))]
    out = list(sources)
    inner = [s.source if isinstance(s, CachedSource) else s for s in sources]
    if mode == "ram":
        _, folder = check_ram([inner[i] for i in todo], imgsz)
        for i in todo:
            t0 = time.perf_counter()
            desc = f"Caching {names[i]} images".replace("  ", " ")
            ram, boxes, classes = RamImageCache.build(inner[i], imgsz, folder, desc=desc)
            labels = LabelTable.from_lists(boxes, classes) if getattr(inner[i], "labels", None) is None else None
            out[i] = CachedSource(inner[i], "ram", ram=ram, labels=labels)
            logger.info("cached %d %simages in RAM (%.1fGB at imgsz %d, %s) in %.1f s", len(ram),
                        f"{names[i]} " if names[i] else "", ram.nbytes / GB, imgsz, ram.path,
                        time.perf_counter() - t0)
    else:
        plans = check_disk([inner[i] for i in todo])
        for i, plan in zip(todo, plans):
            t0 = time.perf_counter()
            build_disk_cache(inner[i], plan, desc=f"Caching {names[i]} images".replace("  ", " "))
            out[i] = CachedSource(inner[i], "disk")
            logger.info("disk image cache of %d %simages: %d .npy files written, %d current (%.1f s)", len(inner[i]),
                        f"{names[i]} " if names[i] else "", len(plan), len(inner[i]) - len(plan),
                        time.perf_counter() - t0)
    return out
