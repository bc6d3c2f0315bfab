"""TFDS detection datasets (``data=tfds:coco/2017``): prepared array_record splits read through Grain.

A prepared dataset is a folder ``DATA_DIR/NAME[/CONFIG]/VERSION`` with ``dataset_info.json``,
``features.json`` and the ``*.array_record-*`` shards (``tfds build NAME --file_format
array_record``; docs/data.md). It is opened from those files alone
(``tfds.builder_from_directory``), so reading imports neither TensorFlow nor the dataset's
builder code, and works from any folder ``etils.epath`` reaches (local disk; a bucket when its
file system package, e.g. gcsfs, is installed). Needs the ``tensorflow-datasets`` package
(``pip install 'yolojax[tfds]'``), not TensorFlow.

The features read are TFDS's object-detection layout, that of ``coco/2017`` (and ``voc``): an
encoded ``image``, and an ``objects`` sequence with ``bbox`` (``BBoxFeature``: ymin, xmin, ymax,
xmax normalised), ``label`` (``ClassLabel``: the class names) and, when present, ``is_crowd``.
TFDS's coco builder numbers the labels 0..79 in category-id order with COCO's names, which is
ultralytics' 91 -> 80 mapping (``coco91_to_coco80``): class k here is class k of ultralytics'
coco.yaml. Crowd objects are dropped, as ultralytics' ``convert_coco`` drops ``iscrowd``
annotations.

Each split is scanned once like a YOLO folder (:mod:`yolojax.data.sources.label_scan`): every
image decodes (the stored bytes, by the same OpenCV decoder as image files, so the same pixels)
and is at least 10 pixels a side; boxes are checked and deduplicated by ultralytics' rules; a
record that fails is skipped and named (``tfds:coco/2017 validation #12 (000000000139.jpg)``).
The result is cached beside the dataset when that folder is writable, else under
``~/.cache/yolojax/tfds``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from yolojax.data.image_io import UnreadableImageError, decode_image_rgb
from yolojax.data.sources.label_scan import (
    CACHE_VERSION,
    ScanResult,
    collect_verdicts,
    corrupt_verdict,
    load_scan_cache,
    log_report,
    save_scan_cache,
    verify_array_labels,
)
from yolojax.data.sources.subset import fraction_count
from yolojax.data.sources.yolo import warn_if_unlabelled

logger = logging.getLogger(__name__)

PREFIX = "tfds:"
ARRAY_RECORD = "array_record"  # the file format read (random access)
DEFAULT_DATA_DIR = "~/tensorflow_datasets"  # TFDS's own default, overridden by $TFDS_DATA_DIR
_SCAN_CHUNK = 256  # records read at once during the scan


def _import_tfds() -> Any:
    try:
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel - an optional extra
    except ImportError as e:
        raise ImportError("TFDS datasets need tensorflow-datasets: pip install 'yolojax[tfds]'") from e
    return tfds


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
    """Which prepared TFDS dataset to read, and which of its splits serve as train, val and test.

    Attributes:
      name: ``NAME[/CONFIG][:VERSION]`` as TFDS spells it, e.g. 'coco/2017', 'voc/2012:5.0.0';
        without a version the newest prepared one.
      data_dir: the TFDS data dir holding it; '' -> ``$TFDS_DATA_DIR``, else ~/tensorflow_datasets.
      train, val, test: the TFDS split (or split expression, e.g. 'train[:90%]') that serves as
        ultralytics' split of that name (data.yaml's ``train:``, ``val:``, ``test:``); val's
        ``split=`` may also name a TFDS split directly.
    """

    name: str
    data_dir: str = ""
    train: str = "train"
    val: str = "validation"
    test: str = "test"

    @classmethod
    def parse(cls, data: str, data_dir: str = "", **splits: str) -> TfdsSpec:
        """``'tfds:NAME[/CONFIG][:VERSION]'`` (a ``data=`` value) -> a spec; ``splits`` override
        the split mapping (empty values are ignored).

        Raises:
          ValueError: ``data`` does not start with 'tfds:' or names no dataset.
        """
        if not is_tfds(data):
            raise ValueError(f"data={data!r}: a TFDS dataset is given as 'tfds:NAME', e.g. 'tfds:coco/2017'")
        name = str(data)[len(PREFIX):].strip().strip("/")
        if not name or name.startswith(":") or any(part in ("", ".", "..") for part in name.split(":")[0].split("/")):
            raise ValueError(f"data={data!r}: name a prepared TFDS dataset, e.g. 'tfds:coco/2017' or "
                             "'tfds:voc/2012:5.0.0'")
        return cls(name, str(data_dir or ""), **{k: str(v) for k, v in splits.items() if v})

    def __str__(self) -> str:
        return f"{PREFIX}{self.name}"

    def split_name(self, split: str) -> str:
        """The TFDS split serving as ultralytics' ``split``: the spec's for 'train', 'val' and
        'test'; any other value is a TFDS split (expression) itself, e.g. 'validation[:50%]'."""
        return getattr(self, split) if split in ("train", "val", "test") else split

    def root(self) -> str:
        """The data dir searched: ``data_dir``, ``$TFDS_DATA_DIR`` or ~/tensorflow_datasets."""
        root = self.data_dir or os.environ.get("TFDS_DATA_DIR") or DEFAULT_DATA_DIR
        return os.path.expanduser(root) if "://" not in root else root


def is_tfds(data: Any) -> bool:
    """Whether ``data`` names a TFDS dataset: a :class:`TfdsSpec` or a 'tfds:...' string."""
    return isinstance(data, TfdsSpec) or (isinstance(data, str) and data.startswith(PREFIX))


def as_tfds_spec(data: str | TfdsSpec) -> TfdsSpec:
    """``data`` as a :class:`TfdsSpec` (a 'tfds:...' string parsed with the default splits)."""
    return data if isinstance(data, TfdsSpec) else TfdsSpec.parse(data)


def _version_key(name: str) -> tuple[int, ...] | None:
    parts = name.split(".")
    return tuple(int(p) for p in parts) if len(parts) == 3 and all(p.isdigit() for p in parts) else None


def _listing(folder: Any, limit: int = 8) -> str:
    """The names of the folders in ``folder``, for a message: 'a, b, c' ('none' when empty or absent)."""
    names = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    names = [n for n in names if not n.startswith((".", "incomplete.", "downloads"))]
    return (", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")) or "none"


def dataset_dir(spec: TfdsSpec) -> Any:
    """The prepared dataset's folder (an ``etils.epath.Path``): ``ROOT/NAME[/CONFIG]/VERSION``.

    Raises:
      ValueError: one line naming the folder searched, what it holds, and how to prepare the
        dataset.
    """
    from etils import epath  # pylint: disable=import-outside-toplevel - installed with tensorflow-datasets

    name, _, version = spec.name.partition(":")
    root = epath.Path(spec.root())
    base = root / name
    prepare = (f"prepare it with `tfds build {name} --data_dir {root} --file_format array_record` (your own "
               "builder: `tfds build path/to/builder.py ...`; docs/data.md), or set data.tfds.data_dir (or "
               "$TFDS_DATA_DIR) to the data dir it is in")
    if (root / "dataset_info.json").exists():
        raise ValueError(f"{spec}: data dir {root} is itself a prepared dataset's version folder: set "
                         "data.tfds.data_dir to the folder that holds NAME/[CONFIG/]VERSION")
    if version:
        if (base / version / "dataset_info.json").exists():
            return base / version
        raise ValueError(f"{spec}: no prepared version {version} in {base} (versions there: {_listing(base)}); "
                         "a version folder without dataset_info.json is an unfinished build")
    versions = sorted((key, p) for p in (base.iterdir() if base.is_dir() else ())
                      if (key := _version_key(p.name)) and (p / "dataset_info.json").exists())
    if versions:
        return versions[-1][1]
    if base.is_dir():
        raise ValueError(f"{spec}: no prepared version in {base} (it holds: {_listing(base)}; a dataset with "
                         f"configs is named NAME/CONFIG); {prepare}")
    raise ValueError(f"{spec}: no prepared dataset in {base} (datasets in {root}: {_listing(root)}); {prepare}")


@dataclasses.dataclass(frozen=True)
class TfdsFeatures:
    """The feature keys of TFDS's object-detection layout (module docstring)."""

    image: str = "image"
    objects: str = "objects"
    bbox: str = "bbox"
    label: str = "label"
    crowd: str = "is_crowd"
    filename: str = "image/filename"


def _class_names(spec: TfdsSpec, top: Any, features: TfdsFeatures, directory: str) -> tuple[str, ...]:
    """The class names of the ``objects/label`` ClassLabel, after checking the detection layout.

    Raises:
      ValueError: a feature is missing, or the label is not a ClassLabel.
    """
    objects = getattr(top[features.objects], "feature", None) if features.objects in top else None
    if features.image not in top or objects is None or any(k not in objects for k in (features.bbox, features.label)):
        raise ValueError(f"{spec}: {directory} has features {sorted(top.keys())}; yolojax reads TFDS's "
                         f"object-detection layout: '{features.image}' and a '{features.objects}' sequence with "
                         f"'{features.bbox}' and '{features.label}' (as coco/2017 and voc)")
    label = objects[features.label]
    names = getattr(label, "names", None)
    if names is None:
        raise ValueError(f"{spec}: '{features.objects}/{features.label}' is a {type(label).__name__}, not a "
                         "ClassLabel: yolojax takes the class count and names from a ClassLabel")
    if list(names) == [str(i) for i in range(len(names))]:
        logger.warning("%s: '%s/%s' is a ClassLabel without names (num_classes=%d): the classes are named 0..%d",
                       spec, features.objects, features.label, len(names), len(names) - 1)
    return tuple(str(n) for n in names)


class TfdsDataset:
    """A prepared TFDS dataset, opened from its files (metadata only until a split is read).

    Args:
      spec: which dataset.

    Attributes:
      spec, directory (its folder, as a string), names (the label feature's class names),
      split_sizes (TFDS split -> examples).

    Raises:
      ValueError: one line: not prepared (:func:`dataset_dir`), not array_record, or without the
        object-detection features.
      ImportError: tensorflow-datasets is not installed.
    """

    def __init__(self, spec: TfdsSpec, features: TfdsFeatures = TfdsFeatures()):
        tfds = _import_tfds()
        self.spec, self.features = spec, features
        folder = dataset_dir(spec)
        self.directory = str(folder)
        builder = tfds.builder_from_directory(folder)
        formats = sorted(str(getattr(f, "value", f)) for f in builder.info.available_file_formats())
        if ARRAY_RECORD not in formats:
            raise ValueError(f"{spec}: {self.directory} is stored as {' and '.join(formats) or 'no file format'}; "
                             "Grain reads array_record (random access): rebuild it with `tfds build ... "
                             "--file_format array_record` or convert it with `tfds convert_format` (docs/data.md)")
        self.names = _class_names(spec, builder.info.features, features, self.directory)
        self.split_sizes = {str(k): int(v.num_examples) for k, v in builder.info.splits.items()}
        self._builder = builder

    def __repr__(self) -> str:
        return f"TfdsDataset({self.spec}, {self.directory})"

    def __getstate__(self) -> dict[str, Any]:  # Grain's workers reopen the folder this process resolved
        return {k: v for k, v in self.__dict__.items() if k != "_builder"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._builder = _import_tfds().builder_from_directory(self.directory)

    def check_split(self, split: str) -> str:
        """The TFDS split serving as ``split`` ('train', 'val', 'test'), checked to exist.

        Raises:
          ValueError: one line naming the field and the splits the dataset has.
        """
        name = self.spec.split_name(split)
        field = f"data.tfds.{split}={name!r}" if split in ("train", "val") else f"split={split!r}"
        if name.split("[", 1)[0].split("+", 1)[0] not in self.split_sizes:
            raise ValueError(f"{self.spec}: {field}: no such split in {self.directory} (splits: "
                             f"{', '.join(sorted(self.split_sizes))})")
        try:
            self._builder.info.splits[name]
        except (KeyError, ValueError, AssertionError) as e:
            raise ValueError(f"{self.spec}: {field}: {str(e).splitlines()[0]}") from None
        return name

    def reader(self, split_name: str) -> Any:
        """Random access to the records of a TFDS split, the image left encoded (bytes)."""
        tfds = _import_tfds()
        return self._builder.as_data_source(split_name, decoders={self.features.image: tfds.decode.SkipDecoding()},
                                            file_format=ARRAY_RECORD)

    def source(self, split: str, fraction: float = 1.0, use_cache: bool = True) -> TfdsDetectionSource:
        """ultralytics' ``split`` ('train', 'val', 'test') as a source, after the (cached) scan.

        Args:
          split: which split (mapped by the spec).
          fraction: only the first records (:func:`yolojax.data.sources.subset.fraction_count`).
          use_cache: read and write the scan's cache.

        Raises:
          ValueError: the split does not exist, or no record passed the scan.
        """
        name = self.check_split(split)
        records = self.reader(name)
        count = len(records) if fraction == 1.0 else fraction_count(fraction, len(records))
        scan = self._scan(records, name, count, use_cache)
        return TfdsDetectionSource(self, name, scan)

    def _scan(self, records: Any, split_name: str, count: int, use_cache: bool) -> ScanResult:
        cache = self._cache_path(split_name, count)
        key = self._cache_key(split_name, count)
        result = load_scan_cache(cache, key) if use_cache else None
        where = f"{self.spec} {split_name}"
        cached = result is not None
        if result is None:
            result = scan_records(records, count, len(self.names), where, self.features)
            if use_cache and result.image_paths:
                cache.parent.mkdir(parents=True, exist_ok=True)
                save_scan_cache(cache, result, key)
        log_report(result.report, where + (f" (cached in {cache})" if cached else ""), records=True)
        warn_if_unlabelled(result.labels, result.image_paths, where, None)
        if not result.image_paths:
            raise ValueError(f"{where}: no record passed the scan: " + "; ".join(result.report.messages[:5]))
        return result

    def _cache_path(self, split_name: str, count: int) -> Path:
        """Beside the dataset when it is a writable local folder, else under ~/.cache/yolojax/tfds."""
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in split_name)
        stem += f".first{count}" if count != self.split_sizes.get(split_name, -1) else ""
        folder = Path(self.directory)
        if "://" in self.directory or not os.access(folder, os.W_OK):
            cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
            folder = cache_home / "yolojax" / "tfds" / hashlib.sha256(self.directory.encode()).hexdigest()[:16]
        return folder / f"{stem}.yolojax-cache.npz"

    def _cache_key(self, split_name: str, count: int) -> str:
        """Changes when the dataset is rebuilt: its dataset_info.json (shard sizes, version) and the
        shards' sizes and times where they can be read."""
        from etils import epath  # pylint: disable=import-outside-toplevel

        h = hashlib.sha256((epath.Path(self.directory) / "dataset_info.json").read_bytes())
        if "://" not in self.directory:
            for path in sorted(Path(self.directory).glob("*.array_record-*")):
                st = path.stat()
                h.update(f"{path.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        h.update(f"{CACHE_VERSION}:{split_name}:{count}:nc={len(self.names)}:{self.features}".encode())
        return h.hexdigest()


def record_name(where: str, index: int, filename: str = "") -> str:
    """How a record is named in messages: ``'tfds:coco/2017 validation #12 (000000000139.jpg)'``."""
    return f"{where} #{index}" + (f" ({filename})" if filename else "")


def _filename(example: dict, features: TfdsFeatures) -> str:
    value = example.get(features.filename, b"")
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def example_labels(example: dict, features: TfdsFeatures = TfdsFeatures()) -> tuple[np.ndarray, np.ndarray, int]:
    """A TFDS record's objects as label arrays, crowd objects left out.

    Returns:
      (classes float32 (n,), boxes float32 (n, 4) normalised centre x, centre y, width, height,
      the number of crowd objects dropped).
    """
    objects = example[features.objects]
    bbox = np.asarray(objects[features.bbox], np.float32).reshape(-1, 4)  # ymin, xmin, ymax, xmax
    labels = np.asarray(objects[features.label], np.float32).reshape(-1)
    crowd = (np.asarray(objects[features.crowd]).reshape(-1).astype(bool) if features.crowd in objects
             else np.zeros(len(labels), bool))
    if not len(bbox) == len(labels) == len(crowd):
        raise ValueError(f"objects of unequal lengths: {len(bbox)} boxes, {len(labels)} labels, {len(crowd)} crowd flags")
    keep = ~crowd
    y1, x1, y2, x2 = bbox[keep].T
    boxes_xywh = np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=1).astype(np.float32)
    return labels[keep], boxes_xywh.reshape(-1, 4), int(crowd.sum())


def _verify_record(where: str, index: int, example: dict, num_classes: int, features: TfdsFeatures):
    name = record_name(where, index, _filename(example, features))
    try:
        classes, boxes_xywh, _ = example_labels(example, features)
    except (KeyError, ValueError) as e:
        return corrupt_verdict(name, e)
    return verify_array_labels(name, classes, boxes_xywh, num_classes, encoded=bytes(example[features.image]))


def scan_records(records: Any, count: int, num_classes: int, where: str,
                 features: TfdsFeatures = TfdsFeatures(), threads: int | None = None) -> ScanResult:
    """Verify the first ``count`` records (module docstring), reading them in chunks and
    decoding in a thread pool; the result's ``record_indices`` locate the kept ones."""
    threads = threads or min(8, os.cpu_count() or 1)
    verdicts, crowd = [], 0
    with ThreadPoolExecutor(max_workers=threads) as pool, tqdm(total=count, desc=f"Scanning {where}", leave=False,
                                                               disable=count < 100) as progress:
        for start in range(0, count, _SCAN_CHUNK):
            indices = list(range(start, min(start + _SCAN_CHUNK, count)))
            examples = records.__getitems__(indices)
            crowd += sum(int(np.asarray(e[features.objects].get(features.crowd, [])).astype(bool).sum())
                         for e in examples)
            verdicts += pool.map(lambda ie: _verify_record(where, ie[0], ie[1], num_classes, features),
                                 zip(indices, examples))
            progress.update(len(indices))
    if crowd:
        logger.info("%s: %d crowd objects left out of the labels (as ultralytics' COCO converter)", where, crowd)
    return collect_verdicts(verdicts, record_indices=True)


class TfdsDetectionSource:
    """A scanned TFDS split as a source (the record format of :mod:`yolojax.data.sources.yolo`):
    images decoded from the records, labels held in memory from the scan.

    Attributes:
      names, labels (:class:`LabelTable`), image_shapes_hw (int32 (N, 2)), image_ids (int64 (N,):
      each image's position in the TFDS split), record_names (how each is named in messages),
      report (the scan's).
    """

    has_polygons = False

    def __init__(self, dataset: TfdsDataset, split_name: str, scan: ScanResult):
        self.dataset, self.split_name = dataset, split_name
        self.names = dataset.names
        self.labels = scan.labels
        self._shapes_hw = scan.shapes_hw
        self.image_ids = np.asarray(scan.record_indices, np.int64)
        self.record_names = scan.image_paths
        self.report = scan.report
        self._records = None

    def __len__(self) -> int:
        return len(self.image_ids)

    def __repr__(self) -> str:
        return f"TfdsDetectionSource({self.dataset.spec} {self.split_name}, {len(self)} images, {len(self.names)} classes)"

    def __getstate__(self) -> dict[str, Any]:  # Grain copies sources into its workers: they open their own reader
        return {**self.__dict__, "_records": None}

    @property
    def image_shapes_hw(self) -> np.ndarray:
        return self._shapes_hw

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Record ``index``.

        Raises:
          yolojax.data.image_io.UnreadableImageError: the stored image no longer decodes (named
            like the scan names it).
        """
        index = int(index)
        if self._records is None:
            self._records = self.dataset.reader(self.split_name)
        example = self._records[int(self.image_ids[index])]
        image = decode_image_rgb(bytes(example[self.dataset.features.image]))
        if image is None:
            raise UnreadableImageError(self.record_names[index], "the stored image does not decode")
        return {"image": image, "boxes": self.labels.boxes_of(index), "classes": self.labels.classes_of(index),
                "index": index}


def tfds_source(data: str | TfdsSpec, split: str = "train", fraction: float = 1.0,
                use_cache: bool = True) -> TfdsDetectionSource:
    """ultralytics' ``split`` of the TFDS dataset ``data`` ('tfds:NAME' or a :class:`TfdsSpec`) as a
    source (:meth:`TfdsDataset.source`)."""
    return TfdsDataset(as_tfds_spec(data)).source(split, fraction, use_cache)

