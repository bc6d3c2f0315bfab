"""ultralytics' training augmentations on the host (numpy / OpenCV): mosaic, random
perspective, HSV, flips, MixUp, CutMix, multi-scale, and the letterbox of validation and
prediction; :mod:`.sample` composes one training sample from them."""
