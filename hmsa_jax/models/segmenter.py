"""Segmentation models: a trunk and decoder at one scale, and the multi-scale wrappers around it.

`one_scale(x)` runs the network once and returns the scale output of `hmsa_jax.multiscale`
(logits, aux logits, attention; all float32 at the size of `x`). `__call__` picks the mode:

  attention="hierarchical", scales=None   -> the two-scale training forward (lo_scale and 1.0)
  attention="none",         scales=None   -> one scale
  scales=(0.5, 1.0, 2.0), fusion=...      -> N-scale inference: hierarchical, avg or max
  attention="explicit"                     -> explicit attention over `explicit_scales`

Every output dict holds "logits", "aux_logits" and, for multi-scale modes, "per_scale": the
scale outputs keyed by scale (for per-scale losses and attention pictures).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from hmsa_jax import multiscale, ops
from hmsa_jax.models.deeplab import ASPP
from hmsa_jax.models.heads import ExplicitAttentionHead, ScaleAttentionHead
from hmsa_jax.models.hrnet import HRNET_SPECS, TRUNK_INITS, HRNet, HRNetSpec
from hmsa_jax.models.ocr import OCRBlock
from hmsa_jax.models.resnet import RESNET_SPECS, ResNetOS8, ResNetSpec

ATTENTION_MODES = ("none", "hierarchical", "explicit")


class MultiScaleSegmenter(nn.Module):
    """Multi-scale logic shared by every trunk. Subclasses define setup() and one_scale()."""
    num_classes: int = 19
    attention: str = "hierarchical"
    lo_scale: float = 0.5
    explicit_scales: tuple[float, ...] = (0.5, 1.0, 2.0)
    attention_channels: int = 256
    dtype: Any = jnp.float32
    remat_trunk: bool = False  # trade trunk compute for memory at large crops

    def check_fields(self) -> None:
        """Raise ValueError on a bad field; create_model calls it so a bad model fails at creation,
        not at its first trace (setup calls it too, for models built from the classes directly)."""
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {self.num_classes!r}")
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {self.attention!r}")
        if not 0 < self.lo_scale < 1:
            raise ValueError(f"lo_scale must be in (0, 1), got {self.lo_scale!r}")
        if self.attention == "explicit":
            multiscale.validate_scales(self.explicit_scales)

    def _setup_attention(self):
        if self.attention == "hierarchical":
            self.scale_attn = ScaleAttentionHead(self.attention_channels, self.dtype)
        elif self.attention == "explicit":
            self.explicit_attn = ExplicitAttentionHead(len(self.explicit_scales),
                                                       self.attention_channels, self.dtype)

    def _scale_output(self, x, logits, aux_logits, attn_features, train) -> dict:
        """Upsample stride-4 heads to the input size, as the reference's `_fwd` does."""
        size = x.shape[1:3]
        up = lambda t: None if t is None else ops.resize_bilinear(t.astype(jnp.float32), size)
        attention = None
        if self.attention == "hierarchical":
            attention = up(self.scale_attn(attn_features, train))
        return {"logits": up(logits), "aux_logits": up(aux_logits), "attention": attention,
                "features": attn_features}

    def __call__(self, images: jax.Array, *, train: bool = False,
                 scales: Sequence[float] | None = None, fusion: str = "hierarchical") -> dict:
        if self.attention == "explicit":
            return self.explicit(images, train=train)
        if scales is None:
            if self.attention == "hierarchical":
                return self.two_scale(images, train=train)
            return _public(self.one_scale(images, train))
        return self.multi_scale(images, scales, fusion=fusion, train=train)

    def two_scale(self, images: jax.Array, train: bool = False) -> dict:
        """Training forward: lo_scale and 1.0, fused by the lower scale's attention."""
        lo = _public(self.one_scale(ops.rescale(images, self.lo_scale), train))
        hi = _public(self.one_scale(images, train))
        return {**multiscale.two_scale_fuse(lo, hi), "per_scale": {self.lo_scale: lo, 1.0: hi}}

    def multi_scale(self, images: jax.Array, scales: Sequence[float], fusion: str = "hierarchical",
                    train: bool = False) -> dict:
        """Inference over several scales, evaluated from the largest down. Hierarchical fusion
        needs 1.0 among them; avg and max take any and return logits at the input's size."""
        scales = multiscale.validate_scales(scales, require_one=fusion == "hierarchical")
        multiscale.check_fusion(fusion, self.attention, len(scales))
        per_scale = {s: _public(self.one_scale(ops.rescale(images, s), train))
                     for s in sorted(scales, reverse=True)}
        fused = (multiscale.hierarchical_fuse(per_scale) if fusion == "hierarchical" else
                 multiscale.FUSIONS[fusion](per_scale, size=images.shape[1:3]))
        return {**fused, "per_scale": per_scale}

    def explicit(self, images: jax.Array, train: bool = False) -> dict:
        """Explicit attention baseline: every scale's features -> one softmax over the scales."""
        scales = multiscale.validate_scales(self.explicit_scales)
        outs = {s: self.one_scale(ops.rescale(images, s), train) for s in scales}
        target = outs[1.0]["features"]
        stacked = jnp.concatenate([ops.resize_like(outs[s]["features"], target) for s in scales], -1)
        weights = self.explicit_attn(stacked, train)
        per_scale = {s: _public(o) for s, o in outs.items()}
        fused = multiscale.explicit_fuse(per_scale, weights, scales)
        return {**fused, "per_scale": per_scale, "scale_weights": ops.resize_like(weights, fused["logits"])}


def _public(out: dict) -> dict:
    """A scale output without the internal attention-head features."""
    return {k: v for k, v in out.items() if k != "features"}


class OCRNet(MultiScaleSegmenter):
    """HRNetV2 + OCR (the paper's main model), with or without scale attention."""
    trunk: HRNetSpec = HRNET_SPECS["w48"]
    ocr_mid_channels: int = 512
    ocr_key_channels: int = 256
    ocr_dropout: float = 0.05
    trunk_init: str = "reference"  # hrnet.TRUNK_INITS: "he" for training from scratch

    def setup(self):
        self.check_fields()
        self.backbone = HRNet(self.trunk, self.dtype, remat=self.remat_trunk, init=self.trunk_init)
        self.ocr = OCRBlock(self.num_classes, self.ocr_mid_channels, self.ocr_key_channels,
                            self.ocr_dropout, self.dtype)
        self._setup_attention()

    def check_fields(self) -> None:
        super().check_fields()
        if self.trunk_init not in TRUNK_INITS:
            raise ValueError(f"trunk_init must be one of {tuple(TRUNK_INITS)}, got {self.trunk_init!r}")

    def one_scale(self, x: jax.Array, train: bool = False) -> dict:
        trunk_feats = self.backbone(x, train)
        cls_logits, aux_logits, ocr_feats = self.ocr(trunk_feats, train)
        return self._scale_output(x, cls_logits, aux_logits, ocr_feats, train)


class DeepLabV3Plus(MultiScaleSegmenter):
    """ResNet-50 (output stride 8) + DeepLabV3+: the paper's ablation model. No aux head."""
    trunk: ResNetSpec = RESNET_SPECS["50"]
    aspp_channels: int = 256
    low_level_channels: int = 48
    decoder_channels: int = 256

    def setup(self):
        self.check_fields()
        conv = lambda f, k, **kw: ops.conv(f, k, dtype=self.dtype, **kw)
        bn = lambda: ops.batch_norm(None, dtype=self.dtype)
        final_init = ops.kaiming_normal_fan_in()  # the reference calls initialize_weights(final)
        self.backbone = ResNetOS8(self.trunk, self.dtype, remat=self.remat_trunk)
        self.aspp = ASPP(self.aspp_channels, dtype=self.dtype)
        self.bot_aspp = conv(self.aspp_channels, 1)
        self.bot_fine = conv(self.low_level_channels, 1)
        # Named as the reference's nn.Sequential `final` (indices 2 and 5 are ReLUs).
        self.final_0 = conv(self.decoder_channels, 3, kernel_init=final_init)
        self.final_1 = bn()
        self.final_3 = conv(self.decoder_channels, 3, kernel_init=final_init)
        self.final_4 = bn()
        self.final_6 = conv(self.num_classes, 1, kernel_init=final_init)
        self._setup_attention()

    def one_scale(self, x: jax.Array, train: bool = False) -> dict:
        low_level, high_level = self.backbone(x, train)
        conv_aspp = self.bot_aspp(self.aspp(high_level, train))
        conv_s2 = self.bot_fine(low_level)
        decoder_in = jnp.concatenate([conv_s2, ops.resize_like(conv_aspp, conv_s2)], axis=-1)
        y = nn.relu(self.final_1(self.final_0(decoder_in), use_running_average=not train))
        y = nn.relu(self.final_4(self.final_3(y), use_running_average=not train))
        logits = self.final_6(y)
        return self._scale_output(x, logits, None, decoder_in, train)
