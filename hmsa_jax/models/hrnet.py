"""HRNetV2 trunk (Wang et al. 2019), laid out exactly as the reference's `hrnetv2.py`.

Four stages keep a stride-4 branch alive throughout and add one branch per stage at half the
resolution; after every module each branch receives the sum of all others (resized up by
bilinear interpolation, down by stride-2 3x3 convs). The output concatenates all branches,
upsampled to stride 4: 720 channels for W48.

Module names follow the PyTorch state dict with "." written as "_" before an index
(`stage3_2/fuse_layers_1_0_0`  <->  `stage3.2.fuse_layers.1.0.0`), see `torch_names.py`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hmsa_jax import ops

HRNET_INIT = nn.initializers.normal(stddev=0.001)  # the reference's init_weights()
# Training from scratch (the reference always starts from ImageNet weights): N(0, 0.001) under
# BatchNorm makes the effective learning rate of every conv huge at the start (it scales as
# lr / |w|^2), and tiny HRNets then land in seed-dependent modes. See WORKSPACE_NOTES.md.
TRUNK_INITS = {"reference": HRNET_INIT, "he": ops.kaiming_normal_fan_out()}


@dataclasses.dataclass(frozen=True)
class HRNetSpec:
    """Widths and depths of an HRNetV2. The published variants differ only in `widths`."""
    widths: tuple[int, ...] = (48, 96, 192, 384)
    stem_width: int = 64
    stage1_planes: int = 64        # Bottleneck planes; x4 expansion -> 256 channels
    stage1_blocks: int = 4
    modules_per_stage: tuple[int, int, int] = (1, 4, 3)  # stages 2, 3, 4
    blocks_per_branch: int = 4

    @property
    def out_channels(self) -> int:
        return sum(self.widths)


HRNET_SPECS = {
    "w18": HRNetSpec(widths=(18, 36, 72, 144)),
    "w32": HRNetSpec(widths=(32, 64, 128, 256)),
    "w48": HRNetSpec(widths=(48, 96, 192, 384)),
    # For tests and the CPU demo: same topology, a fraction of the width and depth.
    "tiny": HRNetSpec(widths=(8, 16, 32, 64), stem_width=16, stage1_planes=8, stage1_blocks=1,
                      modules_per_stage=(1, 1, 1), blocks_per_branch=1),
}


def hrnet_spec(width: str | int) -> HRNetSpec:
    key = f"w{width}" if isinstance(width, int) else str(width).lower()
    if key not in HRNET_SPECS:
        raise ValueError(f"unknown HRNet width {width!r}; expected one of 18, 32, 48 or 'tiny'")
    return HRNET_SPECS[key]


class BasicBlock(nn.Module):
    features: int
    dtype: Any = jnp.float32
    kernel_init: Any = HRNET_INIT

    @nn.compact
    def __call__(self, x, train: bool):
        conv = lambda name: ops.conv(self.features, 3, dtype=self.dtype, kernel_init=self.kernel_init,
                                     name=name)
        bn = lambda name: ops.batch_norm(train, dtype=self.dtype, name=name)
        y = nn.relu(bn("bn1")(conv("conv1")(x)))
        y = bn("bn2")(conv("conv2")(y))
        return nn.relu(y + x)


class Bottleneck(nn.Module):
    planes: int
    stride: int = 1
    dilation: int = 1
    expansion: int = 4
    dtype: Any = jnp.float32
    kernel_init: Any = HRNET_INIT

    @nn.compact
    def __call__(self, x, train: bool):
        out_features = self.planes * self.expansion
        conv = lambda f, k, name, **kw: ops.conv(f, k, dtype=self.dtype, kernel_init=self.kernel_init,
                                                 name=name, **kw)
        bn = lambda name: ops.batch_norm(train, dtype=self.dtype, name=name)
        y = nn.relu(bn("bn1")(conv(self.planes, 1, "conv1")(x)))
        y = nn.relu(bn("bn2")(conv(self.planes, 3, "conv2", stride=self.stride, dilation=self.dilation)(y)))
        y = bn("bn3")(conv(out_features, 1, "conv3")(y))
        shortcut = x
        if self.stride != 1 or x.shape[-1] != out_features:
            shortcut = conv(out_features, 1, "downsample_0", stride=self.stride)(x)
            shortcut = bn("downsample_1")(shortcut)
        return nn.relu(y + shortcut)


class HighResolutionModule(nn.Module):
    """Parallel branches of BasicBlocks, then the all-to-all fuse."""
    widths: tuple[int, ...]
    num_blocks: int
    dtype: Any = jnp.float32
    kernel_init: Any = HRNET_INIT

    @nn.compact
    def __call__(self, xs: list[jax.Array], train: bool) -> list[jax.Array]:
        conv = lambda f, k, name, stride=1: ops.conv(f, k, stride=stride, dtype=self.dtype,
                                                     kernel_init=self.kernel_init, name=name)
        bn = lambda name: ops.batch_norm(train, dtype=self.dtype, name=name)

        branch_outs = []
        for b, (x, width) in enumerate(zip(xs, self.widths)):
            for k in range(self.num_blocks):
                x = BasicBlock(width, self.dtype, self.kernel_init, name=f"branches_{b}_{k}")(x, train)
            branch_outs.append(x)

        fused = []
        for i, width_i in enumerate(self.widths):
            total = None
            for j, x in enumerate(branch_outs):  # summed in the reference's order, j = 0, 1, ...
                prefix = f"fuse_layers_{i}_{j}"
                if j == i:
                    y = x
                elif j > i:   # coarser branch: 1x1 conv + BN, then bilinear upsample
                    y = bn(f"{prefix}_1")(conv(width_i, 1, f"{prefix}_0")(x))
                    y = ops.resize_like(y, branch_outs[i])
                else:         # finer branch: i-j stride-2 3x3 convs, ReLU between them
                    y = x
                    for k in range(i - j):
                        last = k == i - j - 1
                        y = conv(width_i if last else self.widths[j], 3, f"{prefix}_{k}_0", stride=2)(y)
                        y = bn(f"{prefix}_{k}_1")(y)
                        if not last:
                            y = nn.relu(y)
                total = y if total is None else total + y
            fused.append(nn.relu(total))
        return fused


class HRNet(nn.Module):
    """HRNetV2 trunk: NHWC image -> stride-4 features with `spec.out_channels` channels."""
    spec: HRNetSpec = HRNET_SPECS["w48"]
    dtype: Any = jnp.float32
    remat: bool = False  # recompute each block's activations in the backward pass
    init: str = "reference"  # a TRUNK_INITS key

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        spec = self.spec
        bottleneck, hr_module = Bottleneck, HighResolutionModule
        if self.remat:
            bottleneck = nn.remat(Bottleneck, static_argnums=(2,))
            hr_module = nn.remat(HighResolutionModule, static_argnums=(2,))
        kernel_init = TRUNK_INITS[self.init]
        conv = lambda f, name, stride=1: ops.conv(f, 3, stride=stride, dtype=self.dtype,
                                                  kernel_init=kernel_init, name=name)
        bn = lambda name: ops.batch_norm(train, dtype=self.dtype, name=name)

        x = jnp.asarray(x, self.dtype)
        x = nn.relu(bn("bn1")(conv(spec.stem_width, "conv1", stride=2)(x)))
        x = nn.relu(bn("bn2")(conv(spec.stem_width, "conv2", stride=2)(x)))
        for k in range(spec.stage1_blocks):
            x = bottleneck(spec.stage1_planes, dtype=self.dtype, kernel_init=kernel_init,
                           name=f"layer1_{k}")(x, train)

        branches = [x]
        for stage, num_modules in zip((2, 3, 4), spec.modules_per_stage):
            widths = spec.widths[:stage]
            branches = self._transition(branches, widths, f"transition{stage - 1}", kernel_init, train)
            for m in range(num_modules):
                branches = hr_module(widths, spec.blocks_per_branch, self.dtype, kernel_init,
                                     name=f"stage{stage}_{m}")(branches, train)

        upsampled = [branches[0]] + [ops.resize_like(b, branches[0]) for b in branches[1:]]
        return jnp.concatenate(upsampled, axis=-1)

    def _transition(self, branches, widths, prefix, kernel_init, train):
        """Adapt existing branches to the next stage's widths and add the new, coarser one."""
        out = []
        for i, width in enumerate(widths):
            if i < len(branches):
                x = branches[i]
                if x.shape[-1] != width:   # only after stage 1 (256 -> W): 3x3 conv, BN, ReLU
                    x = ops.conv(width, 3, dtype=self.dtype, kernel_init=kernel_init, name=f"{prefix}_{i}_0")(x)
                    x = nn.relu(ops.batch_norm(train, dtype=self.dtype, name=f"{prefix}_{i}_1")(x))
            else:                          # new branch from the coarsest one, stride 2
                x = ops.conv(width, 3, stride=2, dtype=self.dtype, kernel_init=kernel_init,
                             name=f"{prefix}_{i}_0_0")(branches[-1])
                x = nn.relu(ops.batch_norm(train, dtype=self.dtype, name=f"{prefix}_{i}_0_1")(x))
            out.append(x)
        return out
