"""Device side of ``data.augment_on = "device"``: the pixel work of a training batch, in JAX.

The host draws every random parameter and moves the boxes (:mod:`yolojax.data.augment.sample`),
then ships the long-side-resized source images and the parameters as fixed-shape arrays
(:mod:`yolojax.data.device.params`). :func:`render_batch` turns them into the uint8 images
that host mode would have built, inside the jit-compiled train step:

* each view (a mosaic of up to 4 tiles, or one image) is warped by inverse mapping with
  the arithmetic of OpenCV 5.0's ``cv2.warpAffine`` / ``cv2.warpPerspective`` (bilinear,
  border 114): float32 source coordinates from the inverted matrix, float32 interpolation
  (along x, then y), rounded. A canvas pixel reads its tile's source image, or 114 outside
  every tile or outside the canvas, so the mosaic canvas is never built;
* MixUp blends two views (``(a*r + b*(1-r))`` truncated, as ultralytics' ``MixUp``);
* HSV: OpenCV's 8-bit RGB->HSV (integer tables, hue in [0, 180)), the host-built LUT, and
  OpenCV's vectorised 8-bit HSV->RGB (float32, truncated) (ultralytics' ``RandomHSV``);
* up-down and left-right flips (as mirrored output coordinates of the warp: every step
  after the warp is per pixel).

Every function is a pure jnp function of fixed shapes: it compiles once per batch shape and
shards with the batch over the mesh's 'data' axis (the source images carry a leading group
axis, one group per 'data' shard, and a sample reads only its own group).
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from yolojax.data.device.params import (
    FLIP_KEY, HSV_KEY, INVERSE_KEY, LUT_KEY, MIX_KEY, PERSPECTIVE_KEY, SOURCES_KEY, TILES_KEY,
)
from yolojax.data.augment.letterbox import PAD_VALUE

_HSV_SHIFT = 12                      # RGB2HSV_b's fixed-point shift


def _cv_tables() -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's RGB2HSV_b division tables: round((255 << 12) / v) and round((180 << 12) / (6 d))."""
    i = np.arange(256, dtype=np.float64)
    with np.errstate(divide="ignore"):
        sdiv = np.where(i > 0, np.round((255 << _HSV_SHIFT) / i), 0)
        hdiv = np.where(i > 0, np.round((180 << _HSV_SHIFT) / (6.0 * i)), 0)
    return sdiv.astype(np.int32), hdiv.astype(np.int32)


_SDIV, _HDIV = _cv_tables()


def source_coords(inverse: jax.Array, perspective: jax.Array, flip: jax.Array,
                  out_hw: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
    """Canvas coordinates of every output pixel, in float32 as OpenCV 5.0's warps compute them:
    x = m00 * col + (m01 * row + m02) (and y alike), divided by the same form of the last
    row for a perspective warp. A flipped output pixel takes the coordinates of its mirror
    (the flips come last in ultralytics' order, after per-pixel steps only).

    Args:
      inverse: float32 (n, 3, 3) output pixels -> canvas pixels (cv2's inverted matrix).
      perspective: bool (n,): divide by the projective w (``cv2.warpPerspective``).
      flip: bool (n, 2): the output flipped up-down, left-right.
      out_hw: output (H, W).

    Returns:
      float32 (n, H, W) x and y in canvas pixels.
    """
    h, w = out_hw
    rows = jnp.arange(h, dtype=jnp.float32)[None, :, None]
    cols = jnp.arange(w, dtype=jnp.float32)[None, None, :]
    ys = jnp.where(flip[:, 0, None, None], h - 1 - rows, rows)
    xs = jnp.where(flip[:, 1, None, None], w - 1 - cols, cols)
    m = inverse.astype(jnp.float32)[:, :, :, None, None]
    x = m[:, 0, 0] * xs + (m[:, 0, 1] * ys + m[:, 0, 2])
    y = m[:, 1, 0] * xs + (m[:, 1, 1] * ys + m[:, 1, 2])
    wgt = m[:, 2, 0] * xs + (m[:, 2, 1] * ys + m[:, 2, 2])
    wgt = jnp.where(perspective[:, None, None], wgt, 1.0)
    return x / wgt, y / wgt


def canvas_pixels(sources: jax.Array, tiles: jax.Array, px: jax.Array, py: jax.Array) -> jax.Array:
    """Canvas pixels at integer (px, py): the source pixel of the tile holding it, 114 elsewhere.

    Args:
      sources: uint8 (P, S, S, 3) the group's source images, each at the top-left of its slot.
      tiles: int32 (n, T, 7) per sample and tile: slot, xa1, ya1, xa2, ya2, pad_x, pad_y
        (canvas[ya1:ya2, xa1:xa2] = image[ya1-pad_y:..., xa1-pad_x:...]; tiles do not overlap;
        empty tiles have xa2 <= xa1).
      px, py: int32 (n, H, W) canvas coordinates (any value).

    Returns:
      int32 (n, H, W, 3).
    """
    p, s = sources.shape[0], sources.shape[1]
    t = tiles[:, None, None, :, :]  # (n, 1, 1, T, 7)
    x, y = px[..., None], py[..., None]
    inside = (x >= t[..., 1]) & (x < t[..., 3]) & (y >= t[..., 2]) & (y < t[..., 4])
    hit = jnp.any(inside, axis=-1)

    def field(k: int) -> jax.Array:  # the holding tile's field (at most one tile holds a pixel)
        return jnp.sum(jnp.where(inside, t[..., k], 0), axis=-1)

    sx = jnp.clip(px - field(5), 0, s - 1)
    sy = jnp.clip(py - field(6), 0, s - 1)
    flat = (jnp.clip(field(0), 0, p - 1) * s + sy) * s + sx
    values = jnp.take(sources.reshape(p * s * s, 3), flat, axis=0).astype(jnp.int32)
    return jnp.where(hit[..., None], values, PAD_VALUE)


def warp_view(sources: jax.Array, tiles: jax.Array, inverse: jax.Array, perspective: jax.Array, flip: jax.Array,
              out_hw: tuple[int, int]) -> jax.Array:
    """One view per sample: its canvas warped bilinearly to out_hw, border 114 (the pixels of
    :func:`yolojax.data.augment.affine.warp_layers`; OpenCV's float bilinear: p00 + fx (p01 - p00) per
    row, then the rows by fy, rounded).

    Args:
      sources: uint8 (P, S, S, 3); tiles: int32 (n, T, 7) (see :func:`canvas_pixels`).
      inverse: float32 (n, 3, 3) output -> canvas pixels; perspective: bool (n,).
      flip: bool (n, 2): give the output flipped up-down, left-right.
      out_hw: output (H, W).

    Returns:
      int32 (n, H, W, 3) in [0, 255].
    """
    x, y = source_coords(inverse, perspective, flip, out_hw)
    limit = float(1 << 24)
    x0, y0 = jnp.floor(jnp.clip(x, -limit, limit)), jnp.floor(jnp.clip(y, -limit, limit))
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    # Materialised once: each of the 4 neighbours' tile tests reads them (XLA would recompute them per use).
    x0, y0, fx, fy = jax.lax.optimization_barrier((x0.astype(jnp.int32), y0.astype(jnp.int32), fx, fy))
    p00, p01, p10, p11 = jax.lax.optimization_barrier(tuple(
        canvas_pixels(sources, tiles, x0 + dx, y0 + dy).astype(jnp.float32) for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1))))
    top = p00 + fx * (p01 - p00)
    bottom = p10 + fx * (p11 - p10)
    value = top + fy * (bottom - top)
    return jnp.clip(jnp.round(value), 0, 255).astype(jnp.int32)


def rgb_to_hsv(rgb: jax.Array) -> jax.Array:
    """OpenCV's 8-bit ``COLOR_RGB2HSV`` (integer arithmetic): int32 (..., 3) RGB -> HSV, hue in [0, 180]."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = jnp.maximum(jnp.maximum(r, g), b)
    diff = v - jnp.minimum(jnp.minimum(r, g), b)
    half = 1 << (_HSV_SHIFT - 1)
    s = (diff * jnp.asarray(_SDIV)[v] + half) >> _HSV_SHIFT
    h = jnp.where(v == r, g - b, jnp.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * jnp.asarray(_HDIV)[diff] + half) >> _HSV_SHIFT
    h = jnp.where(h < 0, h + 180, h)
    return jnp.stack([h, s, v], -1)


def hsv_to_rgb(hsv: jax.Array, mirrored: jax.Array | None = None) -> jax.Array:
    """OpenCV's 8-bit ``COLOR_HSV2RGB`` as this machine's OpenCV computes it: int32 (n, H, W,
    3) HSV, hue in [0, 180) -> int32 RGB (float32 sector formula, then x 255 truncated in the
    vector blocks of each row and rounded in the scalar tail past the last whole block,
    :func:`opencv_hsv2rgb_tail`). ``mirrored``: bool (n,), images flipped left-right after
    the host would have converted them (their tail is on the left)."""
    h = hsv[..., 0].astype(jnp.float32) * jnp.float32(6.0 / 180.0)
    s = hsv[..., 1].astype(jnp.float32) * jnp.float32(1.0 / 255.0)
    v = hsv[..., 2].astype(jnp.float32) * jnp.float32(1.0 / 255.0)
    sector = jnp.trunc(h)
    f = h - sector
    sector = sector.astype(jnp.int32) % 6
    one = jnp.float32(1.0)
    tab = (v, v * (one - s), v * (one - s * f), v * (one - s * (one - f)))
    # OpenCV's sector table, per channel: which of tab each sector 0..5 takes.
    rows = {"r": (0, 2, 1, 1, 3, 0), "g": (3, 0, 0, 2, 1, 1), "b": (1, 1, 3, 0, 0, 2)}

    def channel(row: tuple[int, ...]) -> jax.Array:
        return jnp.select([sector == k for k in range(6)], [tab[i] for i in row])

    rgb = jnp.stack([channel(rows[c]) for c in "rgb"], -1) * jnp.float32(255.0)
    width = hsv.shape[-2]
    tail = jnp.arange(width) >= opencv_hsv2rgb_tail(width)  # (W,): columns of the scalar tail
    if mirrored is not None:
        tail = jnp.where(mirrored[:, None], tail[::-1], tail)[:, None, :]  # (n, 1, W)
    rgb = jnp.where(tail[..., None], jnp.round(rgb), jnp.trunc(rgb))
    return jnp.clip(rgb, 0, 255).astype(jnp.int32)


_TRUNC_ROUND_DIFFER = (153, 163, 130)  # an HSV pixel whose RGB the truncating and rounding paths give apart


@functools.cache
def opencv_hsv2rgb_tail(width: int) -> int:
    """The first column of a ``width``-pixel row that OpenCV's ``COLOR_HSV2RGB`` computes in its
    scalar path (which rounds) rather than its vector blocks (which truncate), on this CPU:
    ``width`` rounded down to OpenCV's block, 32 pixels with AVX2 and 64 with AVX-512 (found
    by converting a probe row; 0 when OpenCV has no vector path)."""
    import cv2

    pixel = np.uint8([[_TRUNC_ROUND_DIFFER]])
    scalar = cv2.cvtColor(pixel, cv2.COLOR_HSV2RGB)[0, 0]
    row = cv2.cvtColor(np.repeat(pixel, width, axis=1), cv2.COLOR_HSV2RGB)[0]
    rounded = np.flatnonzero((row == scalar).all(-1))
    return int(rounded[0]) if len(rounded) else width


def apply_hsv(rgb: jax.Array, lut: jax.Array, mirrored: jax.Array | None = None) -> jax.Array:
    """Ultralytics' ``RandomHSV`` with drawn LUTs: int32 (n, H, W, 3) RGB, uint8 (n, 3, 256) -> int32
    RGB; ``mirrored`` as for :func:`hsv_to_rgb` (the host converts before its left-right flip)."""
    n = rgb.shape[0]
    hsv = rgb_to_hsv(rgb)
    row = (jnp.arange(n, dtype=jnp.int32)[:, None, None, None] * 3 + jnp.arange(3, dtype=jnp.int32)) * 256
    mapped = jnp.take(lut.reshape(n * 3 * 256).astype(jnp.int32), row + hsv, axis=0)
    mapped = jax.lax.optimization_barrier(mapped)  # gathered once, not per use below
    return hsv_to_rgb(mapped, mirrored)


def render_group(sources: jax.Array, tiles: jax.Array, inverse: jax.Array, perspective: jax.Array,
                 mix: jax.Array, hsv: jax.Array, lut: jax.Array, flip: jax.Array,
                 out_hw: tuple[int, int]) -> jax.Array:
    """The pixels of n samples reading one group's sources (the order of
    :func:`yolojax.data.augment.sample.render_sample`).

    Args:
      sources: uint8 (P, S, S, 3) the group's source images.
      tiles: int32 (n, V, T, 7); inverse: float32 (n, V, 3, 3); perspective: bool (n, V).
      mix: float32 (n,) MixUp's weight of view 0 (1: no MixUp); hsv: bool (n,) apply the LUT;
      lut: uint8 (n, 3, 256); flip: bool (n, 2) up-down, left-right.
      out_hw: (H, W).

    Returns:
      uint8 (n, H, W, 3) RGB.
    """
    image = warp_view(sources, tiles[:, 0], inverse[:, 0], perspective[:, 0], flip, out_hw)
    r = mix[:, None, None, None]
    for v in range(1, tiles.shape[1]):  # r = 1 leaves the image as it is (x * 1 + y * 0, truncated)
        other = warp_view(sources, tiles[:, v], inverse[:, v], perspective[:, v], flip, out_hw)
        image = (image.astype(jnp.float32) * r + other.astype(jnp.float32) * (1 - r)).astype(jnp.int32)
    image = jax.lax.optimization_barrier(image)  # read twice below: computed once, not fused into both
    image = jnp.where(hsv[:, None, None, None], apply_hsv(image, lut, flip[:, 1]), image)
    return image.astype(jnp.uint8)


def render_batch(batch: Mapping[str, jax.Array]) -> jax.Array:
    """uint8 (B, S, S, 3) training images from a device-mode batch (:mod:`yolojax.data.device.params`).

    The B samples are split into G equal groups (G = the sources' leading axis); sample k
    reads the sources of group k // (B / G).

    Raises:
      ValueError: B not divisible by G.
    """
    sources = batch[SOURCES_KEY]
    groups, s = sources.shape[0], sources.shape[2]
    tiles = batch[TILES_KEY]
    b = tiles.shape[0]
    if b % groups:
        raise ValueError(f"batch of {b} samples does not split into {groups} source groups")

    def grouped(x: jax.Array) -> jax.Array:
        return x.reshape(groups, b // groups, *x.shape[1:])

    args = (grouped(tiles), grouped(batch[INVERSE_KEY]), grouped(batch[PERSPECTIVE_KEY]), grouped(batch[MIX_KEY]),
            grouped(batch[HSV_KEY]), grouped(batch[LUT_KEY]), grouped(batch[FLIP_KEY]))
    if groups == 1:  # one group: plain gathers (XLA's CPU backend runs batched gathers slowly)
        images = render_group(sources[0], *(a[0] for a in args), (s, s))
    else:
        images = jax.vmap(functools.partial(render_group, out_hw=(s, s)))(sources, *args)
    return images.reshape(b, s, s, 3)


def batch_images(batch: Mapping[str, Any]) -> jax.Array:
    """The batch's uint8 (B, H, W, 3) images: ``batch['image']`` (host mode), else rendered by
    :func:`render_batch` from a device-mode batch."""
    if "image" in batch:
        return batch["image"]
    return render_batch(batch)
