"""YOLOv8 building blocks as Flax Linen modules (NHWC).

Submodule names mirror ultralytics' PyTorch attribute names (``conv``, ``bn``, ``cv1``,
``m_0`` ...) so that a PyTorch state-dict key maps onto a Flax path by joining numeric
components to the name before them (see :mod:`yolojax.convert`).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from yolojax.ops.anchors import dist2bbox, make_anchors
from yolojax.ops.conv import conv2d, depthwise_conv2d
from yolojax.ops.precision import compute_dtype

# torch.nn.Conv2d's default init: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), +).
torch_conv_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

BN_EPSILON = 1e-3
BN_MOMENTUM = 0.97  # Flax convention: running = momentum * running + (1 - momentum) * batch.


class BatchNorm(nn.Module):
    """BatchNorm over N, H, W of an NHWC tensor, with PyTorch's running-variance rule.

    Training normalises with the biased batch variance and updates the running variance
    with the unbiased one (as torch.nn.BatchNorm2d does); statistics are reduced in fp32
    (fp64 for a float64 model).
    Under ``jit`` with a batch sharded over devices the mean is global automatically; under
    ``pmap``/``shard_map`` pass ``axis_name`` to average over devices too.

    ``groups`` > 1 normalises each of ``groups`` equal slices of the batch rows with its own
    statistics (ultralytics' DDP, where each GPU's BatchNorm sees only its rows): under
    ``jit`` with the batch sharded ``groups`` ways over 'data', each device's rows, and no
    collective on the forward pass. The running statistics then move by the groups' mean
    moments (the mean, and the mean of the unbiased variances), where ultralytics' DDP keeps
    rank 0's (``broadcast_buffers``); with one group this is the plain rule.

    Variables: params ``scale``, ``bias`` (C,); batch_stats ``mean``, ``var`` (C,).
    """

    epsilon: float = BN_EPSILON
    momentum: float = BN_MOMENTUM
    axis_name: str | None = None
    groups: int = 1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
        acc = compute_dtype(self.param_dtype)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), acc)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), acc)

        g = self.groups if train else 1
        if x.shape[0] % g:
            raise ValueError(f"BatchNorm groups={g} must divide the batch of {x.shape[0]}")
        # (G, B/G, H, W, C) with G > 1; one group reduces over (B, H, W) of x itself.
        rows, axes = (x.reshape(g, x.shape[0] // g, *x.shape[1:]), (1, 2, 3)) if g > 1 else (x, (0, 1, 2))
        if train:
            x32 = rows.astype(acc)
            mean = jnp.mean(x32, axis=axes)  # (G, C) or (C,)
            mean_sq = jnp.mean(jnp.square(x32), axis=axes)
            count = int(np.prod([rows.shape[a] for a in axes]))
            if self.axis_name is not None:
                mean, mean_sq = jax.lax.pmean((mean, mean_sq), self.axis_name)
                count = count * jax.lax.psum(1, self.axis_name)
            var = jnp.maximum(mean_sq - jnp.square(mean), 0.0)
            if not self.is_initializing():
                unbiased = var * (count / max(count - 1, 1))
                m = self.momentum
                group_mean = (lambda v: jnp.mean(v, axis=0)) if g > 1 else (lambda v: v)
                ra_mean.value = m * ra_mean.value + (1.0 - m) * group_mean(mean)
                ra_var.value = m * ra_var.value + (1.0 - m) * group_mean(unbiased)
        else:
            mean, var = ra_mean.value, ra_var.value

        mul = scale.astype(acc) * jax.lax.rsqrt(var + self.epsilon)
        shift = bias.astype(acc) - mean * mul
        if g > 1:
            mul, shift = mul[:, None, None, None], shift[:, None, None, None]
        # In the statistics' precision: the gradients of scale and bias are then sums over the
        # batch in float32 (also across devices), not in a bfloat16 model's compute dtype.
        return (rows.astype(acc) * mul + shift).reshape(x.shape).astype(self.dtype)


class Conv2d(nn.Module):
    """torch.nn.Conv2d with padding k // 2 (NHWC): params ``kernel`` (k, k, Cin, Cout) and,
    with ``use_bias``, ``bias`` (Cout,), initialised as torch does. Computed by
    :func:`yolojax.ops.conv.conv2d` (XLA's convolution, with a faster backward on CPU).

    ``depthwise``: torch's ``groups`` = Cin = Cout (ultralytics' ``DWConv`` and the attention's
    positional conv): kernel (k, k, 1, Cout), :func:`yolojax.ops.conv.depthwise_conv2d`.
    """

    features: int
    kernel_size: int = 1
    stride: int = 1
    use_bias: bool = False
    depthwise: bool = False
    bias_init: Any = nn.initializers.zeros
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        if self.depthwise and x.shape[-1] != self.features:
            raise ValueError(f"a depthwise Conv2d maps C channels to C, got {x.shape[-1]} -> {self.features}")
        c_in = 1 if self.depthwise else x.shape[-1]
        kernel = self.param("kernel", torch_conv_init, (k, k, c_in, self.features), self.param_dtype)
        # The kernel is cast inside conv2d, whose gradient for it is summed in float32.
        convolve = depthwise_conv2d if self.depthwise else conv2d
        y = convolve(x.astype(self.dtype), kernel, self.stride)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            acc = compute_dtype(self.param_dtype)  # as BatchNorm: the bias gradient summed in float32
            y = (y.astype(acc) + bias.astype(acc)).astype(self.dtype)
        return y


class Conv(nn.Module):
    """Conv2d (no bias, 'same' padding k // 2) + BatchNorm + SiLU; ultralytics ``Conv``.

    ``act=False``: no SiLU (ultralytics' ``act=False``, an ``Identity``). ``depthwise``: one
    filter per channel (ultralytics' ``DWConv`` with c1 == c2, or ``g=c``).
    """

    features: int
    kernel_size: int = 1
    stride: int = 1
    act: bool = True
    depthwise: bool = False
    bn_axis_name: str | None = None
    bn_groups: int = 1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = Conv2d(self.features, self.kernel_size, self.stride, depthwise=self.depthwise, dtype=self.dtype,
                   param_dtype=self.param_dtype, name="conv")(x)
        x = BatchNorm(axis_name=self.bn_axis_name, groups=self.bn_groups, dtype=self.dtype,
                      param_dtype=self.param_dtype, name="bn")(x, train)
        return nn.silu(x) if self.act else x


class Bottleneck(nn.Module):
    """Two 3x3 Convs with an optional residual (when ``shortcut`` and c_in == c_out).

    ``hidden``: the first Conv's width (a pruned model's); None: ``features * expansion``.
    """

    features: int
    shortcut: bool = True
    expansion: float = 1.0
    hidden: int | None = None
    bn_axis_name: str | None = None
    bn_groups: int = 1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        kw = dict(bn_axis_name=self.bn_axis_name, bn_groups=self.bn_groups, dtype=self.dtype, param_dtype=self.param_dtype)
        hidden = self.hidden or int(self.features * self.expansion)
        y = Conv(hidden, 3, name="cv1", **kw)(x, train)
        y = Conv(self.features, 3, name="cv2", **kw)(y, train)
        if self.shortcut and x.shape[-1] == self.features:
            y = x + y
        return y


class C2f(nn.Module):
    """CSP bottleneck with 2 convolutions: split, ``n`` chained Bottlenecks, concat, fuse.

    ``widths`` ((name, channels) pairs, a pruned model's; absent names keep the defaults):
    "cv1" (its output width, default ``2 * c`` with ``c = features * expansion``), "split"
    (how many of cv1's outputs form the first part, default ``c``; the rest feed the
    Bottlenecks), "m_<i>/cv1" and "m_<i>/cv2" (Bottleneck i's widths, default ``c``).
    """

    features: int
    n: int = 1
    shortcut: bool = False
    expansion: float = 0.5
    bn_axis_name: str | None = None
    bn_groups: int = 1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    widths: tuple[tuple[str, int], ...] = ()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        kw = dict(bn_axis_name=self.bn_axis_name, bn_groups=self.bn_groups, dtype=self.dtype, param_dtype=self.param_dtype)
        c = int(self.features * self.expansion)
        w = dict(self.widths)
        split = w.get("split", c)
        y = Conv(w.get("cv1", 2 * c), 1, name="cv1", **kw)(x, train)
        ys = [y[..., :split], y[..., split:]]
        for i in range(self.n):
            ys.append(Bottleneck(w.get(f"m_{i}/cv2", c), self.shortcut, 1.0, hidden=w.get(f"m_{i}/cv1"),
                                 name=f"m_{i}", **kw)(ys[-1], train))
        return Conv(self.features, 1, name="cv2", **kw)(jnp.concatenate(ys, axis=-1), train)


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): three chained 5x5 stride-1 max pools, concat, fuse.

    ``hidden``: cv1's width (a pruned model's); None: half the input width.
    """

    features: int
    pool_size: int = 5
    bn_axis_name: str | None = None
    bn_groups: int = 1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    hidden: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        kw = dict(bn_axis_name=self.bn_axis_name, bn_groups=self.bn_groups, dtype=self.dtype, param_dtype=self.param_dtype)
        k, p = self.pool_size, self.pool_size // 2
        ys = [Conv(self.hidden or x.shape[-1] // 2, 1, name="cv1", **kw)(x, train)]
        for _ in range(3):
            # An explicit -inf border and a VALID pool: the same numbers as padding=((p, p), (p, p))
            # (max_pool pads with -inf), in the form jax2onnx converts to ONNX Pad + MaxPool.
            padded = jnp.pad(ys[-1], ((0, 0), (p, p), (p, p), (0, 0)), constant_values=-jnp.inf)
            ys.append(nn.max_pool(padded, window_shape=(k, k), strides=(1, 1), padding="VALID"))
        return Conv(self.features, 1, name="cv2", **kw)(jnp.concatenate(ys, axis=-1), train)


def upsample_nearest_2x(x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, 2H, 2W, C), nearest neighbour (torch ``Upsample(scale=2)``)."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def dfl_expectation(box_logits: jax.Array, bins: jax.Array) -> jax.Array:
    """Distribution focal loss decode: (..., 4 * reg_max) logits -> (..., 4) distances.

    Each side's distance (in grid units) is the expectation of ``bins`` (reg_max,), normally
    0..reg_max-1, under the softmax of its reg_max logits, computed in fp32 (or fp64).
    """
    reg_max = bins.shape[0]
    logits = box_logits.astype(compute_dtype(box_logits.dtype)).reshape(*box_logits.shape[:-1], 4, reg_max)
    return jax.nn.softmax(logits, axis=-1) @ bins


class _DFLKernel(nn.Module):
    reg_max: int

    @nn.compact
    def __call__(self) -> jax.Array:
        init = lambda _, shape: jnp.arange(self.reg_max, dtype=jnp.float32).reshape(shape)
        return self.param("kernel", init, (1, 1, self.reg_max, 1))


class DFL(nn.Module):
    """The frozen DFL projection: returns its (reg_max,) bins with gradients stopped.

    Stored as ``conv/kernel`` (1, 1, reg_max, 1) to mirror ultralytics' ``dfl.conv.weight``.
    """

    reg_max: int = 16

    @nn.compact
    def __call__(self) -> jax.Array:
        return jax.lax.stop_gradient(_DFLKernel(self.reg_max, name="conv")().reshape(-1))


class Detect(nn.Module):
    """Decoupled YOLOv8 head: per level a box branch (cv2) and a class branch (cv3).

    Train mode returns the raw per-level outputs (B, h, w, 4 * reg_max + num_classes);
    eval mode decodes them to (B, N, 4 + num_classes): xywh in input pixels, then sigmoid
    class scores. The DFL projection (0..reg_max-1) is a frozen parameter ``dfl/conv/kernel``
    (1, 1, reg_max, 1), as in ultralytics, where it counts as a parameter that never trains.
    ``cls_width``: hidden width of the class branch; None: ultralytics' ``max(ch0, min(nc, 100))``
    (a model fine-tuned by ultralytics to another class count keeps its source's width).
    ``widths``: (name, channels) pairs of a pruned head, e.g. ("cv2_0_1", 40): the hidden convs'
    widths (``cv2_<i>_<0|1>``, ``cv3_<i>_<0|1>``); absent names keep the widths above.
    ``legacy=False`` (YOLO11 and later; ultralytics' ``Detect.legacy``): the class branch is two
    depthwise-separable steps, a 3x3 depthwise Conv then a 1x1 Conv (``cv3_<i>_<0|1>_<0|1>``),
    before the last 1x1 Conv2d.
    """

    num_classes: int
    reg_max: int = 16
    strides: tuple[int, ...] = (8, 16, 32)
    bn_axis_name: str | None = None
    bn_groups: int = 1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    cls_width: int | None = None
    widths: tuple[tuple[str, int], ...] = ()
    legacy: bool = True

    @nn.compact
    def __call__(self, feats: Sequence[jax.Array], train: bool):
        kw = dict(bn_axis_name=self.bn_axis_name, bn_groups=self.bn_groups, dtype=self.dtype, param_dtype=self.param_dtype)
        ch0 = feats[0].shape[-1]
        c2 = max(16, ch0 // 4, self.reg_max * 4)
        c3 = self.cls_width or max(ch0, min(self.num_classes, 100))
        w = dict(self.widths)
        outs = []
        for i, (x, s) in enumerate(zip(feats, self.strides)):
            box = Conv(w.get(f"cv2_{i}_0", c2), 3, name=f"cv2_{i}_0", **kw)(x, train)
            box = Conv(w.get(f"cv2_{i}_1", c2), 3, name=f"cv2_{i}_1", **kw)(box, train)
            box = Conv2d(
                4 * self.reg_max, use_bias=True, bias_init=nn.initializers.constant(2.0),
                dtype=self.dtype, param_dtype=self.param_dtype, name=f"cv2_{i}_2",
            )(box)
            cls = self._class_branch(x, i, w.get(f"cv3_{i}_0", c3), w.get(f"cv3_{i}_1", c3), train, kw)
            # ultralytics' bias_init: box bias 2.0; class prior of 5 objects per 640x640 image.
            cls_prior = jnp.log(5.0 / self.num_classes / (640.0 / s) ** 2)
            cls = Conv2d(
                self.num_classes, use_bias=True, bias_init=nn.initializers.constant(cls_prior),
                dtype=self.dtype, param_dtype=self.param_dtype, name=f"cv3_{i}_2",
            )(cls)
            outs.append(jnp.concatenate([box, cls], axis=-1))
        dfl_bins = DFL(self.reg_max, name="dfl")()
        if train:
            return outs
        return self.decode(outs, dfl_bins)

    def _class_branch(self, x: jax.Array, level: int, width0: int, width1: int, train: bool, kw: dict) -> jax.Array:
        """The class branch's two hidden steps at ``level``: 3x3 Convs (legacy) or, for YOLO11,
        each a 3x3 depthwise Conv then a 1x1 Conv."""
        if self.legacy:
            x = Conv(width0, 3, name=f"cv3_{level}_0", **kw)(x, train)
            return Conv(width1, 3, name=f"cv3_{level}_1", **kw)(x, train)
        for step, width in enumerate((width0, width1)):
            x = Conv(x.shape[-1], 3, depthwise=True, name=f"cv3_{level}_{step}_0", **kw)(x, train)
            x = Conv(width, 1, name=f"cv3_{level}_{step}_1", **kw)(x, train)
        return x

    def decode(self, outs: Sequence[jax.Array], dfl_bins: jax.Array) -> jax.Array:
        """Raw per-level head outputs -> (B, N, 4 + num_classes) fp32 (fp64) predictions.

        ``dfl_bins``: (reg_max,) values the DFL softmax takes the expectation of.
        """
        b = outs[0].shape[0]
        flat = jnp.concatenate(
            [o.reshape(b, -1, o.shape[-1]).astype(compute_dtype(o.dtype)) for o in outs], axis=1
        )
        points, stride = make_anchors([o.shape[1:3] for o in outs], self.strides)
        dist = dfl_expectation(flat[..., : 4 * self.reg_max], dfl_bins.astype(flat.dtype))
        xywh = dist2bbox(dist, points, xywh=True) * stride
        scores = jax.nn.sigmoid(flat[..., 4 * self.reg_max :])
        return jnp.concatenate([xywh, scores], axis=-1)
