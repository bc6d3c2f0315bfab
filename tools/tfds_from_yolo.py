"""A TensorFlow Datasets (TFDS) copy of an ultralytics dataset, for tests and reading benchmarks.

    python tools/tfds_from_yolo.py DATA_YAML DATA_DIR [--name coco8_tfds] [--repeat R] [--crowd]

Reads an ultralytics data.yaml (YOLO image and label folders) with yolojax's own readers and
writes a prepared TFDS dataset, ``DATA_DIR/NAME/1.0.0``, in the ``array_record`` file format
(random access, what ``tfds.data_source`` and Grain read). The features are those of TFDS's
``coco/2017`` builder (``tensorflow_datasets/object_detection/coco.py``), so a reader of this
copy reads the real COCO from TFDS too:

* ``image``: ``Image(encoding_format="jpeg")``, given as the file's path, so the stored bytes are
  the file's bytes, unchanged (no re-encoding: decoded pixels equal the original's);
* ``image/filename``: the file's basename; ``image/id``: int64, the running index in the split;
* ``objects``: a ``Sequence`` of ``id`` (int64, running in the split), ``area`` (int64, the box
  area in pixels), ``bbox`` (``BBoxFeature``: ymin, xmin, ymax, xmax normalised to [0, 1]),
  ``label`` (``ClassLabel`` with the yaml's names) and ``is_crowd`` (bool).

Splits: ``train`` from the yaml's ``train:``, ``validation`` from its ``val:``, each unshuffled
(record i is ``image/id`` i, in ``list_image_files`` order; TFDS's own coco is shuffled by key,
so a reader must not rely on the order). No TensorFlow is needed or imported: TFDS builds
array_record datasets with NumPy only.

``--repeat R`` writes every split's images R times over (a larger dataset for a reading
benchmark). ``--crowd`` adds to each image that has labels one ``is_crowd`` object, a copy of
its first box; a COCO reader must drop it (ultralytics' COCO converter skips crowd
annotations), so what it reads stays equal to the YOLO labels.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # the checkout's yolojax, not an installed copy, when run as a script
    sys.path.insert(0, str(_REPO))

from yolojax.data.sources.data_yaml import (  # noqa: E402
    image_to_label_paths,
    list_image_files,
    load_data_yaml,
    split_paths,
)
from yolojax.data.sources.label_scan import parse_label_rows  # noqa: E402

DATASET_VERSION = "1.0.0"
SPLITS = {"train": "train", "validation": "val"}  # TFDS split -> data.yaml key
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height


def image_size(path: str) -> tuple[int, int]:
    """(height, width) in pixels of the image as decoded with its EXIF orientation applied
    (as yolojax and ultralytics read it; YOLO labels are normalised to that size). Reads the
    file's header only."""
    with Image.open(path) as image:
        width, height = image.size
        if image.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSED:
            width, height = height, width
    return height, width


def read_yolo_labels(label_path: str) -> np.ndarray:
    """(n, 5) float32 rows ``cls cx cy w h`` (normalised) of a YOLO label file; (0, 5) when the
    file is missing or empty. Segment rows become their enclosing boxes."""
    if not os.path.isfile(label_path):
        return np.zeros((0, 5), np.float32)
    with open(label_path, encoding="utf-8-sig") as f:
        rows, _ = parse_label_rows(f.read())
    return rows


def yolo_objects(rows: np.ndarray, height: int, width: int, first_id: int, crowd: bool) -> list[dict]:
    """TFDS coco ``objects`` of one image.

    Args:
      rows: (n, 5) ``cls cx cy w h``, normalised.
      height, width: the image's size in pixels, for ``area``.
      first_id: the ``id`` of the first object; the others follow.
      crowd: append an ``is_crowd`` copy of the first object (when n > 0).

    Returns:
      n (or n + 1) dicts with ``id``, ``area`` (pixels), ``bbox`` (a ``tfds.features.BBox``,
      corners clipped to [0, 1]), ``label`` and ``is_crowd``.
    """
    objects = []
    for cls, cx, cy, w, h in rows.astype(np.float64):
        ymin, xmin, ymax, xmax = np.clip([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], 0.0, 1.0)
        objects.append({
            "id": first_id + len(objects),
            "area": round(w * width * h * height),
            "bbox": tfds.features.BBox(ymin=ymin, xmin=xmin, ymax=ymax, xmax=xmax),
            "label": int(cls),
            "is_crowd": False,
        })
    if crowd and objects:
        objects.append({**objects[0], "id": first_id + len(objects), "is_crowd": True})
    return objects


def split_examples(image_paths: list[str], crowd: bool, repeat: int) -> Iterator[tuple[int, dict]]:
    """(key, example) of one split: its images ``repeat`` times over, keys and ``image/id``
    0, 1, ... in that order."""
    label_paths = image_to_label_paths(image_paths)
    annotations = [(read_yolo_labels(lp), image_size(ip)) for ip, lp in zip(image_paths, label_paths)]
    index, object_id = 0, 0
    for _ in range(repeat):
        for path, (rows, (height, width)) in zip(image_paths, annotations):
            objects = yolo_objects(rows, height, width, object_id, crowd)
            object_id += len(objects)
            yield index, {"image": path, "image/filename": os.path.basename(path), "image/id": index,
                          "objects": objects}
            index += 1


def build_tfds_copy(data_yaml: str | os.PathLike, data_dir: str | os.PathLike, name: str = "coco8_tfds",
                    crowd: bool = False, repeat: int = 1) -> Path:
    """Write the TFDS copy of a data.yaml's train and val splits (see the module docstring).

    The builder is not added to TFDS's registry (a second call, with the same ``name`` or
    another, works); read the copy back from its files: ``tfds.data_source(name,
    split="validation", data_dir=data_dir)`` or ``tfds.builder_from_directory(path)``.

    Args:
      data_yaml: the ultralytics data.yaml.
      data_dir: the TFDS data dir the dataset is written in.
      name: the dataset's TFDS name (snake_case).
      crowd: add an ``is_crowd`` copy of the first box to every image with labels.
      repeat: how many times each split's images are written (>= 1).

    Returns:
      The prepared dataset's directory, ``data_dir/name/1.0.0``.

    Raises:
      ValueError: ``repeat`` < 1, or the yaml's train or val names no existing path.
      FileExistsError: that directory exists already.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    target = Path(data_dir) / name / DATASET_VERSION
    if target.exists():
        raise FileExistsError(f"{target} exists; remove it or choose another name or data dir")
    spec = load_data_yaml(data_yaml)
    images = {split: list_image_files(split_paths(spec, key)) for split, key in SPLITS.items()}
    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(encoding_format="jpeg"),
        "image/filename": tfds.features.Text(),
        "image/id": np.int64,
        "objects": tfds.features.Sequence({
            "id": np.int64,
            "area": np.int64,
            "bbox": tfds.features.BBoxFeature(),
            "label": tfds.features.ClassLabel(names=list(spec.names)),
            "is_crowd": np.bool_,
        }),
    })

    dataset_name = name
    with tfds.core.registered.skip_registration():

        class YoloCopy(tfds.core.GeneratorBasedBuilder):
            name = dataset_name
            VERSION = tfds.core.Version(DATASET_VERSION)

            def _info(self) -> tfds.core.DatasetInfo:
                return tfds.core.DatasetInfo(builder=self, features=features, disable_shuffling=True,
                                             description=f"TFDS coco/2017 features of {spec.yaml_path}")

            def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
                return {split: self._generate_examples(paths) for split, paths in images.items()}

            def _generate_examples(self, image_paths: list[str]) -> Iterator[tuple[int, dict]]:
                return split_examples(image_paths, crowd, repeat)

    builder = YoloCopy(data_dir=os.fspath(data_dir), file_format="array_record")
    with tempfile.TemporaryDirectory() as downloads:  # TFDS makes downloads/extracted, empty here
        builder.download_and_prepare(download_dir=downloads)
    return Path(builder.data_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_yaml", help="ultralytics data.yaml")
    parser.add_argument("data_dir", help="TFDS data dir to write the dataset in")
    parser.add_argument("--name", default="coco8_tfds", help="TFDS dataset name (default: coco8_tfds)")
    parser.add_argument("--repeat", type=int, default=1, help="write each split's images this many times")
    parser.add_argument("--crowd", action="store_true", help="add an is_crowd copy of each image's first box")
    args = parser.parse_args(argv)
    path = build_tfds_copy(args.data_yaml, args.data_dir, name=args.name, crowd=args.crowd, repeat=args.repeat)
    info = tfds.builder_from_directory(path).info
    print(path)
    for split, split_info in info.splits.items():
        print(f"{split}: {split_info.num_examples} examples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
