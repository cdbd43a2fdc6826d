"""DeepLabV3+ decoder (Chen et al. 2018) as the reference's `MscaleV3Plus`: ASPP, then a
stride-4 decoder fusing low-level features. Its 304-channel decoder input also feeds the
scale-attention head.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hmsa_jax import ops


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: image pooling + 1x1 + three dilated 3x3 branches."""
    features: int = 256
    rates: tuple[int, ...] = (12, 24, 36)  # the reference's (6, 12, 18), doubled at stride 8
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        bn = lambda name: ops.batch_norm(train, dtype=self.dtype, name=name)
        pooled = jnp.mean(x, axis=(1, 2), keepdims=True, dtype=jnp.float32).astype(self.dtype)
        pooled = nn.relu(bn("img_conv_1")(ops.conv(self.features, 1, dtype=self.dtype, name="img_conv_0")(pooled)))
        branches = [jnp.broadcast_to(pooled, x.shape[:3] + (self.features,))]  # 1x1 -> HxW upsample
        branches.append(nn.relu(bn("features_0_1")(
            ops.conv(self.features, 1, dtype=self.dtype, name="features_0_0")(x))))
        for i, rate in enumerate(self.rates, start=1):
            y = ops.conv(self.features, 3, dilation=rate, dtype=self.dtype, name=f"features_{i}_0")(x)
            branches.append(nn.relu(bn(f"features_{i}_1")(y)))
        return jnp.concatenate(branches, axis=-1)
