"""Host side of ``data.augment_on = "device"``: drawn sample parameters as fixed-shape arrays.

A device-mode batch replaces host mode's ``image`` with (b = local batch, G = groups, one per
'data' shard this process feeds, P = source slots per group, V = views per sample, S = imgsz):

```
aug_sources     uint8   (G, P, S, S, 3)  the long-side-resized source images, each at the
                                          top-left of its slot (zeros elsewhere, never read)
aug_tiles       int32   (b, V, 4, 7)     per view and tile: slot in the sample's group, xa1,
                                          ya1, xa2, ya2, pad_x, pad_y (mosaic.Tile); unused
                                          tiles (and a view without MixUp) are empty
aug_inverse     float32 (b, V, 3, 3)     output pixels -> canvas pixels (the inverted warp)
aug_perspective bool    (b, V)           warp like cv2.warpPerspective (else warpAffine)
aug_mix         float32 (b,)             MixUp's weight of view 0 (1.0: no MixUp)
aug_hsv         bool    (b,)             apply the HSV LUT
aug_lut         uint8   (b, 3, 256)      ultralytics' hue / saturation / value LUT of the draw
aug_flip        bool    (b, 2)           flip up-down, left-right
```

Sample k belongs to group k // (b / G) and its slots index that group's sources, so the
sources shard over 'data' with the samples. Each distinct source image of a group is
shipped once: with ``mosaic_pool='batch'`` (partners from the same local batch) P is at
most the local batch, so on one group the transfer is S*S*3 bytes per image, as in host
mode; otherwise P = (b / G) * 4 (mosaic) * 2 (MixUp) at most. Shapes depend only on the
run's settings, so the train step compiles once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from grain.multiprocessing import SharedMemoryArray

from yolojax.data.memory import shm_pool
from yolojax.data.augment.affine import inverse_affine
from yolojax.data.augment.config import AugmentConfig
from yolojax.data.augment.color import hsv_lut
from yolojax.data.augment.sample import SampleParams

SOURCES_KEY = "aug_sources"
TILES_KEY = "aug_tiles"
INVERSE_KEY = "aug_inverse"
PERSPECTIVE_KEY = "aug_perspective"
MIX_KEY = "aug_mix"
HSV_KEY = "aug_hsv"
LUT_KEY = "aug_lut"
FLIP_KEY = "aug_flip"
DEVICE_KEYS = (SOURCES_KEY, TILES_KEY, INVERSE_KEY, PERSPECTIVE_KEY, MIX_KEY, HSV_KEY, LUT_KEY, FLIP_KEY)

MAX_TILES = 4
_IDENTITY_LUT = np.tile(np.arange(256, dtype=np.uint8), (3, 1))


def views_per_sample(aug: AugmentConfig) -> int:
    """V: 2 when MixUp may happen (aug.mixup > 0), else 1."""
    return 2 if aug.mixup > 0 else 1


def source_slots(local_batch: int, groups: int, aug: AugmentConfig, mosaic_pool: str) -> int:
    """P: the most distinct source images one group's samples can read.

    Each sample reads up to 4 (mosaic) x 2 (MixUp) images; with ``mosaic_pool='batch'`` every
    one of them is an image of the local batch, so never more than the local batch.

    Raises:
      ValueError: `local_batch` not divisible by `groups`.
    """
    if groups < 1 or local_batch % groups:
        raise ValueError(f"local batch {local_batch} does not split into {groups} device groups")
    per_sample = (MAX_TILES if aug.mosaic > 0 else 1) * views_per_sample(aug)
    bound = (local_batch // groups) * per_sample
    return min(bound, local_batch) if mosaic_pool == "batch" else bound


def canvas_inverse(matrix: np.ndarray, perspective: bool) -> np.ndarray:
    """float32 (3, 3) output -> canvas pixels: OpenCV's inversion of the warp `matrix` (float
    (3, 3) canvas -> output): ``invertAffineTransform`` of its top rows, or the 3x3 inverse in
    float64 for a perspective warp."""
    if perspective:
        return np.linalg.inv(np.asarray(matrix, np.float64)).astype(np.float32)
    out = np.eye(3, dtype=np.float64)
    out[:2] = inverse_affine(matrix)
    return out.astype(np.float32)


def empty_device_batch(b: int, groups: int, slots: int, views: int, imgsz: int,
                       shared_memory: bool = False) -> dict[str, np.ndarray]:
    """Zeroed arrays of a device-mode batch (layout in the module docstring); the sources in
    shared memory when built in a worker process (:func:`yolojax.data.batching.new_image_batch`)."""
    shape = (groups, slots, imgsz, imgsz, 3)
    if shared_memory and shm_pool.available():
        sources = shm_pool.pooled_array(shape, np.uint8, zeroed=True)  # a reused block holds an earlier batch
    else:
        sources = SharedMemoryArray(shape, np.uint8) if shared_memory else np.zeros(shape, np.uint8)
    return {
        SOURCES_KEY: sources,
        TILES_KEY: np.zeros((b, views, MAX_TILES, 7), np.int32),
        INVERSE_KEY: np.tile(np.eye(3, dtype=np.float32), (b, views, 1, 1)),
        PERSPECTIVE_KEY: np.zeros((b, views), bool),
        MIX_KEY: np.ones((b,), np.float32),
        HSV_KEY: np.zeros((b,), bool),
        LUT_KEY: np.tile(_IDENTITY_LUT, (b, 1, 1)),
        FLIP_KEY: np.zeros((b, 2), bool),
    }


def pack_sample(out: dict[str, np.ndarray], k: int, params: SampleParams, slot_of: Callable[[int], int]) -> None:
    """Write sample `k`'s parameters into a device batch from :func:`empty_device_batch`.

    Args:
      out: the batch arrays.
      k: the sample's row.
      params: from :func:`yolojax.data.augment.sample.draw_sample`.
      slot_of: source index -> its slot in the sample's group (placing the image there).

    Raises:
      ValueError: more views or tiles than the batch has room for.
    """
    views = out[TILES_KEY].shape[1]
    if len(params.views) > views:
        raise ValueError(f"a sample with {len(params.views)} views in a batch with room for {views}")
    for v, view in enumerate(params.views):
        if len(view.tiles) > MAX_TILES:
            raise ValueError(f"a view of {len(view.tiles)} tiles (at most {MAX_TILES})")
        for t, (index, tile) in enumerate(zip(view.indices, view.tiles)):
            out[TILES_KEY][k, v, t] = (slot_of(index), tile.xa1, tile.ya1, tile.xa2, tile.ya2, tile.pad_x, tile.pad_y)
        out[INVERSE_KEY][k, v] = canvas_inverse(view.matrix, view.perspective)
        out[PERSPECTIVE_KEY][k, v] = view.perspective
    out[MIX_KEY][k] = params.mix_ratio
    if params.hsv_gains is not None:
        out[HSV_KEY][k] = True
        out[LUT_KEY][k] = hsv_lut(params.hsv_gains)[0].T
    out[FLIP_KEY][k] = (params.flip_ud, params.flip_lr)


def pack_batch(params: Sequence[SampleParams], image_of: Callable[[int], np.ndarray], groups: int, slots: int,
               views: int, imgsz: int, shared_memory: bool = False) -> dict[str, np.ndarray]:
    """A device-mode batch (module docstring) from the samples' drawn parameters.

    Args:
      params: per sample, from :func:`yolojax.data.augment.sample.draw_sample` (b of them).
      image_of: source index -> uint8 (h, w, 3) RGB at the size in the parameters (h, w <= imgsz).
      groups: G, device groups (b divisible by G).
      slots: P, source slots per group (:func:`source_slots`).
      views: V (:func:`views_per_sample`).
      imgsz: S.
      shared_memory: put the sources in Grain's shared memory.

    Raises:
      ValueError: b not divisible by G; a group reading more than P images; an image larger
        than S or of another size than its parameters say.
    """
    b = len(params)
    if groups < 1 or b % groups:
        raise ValueError(f"batch of {b} samples does not split into {groups} device groups")
    out = empty_device_batch(b, groups, slots, views, imgsz, shared_memory)
    sources, per_group = out[SOURCES_KEY], b // groups
    for g in range(groups):
        slot_by_index: dict[int, int] = {}

        def slot_of(index: int) -> int:
            if index not in slot_by_index:
                slot = len(slot_by_index)
                if slot >= slots:
                    raise ValueError(f"group {g} reads more than its {slots} source slots")
                image = image_of(index)
                h, w = image.shape[:2]
                if h > imgsz or w > imgsz:
                    raise ValueError(f"source image {index} of shape {image.shape[:2]} exceeds imgsz {imgsz}")
                sources[g, slot, :h, :w] = image
                slot_by_index[index] = slot
            return slot_by_index[index]

        for k in range(g * per_group, (g + 1) * per_group):
            for view in params[k].views:
                for index, size in zip(view.indices, view.sizes_hw):
                    if tuple(image_of(index).shape[:2]) != tuple(size):
                        raise ValueError(f"image {index} of shape {image_of(index).shape[:2]} where the parameters "
                                         f"were drawn for {size}")
            pack_sample(out, k, params[k], slot_of)
    return out


def transfer_bytes(b: int, groups: int, slots: int, views: int, imgsz: int) -> int:
    """Bytes of a device-mode batch (every array above), for the docs and the benchmark."""
    per_sample = views * MAX_TILES * 7 * 4 + views * 9 * 4 + views + 4 + 1 + 3 * 256 + 2
    return groups * slots * imgsz * imgsz * 3 + b * per_sample
