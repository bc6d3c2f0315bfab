"""Where detection samples come from: ultralytics data.yaml splits (YOLO label files) with
their one-time label scan, COCO JSON files and their checks, TFDS, ultralytics' selection
options (fraction, classes, single_cls) and a synthetic shapes dataset."""
