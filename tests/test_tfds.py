"""TFDS datasets (yolojax.data.sources.tfds) against the real tensorflow-datasets library, offline.

The dataset is real: tools/tfds_from_yolo.py builds COCO8's images and labels into a temporary
TFDS data dir in the array_record format, with the feature spec of TFDS's coco/2017 builder
and one crowd object added to every labelled image (which a reader must drop). Reading it must
give what COCO8's data.yaml gives: the same images, boxes, batches and mAP.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from processes import child_env, free_port
from shared_data import COCO8, WEIGHTS, needs, require
from yolojax.data import make_train_iterator, yolo_source
from yolojax.data.sources.tfds import TfdsDataset, TfdsSpec, record_name, scan_records

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("tfds_from_yolo", REPO / "tools" / "tfds_from_yolo.py")
tfds_from_yolo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tfds_from_yolo)
NAME = "coco8_tfds"


@pytest.fixture(scope="module")
def coco8_yaml(tmp_path_factory):
    require(COCO8)
    root = shutil.copytree(COCO8, tmp_path_factory.mktemp("coco8") / "coco8")  # label caches are written beside
    return root / "coco8.yaml"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, coco8_yaml):
    out = tmp_path_factory.mktemp("tfds")
    tfds_from_yolo.build_tfds_copy(coco8_yaml, out, name=NAME, crowd=True)
    return out


@pytest.fixture(scope="module")
def spec(data_dir):
    return TfdsSpec.parse(f"tfds:{NAME}", data_dir=str(data_dir))


@pytest.mark.parametrize("split", ["train", "val"])
def test_the_tfds_copy_reads_as_the_yolo_folders(spec, coco8_yaml, split, caplog):
    """Same class names (the label feature's), images (pixel for pixel: the stored JPEG bytes go
    through the same decoder), sizes and boxes; the crowd objects are dropped; no TensorFlow."""
    with caplog.at_level("INFO"):
        ours, folders = TfdsDataset(spec).source(split), yolo_source(coco8_yaml, split)
    tfds_split = {"train": "train", "val": "validation"}[split]
    assert f"label scan tfds:{NAME} {tfds_split}" in caplog.text
    assert "4 records: 4 with objects, 0 without (kept as backgrounds), 0 corrupt (skipped)" in caplog.text
    assert ours.names == folders.names and len(ours.names) == 80
    assert len(ours) == len(folders) == 4
    np.testing.assert_array_equal(ours.image_shapes_hw, folders.image_shapes_hw)
    for i in range(len(ours)):
        a, b = ours[i], folders[i]
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["classes"], b["classes"])
        np.testing.assert_allclose(a["boxes"], b["boxes"], atol=1e-6)
    assert "tensorflow" not in sys.modules


@pytest.mark.parametrize("augment_on,cache,workers", [("host", "", 0), ("device", "", 0), ("host", "ram", 0),
                                                       ("host", "", 2)])
def test_train_batches_match_the_yolo_folders(spec, coco8_yaml, augment_on, cache, workers):
    """Mosaic and the rest of the recipe (host or device rendering, the RAM image cache, max_boxes
    from the label scan, worker processes, which reopen the dataset) draw the same batches from
    the TFDS copy as from the folders."""
    def first_batches(data):
        batches = make_train_iterator(data, imgsz=128, batch_size=4, epochs=2, seed=0, workers=workers, cache=cache,
                                      augment_on=augment_on, process_index=0, process_count=1)
        try:
            return [next(batches.iterator) for _ in range(2)]
        finally:
            batches.close()

    for a, b in zip(first_batches(spec), first_batches(coco8_yaml), strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].shape == b[key].shape, key
            np.testing.assert_allclose(a[key], b[key], atol=1e-3, err_msg=key)


def test_processes_read_their_own_rows_of_the_global_batch(spec):
    """Each of two processes reads its half of every global batch (Grain's sharding, as for folders)."""
    def first(index, count):
        batches = make_train_iterator(spec, imgsz=64, batch_size=4, epochs=1, seed=0, workers=0,
                                      process_index=index, process_count=count)
        try:
            return next(batches.iterator)
        finally:
            batches.close()

    whole, part0, part1 = first(0, 1), first(0, 2), first(1, 2)
    for key in whole:
        np.testing.assert_array_equal(np.concatenate([part0[key], part1[key]]), whole[key], err_msg=key)


class _Records:
    """A stand-in for a TFDS data source: ``__getitems__`` over example dicts."""

    def __init__(self, examples):
        self.examples = examples

    def __len__(self):
        return len(self.examples)

    def __getitems__(self, indices):
        return [self.examples[i] for i in indices]


def test_scan_skips_and_names_bad_records_and_drops_crowd_objects(coco8_yaml, caplog):
    image = (Path(coco8_yaml).parent / "images" / "val" / "000000000036.jpg").read_bytes()

    def example(data, labels, boxes, crowd, filename):
        return {"image": data, "image/filename": filename.encode(),
                "objects": {"bbox": [np.array(b, np.float32) for b in boxes], "label": labels, "is_crowd": crowd}}

    records = _Records([
        example(image, [3, 3], [[0.1, 0.2, 0.5, 0.6], [0, 0, 1, 1]], [False, True], "good.jpg"),
        example(b"not a jpeg", [1], [[0.1, 0.1, 0.2, 0.2]], [False], "broken.jpg"),
        example(image, [80], [[0.1, 0.1, 0.2, 0.2]], [False], "class80.jpg"),
        example(image, [], [], [], "background.jpg"),
    ])
    with caplog.at_level("INFO"):
        result = scan_records(records, len(records), 80, "tfds:x validation")
    assert result.record_indices.tolist() == [0, 3]
    assert result.report.corrupt_files == (record_name("tfds:x validation", 1, "broken.jpg"),
                                           "tfds:x validation #2 (class80.jpg)")
    assert "tfds:x validation #1 (broken.jpg): ignoring corrupt image/label: image cannot be read or decoded" in (
        result.report.messages)
    assert "Label class 80 exceeds dataset class count 80" in result.report.messages[1]
    np.testing.assert_allclose(result.labels.boxes_of(0), [[0.2, 0.1, 0.6, 0.5]], atol=1e-6)  # crowd dropped
    assert result.labels.counts().tolist() == [1, 0]
    assert "1 crowd objects left out" in caplog.text


def test_a_missing_dataset_version_or_split_is_one_line_saying_what_is_there(spec, data_dir):
    with pytest.raises(ValueError, match=rf"^tfds:coco/2017: no prepared dataset in {data_dir}/coco/2017 \(datasets in "
                                         rf"{data_dir}: {NAME}\); prepare it with `tfds build coco/2017 --data_dir "
                                         r".* --file_format array_record`"):
        TfdsDataset(TfdsSpec.parse("tfds:coco/2017", data_dir=str(data_dir)))
    with pytest.raises(ValueError, match=rf"^tfds:{NAME}:9.9.9: no prepared version 9.9.9 in .* \(versions there: "
                                         r"1.0.0\)"):
        TfdsDataset(TfdsSpec.parse(f"tfds:{NAME}:9.9.9", data_dir=str(data_dir)))
    with pytest.raises(ValueError, match=r"data dir .*/1.0.0 is itself a prepared dataset's version folder"):
        TfdsDataset(TfdsSpec.parse(f"tfds:{NAME}", data_dir=str(data_dir / NAME / "1.0.0")))
    with pytest.raises(ValueError, match=r"split='test': no such split in .* \(splits: train, validation\)$"):
        TfdsDataset(spec).check_split("test")
    assert TfdsDataset(spec).check_split("validation[:2]") == "validation[:2]"
    for bad in ("coco8.yaml", "tfds:", "tfds:../x", "tfds::1.0.0"):
        with pytest.raises(ValueError, match="data="):
            TfdsSpec.parse(bad)


def _build(data_dir: Path, name: str, label_feature) -> None:
    """A one-split TFDS dataset whose objects' label is ``label_feature``."""
    import tensorflow_datasets as tfds

    image = str(COCO8 / "images" / "val" / "000000000036.jpg")
    features = tfds.features.FeaturesDict({"image": tfds.features.Image(encoding_format="jpeg"), "objects": (
        tfds.features.Sequence({"bbox": tfds.features.BBoxFeature(), "label": label_feature}))})
    dataset_name = name
    with tfds.core.registered.skip_registration():
        class OneSplit(tfds.core.GeneratorBasedBuilder):
            name = dataset_name
            VERSION = tfds.core.Version("1.0.0")

            def _info(self):
                return tfds.core.DatasetInfo(builder=self, features=features)

            def _split_generators(self, dl_manager):
                return {"validation": self._generate_examples()}

            def _generate_examples(self):
                yield 0, {"image": image, "objects": [{"bbox": tfds.features.BBox(0.1, 0.1, 0.5, 0.5), "label": 1}]}

        OneSplit(data_dir=str(data_dir), file_format="array_record").download_and_prepare()


def test_the_label_must_be_a_class_label_and_unnamed_classes_are_warned_about(tmp_path, caplog):
    import tensorflow_datasets as tfds

    require(COCO8)
    _build(tmp_path, "plain_label", tfds.features.Tensor(shape=(), dtype=np.int64))
    with pytest.raises(ValueError, match=r"^tfds:plain_label: 'objects/label' is a Tensor, not a ClassLabel"):
        TfdsDataset(TfdsSpec.parse("tfds:plain_label", data_dir=str(tmp_path)))
    _build(tmp_path, "unnamed", tfds.features.ClassLabel(num_classes=3))
    with caplog.at_level("WARNING"):
        dataset = TfdsDataset(TfdsSpec.parse("tfds:unnamed", data_dir=str(tmp_path)))
    assert dataset.names == ("0", "1", "2")
    assert "'objects/label' is a ClassLabel without names (num_classes=3): the classes are named 0..2" in caplog.text
    assert dataset.source("val")[0]["classes"].tolist() == [1]


def test_one_entry_serves_a_data_yaml_and_a_tfds_dataset(spec, coco8_yaml):
    from yolojax.data.sources.dataset import check_splits, dataset_names, describe, open_split

    assert describe(spec) == f"tfds:{NAME}" and describe(coco8_yaml) == str(coco8_yaml)
    assert dataset_names(spec) == dataset_names(coco8_yaml)
    check_splits(spec, ("train", "val"))
    check_splits(coco8_yaml, ("train", "val"))
    with pytest.raises(ValueError, match="split='test': no such split"):
        check_splits(spec, ("test",))
    assert type(open_split(spec, "val", fraction=0.5)).__name__ == "TfdsDetectionSource"
    assert len(open_split(spec, "val", fraction=0.5)) == len(open_split(coco8_yaml, "val", fraction=0.5)) == 2


def test_the_data_dir_and_the_newest_version_are_found(data_dir, tmp_path, monkeypatch):
    """data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets; without a version the newest
    prepared one (a folder without dataset_info.json is not one)."""
    from yolojax.data.sources.tfds import as_tfds_spec, dataset_dir, is_tfds, tfds_source

    root = tmp_path / "data"
    for version in ("1.0.0", "1.10.0", "1.9.0"):
        shutil.copytree(data_dir / NAME / "1.0.0", root / NAME / version)
    (root / NAME / "2.0.0").mkdir()  # an incomplete build
    monkeypatch.setenv("TFDS_DATA_DIR", str(root))
    assert is_tfds(f"tfds:{NAME}") and not is_tfds("coco8.yaml") and is_tfds(as_tfds_spec(f"tfds:{NAME}"))
    assert dataset_dir(as_tfds_spec(f"tfds:{NAME}")).name == "1.10.0"
    assert dataset_dir(as_tfds_spec(f"tfds:{NAME}:1.9.0")).name == "1.9.0"
    assert len(tfds_source(f"tfds:{NAME}:1.9.0", "val")) == 4
    monkeypatch.delenv("TFDS_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert TfdsSpec.parse(f"tfds:{NAME}").root() == str(tmp_path / "tensorflow_datasets")
    assert TfdsSpec.parse(f"tfds:{NAME}", data_dir=str(root), val="test").split_name("val") == "test"


def test_a_resumed_run_keeps_the_version_it_started_on(spec, data_dir, tmp_path, monkeypatch, caplog):
    """pinned() names the version read; prepare_data() of a resumed run takes it from config.json's
    resolved.data when the name gives none, so a newer version prepared meanwhile is not read."""
    from yolojax.config import default_config
    from yolojax.data.sources.dataset import pinned
    from yolojax.train.settings import resolve
    from yolojax.train.setup import prepare_data

    assert pinned(spec).name == f"{NAME}:1.0.0" and pinned("a/data.yaml") == "a/data.yaml"
    root = tmp_path / "data"
    for version in ("1.0.0", "1.1.0"):
        shutil.copytree(data_dir / NAME / "1.0.0", root / NAME / version)
    config = default_config()
    config.data.tfds.name, config.data.tfds.data_dir = NAME, str(root)
    settings = resolve(config)
    assert pinned(prepare_data(settings)).name == f"{NAME}:1.1.0"
    with caplog.at_level("INFO"):
        resumed = prepare_data(settings, {"resolved": {"data": f"tfds:{NAME}:1.0.0"}})
    assert resumed.name == f"{NAME}:1.0.0" and resumed.data_dir == str(root)
    assert f"resuming on tfds:{NAME}:1.0.0, the version this run started on" in caplog.text


def test_settings_refuse_what_a_tfds_dataset_cannot_do():
    from yolojax.config import default_config
    from yolojax.console import ConfigError
    from yolojax.train.settings import resolve

    def refusal(**fields):
        config = default_config()
        config.data.tfds.name = "coco/2017"
        for key, value in fields.items():
            parent, _, leaf = key.rpartition("__")
            target = config
            for part in parent.split("__") if parent else ():
                target = target[part]
            target[leaf] = value
        with pytest.raises(ConfigError) as e:
            resolve(config)
        return str(e.value)

    assert refusal(data__yaml=str(REPO / "README.md")).startswith("data.tfds.name='coco/2017' and data.yaml=")
    assert refusal(data__cache="disk").startswith("data.cache='disk': ultralytics' .npy files go beside image files")
    assert refusal(data__tfds__name="coco/../x").startswith("data.tfds.name='coco/../x': name a prepared TFDS")
    assert refusal(data__tfds__val="").startswith("data.tfds.val='': name the TFDS split")


# -- Through the command line.


@needs(WEIGHTS)
def test_val_on_the_tfds_copy_gives_the_mAP_of_the_data_yaml(spec, data_dir, coco8_yaml, tmp_path):
    """``yolojax val data=tfds:...`` and ``data=coco8.yaml``: the same weights, images and boxes
    give the same numbers."""
    from yolojax import cli

    common = [f"model={WEIGHTS}", "imgsz=320", "plots=False", f"project={tmp_path}"]
    assert cli.main(["val", *common, f"data=tfds:{NAME}", f"data.tfds.data_dir={data_dir}", "name=tfds"]) == 0
    assert cli.main(["val", *common, f"data={coco8_yaml}", "name=yaml"]) == 0
    ours, folders = (json.loads((tmp_path / n / "results.json").read_text()) for n in ("tfds", "yaml"))
    print({k: (ours[k], folders[k]) for k in ("mAP50", "mAP50-95", "precision", "recall", "instances")})
    assert ours["instances"] == folders["instances"] == 17
    for key in ("precision", "recall", "mAP50", "mAP50-95"):
        assert ours[key] == pytest.approx(folders[key], abs=1e-9), key
    assert ours["mAP50-95"] > 0.4


@needs(WEIGHTS)
def test_python_m_val_names_a_tfds_split_and_logs_each_line_once(data_dir, tmp_path):
    """``python -m yolojax.val --data tfds:... --tfds-data-dir ... --split 'validation[:2]'``:
    a TFDS split expression; every log line once (absl, imported with the data package, would
    add a second handler if it came first)."""
    proc = subprocess.run([sys.executable, "-m", "yolojax.val", "--weights", str(WEIGHTS), "--data", f"tfds:{NAME}",
                           "--tfds-data-dir", str(data_dir), "--split", "validation[:2]", "--imgsz", "64",
                           "--json", str(tmp_path / "r.json")], env=child_env(), capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith(("INFO", "WARNING"))]
    assert lines and len(lines) == len(set(lines)) and not any(line.startswith("INFO:") for line in lines), lines
    assert f"label scan tfds:{NAME} validation[:2]: 2 records" in proc.stderr
    assert json.loads((tmp_path / "r.json").read_text())["images"] == 2


def test_refusals_of_val_and_the_command_line(spec):
    from yolojax import cli
    from yolojax.evaluation import validate

    with pytest.raises(ValueError, match=r"^cache=disk: ultralytics' .npy files go beside image files"):
        validate("/nonexistent.pt", spec, cache="disk")  # refused before the weights are read
    assert cli.main(["train", "data=tfds:"]) == 2
    assert cli.main(["val", "model=yolov8n.pt", "data=x.yaml", "data.tfds.data_dir=/data"]) == 2


def _train_command(workdir: Path, data_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "yolojax", "train", f"model={WEIGHTS}", f"data=tfds:{NAME}",
            f"data.tfds.data_dir={data_dir}", "epochs=2", "imgsz=64", "batch=4", "workers=0", "plots=False",
            "log_every_steps=1",
            f"project={workdir.parent}", f"name={workdir.name}", "exist_ok=True", *extra]


def _step_losses(workdir: Path) -> list[float]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def one_process_run(data_dir, tmp_path_factory, train_compile_cache):
    """``yolojax train data=tfds:...``: 2 epochs of 1 step (4 images, batch 4), validated each epoch."""
    require(WEIGHTS)
    env = {**child_env(), "JAX_COMPILATION_CACHE_DIR": str(train_compile_cache)}
    workdir = tmp_path_factory.mktemp("tfds_train") / "run"
    proc = subprocess.run(_train_command(workdir, data_dir), env=env, capture_output=True, text=True, timeout=900,
                          cwd=workdir.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, proc.stderr, env


@needs(WEIGHTS)
def test_train_two_steps_then_val_through_the_command_line(one_process_run, data_dir, tmp_path):
    workdir, stderr, env = one_process_run
    assert f"data: tfds:{NAME}:1.0.0, 4 training images, 1 steps per epoch, 2 steps, 4 validation images" in stderr
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert [r["epoch"] for r in rows if "mAP50-95" in r] == [0, 1]
    config = json.loads((workdir / "config.json").read_text())
    assert config["data"]["tfds"]["name"] == NAME and config["data"]["yaml"] == ""
    assert config["resolved"]["data"] == f"tfds:{NAME}:1.0.0"
    val = subprocess.run([sys.executable, "-m", "yolojax", "val", f"model={workdir}", f"data=tfds:{NAME}",
                          f"data.tfds.data_dir={data_dir}", "imgsz=64", "plots=False", f"project={tmp_path}",
                          "name=val"], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert val.returncode == 0, val.stderr[-3000:]
    assert json.loads((tmp_path / "val" / "results.json").read_text())["instances"] == 17


@needs(WEIGHTS)
def test_a_dataset_not_prepared_is_refused_before_any_work(tmp_path):
    proc = subprocess.run(_train_command(tmp_path / "run", tmp_path / "empty"), env=child_env(), capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"yolojax train: error: tfds:{NAME}: no prepared dataset in {tmp_path / 'empty' / NAME} (datasets in "
        f"{tmp_path / 'empty'}: none); prepare it with")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@needs(WEIGHTS)
def test_two_processes_train_on_their_own_shards_of_a_tfds_split(one_process_run, data_dir, tmp_path):
    """A 2-process jax.distributed run (CPU, localhost, one device each) on the TFDS copy: each
    process reads its 2 rows of every global batch of 4 through Grain's sharding, and the
    losses are the one-process run's (BatchNorm statistics and gradients are reduced over the
    global batch), which they would not be if the processes read the same rows."""
    workdir, port = tmp_path / "two", free_port()
    env = one_process_run[2]
    procs = [subprocess.Popen(_train_command(workdir, data_dir, "val=False", "distributed.coordinator="
                                             f"127.0.0.1:{port}", "distributed.num_processes=2",
                                             f"distributed.process_id={i}"),
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
             for i in range(2)]
    try:
        errs = [p.communicate(timeout=900)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, err in zip(procs, errs):
        assert p.returncode == 0, err[-3000:]
    assert f"data: tfds:{NAME}:1.0.0, 4 training images" in errs[0]
    ours, reference = _step_losses(workdir), _step_losses(one_process_run[0])
    print("two processes", ours, "one process", reference)
    np.testing.assert_allclose(ours, reference, rtol=1e-4)
