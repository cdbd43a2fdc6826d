"""ops.py against independent implementations: PyTorch's resize formula in NumPy, a direct conv."""
import numpy as np
import pytest
import jax
import jax.numpy as jnp
import flax.linen as nn

from hmsa_jax import ops


def torch_bilinear_reference(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """PyTorch's upsample_bilinear2d (align_corners=False), one output pixel at a time, float64."""
    _, in_h, in_w, _ = x.shape
    out = np.zeros((x.shape[0], out_h, out_w, x.shape[3]))

    def source(dst, in_size, out_size):
        src = max((dst + 0.5) * in_size / out_size - 0.5, 0.0)
        i0 = min(int(np.floor(src)), in_size - 1)
        i1 = i0 + 1 if i0 < in_size - 1 else i0
        return i0, i1, src - i0

    for oy in range(out_h):
        y0, y1, ly = source(oy, in_h, out_h)
        for ox in range(out_w):
            x0, x1, lx = source(ox, in_w, out_w)
            out[:, oy, ox] = ((1 - ly) * ((1 - lx) * x[:, y0, x0] + lx * x[:, y0, x1])
                              + ly * ((1 - lx) * x[:, y1, x0] + lx * x[:, y1, x1]))
    return out


@pytest.mark.parametrize("in_hw,out_hw", [
    ((7, 9), (14, 18)),    # x2 up
    ((7, 9), (23, 31)),    # odd up
    ((16, 20), (8, 10)),   # x0.5 down
    ((17, 23), (5, 12)),   # odd down
    ((5, 8), (5, 8)),      # identity
    ((1, 1), (4, 6)),      # broadcast from a single pixel (ASPP image pooling)
    ((6, 10), (13, 4)),    # up in one axis, down in the other
])
def test_resize_matches_pytorch_formula(in_hw, out_hw):
    x = np.random.default_rng(0).normal(size=(2, *in_hw, 3)).astype(np.float32)
    expected = torch_bilinear_reference(x.astype(np.float64), *out_hw)
    got = np.asarray(ops.resize_bilinear(jnp.asarray(x), out_hw))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=2e-6, rtol=1e-5)


def test_resize_matches_torch_when_available():
    torch = pytest.importorskip("torch", reason="needs torch (the `convert` extra); the NumPy reference above covers this")
    x = np.random.default_rng(1).normal(size=(1, 11, 13, 4)).astype(np.float32)
    for size in [(33, 26), (5, 6), (64, 64)]:
        expected = torch.nn.functional.interpolate(
            torch.from_numpy(x).permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False)
        got = ops.resize_bilinear(jnp.asarray(x), size)
        np.testing.assert_allclose(np.asarray(got), expected.permute(0, 2, 3, 1).numpy(), atol=1e-6)


def test_resize_has_no_antialiasing_when_shrinking():
    # Downsampling by 2 with align_corners=False averages exactly the 2x2 block; an antialiased
    # resize would spread over a wider window and break this.
    x = np.random.default_rng(2).normal(size=(1, 8, 8, 1)).astype(np.float32)
    block_means = x.reshape(1, 4, 2, 4, 2, 1).mean(axis=(2, 4))
    np.testing.assert_allclose(np.asarray(ops.resize_bilinear(jnp.asarray(x), (4, 4))), block_means, atol=1e-6)


@pytest.mark.parametrize("hw,scale,expected", [((1024, 2048), 0.5, (512, 1024)), ((1025, 2047), 0.5, (512, 1023)),
                                               ((101, 75), 0.25, (25, 18)), ((33, 17), 2.0, (66, 34))])
def test_scaled_size_floors(hw, scale, expected):
    assert ops.scaled_size(*hw, scale) == expected


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan")])
def test_scaled_size_rejects_non_positive(scale):
    with pytest.raises(ValueError, match="scale must be positive"):
        ops.scaled_size(64, 64, scale)


def direct_conv(x, w, stride, pad):
    """Zero-padded cross-correlation, NHWC x HWIO, written out as PyTorch defines it."""
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    k = w.shape[0]
    out_h = (x.shape[1] + 2 * pad - k) // stride + 1
    out_w = (x.shape[2] + 2 * pad - k) // stride + 1
    out = np.zeros((x.shape[0], out_h, out_w, w.shape[3]))
    for i in range(out_h):
        for j in range(out_w):
            patch = xp[:, i * stride:i * stride + k, j * stride:j * stride + k, :]
            out[:, i, j] = np.einsum("bhwi,hwio->bo", patch, w)
    return out


@pytest.mark.parametrize("hw", [(8, 8), (9, 7)])
def test_stride2_conv_pads_like_pytorch(hw):
    x = np.random.default_rng(3).normal(size=(1, *hw, 2)).astype(np.float32)
    layer = ops.conv(3, 3, stride=2)
    variables = layer.init(jax.random.key(0), jnp.asarray(x))
    w = np.asarray(variables["params"]["kernel"], np.float64)
    got = np.asarray(layer.apply(variables, jnp.asarray(x)))
    np.testing.assert_allclose(got, direct_conv(x.astype(np.float64), w, stride=2, pad=1), atol=1e-5)
    # XLA's SAME would pad (0, 1) on even sizes and give different numbers.
    same = nn.Conv(3, (3, 3), strides=(2, 2), padding="SAME", use_bias=False)
    if hw[0] % 2 == 0:
        assert not np.allclose(same.apply(variables, jnp.asarray(x)), got, atol=1e-3)


@pytest.mark.parametrize("kernel,stride,dilation", [(1, 1, 1), (1, 2, 1), (3, 1, 1), (3, 1, 2)])
def test_conv_values_gradients_and_parameters_whatever_the_kernel(kernel, stride, dilation):
    """1x1 stride-1 convolutions run as a matmul over channels (a `dot_general`, no convolution
    in the program); every conv keeps the parameter tree of `nn.Conv` and its values and
    gradients (against a direct NumPy convolution and `lax.conv_general_dilated`'s gradients)."""
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(2, 6, 10, 5)).astype(np.float32))
    layer = ops.conv(3, kernel, stride=stride, dilation=dilation, use_bias=True, in_features=5)
    variables = layer.init(jax.random.key(0), x)
    assert jax.tree_util.tree_map(jnp.shape, variables) == {
        "params": {"kernel": (kernel, kernel, 5, 3), "bias": (3,)}}
    params = variables["params"]
    w = np.asarray(params["kernel"], np.float64)
    got = np.asarray(layer.apply(variables, x))
    if dilation == 1:
        expected = direct_conv(np.asarray(x, np.float64), w, stride, (kernel - 1) // 2)
        np.testing.assert_allclose(got, expected + np.asarray(params["bias"]), atol=1e-5)
    pad = dilation * (kernel - 1) // 2
    plain = lambda p, x: jax.lax.conv_general_dilated(
        x, p["kernel"], (stride, stride), [(pad, pad)] * 2, rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["bias"]
    np.testing.assert_allclose(got, plain(params, x), atol=1e-5)
    loss = lambda f: lambda p, x: jnp.sum(jnp.sin(f(p, x)))
    ours = jax.grad(loss(lambda p, x: layer.apply({"params": p}, x)), argnums=(0, 1))(params, x)
    theirs = jax.grad(loss(plain), argnums=(0, 1))(params, x)
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    program = jax.jit(layer.apply).lower(variables, x).as_text()
    pointwise = kernel == 1 and stride == 1
    assert ("dot_general" in program, "convolution" in program) == (pointwise, not pointwise)


def test_batch_norm_follows_pytorch():
    """Normalise with the biased variance, track the unbiased one, momentum 0.1, eps 1e-5."""
    x = np.random.default_rng(4).normal(2.0, 3.0, size=(2, 3, 1, 4)).astype(np.float32)
    bn = ops.batch_norm(True)
    variables = bn.init(jax.random.key(0), jnp.asarray(x))
    y, updates = bn.apply(variables, jnp.asarray(x), mutable=["batch_stats"])
    flat = x.reshape(-1, 4).astype(np.float64)
    mean, var_biased, var_unbiased = flat.mean(0), flat.var(0), flat.var(0, ddof=1)
    np.testing.assert_allclose(np.asarray(y), (x - mean) / np.sqrt(var_biased + 1e-5), atol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["var"], 0.9 + 0.1 * var_unbiased, rtol=1e-5)
    # Eval mode uses the running statistics.
    eval_bn = ops.batch_norm(False)
    stats = {"params": variables["params"], "batch_stats": updates["batch_stats"]}
    y_eval = eval_bn.apply(stats, jnp.asarray(x))
    expected = (x - 0.1 * mean) / np.sqrt(0.9 + 0.1 * var_unbiased + 1e-5)
    np.testing.assert_allclose(np.asarray(y_eval), expected, atol=1e-5)


def test_batch_norm_keeps_bf16_dtype():
    x = jnp.ones((2, 4, 4, 3), jnp.bfloat16)
    bn = ops.batch_norm(True, dtype=jnp.bfloat16)
    variables = bn.init(jax.random.key(0), x)
    y, _ = bn.apply(variables, x, mutable=["batch_stats"])
    assert y.dtype == jnp.bfloat16
    assert variables["params"]["scale"].dtype == jnp.float32


def test_channel_dropout_drops_whole_channels():
    x = jnp.ones((4, 6, 6, 32))
    y = ops.channel_dropout(0.5, train=True).apply({}, x, rngs={"dropout": jax.random.key(0)})
    per_channel = np.asarray(y).reshape(4, 36, 32)
    assert np.all(per_channel.min(axis=1) == per_channel.max(axis=1))  # constant over H, W
    assert 0 < (per_channel[:, 0] == 0).mean() < 1
