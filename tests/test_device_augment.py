"""Device-mode augmentation (data.augment_on='device'): the same draws give the same boxes as
host mode, and pixels within +-1 of host mode's (OpenCV's) on >= 99% of pixels, for every
augmentation alone and combined; OpenCV's colour conversions; the packed layout; the
pipeline's determinism and exact resume in device mode.

The rendering happens inside the train step before the model (``batch_images``), the same for
every model family; a YOLO11 run in device mode: tests/test_step_cache.py."""

from __future__ import annotations

from pathlib import Path

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yolojax.data import AugmentConfig, make_train_iterator
from yolojax.data.device import params as dp
from yolojax.data.device.augment import batch_images, hsv_to_rgb, opencv_hsv2rgb_tail, render_batch, rgb_to_hsv
from yolojax.data.image_io import resize_long_side
from yolojax.data.augment.mosaic import full_tile
from yolojax.data.augment.sample import SampleParams, ViewParams, draw_sample, render_sample
from yolojax.parallel import local_data_shards, make_mesh
from shared_data import SHARED, needs

COCO8 = SHARED / "coco8" / "coco8.yaml"
needs_coco8 = needs(COCO8)
S = 160
LOCAL = {"process_index": 0, "process_count": 1}
_render = jax.jit(render_batch)


@pytest.fixture(scope="module")
def images() -> dict[int, np.ndarray]:
    """Long-side-resized RGB images: coco8's, or (without it) random ones of assorted shapes."""
    files = sorted((COCO8.parent / "images").rglob("*.jpg")) if COCO8.is_file() else []
    if files:
        return {i: resize_long_side(cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB), S)
                for i, f in enumerate(files)}
    rng = np.random.default_rng(0)
    shapes = [(S, 120), (90, S), (S, S), (S, 47), (33, S), (S, 100), (128, S), (S, 150)]
    return {i: cv2.GaussianBlur(rng.integers(0, 256, (*hw, 3), dtype=np.uint8), (5, 5), 2)
            for i, hw in enumerate(shapes)}


def host_and_device(images, aug: AugmentConfig, n: int = 8, seed: int = 0, mosaic_pool: str = "dataset"):
    """(host images, device images) of n samples with the same draws."""
    params, host = [], []
    for k in range(n):
        rng = np.random.default_rng([seed, k])

        def pick(r, m):
            return [int(i) for i in r.choice(len(images), m, replace=True)]

        p = draw_sample(k % len(images), lambda i: images[i].shape[:2], pick, rng, aug, S, True)
        params.append(p)
        host.append(render_sample(p, lambda i: images[i]))
    slots = dp.source_slots(n, 2, aug, mosaic_pool)
    batch = dp.pack_batch(params, lambda i: images[i], 2, slots, dp.views_per_sample(aug), S)
    return np.stack(host), np.asarray(_render(batch))


def assert_close(host: np.ndarray, device: np.ndarray, exact: float = 0.0):
    diff = np.abs(host.astype(np.int32) - device.astype(np.int32)).max(-1)
    assert (diff <= 1).mean() >= 0.99, f"only {(diff <= 1).mean():.4f} of pixels within +-1 (max {diff.max()})"
    assert (diff == 0).mean() >= exact, f"only {(diff == 0).mean():.4f} of pixels equal"


NO_COLOUR = {"hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0, "fliplr": 0.0}


@pytest.mark.parametrize("name, aug, exact", [
    ("mosaic+affine", AugmentConfig(**NO_COLOUR), 0.99),
    ("single image: rotate, shear, scale (letterbox)",
     AugmentConfig(**NO_COLOUR, mosaic=0.0, degrees=15, shear=5, scale=0.6), 0.99),
    ("perspective", AugmentConfig(**NO_COLOUR, perspective=0.0008, degrees=5), 0.99),
    ("mixup", AugmentConfig(**NO_COLOUR, mixup=1.0), 0.99),
    ("hsv", AugmentConfig(mosaic=0.0, fliplr=0.0, hsv_h=0.1, hsv_s=0.9, hsv_v=0.6), 0.95),
    ("flips", AugmentConfig(hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, mosaic=0.0, flipud=0.5, fliplr=0.5), 0.99),
    ("combined", AugmentConfig(degrees=10, shear=3, perspective=0.0003, mixup=0.5, flipud=0.5), 0.95),
])
def test_device_pixels_match_host(images, name, aug, exact):
    host, device = host_and_device(images, aug)
    assert_close(host, device, exact)


def test_flips_and_mixup_are_applied(images):
    """A sample with both flips and the flips undone differ: the flags are not ignored."""
    aug = AugmentConfig(hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, mosaic=0.0, flipud=1.0, fliplr=1.0)
    host, device = host_and_device(images, aug, n=2)
    assert_close(host, device, 0.99)
    assert np.abs(device[0].astype(int) - device[0, ::-1, ::-1]).mean() > 1


def test_rgb_to_hsv_equals_opencv():
    rgb = np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    rgb[0, :4] = [[0, 0, 0], [255, 255, 255], [7, 7, 7], [255, 0, 0]]  # grey and pure colours
    expected = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    np.testing.assert_array_equal(np.asarray(rgb_to_hsv(jnp.asarray(rgb, jnp.int32))), expected)


@pytest.mark.parametrize("width", [256, 160, 96, 100, 32])
def test_hsv_to_rgb_matches_opencv(width):
    """Equal to this machine's OpenCV, whose rows end in a rounding scalar tail past its vector
    block (32 or 64 pixels): also for widths that are not multiples of the block, and for
    images flipped left-right after OpenCV's conversion."""
    rng = np.random.default_rng(2)
    hsv = np.stack([rng.integers(0, 180, (64, width)), rng.integers(0, 256, (64, width)),
                    rng.integers(0, 256, (64, width))], -1).astype(np.uint8)
    expected = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.int32)
    got = np.asarray(hsv_to_rgb(jnp.asarray(hsv[None], jnp.int32)))[0]
    mirrored = np.asarray(hsv_to_rgb(jnp.asarray(hsv[None, :, ::-1], jnp.int32), jnp.asarray([True])))[0]
    for ours, theirs in ((got, expected), (mirrored, expected[:, ::-1])):
        assert np.abs(ours - theirs).max() <= 1  # float32 products may round apart in a rare pixel
        assert (ours == theirs).all(-1).mean() > 0.999
    assert 0 <= opencv_hsv2rgb_tail(width) <= width


def test_pack_batch_layout_and_refusals(images):
    aug = AugmentConfig(mixup=0.5)
    assert dp.views_per_sample(aug) == 2
    assert dp.source_slots(8, 2, aug, "dataset") == 4 * 4 * 2
    assert dp.source_slots(8, 2, aug, "batch") == 8
    assert dp.source_slots(8, 8, AugmentConfig(mosaic=0.0), "dataset") == 1
    with pytest.raises(ValueError, match="does not split"):
        dp.source_slots(6, 4, aug, "batch")
    view = ViewParams((3,), (images[3].shape[:2],), (full_tile(images[3].shape[:2]),), images[3].shape[:2],
                      np.eye(3, dtype=np.float32), 1.0, False)
    p = SampleParams((S, S), (view,), 1.0, np.array([0.01, 0.2, -0.1]), True, False)
    batch = dp.pack_batch([p, p], lambda i: images[i], 1, 1, 1, S)
    h, w = images[3].shape[:2]
    np.testing.assert_array_equal(batch[dp.SOURCES_KEY][0, 0, :h, :w], images[3])
    assert not batch[dp.SOURCES_KEY][0, 0, h:].any() and not batch[dp.SOURCES_KEY][0, 0, :, w:].any()
    np.testing.assert_array_equal(batch[dp.TILES_KEY][0, 0, 0], [0, 0, 0, w, h, 0, 0])
    assert not batch[dp.TILES_KEY][0, 0, 1:].any()
    assert batch[dp.HSV_KEY].all() and batch[dp.FLIP_KEY][:, 0].all() and not batch[dp.FLIP_KEY][:, 1].any()
    other = SampleParams((S, S), (dataclass_replace_index(view, 4, images),), 1.0, None, False, False)
    with pytest.raises(ValueError, match="more than its 1 source slots"):
        dp.pack_batch([p, other], lambda i: images[i], 1, 1, 1, S)
    with pytest.raises(ValueError, match="does not split"):
        dp.pack_batch([p, p, p], lambda i: images[i], 2, 1, 1, S)
    with pytest.raises(ValueError, match="room for 1"):
        dp.pack_batch([SampleParams((S, S), (view, view), 0.5, None, False, False)], lambda i: images[i], 1, 2, 1, S)
    assert dp.transfer_bytes(2, 1, 1, 1, S) == S * S * 3 + 2 * (112 + 36 + 1 + 4 + 1 + 768 + 2)


def dataclass_replace_index(view: ViewParams, index: int, images) -> ViewParams:
    hw = images[index].shape[:2]
    return ViewParams((index,), (hw,), (full_tile(hw),), hw, view.matrix, view.scale, view.perspective)


def test_batch_images_passes_host_images_through():
    image = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.uint8).reshape(2, 4, 4, 3)
    assert batch_images({"image": image}) is image


def test_local_data_shards_one_device_mesh():
    assert local_data_shards(make_mesh(data=1, model=1, devices=jax.devices()[:1]), 8) == 1


@needs_coco8
def test_device_pipeline_same_boxes_and_pixels_as_host():
    kw = dict(imgsz=S, batch_size=4, epochs=2, seed=3, aug=AugmentConfig(mixup=0.5, degrees=5), **LOCAL)
    host = make_train_iterator(COCO8, **kw)
    device = make_train_iterator(COCO8, augment_on="device", augment_groups=2, **kw)
    for _ in range(host.num_steps):
        a, b = next(host.iterator), next(device.iterator)
        assert "image" not in b and b[dp.SOURCES_KEY].shape == (2, 4, S, S, 3)  # mosaic_pool 'batch': P = b
        for key in ("boxes", "classes", "mask"):
            np.testing.assert_array_equal(a[key], b[key])
        assert_close(a["image"], np.asarray(_render(b)), 0.95)
    with pytest.raises(ValueError, match="augment_on"):
        make_train_iterator(COCO8, augment_on="gpu", **kw)


@needs_coco8
def test_device_pipeline_is_deterministic_and_resumes_exactly():
    kw = dict(imgsz=S, batch_size=2, epochs=2, seed=5, augment_on="device", **LOCAL)
    first = make_train_iterator(COCO8, **kw)
    next(first.iterator)
    state = first.iterator.get_state()
    rest = [next(first.iterator) for _ in range(first.num_steps - 1)]
    resumed = make_train_iterator(COCO8, **kw)
    resumed.iterator.set_state(state)
    again = make_train_iterator(COCO8, **kw)
    next(again.iterator)
    for expected in rest:
        for other in (next(resumed.iterator), next(again.iterator)):
            assert expected.keys() == other.keys()
            for key in expected:
                np.testing.assert_array_equal(expected[key], other[key], err_msg=key)


@needs_coco8
def test_device_pipeline_with_selected_labels_and_fraction():
    from yolojax.data.sources.yolo import yolo_source
    from yolojax.data.sources.subset import select_labels

    source = select_labels(yolo_source(COCO8, "train", fraction=0.5), [0, 45], single_cls=True)
    assert len(source) == 2
    kw = dict(imgsz=S, batch_size=2, epochs=1, seed=1, **LOCAL)
    host = make_train_iterator(source, **kw)
    device = make_train_iterator(source, augment_on="device", **kw)
    a, b = next(host.iterator), next(device.iterator)
    for key in ("boxes", "classes", "mask"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["mask"].any() and not a["classes"].any()
    assert_close(a["image"], np.asarray(_render(b)), 0.95)


def test_device_mode_refuses_host_only_options_before_reading_data(tmp_path):
    missing = tmp_path / "absent.yaml"  # never opened: the refusal comes first
    for kw, name in ((dict(rect=True), "rect"), (dict(multi_scale=0.5), "multi_scale"),
                     (dict(aug=AugmentConfig(cutmix=0.3)), "cutmix"), (dict(aug=AugmentConfig(bgr=0.5)), "bgr")):
        with pytest.raises(ValueError, match=f"cannot render {name}:"):
            make_train_iterator(missing, imgsz=S, augment_on="device", **kw)
