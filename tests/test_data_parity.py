"""Agreement with ultralytics (the oracle, imported only here): validation letterbox and rect
batches pixel for pixel, training samples for the same random draws (ultralytics' own
transforms run with their draws recorded, then replayed into yolojax's), the COCO 91 -> 80
table, and mosaic + perspective statistics."""

import os
import random
from pathlib import Path

import numpy as np
import pytest

from yolojax.data import AugmentConfig, make_train_iterator, make_val_iterator, yolo_source
from yolojax.data.sources.coco_json import COCO80_CATEGORY_IDS, coco91_to_coco80
from yolojax.data.sources.synthetic import SHAPE_NAMES, write_synthetic_dataset
from yolojax.data.train_batches import load_image
from yolojax.data.augment.sample import draw_sample, render_sample, sample_boxes
from shared_data import COCO8, SHARED, needs

os.environ.setdefault("YOLO_OFFLINE", "1")
_REASON = "ultralytics (the test oracle) not installed"
get_cfg = pytest.importorskip("ultralytics.cfg", reason=_REASON).get_cfg
coco91_to_coco80_class = pytest.importorskip("ultralytics.data.converter", reason=_REASON).coco91_to_coco80_class
YOLODataset = pytest.importorskip("ultralytics.data.dataset", reason=_REASON).YOLODataset
augment = pytest.importorskip("ultralytics.data.augment", reason=_REASON)

LOCAL = {"process_index": 0, "process_count": 1}


@pytest.fixture(scope="module")
def shapes_yaml(tmp_path_factory):
    """Images from very wide to very tall (aspect ratios ~0.2 to ~5)."""
    root = tmp_path_factory.mktemp("aspect")
    return write_synthetic_dataset(root, num_train=48, num_val=11, size_range=(40, 260), max_shapes=6, seed=11)


def ultralytics_dataset(yaml_path, split, imgsz, augment, rect=False, batch_size=4, hyp=None, names=SHAPE_NAMES):
    cfg = get_cfg(overrides={"imgsz": imgsz, **(hyp or {})})
    return YOLODataset(img_path=str(yaml_path.parent / "images" / split), imgsz=imgsz, augment=augment, hyp=cfg,
                       rect=rect, batch_size=batch_size, stride=32, pad=0.5 if rect else 0.0,
                       data={"names": dict(enumerate(names)), "channels": 3})


@pytest.mark.parametrize("rect", [True, False])
def test_val_batches_match_ultralytics_pixel_for_pixel(shapes_yaml, rect):
    imgsz, batch_size = 160, 4
    theirs = ultralytics_dataset(shapes_yaml, "val", imgsz, augment=False, rect=rect, batch_size=batch_size)
    source = yolo_source(shapes_yaml, "val")
    ours = make_val_iterator(source, imgsz=imgsz, batch_size=batch_size, rect=rect, max_boxes=16, **LOCAL)
    position = 0
    for step, batch in enumerate(ours.iterator):
        if rect:
            np.testing.assert_array_equal(batch["image"].shape[1:3], theirs.batch_shapes[step])
        for slot in np.flatnonzero(batch["valid"]):
            item = theirs[position]
            assert source.image_paths[batch["index"][slot]] == item["im_file"]
            image_rgb = item["img"].numpy().transpose(1, 2, 0)  # Format turns BGR into RGB
            np.testing.assert_array_equal(batch["image"][slot], image_rgb)
            h, w = image_rgb.shape[:2]
            cx, cy, bw, bh = item["bboxes"].numpy().T * np.array([[w], [h], [w], [h]])
            expected = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
            np.testing.assert_allclose(batch["boxes"][slot][batch["mask"][slot]], expected, atol=1e-3)
            np.testing.assert_array_equal(batch["classes"][slot][batch["mask"][slot]], item["cls"].numpy()[:, 0])
            (gain_h, gain_w), (pad_w, pad_h) = item["ratio_pad"]
            np.testing.assert_allclose(batch["ratio_hw"][slot], [gain_h, gain_w], rtol=1e-6)
            np.testing.assert_array_equal(batch["pad_xy"][slot], [pad_w, pad_h])
            np.testing.assert_array_equal(batch["orig_hw"][slot], item["ori_shape"])
            position += 1
    assert position == len(theirs) == len(source)


def test_coco91_table_matches_ultralytics():
    table = coco91_to_coco80_class()
    assert [coco91_to_coco80(i + 1) for i in range(91)] == table
    assert [i + 1 for i, c in enumerate(table) if c is not None] == list(COCO80_CATEGORY_IDS)


def box_statistics(boxes_per_image, imgsz):
    """(mean boxes per image, mean box area / image area) over a list of (n, 4) xyxy arrays."""
    counts = [len(b) for b in boxes_per_image]
    areas = np.concatenate([(b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) for b in boxes_per_image]) / imgsz**2
    return float(np.mean(counts)), float(np.mean(areas))


def test_mosaic_perspective_statistics_match_ultralytics(shapes_yaml):
    imgsz, samples = 128, 320
    random.seed(0)
    np.random.seed(0)
    theirs = ultralytics_dataset(shapes_yaml, "train", imgsz, augment=True, batch_size=16)
    order = np.random.default_rng(0).permutation(np.arange(samples) % len(theirs))
    their_boxes = []
    for i in order:
        item = theirs[int(i)]
        cx, cy, w, h = item["bboxes"].numpy().T * imgsz
        their_boxes.append(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1))

    batches = make_train_iterator(shapes_yaml, imgsz=imgsz, batch_size=16, epochs=samples // 48 + 1, seed=0,
                                  aug=AugmentConfig(close_mosaic=0), max_boxes=128, **LOCAL)
    our_boxes = []
    while len(our_boxes) < samples:
        batch = next(batches.iterator)
        our_boxes += [b[m] for b, m in zip(batch["boxes"], batch["mask"])]
    (n_theirs, a_theirs), (n_ours, a_ours) = box_statistics(their_boxes, imgsz), box_statistics(our_boxes, imgsz)
    assert n_ours == pytest.approx(n_theirs, rel=0.10), (n_ours, n_theirs)
    assert a_ours == pytest.approx(a_theirs, rel=0.10), (a_ours, a_theirs)


# ----------------------------------------------------------------------------------------
# Training samples for the same random draws.
# ----------------------------------------------------------------------------------------


class _RecordingRandom:
    """Python's ``random`` as ultralytics.data.augment uses it, logging each draw as (kind, value)."""

    def __init__(self, log):
        self.log = log

    def uniform(self, a, b):
        value = random.uniform(a, b)
        self.log.append(("uniform", value))
        return value

    def random(self):
        value = random.random()
        self.log.append(("random", value))
        return value

    def choices(self, population, k=1):  # Mosaic's partners from the buffer
        value = random.choices(population, k=k)
        self.log.append(("pick", list(value)))
        return value

    def randint(self, a, b):  # MixUp's partner
        value = random.randint(a, b)
        self.log.append(("pick", [value]))
        return value

    def __getattr__(self, name):
        return getattr(random, name)


class _RecordingNumpy:
    """numpy for ultralytics.data.augment, with ``np.random.uniform`` / ``beta`` logged."""

    def __init__(self, log):
        outer = self

        class _Random:
            def uniform(self, low=0.0, high=1.0, size=None):
                value = np.random.uniform(low, high, size)
                outer.log.append(("uniform" if size is None else "uniform_n", value))
                return value

            def beta(self, a, b):
                value = np.random.beta(a, b)
                outer.log.append(("beta", value))
                return value

            def randint(self, *args):  # CutMix's rectangle centre
                value = np.random.randint(*args)
                outer.log.append(("integers", value))
                return value

            def choice(self, a):  # CutMix's rectangle among the free ones
                value = np.random.choice(a)
                outer.log.append(("choice", value))
                return value

            def __getattr__(self, name):
                return getattr(np.random, name)

        self.log = log
        self.random = _Random()

    def __getattr__(self, name):
        return getattr(np, name)


class ReplayRng:
    """A stand-in for yolojax's record generator that hands out ultralytics' recorded draws in
    order, failing on any draw of another kind (so the order of draws is checked too)."""

    def __init__(self, log):
        self.log, self.position = log, 0

    def take(self, kind):
        assert self.position < len(self.log), f"yolojax draws more than ultralytics ({kind})"
        got, value = self.log[self.position]
        assert got == kind, f"draw {self.position}: yolojax wants {kind}, ultralytics drew {got}"
        self.position += 1
        return value

    def uniform(self, low=0.0, high=1.0, size=None):
        return self.take("uniform" if size is None else "uniform_n")

    def random(self):
        return self.take("random")

    def beta(self, a, b):
        return self.take("beta")

    def integers(self, low, high=None):
        return self.take("integers")

    def choice(self, a):
        value = self.take("choice")
        assert value in a, (value, a)
        return value


def ultralytics_sample(dataset, index, monkeypatch):
    """dataset[index] through ultralytics' transforms, and the draws they made."""
    log = []
    with monkeypatch.context() as m:
        m.setattr(augment, "random", _RecordingRandom(log))
        m.setattr(augment, "np", _RecordingNumpy(log))
        item = dataset[index]
    return item, log


def item_boxes_xyxy(item, imgsz):
    cx, cy, w, h = item["bboxes"].numpy().T * imgsz
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1).reshape(-1, 4)


PIXEL_SHARE = 0.999  # pixels within +-1 level (per pixel, over its 3 channels)
BOX_TOL_PX = 1e-3

SAMPLE_CASES = {
    "no mosaic": {"mosaic": 0.0},
    "no mosaic, rotate + shear": {"mosaic": 0.0, "degrees": 15.0, "shear": 3.0, "flipud": 0.5},
    "no mosaic, centred (every augmentation off)": {"mosaic": 0.0, "translate": 0.0, "scale": 0.0, "hsv_h": 0.0,
                                                    "hsv_s": 0.0, "hsv_v": 0.0, "fliplr": 0.0},
    "mosaic": {},
    "mosaic + perspective": {"degrees": 10.0, "shear": 5.0, "perspective": 0.0005, "flipud": 0.5},
    "mosaic + mixup": {"mixup": 1.0, "flipud": 0.5, "scale": 0.9},
    "mosaic + cutmix": {"cutmix": 1.0, "scale": 0.9},
    "no mosaic, mixup + cutmix": {"mosaic": 0.0, "mixup": 0.5, "cutmix": 1.0},
    "bgr": {"mosaic": 0.0, "bgr": 0.5},
}


@pytest.mark.parametrize("case", list(SAMPLE_CASES))
def test_training_samples_equal_ultralytics_for_the_same_draws(shapes_yaml, case, monkeypatch):
    """ultralytics' v8_transforms and Format (its YOLODataset, draws recorded) and yolojax's draw -> boxes ->
    pixels (the draws replayed): the same draw sequence, boxes within 1e-3 px, pixels within +-1 on >= 99.9%."""
    imgsz, hyp = 160, SAMPLE_CASES[case]
    theirs = ultralytics_dataset(shapes_yaml, "train", imgsz, augment=True, batch_size=16, hyp=hyp)
    source = yolo_source(shapes_yaml, "train")
    ours_of = {path: i for i, path in enumerate(source.image_paths)}
    to_ours = lambda k: ours_of[theirs.im_files[k]]  # noqa: E731
    loaded = {}

    def load(i):
        if i not in loaded:
            loaded[i] = load_image(source, i, imgsz)
        return loaded[i]

    aug = AugmentConfig(**hyp)
    random.seed(0)
    np.random.seed(0)
    shares, box_errors, boxes_seen, cuts, swaps = [], [], 0, 0, 0
    for k in range(12):
        index = (7 * k) % len(theirs)
        item, log = ultralytics_sample(theirs, index, monkeypatch)
        rng = ReplayRng(log)
        pick = lambda r, n: [to_ours(j) for j in r.take("pick")]  # noqa: E731
        labels_of = lambda i: (load(i).boxes, load(i).classes)  # noqa: E731
        params = draw_sample(to_ours(index), lambda i: load(i).size_hw, pick, rng, aug, imgsz, mixing=True,
                             labels_of=labels_of)
        assert rng.position == len(log), log[rng.position:]  # every draw, Format's bgr check the last
        cuts += params.cutmix is not None and params.cutmix.area is not None
        swaps += params.bgr
        boxes, classes = sample_boxes(params, labels_of)
        image = render_sample(params, lambda i: load(i).image)
        their_image = item["img"].numpy().transpose(1, 2, 0)  # Format turned BGR into RGB (unless bgr drawn)
        assert image.shape == their_image.shape
        shares.append(float((np.abs(image.astype(int) - their_image).max(-1) <= 1).mean()))
        their_boxes = item_boxes_xyxy(item, imgsz)
        assert len(boxes) == len(their_boxes), (k, boxes, their_boxes)
        np.testing.assert_array_equal(classes, item["cls"].numpy().reshape(-1).astype(np.int32))
        box_errors.append(float(np.abs(boxes - their_boxes).max()) if len(boxes) else 0.0)
        boxes_seen += len(boxes)
        if case.startswith("mosaic"):
            assert len(params.views[0].indices) == 4
    print(f"{case}: pixels within +-1: min {min(shares):.6f}; box error max {max(box_errors):.2e} px over "
          f"{boxes_seen} boxes")
    assert min(shares) >= PIXEL_SHARE
    assert max(box_errors) <= BOX_TOL_PX
    assert boxes_seen > 12
    if "cutmix" in case:
        assert cuts >= 2  # rectangles were pasted (not every draw finds a free one)
    if "bgr" in hyp:
        assert 0 < swaps < 12


@needs(COCO8 / "coco8-trainval.yaml")
def test_unaugmented_training_batch_equals_ultralytics_on_coco8(tmp_path):
    """The trajectory test's batch (tests/test_trajectory.py): mosaic and every augmentation off, all 8 coco8
    images at 320: yolojax's training batch is ultralytics' pixel for pixel, its boxes to 1e-3 px."""
    import shutil

    import yaml

    root = shutil.copytree(SHARED / "coco8", tmp_path / "coco8")
    imgsz, hyp = 320, {"mosaic": 0.0, "translate": 0.0, "scale": 0.0, "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0,
                       "fliplr": 0.0}
    batches = make_train_iterator(root / "coco8-trainval.yaml", imgsz=imgsz, batch_size=8, epochs=1, seed=0,
                                  aug=AugmentConfig(**hyp), **LOCAL)
    batch = next(batches.iterator)
    names = yaml.safe_load((root / "coco8.yaml").read_text())["names"]
    cfg = get_cfg(overrides={"imgsz": imgsz, **hyp})
    theirs = YOLODataset(img_path=[str(root / "images" / "train"), str(root / "images" / "val")], imgsz=imgsz,
                         augment=True, hyp=cfg, batch_size=8, stride=32, data={"names": names, "channels": 3})
    items = [theirs[k] for k in range(len(theirs))]  # no random draw changes anything with these settings
    their_images = [item["img"].numpy().transpose(1, 2, 0) for item in items]
    seen = set()
    for slot in range(8):
        # the slot's image (the epoch's permutation is yolojax's own): the one with the same pixels
        matches = [k for k, image in enumerate(their_images) if np.array_equal(image, batch["image"][slot])]
        assert len(matches) == 1, slot
        item, mask = items[matches[0]], batch["mask"][slot]
        np.testing.assert_array_equal(batch["classes"][slot][mask], item["cls"].numpy().reshape(-1).astype(np.int32))
        np.testing.assert_allclose(batch["boxes"][slot][mask], item_boxes_xyxy(item, imgsz), atol=BOX_TOL_PX)
        seen.add(matches[0])
    assert len(seen) == 8


def test_rect_training_batches_and_samples_equal_ultralytics(shapes_yaml, monkeypatch):
    """rect=True training: ultralytics' batch shapes (set_rectangle, pad 0) and image order, one
    fixed order every epoch, no mosaic, and each sample equal to ultralytics' for the same draws."""
    from yolojax.data.pipeline import train_schedule

    imgsz, batch_size = 160, 4
    cfg = get_cfg(overrides={"imgsz": imgsz, "rect": True})
    theirs = YOLODataset(img_path=str(shapes_yaml.parent / "images" / "train"), imgsz=imgsz, augment=True, hyp=cfg,
                         rect=True, batch_size=batch_size, stride=32, pad=0.0,
                         data={"names": dict(enumerate(SHAPE_NAMES)), "channels": 3})
    source = yolo_source(shapes_yaml, "train")
    schedule = train_schedule(source, batch_size, 3, 0, 0, 1, imgsz, rect=True)
    n = len(source) // batch_size * batch_size  # yolojax drops the last partial batch
    np.testing.assert_array_equal(schedule.batch_shapes_hw, theirs.batch_shapes)
    assert len({tuple(s) for s in theirs.batch_shapes}) > 1
    for epoch in range(2):
        order = np.concatenate([schedule.image_indices(epoch * schedule.steps_per_epoch + k)[2]
                                for k in range(schedule.steps_per_epoch)])
        assert [source.image_paths[i] for i in order] == list(theirs.im_files[:n])
    batches = make_train_iterator(source, imgsz=imgsz, batch_size=batch_size, epochs=3, aug=AugmentConfig(),
                                  rect=True, **LOCAL)
    for step, batch in zip(range(3), batches.iterator):
        assert batch["image"].shape[1:3] == tuple(theirs.batch_shapes[step])
    batches.close()

    loaded = {}

    def load(i):
        if i not in loaded:
            loaded[i] = load_image(source, i, imgsz)
        return loaded[i]

    random.seed(1)
    np.random.seed(1)
    for position in (0, 5, 13, 22, 30, 41):
        item, log = ultralytics_sample(theirs, position, monkeypatch)
        rng = ReplayRng(log)
        out_hw = schedule.out_hw(position // batch_size, imgsz)
        labels_of = lambda i: (load(i).boxes, load(i).classes)  # noqa: E731
        params = draw_sample(int(schedule.order[position]), lambda i: load(i).size_hw, None, rng, AugmentConfig(),
                             imgsz, mixing=False, out_hw=out_hw, labels_of=labels_of)
        assert rng.position == len(log) and len(params.source_indices) == 1
        image = render_sample(params, lambda i: load(i).image)
        their_image = item["img"].numpy().transpose(1, 2, 0)
        assert image.shape == their_image.shape == (*out_hw, 3)
        assert (np.abs(image.astype(int) - their_image).max(-1) <= 1).mean() >= PIXEL_SHARE
        boxes, classes = sample_boxes(params, labels_of)
        h, w = out_hw
        cx, cy, bw, bh = item["bboxes"].numpy().T * np.array([[w], [h], [w], [h]])
        their_boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1).reshape(-1, 4)
        np.testing.assert_allclose(boxes, their_boxes, atol=BOX_TOL_PX)
        np.testing.assert_array_equal(classes, item["cls"].numpy().reshape(-1))


def test_fraction_classes_single_cls_select_as_ultralytics(shapes_yaml):
    """fraction keeps ultralytics' first images (ratio and count); classes and single_cls leave
    ultralytics' labels, image for image."""
    from yolojax.data.sources.subset import select_labels

    for fraction in (0.25, 7.0):
        theirs = YOLODataset(img_path=str(shapes_yaml.parent / "images" / "train"), imgsz=64, augment=False,
                             hyp=get_cfg(), fraction=int(fraction) if fraction > 1 else fraction,
                             data={"names": dict(enumerate(SHAPE_NAMES)), "channels": 3})
        ours = yolo_source(shapes_yaml, "train", fraction=fraction)
        assert list(ours.image_paths) == list(theirs.im_files) and len(ours) == (12 if fraction < 1 else 7)
    full = yolo_source(shapes_yaml, "train")
    for classes, single_cls in (([1, 3], False), (None, True), ([2], True)):
        theirs = YOLODataset(img_path=str(shapes_yaml.parent / "images" / "train"), imgsz=64, augment=False,
                             hyp=get_cfg(), classes=classes, single_cls=single_cls,
                             data={"names": dict(enumerate(SHAPE_NAMES)), "channels": 3})
        ours = select_labels(full, classes, single_cls)
        assert ours.names == (("item",) if single_cls else full.names)
        kept = 0
        for label, path in zip(theirs.labels, theirs.im_files):
            i = ours.image_paths.index(path)
            np.testing.assert_array_equal(ours.labels.classes_of(i), label["cls"].reshape(-1))
            kept += len(label["cls"])
        assert kept == len(ours.labels.classes)
        if classes is None:  # single_cls alone keeps every label, as class 0
            assert kept == len(full.labels.classes) and not ours.labels.classes.any()
        else:  # the selected classes keep some labels, not all
            assert 0 < kept < len(full.labels.classes)
