"""Input pipeline: sources (YOLO data.yaml, COCO JSON, TFDS), ultralytics' augmentations, Grain batches.

Typical use::

    from yolojax.data import AugmentConfig, make_train_iterator, make_val_iterator
    train = make_train_iterator("coco8.yaml", imgsz=640, batch_size=16, epochs=100, seed=0,
                                aug=AugmentConfig(), workers=8,  # max_boxes: from the label scan
                                process_index=jax.process_index(), process_count=jax.process_count())
    batch = next(train.iterator)      # image, boxes, classes, mask (see DESIGN.md)
    state = train.iterator.get_state()
    val = make_val_iterator("coco8.yaml", imgsz=640, batch_size=32, rect=True)

See docs/data.md.
"""

from yolojax.data.augment.config import AugmentConfig
from yolojax.data.sources.coco_json import coco91_to_coco80, coco_json_source
from yolojax.data.sources.data_yaml import DataSpec, image_to_label_paths, list_image_files, load_data_yaml
from yolojax.data.sources.label_scan import ScanReport, ScanResult, scan_yolo_split
from yolojax.data.sources.label_table import LabelTable
from yolojax.data.augment.letterbox import Letterbox, apply_letterbox, letterbox_params, rect_batch_shapes
from yolojax.data.faults import DataWorkerError, UnreadableSplitError
from yolojax.data.pipeline import Batches, make_train_iterator, make_val_iterator
from yolojax.data.schedule import TrainSchedule, ValSchedule
from yolojax.data.sources.yolo import DetectionSource, FileDetectionSource, yolo_source
from yolojax.data.sources.tfds import TfdsDataset, TfdsDetectionSource, TfdsSpec, tfds_source

__all__ = [
    "AugmentConfig",
    "Batches",
    "DataSpec",
    "DataWorkerError",
    "DetectionSource",
    "FileDetectionSource",
    "LabelTable",
    "Letterbox",
    "ScanReport",
    "ScanResult",
    "TfdsDataset",
    "TfdsDetectionSource",
    "TfdsSpec",
    "TrainSchedule",
    "UnreadableSplitError",
    "ValSchedule",
    "apply_letterbox",
    "coco91_to_coco80",
    "coco_json_source",
    "image_to_label_paths",
    "letterbox_params",
    "list_image_files",
    "load_data_yaml",
    "make_train_iterator",
    "make_val_iterator",
    "rect_batch_shapes",
    "scan_yolo_split",
    "tfds_source",
    "yolo_source",
]
