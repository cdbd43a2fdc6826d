"""Scale-attention heads: the paper's hierarchical head and the explicit baseline's head."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hmsa_jax import ops


def _attention_logits(x, out_channels, bottleneck_channels, train, dtype):
    """3x3 conv, BN, ReLU, 3x3 conv, BN, ReLU, 1x1 conv: the reference's `make_attn_head`.

    Called inside a compact method, so its layers belong to the calling head.
    """
    for i in range(2):
        x = ops.conv(bottleneck_channels, 3, dtype=dtype, name=f"conv{i}")(x)
        x = nn.relu(ops.batch_norm(train, dtype=dtype, name=f"bn{i}")(x))
    x = ops.conv(out_channels, 1, dtype=dtype, name="conv2")(x)
    return x.astype(jnp.float32)


class ScaleAttentionHead(nn.Module):
    """Hierarchical attention: one sigmoid map a in (0, 1) per pixel, from the lower scale's features.

    a weighs the lower scale's prediction against the next higher scale's (paper eq. 1).
    """
    bottleneck_channels: int = 256
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array, train: bool = False) -> jax.Array:
        logits = _attention_logits(features, 1, self.bottleneck_channels, train, self.dtype)
        return jax.nn.sigmoid(logits)


class ExplicitAttentionHead(nn.Module):
    """Explicit attention (Chen et al. 2016): one softmax over a fixed set of N scales.

    Sees the features of every scale (resized to a common size and concatenated) and returns
    per-pixel weights [B, H, W, N] that sum to one over the scales.
    """
    num_scales: int
    bottleneck_channels: int = 256
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, stacked_features: jax.Array, train: bool = False) -> jax.Array:
        logits = _attention_logits(stacked_features, self.num_scales, self.bottleneck_channels,
                                   train, self.dtype)
        return jax.nn.softmax(logits, axis=-1)
