"""Image cache (data.cache = "" | "ram" | "disk"): the same batches bit for bit, exact resume,
one shared RAM file, ultralytics' .npy files, refusals with the needed and available figures."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import pickle
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from yolojax.data import AugmentConfig, make_train_iterator, make_val_iterator, yolo_source
from yolojax.data.memory import image_cache
from yolojax.data.memory.image_cache import CachedSource, CacheSpaceError, cache_mode, npy_path, open_image_cache
from yolojax.data.sources.synthetic import write_synthetic_dataset

from test_data_pipeline import assert_same_batches

IMGSZ = 128
LOCAL = {"process_index": 0, "process_count": 1}


@pytest.fixture()
def data_yaml(tmp_path):
    """A fresh dataset per test (the disk cache writes beside its images); images larger and
    smaller than IMGSZ, so the long-side resize both shrinks and enlarges."""
    return write_synthetic_dataset(tmp_path / "shapes", num_train=20, num_val=6, size_range=(64, 200), seed=3)


def train_batches(data, cache, workers=0, start_step=0, aug=None, state=None, count=None, **kwargs):
    batches = make_train_iterator(data, imgsz=IMGSZ, batch_size=4, epochs=3, seed=5, max_boxes=64, workers=workers,
                                  start_step=start_step, cache=cache, aug=aug or AugmentConfig(close_mosaic=1),
                                  **LOCAL, **kwargs)
    if state is not None:
        batches.iterator.set_state(state)
    out = [next(batches.iterator) for _ in range(count)] if count else list(batches.iterator)
    return batches, out


def test_ultralytics_cache_values():
    assert [cache_mode(v) for v in (True, "ram", "RAM", "True", False, None, "", "false", "disk")] == [
        "ram", "ram", "ram", "ram", "", "", "", "", "disk"]
    with pytest.raises(ValueError, match="cache must be '', 'ram' or 'disk'"):
        cache_mode("memory")


@pytest.mark.parametrize("cache", ["ram", "disk"])
def test_batches_with_the_cache_are_the_batches_without_it(data_yaml, cache):
    """Mosaic epochs, the close_mosaic epoch (single images), mixup and perspective: bit for bit."""
    for aug in (AugmentConfig(close_mosaic=1), AugmentConfig(mixup=0.5, perspective=0.0005, degrees=5, close_mosaic=1)):
        plain = train_batches(data_yaml, "", aug=aug)[1]
        batches, cached = train_batches(data_yaml, cache, aug=aug)
        assert isinstance(batches.source, CachedSource) and batches.owns_cache
        assert_same_batches(cached, plain)
        batches.close()


@pytest.mark.parametrize("cache", ["ram", "disk"])
def test_resume_with_the_cache_continues_exactly_also_with_workers(data_yaml, cache):
    _, reference = train_batches(data_yaml, "")
    batches, first = train_batches(data_yaml, cache, workers=2, count=3)
    assert_same_batches(first, reference[:3])
    state = json.loads(json.dumps(batches.iterator.get_state()))  # what Grain's Orbax handler stores
    batches.close()
    restored, rest = train_batches(data_yaml, cache, workers=2, state=state, count=4)
    restored.close()
    assert_same_batches(rest, reference[3:7])
    in_process, rest = train_batches(data_yaml, cache, start_step=5, count=2)  # also without workers
    assert_same_batches(rest, reference[5:7])


def test_device_mode_reads_the_ram_cache_and_resumes_exactly(data_yaml):
    """augment_on='device' with cache='ram' (bench_data's device+ram): the same source images
    and parameters as without the cache, also restored into worker processes."""
    aug = AugmentConfig(mixup=0.5, close_mosaic=1)
    _, reference = train_batches(data_yaml, "", aug=aug, augment_on="device")
    assert "aug_sources" in reference[0] and "image" not in reference[0]
    batches, first = train_batches(data_yaml, "ram", aug=aug, augment_on="device", workers=2, count=3)
    assert isinstance(batches.source, CachedSource)
    assert_same_batches(first, reference[:3])
    state = json.loads(json.dumps(batches.iterator.get_state()))
    batches.close()
    restored, rest = train_batches(data_yaml, "ram", aug=aug, augment_on="device", workers=2, state=state, count=3)
    restored.close()
    assert_same_batches(rest, reference[3:6])
    _, last = train_batches(data_yaml, "ram", aug=aug, augment_on="device", start_step=len(reference) - 2)
    assert_same_batches(last, reference[-2:])  # the close_mosaic epoch


@pytest.mark.parametrize("cache", ["ram", "disk"])
def test_validation_batches_with_the_cache_are_the_same(data_yaml, cache):
    for rect in (True, False):
        plain = list(make_val_iterator(data_yaml, imgsz=IMGSZ, batch_size=4, rect=rect, **LOCAL).iterator)
        cached = make_val_iterator(data_yaml, imgsz=IMGSZ, batch_size=4, rect=rect, cache=cache, **LOCAL)
        assert_same_batches(list(cached.iterator), plain)


def test_ram_cache_is_one_read_only_file_that_workers_map(data_yaml):
    source = yolo_source(data_yaml, "train")
    (cached,) = open_image_cache("ram", IMGSZ, [source])
    ram = cached.ram
    path = Path(ram.path)
    assert path.is_file() and path.name.startswith(image_cache.RAM_FILE_PREFIX)
    assert path.stat().st_size == ram.nbytes == sum(cached.resized_record(i, IMGSZ)["image"].nbytes
                                                    for i in range(len(source)))
    # What a spawned worker gets: the file name and layout, not the pixels; it maps the same file.
    blob = pickle.dumps(cached)
    assert len(blob) < ram.nbytes / 4
    copy = pickle.loads(blob)
    for i in range(len(source)):
        record, plain = copy.resized_record(i, IMGSZ), image_cache.resized_record(source, i, IMGSZ)
        np.testing.assert_array_equal(record["image"], plain["image"])
        assert record["orig_hw"] == plain["orig_hw"] == tuple(source.image_shapes_hw[i])
        np.testing.assert_array_equal(record["boxes"], plain["boxes"])
    assert not copy.resized_record(0, IMGSZ)["image"].flags.writeable
    # Another imgsz decodes, as without a cache.
    np.testing.assert_array_equal(cached.resized_record(1, 64)["image"],
                                  image_cache.resized_record(source, 1, 64)["image"])
    copy.close()  # a copy does not own the file
    assert path.is_file()
    cached.close()
    assert not path.exists()
    np.testing.assert_array_equal(copy.resized_record(2, IMGSZ)["image"],  # mapped pages outlive the name
                                  image_cache.resized_record(source, 2, IMGSZ)["image"])


def test_ram_cache_of_a_source_without_label_table_or_shapes(data_yaml):
    class Bare:  # like TFDS: records only
        names = ("a",)
        has_polygons = False
        image_shapes_hw = None

        def __init__(self, inner):
            self.inner = inner

        def __len__(self):
            return len(self.inner)

        def __getitem__(self, i):
            return self.inner[i]

    source = yolo_source(data_yaml, "train")
    (cached,) = open_image_cache(True, IMGSZ, [Bare(source)])
    np.testing.assert_array_equal(cached.image_shapes_hw, source.image_shapes_hw)
    np.testing.assert_array_equal(cached.labels.counts(), source.labels.counts())
    record = cached.resized_record(3, IMGSZ)
    np.testing.assert_array_equal(record["image"], image_cache.resized_record(source, 3, IMGSZ)["image"])
    np.testing.assert_array_equal(record["classes"], source.labels.classes_of(3))
    with pytest.raises(ValueError, match="needs image files"):
        open_image_cache("disk", IMGSZ, [Bare(source)])
    cached.close()


def test_a_ram_cache_left_by_a_killed_run_is_removed(tmp_path, caplog):
    stale = tmp_path / f"{image_cache.RAM_FILE_PREFIX}123-abc.bin"
    live = tmp_path / f"{image_cache.RAM_FILE_PREFIX}456-def.bin"
    young = tmp_path / f"{image_cache.RAM_FILE_PREFIX}789-ghi.bin"
    for f in (stale, live, young):
        f.write_bytes(b"x" * 100)
    old = time.time() - 2 * image_cache.STALE_AFTER_S
    os.utime(stale, (old, old))
    os.utime(live, (old, old))
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)  # its owner is alive
    try:
        with caplog.at_level(logging.INFO, logger="yolojax.data.memory.image_cache"):
            assert image_cache.sweep_stale_ram_caches(tmp_path) == 100
    finally:
        os.close(fd)
    assert not stale.exists() and live.exists() and young.exists()
    assert "did not end cleanly" in caplog.text


def test_disk_cache_is_ultralytics_npy_beside_the_images(data_yaml, caplog):
    source = yolo_source(data_yaml, "train")
    (cached,) = open_image_cache("disk", IMGSZ, [source])
    for path in source.image_paths:
        npy = Path(npy_path(path))
        assert npy == Path(path).with_suffix(".npy")
        np.testing.assert_array_equal(np.load(npy), cv2.imread(path))  # ultralytics' content: BGR, original size
    folder = Path(source.image_paths[0]).parent
    assert not list(folder.glob(".*.tmp"))  # no temporary file left
    # The .npy files beside the images are not reported as skipped files.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        yolo_source(data_yaml, "train")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not any("skipped" in w or ".npy" in w for w in warnings), warnings
    # A current .npy is what is read (here one made different on purpose, newer than its image) ...
    path = source.image_paths[0]
    marked = np.zeros_like(np.load(npy_path(path)))
    np.save(npy_path(path), marked)
    assert not cached[0]["image"].any()
    # ... and rebuilt before the first batch when its image is newer, or when it is half-written.
    later = time.time() + 100  # an image newer than its .npy (here: dated in the future)
    os.utime(path, (later, later))
    with open(npy_path(source.image_paths[1]), "r+b") as f:
        f.truncate(200)
    with caplog.at_level(logging.INFO, logger="yolojax.data.memory.image_cache"):
        (cached,) = open_image_cache("disk", IMGSZ, [yolo_source(data_yaml, "train")])
    assert f"2 .npy files written, {len(source) - 2} current" in caplog.text
    np.testing.assert_array_equal(np.load(npy_path(path)), cv2.imread(path))
    np.testing.assert_array_equal(np.load(npy_path(source.image_paths[1])), cv2.imread(source.image_paths[1]))


def test_disk_cache_reads_ultralytics_files_and_survives_a_bad_one(data_yaml):
    source = yolo_source(data_yaml, "train")
    for path in source.image_paths:  # as ultralytics' cache_images_to_disk writes them
        np.save(npy_path(path), cv2.imread(path), allow_pickle=False)
    stamps = [os.stat(npy_path(p)).st_mtime_ns for p in source.image_paths]
    (cached,) = open_image_cache("disk", IMGSZ, [source])
    assert [os.stat(npy_path(p)).st_mtime_ns for p in source.image_paths] == stamps  # used as they are
    for i in range(len(source)):
        np.testing.assert_array_equal(cached.resized_record(i, IMGSZ)["image"],
                                      image_cache.resized_record(source, i, IMGSZ)["image"])
    os.unlink(npy_path(source.image_paths[4]))  # gone after the check: the image is decoded instead
    np.testing.assert_array_equal(cached.resized_record(4, IMGSZ)["image"],
                                  image_cache.resized_record(source, 4, IMGSZ)["image"])


def test_short_room_is_refused_with_the_needed_and_available_figures(data_yaml, monkeypatch):
    source = yolo_source(data_yaml, "train")
    nbytes, exact = image_cache.ram_bytes(source, IMGSZ)
    assert exact and nbytes > 0
    monkeypatch.setattr(image_cache, "available_memory", lambda: (int(1.5 * nbytes), 8 << 30))
    with pytest.raises(CacheSpaceError) as e:
        open_image_cache("ram", IMGSZ, [source])
    message = str(e.value)
    assert "\n" not in message and message.startswith("data.cache='ram': ")
    assert f"{2 * nbytes / 2**30:.1f}GB RAM needed" in message and "100% safety margin" in message
    assert f"only {1.5 * nbytes / 2**30:.1f}/8.0GB available" in message
    monkeypatch.undo()

    usage = type("Usage", (), {"total": 4 << 30, "used": 0, "free": 1000})
    monkeypatch.setattr(image_cache.shutil, "disk_usage", lambda path: usage)
    with pytest.raises(CacheSpaceError, match=r"data.cache='disk': \d+\.\dGB disk space needed \(20 .npy files, "
                                              r".*10% safety margin\) but only 0.0/4.0GB free in "):
        open_image_cache("disk", IMGSZ, [source])
    monkeypatch.undo()

    monkeypatch.setattr(image_cache.os, "access", lambda path, mode: False)
    with pytest.raises(CacheSpaceError, match="is not writable"):
        open_image_cache("disk", IMGSZ, [source])


def test_train_preflight_checks_train_and_val_together_and_the_config_value(data_yaml, monkeypatch):
    from yolojax.console import ConfigError
    from yolojax.train.preflight import close_image_cache, open_image_cache as preflight_cache
    from yolojax.train.settings import resolve

    train, val = yolo_source(data_yaml, "train"), yolo_source(data_yaml, "val")
    both = image_cache.ram_bytes(train, IMGSZ)[0] + image_cache.ram_bytes(val, IMGSZ)[0]
    monkeypatch.setattr(image_cache, "available_memory", lambda: (2 * both - 1, 8 << 30))  # not both, with margin
    with pytest.raises(ConfigError, match="RAM needed"):
        preflight_cache("ram", IMGSZ, train, val)
    monkeypatch.undo()
    cached_train, cached_val = preflight_cache("ram", IMGSZ, train, val)
    assert cached_train.mode == cached_val.mode == "ram"
    paths = [Path(cached_train.ram.path), Path(cached_val.ram.path)]
    assert preflight_cache("", IMGSZ, train, None) == (train, None)
    # make_train_iterator keeps a source that is already cached (and does not remove its cache).
    batches = make_train_iterator(cached_train, imgsz=IMGSZ, batch_size=4, epochs=1, max_boxes=64, cache="ram",
                                  **LOCAL)
    assert batches.source is cached_train and not batches.owns_cache
    batches.close()
    assert all(p.exists() for p in paths)
    close_image_cache(cached_train, cached_val, train)
    assert not any(p.exists() for p in paths)

    from yolojax.config import default_config

    config = default_config()
    config.data.yaml = str(data_yaml)
    assert config.data.cache == ""
    for value, mode in (("ram", "ram"), ("disk", "disk"), ("True", "ram"), ("False", ""), ("", "")):
        config.data.cache = value
        assert resolve(config).data.cache == mode
    config.data.cache = "memory"
    with pytest.raises(ConfigError, match=r"data.cache='memory': cache must be '', 'ram' or 'disk' \(True means 'ram'"):
        resolve(config)


def test_cli_cache_key_maps_to_data_cache():
    from yolojax import cli

    assert cli.TRAIN_KEYS["cache"] == "data.cache" and cli.VAL_KEYS["cache"] == "cache"
    for argv, expected in ((["cache=ram"], "ram"), (["cache=disk"], "disk"), (["cache"], "True"),
                           (["cache=True"], "True"), (["cache=False"], "False")):
        config, _ = cli.train_config(argv)
        assert config.data.cache == expected and cache_mode(config.data.cache) == cache_mode(expected)
