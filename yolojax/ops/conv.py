"""2-D convolution that is fast on XLA:CPU, forward and backward.

YOLOv8's convolutions are NHWC / HWIO with 'same' padding ``k // 2`` and stride 1 or 2.
:func:`conv2d` computes ``lax.conv_general_dilated``'s result and autodiff's gradients; only
how it computes them differs on the CPU backend (other backends keep XLA's own convolution
and transpose rules, chosen at lowering time by ``lax.platform_dependent``):

* kernel gradient: XLA:CPU's YNNPACK convolutions lower it to a convolution whose window is
  the whole output (e.g. 80x80), which ran at 2-3 GFLOP/s here. A 1x1 kernel's gradient is
  always one matrix product on CPU (20-40x faster); a larger kernel keeps XLA's gradient when
  XLA runs convolutions on Eigen (:func:`yolojax.runtime.configure_xla_cpu`, the default:
  the fastest there, 2.3 against 2.5 s for a yolov8n step at batch 8, 640 px) and otherwise
  takes matrix products of shifted copies of the input and the output gradient
  (:func:`kernel_grad`, 3-5x faster than YNNPACK's).
* input gradient of a strided convolution: XLA dilates the output gradient with zeros and
  convolves it (s*s times the necessary work). Instead, each of the s*s output phases
  (positions r = s*m + a) is a small stride-1 convolution of the output gradient with the
  kernel taps that reach that phase, and the phases are interleaved.
* 1x1 stride-1 convolutions (forward and input gradient) are matrix products over the
  channel axis on CPU, which XLA:CPU runs ~2x faster than the same convolution.

Both equal plain autodiff's gradients up to float rounding (tests/test_conv.py).

Mixed precision: the kernel may stay float32 (the parameter) while ``x`` is bfloat16; it is
cast inside, and its gradient comes back float32, summed in float32 from the bfloat16
operands on every backend (:func:`kernel_grad_xla`). With the batch sharded over devices,
the partial sums the compiler then all-reduces are float32: a bfloat16 kernel cast outside
the convolution would have them reduced in bfloat16 (XLA's SPMD partitioner all-reduces the
kernel gradient's convolution output, which autodiff makes the cast's dtype).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from yolojax.runtime import cpu_convolutions_use_eigen

_DIMS = ("NHWC", "HWIO", "NHWC")

# Without Eigen convolutions, k x k kernels with Cin * Cout up to this keep XLA's own kernel
# gradient on CPU: for so few channels it measured 1.5-3x faster than the matrix products
# (3->16, 16->8, 16->16 at 160-640 px), while from 16->32 up the products win 3x.
NATIVE_KERNEL_GRAD_MAX_CHANNELS = 256


_PORTABLE = contextvars.ContextVar("yolojax_portable_convolutions", default=False)


@contextlib.contextmanager
def portable_convolutions() -> Iterator[None]:
    """Within this context :func:`conv2d` traces to XLA's plain convolution, with neither the
    CPU-specific paths nor the custom gradient: for converters that translate primitives one
    by one (jax2onnx knows no ``platform_index``), and whose graphs must hold plain Conv ops;
    and inside ``shard_map`` (the pmap path), where the two backward branches would differ in
    their manual-axis types (XLA's transpose sums a replicated kernel's gradient itself)."""
    token = _PORTABLE.set(True)
    try:
        yield
    finally:
        _PORTABLE.reset(token)


def _xla_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    p = kernel.shape[0] // 2
    return lax.conv_general_dilated(x, kernel, (stride, stride), ((p, p), (p, p)), dimension_numbers=_DIMS)


def _xla_conv_f32_sums(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """:func:`_xla_conv` summing in float32 whatever the input dtype (as GPUs and TPUs do for
    bfloat16): Eigen's CPU convolution sums bfloat16 inputs in bfloat16 otherwise, which
    moved yolov8n's class scores by up to 0.11 against float32."""
    if jnp.finfo(x.dtype).bits >= 32:
        return _xla_conv(x, kernel, stride)
    p = kernel.shape[0] // 2
    y = lax.conv_general_dilated(x, kernel, (stride, stride), ((p, p), (p, p)), dimension_numbers=_DIMS,
                                 preferred_element_type=jnp.float32)
    return y.astype(x.dtype)


def _pointwise(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """A 1x1 stride-1 convolution as a matrix product over the channel axis, summed in float32
    whatever the input dtype, as :func:`_xla_conv_f32_sums` and as GPUs and TPUs sum bfloat16.
    With bfloat16 sums the jit-compiled yolov8n forward on bus.jpg and zidane.jpg moved one
    confident class score by 0.27 against float32 on a 2-core AVX512-BF16 EPYC (0.076 with
    float32 sums)."""
    if jnp.finfo(x.dtype).bits >= 32:
        return lax.dot_general(x, kernel[0, 0], (((x.ndim - 1,), (0,)), ((), ())))
    y = lax.dot_general(x, kernel[0, 0], (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    return y.astype(x.dtype)


def _forward(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    native = partial(_xla_conv, stride=stride)
    if kernel.shape[0] == 1 and stride == 1:
        return lax.platform_dependent(x, kernel, cpu=_pointwise, default=native)
    return lax.platform_dependent(x, kernel, cpu=partial(_xla_conv_f32_sums, stride=stride), default=native)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
    """``y = conv(x, kernel)`` with zero padding ``k // 2`` on each side (torch's Conv2d with
    ``padding=k // 2``).

    Args:
      x: (B, H, W, Cin) input, any float dtype (the compute dtype).
      kernel: (k, k, Cin, Cout), k odd, ``x``'s dtype or a wider one (float32 parameters of a
        bfloat16 model): cast to ``x``'s dtype inside; its gradient has its own dtype, summed
        in float32 when ``x`` is narrower.
      stride: the same stride along H and W.

    Returns:
      (B, ceil(H / stride), ceil(W / stride), Cout) in ``x``'s dtype.

    Raises:
      ValueError: for a non-square or even kernel, or mismatched input channels.
    """
    k = kernel.shape[0]
    if kernel.ndim != 4 or kernel.shape[1] != k or k % 2 == 0 or kernel.shape[2] != x.shape[-1]:
        raise ValueError(f"conv2d needs an odd square (k, k, {x.shape[-1]}, Cout) kernel, got {kernel.shape}")
    if _PORTABLE.get():
        return _xla_conv(x, kernel.astype(x.dtype), stride)
    return _conv2d(x, kernel, stride)


def depthwise_conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
    """A depthwise convolution (torch's Conv2d with ``groups`` = channels, ``padding=k // 2``):
    each channel convolved with its own k x k filter, summed in float32 whatever the input
    dtype (as :func:`conv2d`).

    On CPU it is the sum of the k * k shifted (strided) views of the zero-padded input, each
    times its tap's per-channel weights (:func:`_depthwise_taps`), which XLA fuses into one
    loop, forward and backward: XLA:CPU's grouped convolution ran YOLO11's (8, 80, 80, 64)
    3x3 depthwise conv in 173 ms forward and 379 ms forward + backward, the taps in 3 and 75
    ms (2-core EPYC). Other backends, and :func:`portable_convolutions`, keep XLA's
    convolution (``feature_group_count`` = channels).

    Args:
      x: (B, H, W, C) input, any float dtype (the compute dtype).
      kernel: (k, k, 1, C), k odd; cast to ``x``'s dtype.
      stride: the same stride along H and W.

    Returns:
      (B, ceil(H / stride), ceil(W / stride), C) in ``x``'s dtype.

    Raises:
      ValueError: for a non-square or even kernel, or one whose channels differ from ``x``'s.
    """
    k, c = kernel.shape[0], x.shape[-1]
    if kernel.ndim != 4 or kernel.shape[1] != k or k % 2 == 0 or kernel.shape[2:] != (1, c):
        raise ValueError(f"depthwise_conv2d needs an odd square (k, k, 1, {c}) kernel, got {kernel.shape}")
    kernel = kernel.astype(x.dtype)
    native = partial(_depthwise_xla, stride=stride)
    if _PORTABLE.get():
        return native(x, kernel)
    return lax.platform_dependent(x, kernel, cpu=partial(_depthwise_taps, stride=stride), default=native)


def _depthwise_xla(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    p = kernel.shape[0] // 2
    out_dtype = jnp.float32 if _narrower_than_f32(x.dtype) else x.dtype
    y = lax.conv_general_dilated(x, kernel, (stride, stride), ((p, p), (p, p)), dimension_numbers=_DIMS,
                                 feature_group_count=x.shape[-1], preferred_element_type=out_dtype)
    return y.astype(x.dtype)


def _depthwise_taps(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """:func:`depthwise_conv2d` as the sum over taps (i, j) of ``x_pad[:, s*h + i, s*w + j] *
    kernel[i, j, 0]``, in float32 (float64 for a float64 input)."""
    k = kernel.shape[0]
    p = k // 2
    acc = jnp.promote_types(x.dtype, jnp.float32)
    padded = jnp.pad(x.astype(acc), ((0, 0), (p, p), (p, p), (0, 0)))
    weights = kernel.astype(acc)
    b, h, w, c = x.shape
    ho, wo = -(-h // stride), -(-w // stride)
    y = jnp.zeros((b, ho, wo, c), acc)
    for i in range(k):
        for j in range(k):
            view = lax.slice(padded, (0, i, j, 0), (b, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, c),
                             (1, stride, stride, 1))
            y = y + view * weights[i, j, 0]
    return y.astype(x.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv2d(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    return _forward(x, kernel.astype(x.dtype), stride)


def _conv2d_fwd(x, kernel, stride):
    return _forward(x, kernel.astype(x.dtype), stride), (x, kernel)


def _conv2d_bwd(stride, residuals, dy):
    x, kernel = residuals
    w = kernel.astype(x.dtype)
    narrow = _narrower_than_f32(x.dtype)

    def native(x, w, dy):
        if not narrow:
            return jax.vjp(lambda a, b: _xla_conv(a, b, stride), x, w)[1](dy)
        dx = jax.vjp(lambda a: _xla_conv(a, w, stride), x)[1](dy)[0]
        return dx, kernel_grad_xla(x, dy, w.shape[0], stride)

    def cpu(x, w, dy):
        k, _, c_in, c_out = w.shape
        if narrow and k > 1:
            dw = kernel_grad_xla(x, dy, k, stride)
        elif k > 1 and (cpu_convolutions_use_eigen() or c_in * c_out <= NATIVE_KERNEL_GRAD_MAX_CHANNELS):
            dw = jax.vjp(lambda b: _xla_conv(x, b, stride), w)[1](dy)[0]
        else:
            dw = kernel_grad(x, dy, k, stride)
        return input_grad(x.shape, w, dy, stride), dw

    dx, dw = lax.platform_dependent(x, w, dy, cpu=cpu, default=native)
    return dx, dw.astype(kernel.dtype)


def _narrower_than_f32(dtype) -> bool:
    return jnp.finfo(dtype).bits < 32


def kernel_grad_xla(x: jax.Array, dy: jax.Array, k: int, stride: int) -> jax.Array:
    """d(sum(conv2d(x, W, stride) * dy)) / dW as the convolution autodiff transposes to (JAX's
    rule for the kernel: the input and ``dy`` as its operands, the stride as kernel dilation),
    summed in float32 when the operands are narrower (``preferred_element_type``), so that
    the gradient's cross-device sum is float32 too.

    Args:
      x: (B, H, W, Cin) the convolution's input; dy: (B, Ho, Wo, Cout) its output's gradient.
      k: the (odd) kernel size; stride: the convolution's stride.

    Returns:
      (k, k, Cin, Cout), float32 for narrower operands, else their dtype.
    """
    p = k // 2
    (h, w), (ho, wo) = x.shape[1:3], dy.shape[1:3]
    high = [(n_out - 1) * stride + 1 - n + k - p - 1 for n, n_out in ((h, ho), (w, wo))]
    out_dtype = jnp.float32 if _narrower_than_f32(x.dtype) else x.dtype
    return lax.conv_general_dilated(x, dy, (1, 1), ((p, high[0]), (p, high[1])), rhs_dilation=(stride, stride),
                                    dimension_numbers=("CHWN", "IHWO", "HWNC"), preferred_element_type=out_dtype)


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def kernel_grad(x: jax.Array, dy: jax.Array, k: int, stride: int) -> jax.Array:
    """d(sum(conv2d(x, W, stride) * dy)) / dW as matrix products.

    ``dW[i, j] = sum over b, h, w of x_pad[b, s*h + i, s*w + j]^T dy[b, h, w]``. A 1x1 kernel is
    one product. Stride 1 is one product too: the k column shifts of the padded input side by
    side along channels, (B, H + 2p, W, k*Cin), against the k row shifts of ``dy`` (zero-padded
    to H + 2p rows) side by side, (B, H + 2p, W, k*Cout); its (j, i) block is ``dW[i, j]``.
    A larger stride takes one product per tap of the tap's strided view of the input.

    Args:
      x: (B, H, W, Cin) the convolution's input.
      dy: (B, Ho, Wo, Cout) the gradient of its output.
      k: the (odd) kernel size; stride: the convolution's stride.

    Returns:
      (k, k, Cin, Cout) in ``x``'s dtype (a 1x1 kernel of operands narrower than float32: float32).
    """
    b, ho, wo, c_out = dy.shape
    c_in = x.shape[-1]
    p = k // 2
    contract_rows = (((0,), (0,)), ((), ()))
    if k == 1 and stride == 1:
        sums = jnp.float32 if _narrower_than_f32(x.dtype) else None  # float32 sums, as kernel_grad_xla
        return lax.dot_general(x.reshape(-1, c_in), dy.reshape(-1, c_out), contract_rows,
                               preferred_element_type=sums).reshape(1, 1, c_in, c_out)
    x_pad = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    if stride == 1:
        x_cols = jnp.concatenate([x_pad[:, :, j:j + wo, :] for j in range(k)], axis=-1)
        dy_rows = jnp.concatenate([jnp.pad(dy, ((0, 0), (i, 2 * p - i), (0, 0), (0, 0))) for i in range(k)], axis=-1)
        blocks = lax.dot_general(x_cols.reshape(-1, k * c_in), dy_rows.reshape(-1, k * c_out), contract_rows)
        return blocks.reshape(k, c_in, k, c_out).transpose(2, 0, 1, 3).astype(x.dtype)
    dy_flat = dy.reshape(-1, c_out)
    taps = []
    for i in range(k):
        for j in range(k):
            end = (b, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, c_in)
            x_tap = lax.slice(x_pad, (0, i, j, 0), end, (1, stride, stride, 1))
            taps.append(lax.dot_general(x_tap.reshape(-1, c_in), dy_flat, contract_rows))
    return jnp.stack(taps).reshape(k, k, c_in, c_out).astype(x.dtype)


def _phase_taps(k: int, stride: int, phase: int) -> list[tuple[int, int]]:
    """The (tap i, offset d) pairs of one spatial axis by which the gradient reaches the input
    positions ``stride * m + phase``: each receives ``dy[m + d] * W[i]`` for every pair."""
    p = k // 2
    return [(i, (phase + p - i) // stride) for i in range(k) if (phase + p - i) % stride == 0]


def input_grad(x_shape: tuple[int, ...], kernel: jax.Array, dy: jax.Array, stride: int) -> jax.Array:
    """d(sum(conv2d(x, kernel, stride) * dy)) / dx.

    Stride 1 (or an input size the stride does not divide) uses XLA's transposed convolution;
    a stride s that divides H and W computes each of the s*s phases of dx as a stride-1
    'valid' convolution of ``dy`` with the taps that reach it, then interleaves them.

    Args:
      x_shape: (B, H, W, Cin) of the convolution's input.
      kernel: (k, k, Cin, Cout); dy: (B, Ho, Wo, Cout).

    Returns:
      (B, H, W, Cin) in ``dy``'s dtype.
    """
    b, h, w, c_in = x_shape
    if kernel.shape[0] == 1 and stride == 1:
        return lax.dot_general(dy, kernel[0, 0], (((3,), (1,)), ((), ())))
    if stride == 1 or h % stride or w % stride:
        x = jnp.zeros(x_shape, dy.dtype)
        return jax.vjp(lambda a: _xla_conv(a, kernel, stride), x)[1](dy)[0]
    k = kernel.shape[0]
    rows = []
    for a in range(stride):
        row_taps = _phase_taps(k, stride, a)
        cols = []
        for c in range(stride):
            col_taps = _phase_taps(k, stride, c)
            cols.append(_phase_conv(dy, kernel, row_taps, col_taps))
        rows.append(jnp.stack(cols, axis=3))  # (B, H/s, W/s, s, Cin)
    phases = jnp.stack(rows, axis=2)  # (B, H/s, s, W/s, s, Cin)
    return phases.reshape(b, h, w, c_in)


def _phase_conv(dy: jax.Array, kernel: jax.Array, row_taps, col_taps) -> jax.Array:
    """sum over (i, di) in row_taps, (j, dj) in col_taps of dy[m + di, n + dj] @ kernel[i, j]^T,
    for m, n over dy's own height and width: (B, Ho, Wo, Cin)."""
    d_rows = [d for _, d in row_taps]
    d_cols = [d for _, d in col_taps]
    r0, c0 = min(d_rows), min(d_cols)
    kh, kw = max(d_rows) - r0 + 1, max(d_cols) - c0 + 1
    sub = jnp.zeros((kh, kw) + kernel.shape[3:1:-1], kernel.dtype)  # (kh, kw, Cout, Cin)
    for i, di in row_taps:
        for j, dj in col_taps:
            sub = sub.at[di - r0, dj - c0].set(kernel[i, j].T)
    # Shift so that window position t reads dy[m + r0 + t] (negative padding crops).
    dy_shifted = lax.pad(dy, jnp.zeros((), dy.dtype),
                         ((0, 0, 0), (-r0, kh - 1 + r0, 0), (-c0, kw - 1 + c0, 0), (0, 0, 0)))
    return lax.conv_general_dilated(dy_shifted, sub, (1, 1), "VALID", dimension_numbers=_DIMS)
