"""Multi-scale fusion as pure functions over per-scale model outputs.

A *scale output* is a dict with
  "logits"      [B, h, w, K] float32, semantic logits at that scale's input size,
  "aux_logits"  [B, h, w, K] float32 or None (OCR's auxiliary head),
  "attention"   [B, h, w, 1] float32 in (0, 1) or None (the scale-attention head).

The paper's idea (Tao et al. 2020, eq. 1): a lower scale predicts, per pixel, how much to trust
itself against the next higher scale. Because the attention is *relative between adjacent
scales*, training on two scales suffices and inference can chain any set of scales.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from hmsa_jax.ops import resize_bilinear, resize_like

ScaleOutput = dict
FUSED_KEYS = ("logits", "aux_logits")
# The largest inference scale accepted: the paper uses 0.25..2.0; memory grows with scale^2, so
# 8.0 already means 64x the pixels of the image (checked before anything is compiled).
MAX_SCALE = 8.0


def validate_scales(scales: Sequence[float], require_one: bool = True) -> tuple[float, ...]:
    """Scales as floats; raises naming the value when one is non-positive, infinite, above
    MAX_SCALE, repeated, or (`require_one`: hierarchical fusion) 1.0 is absent."""
    try:
        scales = tuple(float(s) for s in scales)
    except (TypeError, ValueError) as e:
        raise ValueError(f"scales must be a list of numbers, got {scales!r}") from e
    bad = [s for s in scales if not s > 0]
    if bad:
        raise ValueError(f"scales must be positive, got {bad} in {list(scales)}")
    bad = [s for s in scales if not math.isfinite(s) or s > MAX_SCALE]
    if bad:
        raise ValueError(f"scales must be finite and at most {MAX_SCALE:g} (memory grows with "
                         f"scale squared), got {bad} in {list(scales)}")
    if len(set(scales)) != len(scales):
        raise ValueError(f"scales must not repeat, got {list(scales)}")
    if require_one and 1.0 not in scales:
        raise ValueError(f"scales must contain 1.0 for hierarchical fusion, got {list(scales)}: "
                         f"each scale's attention weighs it against the next larger scale up to "
                         f"1.0x, as trained (lo_scale against 1.0x), and the fused result is the "
                         f"1.0x prediction refined; avg and max fusion take any scales")
    return scales


def _mix(running: ScaleOutput, mix_one: Callable) -> dict:
    return {k: None if running.get(k) is None else mix_one(k) for k in FUSED_KEYS}


def two_scale_fuse(lo: ScaleOutput, hi: ScaleOutput) -> dict:
    """The training fuse, paper eq. 1: P = U(a_lo * P_lo) + (1 - U(a_lo)) * P_hi.

    U resizes to the higher scale's size. The product comes before the upsample, as in the
    reference: U(a * P) is not U(a) * U(P). The same a_lo fuses the aux logits.
    """
    a_lo = lo["attention"]
    a_lo_up = resize_like(a_lo, hi["logits"])
    return _mix(hi, lambda k: resize_like(a_lo * lo[k], hi[k]) + (1.0 - a_lo_up) * hi[k])


def _attend(running: ScaleOutput, out: ScaleOutput, scale: float) -> dict:
    """One level of the hierarchy: scale `scale`'s output against the fusion of all higher scales."""
    a = out["attention"]
    if scale >= 1.0:
        # The running fusion is larger: bring it down to this scale, then mix here.
        return _mix(running, lambda k: a * out[k] + (1.0 - a) * resize_like(running[k], out[k]))
    # This scale is smaller than the 1.0 target: weight here, then upsample (as two_scale_fuse).
    a_up = resize_like(a, running["logits"])
    return _mix(running, lambda k: resize_like(a * out[k], running[k]) + (1.0 - a_up) * running[k])


def hierarchical_fuse(per_scale: Mapping[float, ScaleOutput]) -> dict:
    """N-scale inference: fuse(s_1 > ... > s_n) = attend(fuse(s_1 ... s_{n-1}), s_n).

    The largest scale starts the recursion and its attention is never used; every following
    scale attends against what the larger ones agreed on. For {0.5, 1.0} this is
    `two_scale_fuse`. The result has the size of the 1.0 scale.
    """
    scales = sorted(per_scale, reverse=True)

    def fuse_largest(n: int) -> dict:
        if n == 1:
            return {k: per_scale[scales[0]].get(k) for k in FUSED_KEYS}
        return _attend(fuse_largest(n - 1), per_scale[scales[n - 1]], scales[n - 1])

    return fuse_largest(len(scales))


def _has_all(per_scale: Mapping[float, ScaleOutput], key: str) -> bool:
    return all(out.get(key) is not None for out in per_scale.values())


def _pool(per_scale: Mapping[float, ScaleOutput], reduce: Callable, size: tuple[int, int] | None) -> dict:
    """Pools the logits, and the aux logits as well when every scale has them: trained this way
    the baselines keep OCR's auxiliary supervision, as hierarchical fusion does."""
    if size is None:
        size = per_scale[1.0]["logits"].shape[1:3]

    def pool(key):
        return reduce(jnp.stack([resize_bilinear(out[key], size) for out in per_scale.values()]), axis=0)

    return {k: pool(k) if _has_all(per_scale, k) else None for k in FUSED_KEYS}


def average_fuse(per_scale: Mapping[float, ScaleOutput], size: tuple[int, int] | None = None) -> dict:
    """Baseline: mean of the per-scale logits, each resized to `size` (the input's size; None:
    the 1.0 scale's size, which is the same). Any scales, 1.0 or not."""
    return _pool(per_scale, jnp.mean, size)


def max_fuse(per_scale: Mapping[float, ScaleOutput], size: tuple[int, int] | None = None) -> dict:
    """Baseline: element-wise max of the per-scale logits, each resized to `size` (as average_fuse)."""
    return _pool(per_scale, jnp.max, size)


def explicit_fuse(per_scale: Mapping[float, ScaleOutput], weights: jax.Array,
                  scales: Sequence[float]) -> dict:
    """Explicit attention (Chen et al. 2016): sum_n w_n * U(P_n), weights [B, H, W, N] summing to 1."""
    target = per_scale[1.0]["logits"]
    weights = resize_like(weights, target)

    def weigh(key):
        return sum(weights[..., i:i + 1] * resize_like(per_scale[s][key], target) for i, s in enumerate(scales))

    # The aux logits are weighed as well when every scale has them, as in hierarchical fusion.
    return {k: weigh(k) if _has_all(per_scale, k) else None for k in FUSED_KEYS}


FUSIONS: dict[str, Callable] = {
    "hierarchical": hierarchical_fuse,
    "avg": average_fuse,
    "max": max_fuse,
}


def fusion_fits(fusion: str, attention: str, num_scales: int) -> bool:
    """Whether a model with `attention` ("hierarchical", "explicit" or "none") can fuse
    `num_scales` scales by `fusion`: hierarchical fusion of several scales chains the
    scale-attention head's outputs, so it needs that head; avg and max fit any model, one scale
    needs no fusion, and an explicit-attention model weighs its fixed scales itself."""
    return fusion != "hierarchical" or num_scales < 2 or attention in ("hierarchical", "explicit")


def check_fusion(fusion: str, attention: str, num_scales: int, error: type[Exception] = ValueError,
                 name: str = "fusion", model: str = "this model") -> None:
    """Raise `error` (the caller's type for its kind of mistake: ConfigError for a config,
    InferenceError for inference options) when `fusion` is unknown or does not fit the model
    (`fusion_fits`). `name` is the setting as its user wrote it, `model` what to call the model."""
    if fusion not in FUSIONS:
        raise error(f"{name}={fusion!r}; expected one of {tuple(FUSIONS)}")
    if not fusion_fits(fusion, attention, num_scales):
        raise error(f"{name}='hierarchical' needs a model with attention='hierarchical' (the scale-"
                    f"attention head); {model} has attention={attention!r}: use 'avg' or 'max', "
                    f"or one scale")
