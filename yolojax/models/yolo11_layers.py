"""YOLO11's building blocks as Flax Linen modules (NHWC): C3k2 (with Bottlenecks or C3k),
C2PSA and its position-sensitive attention.

Submodule names mirror ultralytics 8.4.190's attribute names (nn/modules/block.py), so that a
torch state-dict key maps onto a Flax path by joining numeric components to the name before
them (``model.10.m.0.attn.qkv.conv.weight`` -> ``model_10/m_0/attn/qkv/conv/kernel``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from yolojax.models.layers import Bottleneck, Conv
from yolojax.ops.precision import compute_dtype


class _Block(nn.Module):
    """The BatchNorm and dtype fields every block passes to its Convs."""

    bn_axis_name: str | None = None
    bn_groups: int = 1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def kw(self) -> dict[str, Any]:
        return dict(bn_axis_name=self.bn_axis_name, bn_groups=self.bn_groups, dtype=self.dtype,
                    param_dtype=self.param_dtype)


class C3k(_Block):
    """ultralytics' ``C3k(c, c, n=2, shortcut)``: a C3 (two 1x1 Convs to ``features / 2``
    channels, ``n`` 3x3 Bottlenecks on the first, concat, 1x1 fuse) with 3x3 kernels."""

    features: int = 0
    n: int = 2
    shortcut: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        hidden = int(self.features * 0.5)
        y = Conv(hidden, 1, name="cv1", **self.kw())(x, train)
        for i in range(self.n):
            y = Bottleneck(hidden, self.shortcut, 1.0, name=f"m_{i}", **self.kw())(y, train)
        skip = Conv(hidden, 1, name="cv2", **self.kw())(x, train)
        return Conv(self.features, 1, name="cv3", **self.kw())(jnp.concatenate([y, skip], -1), train)


class C3k2(_Block):
    """ultralytics' ``C3k2(c1, c2, n, c3k, e, shortcut=True)``: a C2f (1x1 Conv to 2c, split,
    ``n`` chained blocks on the second half, concat all, 1x1 fuse; ``c = features * e``) whose
    blocks are :class:`C3k` (``c3k``) or Bottlenecks of hidden width c / 2."""

    features: int = 0
    n: int = 1
    c3k: bool = False
    expansion: float = 0.5
    shortcut: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c = int(self.features * self.expansion)
        y = Conv(2 * c, 1, name="cv1", **self.kw())(x, train)
        ys = [y[..., :c], y[..., c:]]
        for i in range(self.n):
            block = (C3k(features=c, n=2, shortcut=self.shortcut, name=f"m_{i}", **self.kw()) if self.c3k
                     else Bottleneck(c, self.shortcut, 0.5, name=f"m_{i}", **self.kw()))
            ys.append(block(ys[-1], train))
        return Conv(self.features, 1, name="cv2", **self.kw())(jnp.concatenate(ys, axis=-1), train)


class Attention(_Block):
    """ultralytics' ``Attention(dim, num_heads, attn_ratio=0.5)`` over the H*W positions.

    ``qkv`` (1x1 Conv, no SiLU) gives per head ``key_dim`` query, ``key_dim`` key and
    ``head_dim`` value channels (in that order within each head's block of channels); the
    softmax of scaled query-key products (key_dim ** -0.5, in float32) weights the values, the
    values' 3x3 depthwise Conv ``pe`` is added, and ``proj`` (1x1 Conv) mixes the heads.
    """

    num_heads: int = 1
    attn_ratio: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        b, h, w, dim = x.shape
        head_dim = dim // self.num_heads
        key_dim = int(head_dim * self.attn_ratio)
        qkv = Conv(dim + 2 * key_dim * self.num_heads, 1, act=False, name="qkv", **self.kw())(x, train)
        qkv = qkv.reshape(b, h * w, self.num_heads, 2 * key_dim + head_dim)
        q, k, v = qkv[..., :key_dim], qkv[..., key_dim:2 * key_dim], qkv[..., 2 * key_dim:]
        acc = compute_dtype(self.param_dtype)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(acc) * key_dim**-0.5, k.astype(acc))
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        y = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, h, w, dim)
        y = y + Conv(dim, 3, act=False, depthwise=True, name="pe", **self.kw())(v.reshape(b, h, w, dim), train)
        return Conv(dim, 1, act=False, name="proj", **self.kw())(y, train)


class PSABlock(_Block):
    """ultralytics' ``PSABlock(c, attn_ratio=0.5, num_heads)``: x + Attention(x), then
    x + FFN(x) with FFN a 1x1 Conv to 2c and a 1x1 Conv (no SiLU) back to c."""

    num_heads: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c = x.shape[-1]
        x = x + Attention(num_heads=self.num_heads, attn_ratio=0.5, name="attn", **self.kw())(x, train)
        y = Conv(2 * c, 1, name="ffn_0", **self.kw())(x, train)
        return x + Conv(c, 1, act=False, name="ffn_1", **self.kw())(y, train)


class C2PSA(_Block):
    """ultralytics' ``C2PSA(c1, c1, n, e=0.5)``: a 1x1 Conv to 2c (``c = features / 2``), the
    second half through ``n`` :class:`PSABlock` (max(c // 64, 1) heads), concat, 1x1 fuse."""

    features: int = 0
    n: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c = int(self.features * 0.5)
        y = Conv(2 * c, 1, name="cv1", **self.kw())(x, train)
        a, b = y[..., :c], y[..., c:]
        for i in range(self.n):
            b = PSABlock(num_heads=max(c // 64, 1), name=f"m_{i}", **self.kw())(b, train)
        return Conv(self.features, 1, name="cv2", **self.kw())(jnp.concatenate([a, b], axis=-1), train)
