"""Numerical building blocks shared by every model, matched to the PyTorch reference.

- `resize_bilinear`: PyTorch's `F.interpolate(mode="bilinear", align_corners=False)`, exactly.
- `scaled_size`: the image size the reference gets when it rescales by a factor.
- Convolution / BatchNorm factories with the reference's padding, momentum and epsilon.
- Initialisers that reproduce PyTorch's defaults and the reference's explicit choices.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hmsa_jax.data.labels import IMAGENET_MEAN, IMAGENET_STD

BN_MOMENTUM = 0.9  # PyTorch momentum 0.1: running = 0.9 * running + 0.1 * batch.
BN_EPSILON = 1e-5


# ----------------------------------------------------------------------------- resizing

def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """floor(H * s) x floor(W * s), as `F.interpolate(scale_factor=s, recompute_scale_factor=True)`."""
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale!r}")
    size = (int(math.floor(height * scale)), int(math.floor(width * scale)))
    if min(size) < 1:
        raise ValueError(f"scale {scale} turns a {height}x{width} input into an empty {size[0]}x{size[1]} one")
    return size


@functools.lru_cache(maxsize=None)
def _linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (lo, hi) and the weight of `hi` for each output position along one axis.

    Mirrors ATen's CPU kernel, float32 arithmetic included: src = (dst + 0.5) * in/out - 0.5,
    clamped at 0; the upper neighbour is clamped to the last index.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    lo = np.minimum(np.floor(src).astype(np.int32), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    hi_weight = (src - lo.astype(np.float32)).astype(np.float32)
    return lo, hi, hi_weight


@functools.lru_cache(maxsize=None)
def _periodic_taps(in_size: int, out_size: int) -> tuple[int, list] | None:
    """`_linear_taps` as strided slices where one size is an integer multiple of the other.

    Up by s (out = s * in): output s*j + p lerps padded[j + a] and padded[j + b] with weight w,
    (a, b, w) fixed per phase p, `padded` being the input with its first and last entries
    repeated (where the reference clamps: a lerp of a value with itself is that value exactly).
    Down by s (in = s * out): output i lerps inputs s*i + a and s*i + b with one weight w.
    Returns (s, [(a, b, w) per phase]) for up, (-s, [(a, b, w)]) for down, each checked
    against the taps row by row, or None.
    """
    lo, hi, weight = _linear_taps(in_size, out_size)
    if in_size % out_size == 0:
        s = in_size // out_size
        a, b = lo - s * np.arange(out_size), hi - s * np.arange(out_size)
        if len(set(a)) == 1 and len(set(b)) == 1 and len(set(weight)) == 1:
            return -s, [(int(a[0]), int(b[0]), weight[0])]
        return None
    if out_size % in_size:
        return None
    s, j = out_size // in_size, np.arange(in_size)
    source = np.concatenate([[0], j, [in_size - 1]])  # padded position -> input index

    def fits(rows, a, b, w) -> bool:
        if not (0 <= a <= 2 and 0 <= b <= 2):
            return False
        k_lo, k_hi = source[j + a], source[j + b]
        same = (k_lo == lo[rows]) & (k_hi == hi[rows]) & (weight[rows] == w)
        border = (k_lo == k_hi) & (lo[rows] == k_lo) & ((hi[rows] == k_lo) | (weight[rows] == 0))
        return bool(np.all(same | border))

    phases = []
    for p in range(s):
        rows = s * j + p
        # The phase's offsets and weight, read off one of its rows (interior ones first).
        candidates = [(int(lo[r]) - r // s + 1, int(hi[r]) - r // s + 1, weight[r])
                      for r in sorted(rows, key=lambda r: abs(r // s - in_size // 2))]
        found = next((c for c in candidates if fits(rows, *c)), None)
        if found is None:
            return None
        phases.append(found)
    return s, phases


def _resize_axis(x: jax.Array, out_size: int, axis: int) -> jax.Array:
    in_size = x.shape[axis]
    if in_size == out_size:
        return x
    periodic = _periodic_taps(in_size, out_size)
    lerp = lambda x_lo, x_hi, w: x_lo + jnp.asarray(w, x.dtype) * (x_hi - x_lo)
    if periodic is None:  # two gathers
        lo, hi, hi_weight = _linear_taps(in_size, out_size)
        weight_shape = [1] * x.ndim
        weight_shape[axis] = out_size
        return lerp(jnp.take(x, lo, axis=axis), jnp.take(x, hi, axis=axis), hi_weight.reshape(weight_shape))
    s, taps = periodic
    if s < 0:  # down by -s: two strided slices
        (a, b, w), = taps
        every = lambda start: jax.lax.slice_in_dim(x, start, start - s * (out_size - 1) + 1, -s, axis)
        return lerp(every(a), every(b), w)
    edge = lambda i: jax.lax.slice_in_dim(x, i, i + 1, axis=axis)
    padded = jnp.concatenate([edge(0), x, edge(in_size - 1)], axis=axis)
    window = lambda start: jax.lax.slice_in_dim(padded, start, start + in_size, axis=axis)
    phases = jnp.stack([lerp(window(a), window(b), w) for a, b, w in taps], axis=axis + 1)
    return phases.reshape(x.shape[:axis] + (out_size,) + x.shape[axis + 1:])


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear resize of an NHWC array to `size` = (H, W), align_corners=False, no antialiasing:
    PyTorch's taps and lerp, so the same values as `F.interpolate` in both directions.

    Per axis: where one size is an integer multiple of the other (every resize of the models on
    crops divisible by 32), strided slices and an interleave, whose backward is pads and adds;
    elsewhere two gathers, whose backward is scatter-adds. Both read the same two values with the
    same weight: the forward is bitwise the same. The slices made the HRNet-W48 training step
    8% faster on a 2-core CPU (benchmarks/profile_train_step.py). A dense (out, in) weight
    matrix per axis, as `jax.image.resize` builds, would cost O(out * in) FLOPs per row.
    """
    out_h, out_w = size
    return _resize_axis(_resize_axis(x, out_h, axis=1), out_w, axis=2)


def resize_like(x: jax.Array, reference: jax.Array) -> jax.Array:
    """Resize NHWC `x` to the spatial size of NHWC `reference` (the reference's `scale_as`)."""
    return resize_bilinear(x, reference.shape[1:3])


def rescale(x: jax.Array, scale: float) -> jax.Array:
    """Resize NHWC `x` by `scale` with the reference's floor rounding of the new size."""
    if scale == 1.0:
        return x
    return resize_bilinear(x, scaled_size(x.shape[1], x.shape[2], scale))


# ----------------------------------------------------------------------------- initialisers

def torch_default_kernel_init():
    """PyTorch's default conv init: kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias_init(fan_in: int):
    """PyTorch's default conv bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def kaiming_normal_fan_out():
    """torch.nn.init.kaiming_normal_(mode="fan_out", nonlinearity="relu"), untruncated."""
    return nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # jax: "normal" is untruncated


def kaiming_normal_fan_in():
    """torch.nn.init.kaiming_normal_() defaults (fan_in, relu gain), untruncated."""
    return nn.initializers.variance_scaling(2.0, "fan_in", "normal")  # jax: "normal" is untruncated


# ----------------------------------------------------------------------------- layers

def conv(features: int, kernel: int, *, stride: int = 1, dilation: int = 1, use_bias: bool = False,
         dtype=jnp.float32, kernel_init=None, bias_init=None, in_features: int | None = None,
         name: str | None = None) -> nn.Conv:
    """A Conv2d as PyTorch builds it: symmetric padding dilation*(k-1)/2 on every side.

    A stride-2 3x3 conv therefore pads (1, 1), not XLA's SAME (0, 1): the outputs differ.
    `in_features` is needed only for PyTorch's default bias init, which depends on fan-in.
    """
    pad = dilation * (kernel - 1) // 2
    if kernel_init is None:
        kernel_init = torch_default_kernel_init()
    if use_bias and bias_init is None:
        if in_features is None:
            raise ValueError("conv(use_bias=True) with the PyTorch default bias init needs in_features")
        bias_init = torch_default_bias_init(in_features * kernel * kernel)
    return nn.Conv(
        features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
        kernel_dilation=(dilation, dilation), use_bias=use_bias, dtype=dtype,
        param_dtype=jnp.float32, kernel_init=kernel_init,
        bias_init=bias_init if use_bias else nn.initializers.zeros,
        conv_general_dilated=conv_general_dilated, name=name)


def runs_as_matmul(kernel_shape, window_strides, padding, lhs_dilation=None, feature_group_count=1,
                   dimension_numbers=("NHWC", "HWIO", "NHWC")) -> bool:
    """Whether `conv_general_dilated` runs this convolution as a matmul over channels: 1x1,
    stride 1, unpadded, ungrouped, NHWC x HWIO."""
    spec = jax.lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), dimension_numbers)
    return (len(kernel_shape) == 4 and tuple(kernel_shape[:2]) == (1, 1) and tuple(window_strides) == (1, 1)
            and not isinstance(padding, str) and all(tuple(p) == (0, 0) for p in padding)
            and tuple(lhs_dilation or (1, 1)) == (1, 1) and feature_group_count == 1
            and spec.lhs_spec == (0, 3, 1, 2) and spec.rhs_spec == (3, 2, 0, 1))


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """`lax.conv_general_dilated`, with 1x1 stride-1 convolutions as a `dot_general` over channels.

    The same sum, and on XLA:CPU about half the time forward + backward: the kernel gradient of
    a 1x1 convolution is a plain matmul, where XLA:CPU's convolution transposes the activations
    first (`benchmarks/conv_kernels.py`).
    """
    if not kwargs and runs_as_matmul(rhs.shape, window_strides, padding, lhs_dilation, feature_group_count,
                                     dimension_numbers):
        return jax.lax.dot_general(lhs, rhs[0, 0], (((3,), (0,)), ((), ())), precision=precision)
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                        feature_group_count=feature_group_count, precision=precision,
                                        **kwargs)


class BatchNorm(nn.Module):
    """BatchNorm2d with PyTorch's semantics, NHWC.

    Normalises with the biased batch variance but tracks the *unbiased* one in `var`, as
    PyTorch does (flax.linen.BatchNorm tracks the biased one: for the ASPP image-pooling BN,
    whose batch is one value per image, that is a 1/(n-1) difference). Statistics are float32.
    Under `jax.jit` with the batch sharded over a mesh, the means are over the global batch:
    this is the reference's synchronised BN with no extra code.
    """
    use_running_average: bool | None = None
    momentum: float = BN_MOMENTUM
    epsilon: float = BN_EPSILON
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        use_running_average = nn.merge_param("use_running_average", self.use_running_average,
                                             use_running_average)
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)

        if use_running_average:
            mean, var = running_mean.value, running_var.value
        else:
            x32 = x.astype(jnp.float32)
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x32, axis=axes)
            var = jnp.mean(jnp.square(x32 - mean), axis=axes)  # two-pass: no cancellation
            if not self.is_initializing():
                count = math.prod(x.shape[:-1])
                unbiased = var * (count / max(count - 1, 1))
                running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
                running_var.value = self.momentum * running_var.value + (1 - self.momentum) * unbiased

        multiplier = scale * jax.lax.rsqrt(var + self.epsilon)
        shift = bias - mean * multiplier
        return (x * multiplier.astype(self.dtype) + shift.astype(self.dtype)).astype(self.dtype)


def batch_norm(train: bool | None, *, dtype=jnp.float32, name: str | None = None) -> BatchNorm:
    """The reference's BatchNorm2d (eps 1e-5, PyTorch momentum 0.1, scale 1 / bias 0 init).

    `train=None` defers the choice to the call: `bn(x, use_running_average=not train)`.
    """
    return BatchNorm(use_running_average=None if train is None else not train, dtype=dtype, name=name)


def channel_dropout(rate: float, train: bool, name: str | None = None) -> nn.Dropout:
    """Dropout2d: zeroes whole channels, i.e. one draw per (sample, channel) in NHWC."""
    return nn.Dropout(rate, broadcast_dims=(1, 2), deterministic=not train, name=name)


def normalize_images(images):
    """RGB in [0, 1] -> ImageNet-normalised float32 (the reference's input convention): a numpy
    array stays on the host (numpy arithmetic), a jax array (or tracer) stays on its device."""
    mean = np.asarray(IMAGENET_MEAN, np.float32)
    std = np.asarray(IMAGENET_STD, np.float32)
    return (images.astype(np.float32) - mean) / std


def prepare_images(images: jax.Array) -> jax.Array:
    """A batch as the model takes it: uint8 RGB (data.augment.normalize=False) normalised here,
    on the device; float batches (normalised by the data pipeline) as float32."""
    if images.dtype == jnp.uint8:
        return normalize_images(images.astype(jnp.float32) / 255.0)
    return images.astype(jnp.float32)
