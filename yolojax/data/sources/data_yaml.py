"""Ultralytics data.yaml files: split paths, class names, image lists and label paths.

Resolution follows ultralytics' ``check_det_dataset`` and ``BaseDataset.get_img_files``:

* ``path`` is the dataset root. When absent, the yaml's folder is the root. A relative
  ``path`` resolves against the current directory when it exists there, else against the
  yaml's folder (ultralytics falls back to its global datasets dir, which yolojax has not).
* ``train`` / ``val`` / ``test`` are a folder, a ``.txt`` listing image paths (lines
  starting with ``./`` are relative to the txt's folder), or a list of either, each
  relative to the root. A missing ``../x`` is retried as ``x`` under the root.
* ``names`` is a list or an ``{int: name}`` dict; ``nc`` must agree with it.
* Labels live beside the images: the last ``/images/`` path component becomes
  ``/labels/`` and the extension ``.txt``.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import yaml

logger = logging.getLogger(__name__)

_MAX_NAMED = 20  # skipped files named per folder or list
IMAGE_SUFFIXES = frozenset(
    {"avif", "bmp", "dng", "heic", "heif", "jp2", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp"}
)


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """A parsed data.yaml.

    Attributes:
      yaml_path: the file read.
      root: the dataset root every split path is relative to.
      splits: split name ('train', 'val', 'test') -> absolute paths (folders or .txt files).
      names: class names, index = class id.
    """

    yaml_path: Path
    root: Path
    splits: dict[str, tuple[str, ...]]
    names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.names)


def _names_from_yaml(raw: dict, yaml_path: Path) -> tuple[str, ...]:
    names = raw.get("names")
    nc = raw.get("nc")
    if names is None and nc is None:
        raise ValueError(f"{yaml_path}: needs 'names' (or 'nc')")
    if names is None:
        return tuple(f"class_{i}" for i in range(int(nc)))
    if isinstance(names, dict):
        keys = sorted(int(k) for k in names)
        if keys != list(range(len(keys))):
            raise ValueError(f"{yaml_path}: 'names' keys must be 0..{len(keys) - 1}, got {keys}")
        names = [names[k] if k in names else names[str(k)] for k in keys]
    elif not isinstance(names, (list, tuple)):
        raise TypeError(f"{yaml_path}: 'names' must be a list or a dict, not {type(names).__name__}")
    if nc is not None and int(nc) != len(names):
        raise ValueError(f"{yaml_path}: 'nc: {nc}' does not match {len(names)} names")
    return tuple(str(n) for n in names)


def _dataset_root(raw: dict, yaml_path: Path) -> Path:
    path = raw.get("path")
    if not path:
        return yaml_path.parent.resolve()
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        return path.resolve()
    return (yaml_path.parent / path).resolve()


def _split_paths(entry: str | Sequence[str], root: Path) -> tuple[str, ...]:
    if isinstance(entry, str):
        resolved = (root / entry).resolve()
        if not resolved.exists() and entry.startswith("../"):
            resolved = (root / entry[3:]).resolve()
        return (str(resolved),)
    return tuple(str((root / e).resolve()) for e in entry)


def load_data_yaml(yaml_path: str | os.PathLike) -> DataSpec:
    """Read an ultralytics data.yaml and resolve its split paths.

    Args:
      yaml_path: path to the yaml.

    Returns:
      The parsed :class:`DataSpec`.

    Raises:
      FileNotFoundError: the yaml does not exist.
      ValueError: 'train'/'val' or 'names' missing or inconsistent.
      TypeError: 'names' neither a list nor a dict.
    """
    yaml_path = Path(yaml_path)
    if not yaml_path.is_file():
        raise FileNotFoundError(f"data yaml not found: {yaml_path}")
    with open(yaml_path, encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    if "val" not in raw and "validation" in raw:
        raw["val"] = raw.pop("validation")
    for key in ("train", "val"):
        if key not in raw:
            raise ValueError(f"{yaml_path}: '{key}:' key missing; 'train' and 'val' are required")
    root = _dataset_root(raw, yaml_path)
    splits = {k: _split_paths(raw[k], root) for k in ("train", "val", "test") if raw.get(k)}
    return DataSpec(yaml_path=yaml_path, root=root, splits=splits, names=_names_from_yaml(raw, yaml_path))


def split_paths(spec: DataSpec, split: str) -> tuple[str, ...]:
    """The absolute paths of ``split`` ('train', 'val', 'test'), each checked to exist.

    Raises:
      ValueError: one line naming the yaml, the field and the path: the split names no path
        (e.g. an empty ``val:``), or a path does not exist (e.g. a mistyped ``images/vall``).
    """
    paths = spec.splits.get(split)
    if not paths:
        raise ValueError(f"{spec.yaml_path}: '{split}:' names no images; give a folder, a .txt list of image "
                         "paths, or a list of those")
    for path in paths:
        if not os.path.exists(path):
            raise ValueError(f"{spec.yaml_path}: '{split}:' path {path} does not exist")
    return paths


def _folder_files(folder: Path) -> tuple[list[str], list[str]]:
    """(image files, other files) under ``folder``, recursively; hidden files are not listed, nor
    ``.npy`` files (ultralytics' and yolojax's disk image cache beside the images)."""
    images, others = [], []
    for f in glob.glob(str(Path(glob.escape(str(folder))) / "**" / "*"), recursive=True):
        if f.rpartition(".")[-1].lower() in IMAGE_SUFFIXES and "." in os.path.basename(f):
            images.append(f)
        elif os.path.isfile(f) and not f.lower().endswith(".npy"):
            others.append(f)
    return images, others


def _list_file_entries(list_file: Path) -> tuple[list[str], list[str]]:
    """(image paths, skipped lines) of a .txt list: lines starting with ``./`` are relative to
    its folder; a skipped line reads ``FILE:LINE: ENTRY``."""
    parent = str(list_file.parent) + os.sep
    images, skipped = [], []
    with open(list_file, encoding="utf-8-sig") as f:
        lines = f.read().strip().splitlines()
    for number, line in enumerate(lines, 1):
        entry = line.strip()
        if not entry:
            continue
        path = entry.replace("./", parent, 1) if entry.startswith("./") else entry
        if path.rpartition(".")[-1].lower() in IMAGE_SUFFIXES and "." in os.path.basename(path):
            images.append(path)
        else:
            skipped.append(f"{list_file}:{number}: {entry}")
    return images, skipped


def _log_skipped(where: Path, skipped: list[str], what: str) -> None:
    if skipped:
        shown = ", ".join(skipped[:_MAX_NAMED]) + (f" and {len(skipped) - _MAX_NAMED} more" if len(skipped) > _MAX_NAMED
                                                 else "")
        logger.warning("%s: %d %s skipped, not images (the suffix is not one of %s): %s", where, len(skipped), what,
                       ", ".join(sorted(IMAGE_SUFFIXES)), shown)


def list_image_files(paths: str | Sequence[str]) -> list[str]:
    """All image files under folders (recursively) and in .txt lists, sorted like ultralytics.

    Files and list lines that are not images (by suffix, e.g. videos, notes, label files) are
    skipped with one warning per folder or list naming them (the first 20).

    Args:
      paths: a folder, a .txt file of image paths, or a list of those.

    Returns:
      Sorted image paths (str). Duplicates listed in a .txt are kept.

    Raises:
      FileNotFoundError: a path does not exist, or no images were found.
    """
    found: list[str] = []
    for p in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        p = Path(p)
        if p.is_dir():
            images, others = _folder_files(p)
            _log_skipped(p, sorted(others), "files")
        elif p.is_file():
            images, others = _list_file_entries(p)
            _log_skipped(p, others, "lines")
        else:
            raise FileNotFoundError(f"{p} does not exist")
        found += images
    images = sorted(x.replace("/", os.sep) for x in found)
    if not images:
        raise FileNotFoundError(f"no images found in {paths}")
    return images


def image_to_label_paths(image_paths: Sequence[str]) -> list[str]:
    """Label file for each image: last '/images/' -> '/labels/', extension -> '.txt'."""
    images_dir, labels_dir = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return [labels_dir.join(str(p).rsplit(images_dir, 1)).rsplit(".", 1)[0] + ".txt" for p in image_paths]
