"""ResNet-50 trunk at output stride 8 (the paper's ablation trunk), as the reference's `get_resnet`.

Layers 3 and 4 trade their stride for dilation 2 and 4 in every 3x3 conv, so the deepest
features stay at stride 8. Returns the stride-4 features of layer 1 (for the decoder) and the
stride-8 features of layer 4.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hmsa_jax import ops
from hmsa_jax.models.hrnet import Bottleneck

RESNET_INIT = ops.kaiming_normal_fan_out()  # torchvision's ResNet init


@dataclasses.dataclass(frozen=True)
class ResNetSpec:
    blocks: tuple[int, int, int, int] = (3, 4, 6, 3)
    planes: tuple[int, int, int, int] = (64, 128, 256, 512)
    stem_width: int = 64

    @property
    def low_level_channels(self) -> int:
        return self.planes[0] * 4

    @property
    def out_channels(self) -> int:
        return self.planes[3] * 4


RESNET_SPECS = {
    "50": ResNetSpec(),
    "tiny": ResNetSpec(blocks=(1, 1, 1, 1), planes=(8, 16, 32, 64), stem_width=8),
}


def resnet_spec(depth: str | int) -> ResNetSpec:
    key = str(depth).lower()
    if key not in RESNET_SPECS:
        raise ValueError(f"unknown ResNet depth {depth!r}; expected 50 or 'tiny'")
    return RESNET_SPECS[key]


class ResNetOS8(nn.Module):
    spec: ResNetSpec = RESNET_SPECS["50"]
    dtype: Any = jnp.float32
    remat: bool = False  # recompute each block's activations in the backward pass

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        block = nn.remat(Bottleneck, static_argnums=(2,)) if self.remat else Bottleneck
        x = jnp.asarray(x, self.dtype)
        x = ops.conv(self.spec.stem_width, 7, stride=2, dtype=self.dtype, kernel_init=RESNET_INIT,
                     name="layer0_0")(x)
        x = nn.relu(ops.batch_norm(train, dtype=self.dtype, name="layer0_1")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

        # (stride, dilation) of each layer's 3x3 convs at output stride 8.
        layout = ((1, 1), (2, 1), (1, 2), (1, 4))
        low_level = None
        for layer, (num_blocks, planes, (stride, dilation)) in enumerate(
                zip(self.spec.blocks, self.spec.planes, layout), start=1):
            for k in range(num_blocks):
                x = block(planes, stride=stride if k == 0 else 1, dilation=dilation,
                               dtype=self.dtype, kernel_init=RESNET_INIT,
                               name=f"layer{layer}_{k}")(x, train)
            if layer == 1:
                low_level = x
        return low_level, x
