"""Object-Contextual Representations (Yuan et al. 2020), as the reference's `OCR_block`.

Each pixel is described by the classes it probably belongs to: a soft object region per class
is pooled from the pixel features (weighted by a coarse auxiliary prediction), and every pixel
attends over those K region vectors. Names follow the PyTorch state dict (see torch_names.py).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hmsa_jax import ops


def _conv_bn_relu(x, features, name, train, dtype, kernel=1, use_bias=False):
    """Conv, then the reference's `BNReLU` (a Sequential(BN, ReLU) registered as `<name>_1`)."""
    x = ops.conv(features, kernel, use_bias=use_bias, in_features=x.shape[-1], dtype=dtype,
                 name=f"{name}_0")(x)
    return nn.relu(ops.batch_norm(train, dtype=dtype, name=f"{name}_1_0")(x))


def soft_object_regions(feats: jax.Array, aux_logits: jax.Array) -> jax.Array:
    """SpatialGather: per class, a softmax over positions weights the pixel features.

    feats [B, H, W, C], aux_logits [B, H, W, K] -> regions [B, K, C].
    """
    b, h, w, c = feats.shape
    weights = jax.nn.softmax(aux_logits.reshape(b, h * w, -1).astype(jnp.float32), axis=1)
    regions = jnp.einsum("bnk,bnc->bkc", weights, feats.reshape(b, h * w, c).astype(jnp.float32))
    return regions.astype(feats.dtype)


class ObjectAttention(nn.Module):
    """Pixels (queries) attend over object regions (keys/values): `_ObjectAttentionBlock`."""
    key_channels: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, feats: jax.Array, regions: jax.Array, train: bool) -> jax.Array:
        b, h, w, c = feats.shape
        key_ch = self.key_channels
        cbr = lambda x, name, f=key_ch: _conv_bn_relu(x, f, name, train, self.dtype)
        # Region vectors are treated as a K x 1 image, so BN normalises over batch x K.
        regions_img = regions[:, :, None, :]
        query = _two_layer(feats, "f_pixel", key_ch, train, self.dtype).reshape(b, h * w, key_ch)
        key = _two_layer(regions_img, "f_object", key_ch, train, self.dtype).reshape(b, -1, key_ch)
        value = cbr(regions_img, "f_down").reshape(b, -1, key_ch)

        similarity = jnp.einsum("bnd,bkd->bnk", query.astype(jnp.float32), key.astype(jnp.float32))
        similarity = jax.nn.softmax(similarity * key_ch ** -0.5, axis=-1)
        context = jnp.einsum("bnk,bkd->bnd", similarity, value.astype(jnp.float32))
        context = context.reshape(b, h, w, key_ch).astype(self.dtype)
        return cbr(context, "f_up", f=c)


def _two_layer(x, name, features, train, dtype):
    """f_pixel / f_object: (1x1 conv, BN, ReLU) twice, registered as .0, .1.0, .2, .3.0."""
    x = ops.conv(features, 1, dtype=dtype, name=f"{name}_0")(x)
    x = nn.relu(ops.batch_norm(train, dtype=dtype, name=f"{name}_1_0")(x))
    x = ops.conv(features, 1, dtype=dtype, name=f"{name}_2")(x)
    return nn.relu(ops.batch_norm(train, dtype=dtype, name=f"{name}_3_0")(x))


class OCRDistributor(nn.Module):
    """SpatialOCR_Module: object context, concatenated with the pixel features, 1x1 conv."""
    out_channels: int
    key_channels: int
    dropout: float = 0.05
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, feats, regions, train: bool):
        context = ObjectAttention(self.key_channels, self.dtype, name="object_context_block")(
            feats, regions, train)
        x = jnp.concatenate([context, feats], axis=-1)
        x = _conv_bn_relu(x, self.out_channels, "conv_bn_dropout", train, self.dtype)
        return ops.channel_dropout(self.dropout, train)(x)


class OCRBlock(nn.Module):
    """Trunk features -> (cls logits, aux logits, ocr features), all at the trunk's stride."""
    num_classes: int
    mid_channels: int = 512
    key_channels: int = 256
    dropout: float = 0.05
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, trunk_feats: jax.Array, train: bool = False):
        high_ch = trunk_feats.shape[-1]
        feats = _conv_bn_relu(trunk_feats, self.mid_channels, "conv3x3_ocr", train, self.dtype,
                              kernel=3, use_bias=True)

        aux = _conv_bn_relu(trunk_feats, high_ch, "aux_head", train, self.dtype, use_bias=True)
        aux_logits = ops.conv(self.num_classes, 1, use_bias=True, in_features=high_ch,
                              dtype=self.dtype, name="aux_head_2")(aux)

        regions = soft_object_regions(feats, aux_logits)
        ocr_feats = OCRDistributor(self.mid_channels, self.key_channels, self.dropout, self.dtype,
                                   name="ocr_distri_head")(feats, regions, train)
        cls_logits = ops.conv(self.num_classes, 1, use_bias=True, in_features=self.mid_channels,
                              dtype=self.dtype, name="cls_head")(ocr_feats)
        return cls_logits, aux_logits, ocr_feats
