"""yolojax.ops.conv: the CPU backward equals autodiff of XLA's convolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from yolojax.ops.conv import conv2d, input_grad, kernel_grad


def xla_conv(x, kernel, stride):
    p = kernel.shape[0] // 2
    return lax.conv_general_dilated(x, kernel, (stride, stride), ((p, p), (p, p)),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def random_case(shape_x, k, c_out, stride, dtype=jnp.float32, seed=0):
    kx, kw, kd = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, shape_x, dtype)
    kernel = jax.random.normal(kw, (k, k, shape_x[-1], c_out), dtype) / np.sqrt(k * k * shape_x[-1])
    dy = jax.random.normal(kd, xla_conv(x, kernel, stride).shape, dtype)
    return x, kernel, dy


def relative_error(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


CASES = [  # (B, H, W, Cin), k, Cout, stride
    ((2, 16, 16, 24), 3, 32, 1),
    ((2, 16, 16, 24), 3, 32, 2),
    ((2, 12, 20, 40), 1, 24, 1),
    ((1, 8, 8, 3), 3, 16, 2),  # Cin * Cout <= NATIVE_KERNEL_GRAD_MAX_CHANNELS: XLA's kernel gradient
    ((2, 9, 11, 24), 3, 32, 2),  # odd sizes: XLA's own input gradient
    ((2, 16, 16, 24), 5, 32, 1),
]


@pytest.mark.parametrize("eigen", [True, False], ids=["eigen", "ynnpack"])
@pytest.mark.parametrize("shape_x,k,c_out,stride", CASES)
def test_gradients_equal_autodiff_in_float32(monkeypatch, shape_x, k, c_out, stride, eigen):
    """Both CPU kernel-gradient policies (XLA's own with Eigen convolutions, matrix products otherwise)."""
    import yolojax.ops.conv as conv

    monkeypatch.setattr(conv, "cpu_convolutions_use_eigen", lambda: eigen)
    x, kernel, dy = random_case(shape_x, k, c_out, stride)
    want = jax.jit(lambda x, w, dy: jax.vjp(lambda a, b: xla_conv(a, b, stride), x, w)[1](dy))(x, kernel, dy)
    got = jax.jit(lambda x, w, dy: jax.vjp(lambda a, b: conv2d(a, b, stride), x, w)[1](dy))(x, kernel, dy)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert relative_error(g, w) < 1e-5
    y = jax.jit(lambda x, w: conv2d(x, w, stride))(x, kernel)
    if k == 1 and stride == 1:  # a matrix product on CPU: the same sums in another order
        np.testing.assert_allclose(y, xla_conv(x, kernel, stride), rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_array_equal(y, xla_conv(x, kernel, stride))


@pytest.mark.parametrize("shape_x,k,c_out,stride", [CASES[0], CASES[1], CASES[2], CASES[5]])
def test_formulas_are_exact_in_float64(shape_x, k, c_out, stride):
    with jax.enable_x64(True):
        x, kernel, dy = random_case(shape_x, k, c_out, stride, jnp.float64)
        dx_want, dw_want = jax.vjp(lambda a, b: xla_conv(a, b, stride), x, kernel)[1](dy)
        assert relative_error(kernel_grad(x, dy, k, stride), dw_want) < 1e-12
        assert relative_error(input_grad(x.shape, kernel, dy, stride), dx_want) < 1e-12


def test_layers_use_it_and_match_autodiff():
    import yolojax.models.layers as layers

    class Block(layers.nn.Module):
        @layers.nn.compact
        def __call__(self, x):
            x = layers.Conv(32, 3, 2)(x, train=True)
            return layers.C2f(32, 1, shortcut=True)(x, train=True)

    block = Block()
    images = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
    variables = block.init(jax.random.key(0), images)

    def loss(params, conv):
        original, layers.conv2d = layers.conv2d, conv
        try:
            out, _ = block.apply({**variables, "params": params}, images, mutable=["batch_stats"])
        finally:
            layers.conv2d = original
        return jnp.sum(jnp.sin(out))

    got = jax.jit(jax.grad(lambda p: loss(p, conv2d)))(variables["params"])
    want = jax.jit(jax.grad(lambda p: loss(p, xla_conv)))(variables["params"])
    assert len(jax.tree.leaves(got)) == 15  # 5 Convs: kernel, BN scale, BN bias
    errors = jax.tree.map(relative_error, got, want)
    assert max(jax.tree.leaves(errors)) < 1e-5


def test_refuses_even_or_mismatched_kernels():
    x = jnp.zeros((1, 8, 8, 4))
    with pytest.raises(ValueError, match="odd square"):
        conv2d(x, jnp.zeros((2, 2, 4, 8)))
    with pytest.raises(ValueError, match="odd square"):
        conv2d(x, jnp.zeros((3, 3, 5, 8)))


def test_portable_convolutions_trace_plain_convolutions():
    """Inside portable_convolutions() the jaxpr holds plain convolutions only (what jax2onnx
    converts), and the values are the same."""
    from yolojax.ops.conv import portable_convolutions

    x, kernel, _ = random_case((1, 8, 8, 4), 1, 6, 1)
    with portable_convolutions():
        jaxpr = str(jax.make_jaxpr(lambda a, b: conv2d(a, b, 1))(x, kernel))
        y = conv2d(x, kernel, 1)
    assert "conv_general_dilated" in jaxpr and "platform_index" not in jaxpr and "custom_vjp" not in jaxpr
    assert "platform_index" in str(jax.make_jaxpr(lambda a, b: conv2d(a, b, 1))(x, kernel))  # outside: CPU paths
    np.testing.assert_allclose(y, xla_conv(x, kernel, 1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape_x,k,c_out,stride", [CASES[0], CASES[1], CASES[2], CASES[4]])
def test_kernel_grad_xla_equals_autodiff_and_sums_bfloat16_in_float32(shape_x, k, c_out, stride):
    from yolojax.ops.conv import kernel_grad_xla

    x, kernel, dy = random_case(shape_x, k, c_out, stride)
    want = jax.vjp(lambda b: xla_conv(x, b, stride), kernel)[1](dy)[0]
    got = kernel_grad_xla(x, dy, k, stride)
    assert got.dtype == jnp.float32 and relative_error(got, want) < 1e-5
    xb, dyb = x.astype(jnp.bfloat16), dy.astype(jnp.bfloat16)
    exact = jax.vjp(lambda b: xla_conv(xb.astype(jnp.float32), b, stride), kernel)[1](dyb.astype(jnp.float32))[0]
    got_b = kernel_grad_xla(xb, dyb, k, stride)
    assert got_b.dtype == jnp.float32 and relative_error(got_b, exact) < 1e-5  # float32 sums of bf16 products


def test_bfloat16_input_with_float32_kernel():
    """A bfloat16 model's float32 kernel: cast inside, its gradient float32 and equal to the
    float32 sums of the bfloat16 operands' products."""
    x, kernel, dy = random_case((2, 16, 16, 24), 3, 32, 2)
    xb, dyb = x.astype(jnp.bfloat16), dy.astype(jnp.bfloat16)
    y, vjp = jax.vjp(lambda a, b: conv2d(a, b, 2), xb, kernel)
    dx, dw = vjp(dyb)
    assert y.dtype == dx.dtype == jnp.bfloat16 and dw.dtype == jnp.float32
    wb = kernel.astype(jnp.bfloat16).astype(jnp.float32)
    exact = jax.vjp(lambda b: xla_conv(xb.astype(jnp.float32), b, 2), wb)[1](dyb.astype(jnp.float32))[0]
    assert relative_error(dw, exact) < 1e-5


@pytest.mark.parametrize("shape_x, stride", [((2, 12, 10, 8), 1), ((2, 11, 9, 8), 2), ((1, 6, 6, 3), 1)])
def test_depthwise_taps_equal_grouped_convolution(shape_x, stride):
    """The CPU form (the sum of shifted views times each tap's weights) gives XLA's grouped
    convolution's values and gradients (float64: exactly up to rounding)."""
    from yolojax.ops.conv import _depthwise_taps, _depthwise_xla, depthwise_conv2d

    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal(shape_x))
        kernel = jnp.asarray(rng.standard_normal((3, 3, 1, shape_x[-1])))
        dy = jnp.asarray(rng.standard_normal(_depthwise_xla(x, kernel, stride).shape))
        grads = [jax.grad(lambda a, b, f=f: jnp.sum(f(a, b, stride) * dy), argnums=(0, 1))(x, kernel)
                 for f in (_depthwise_taps, _depthwise_xla)]
        np.testing.assert_allclose(_depthwise_taps(x, kernel, stride), _depthwise_xla(x, kernel, stride), atol=1e-12)
        for ours, theirs in zip(*grads):
            np.testing.assert_allclose(ours, theirs, atol=1e-12)
        np.testing.assert_allclose(jax.jit(depthwise_conv2d, static_argnums=2)(x, kernel, stride),
                                   _depthwise_xla(x, kernel, stride), atol=1e-12)
    x16 = jnp.asarray(np.random.default_rng(1).standard_normal((1, 8, 8, 4)), jnp.bfloat16)
    k32 = jnp.asarray(np.random.default_rng(2).standard_normal((3, 3, 1, 4)), jnp.float32)
    out = depthwise_conv2d(x16, k32)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), _depthwise_xla(x16, k32.astype(jnp.bfloat16), 1)
                               .astype(np.float32), atol=0.1)
    with pytest.raises(ValueError, match="odd square"):
        depthwise_conv2d(x16, jnp.zeros((3, 3, 2, 4)))
