"""Models by name, as timm users expect: `create_model("hrnet48_ocr_mscale", num_classes=19)`.

Also the `hmsa models` command, which lists them with their parameter counts.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp

from hmsa_jax.models.hrnet import hrnet_spec
from hmsa_jax.models.resnet import resnet_spec
from hmsa_jax.models.segmenter import DeepLabV3Plus, MultiScaleSegmenter, OCRNet


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    build: Callable[..., MultiScaleSegmenter]
    description: str


def _ocrnet(width, attention, **kw):
    tiny = width == "tiny"
    small = dict(ocr_mid_channels=32, ocr_key_channels=16, attention_channels=16) if tiny else {}
    return OCRNet(trunk=hrnet_spec(width), attention=attention, **{**small, **kw})


def _deeplab(depth, attention, **kw):
    tiny = depth == "tiny"
    small = dict(aspp_channels=16, low_level_channels=8, decoder_channels=16,
                 attention_channels=16) if tiny else {}
    return DeepLabV3Plus(trunk=resnet_spec(depth), attention=attention, **{**small, **kw})


_MODELS: dict[str, ModelEntry] = {}
for _w in (48, 32, 18, "tiny"):
    _tag = f"hrnet{_w}" if _w != "tiny" else "hrnet_tiny"
    _MODELS[f"{_tag}_ocr_mscale"] = ModelEntry(
        functools.partial(_ocrnet, _w, "hierarchical"),
        f"HRNetV2-{_w if _w == 'tiny' else 'W' + str(_w)} + OCR + hierarchical scale attention")
    _MODELS[f"{_tag}_ocr"] = ModelEntry(
        functools.partial(_ocrnet, _w, "none"), f"HRNetV2-{_w if _w == 'tiny' else 'W' + str(_w)} + OCR, single scale")
    _MODELS[f"{_tag}_ocr_explicit"] = ModelEntry(
        functools.partial(_ocrnet, _w, "explicit"),
        f"HRNetV2-{_w if _w == 'tiny' else 'W' + str(_w)} + OCR + explicit attention (baseline)")
for _d in (50, "tiny"):
    _tag = f"resnet{_d}" if _d != "tiny" else "resnet_tiny"
    for _suffix, _mode, _what in (("_mscale", "hierarchical", "hierarchical scale attention"),
                                  ("", "none", "single scale"),
                                  ("_explicit", "explicit", "explicit attention (baseline)")):
        _MODELS[f"{_tag}_deeplabv3plus{_suffix}"] = ModelEntry(
            functools.partial(_deeplab, _d, _mode), f"ResNet-{_d} (OS 8) + DeepLabV3+, {_what}")


def list_models() -> list[str]:
    return list(_MODELS)


def create_model(name: str, *, num_classes: int = 19, dtype: Any = jnp.float32,
                 **overrides) -> MultiScaleSegmenter:
    """Build a model by name. `overrides` set any field (e.g. lo_scale=0.25, explicit_scales=...)."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(_MODELS)}")
    if isinstance(dtype, str):
        dtype = jnp.dtype(dtype)
    model = _MODELS[name].build(num_classes=num_classes, dtype=dtype, **overrides)
    model.check_fields()  # fail at creation, not at the first trace
    return model


def count_params(model: MultiScaleSegmenter, image_size: tuple[int, int] = (64, 64)) -> dict[str, int]:
    """Trainable parameter counts per top-level component, via jax.eval_shape (nothing computed)."""
    images = jax.ShapeDtypeStruct((1, *image_size, 3), jnp.float32)
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), images)
    counts = {name: sum(int(x.size) for x in jax.tree_util.tree_leaves(tree))
              for name, tree in variables["params"].items()}
    counts["total"] = sum(counts.values())
    return counts


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hmsa models", description=__doc__.splitlines()[0])
    parser.add_argument("--num-classes", type=int, default=19)
    parser.add_argument("--counts", action="store_true", help="also count parameters (slower)")
    args = parser.parse_args(argv)
    width = max(len(n) for n in _MODELS)
    if args.counts:
        print(f"counting parameters: each of the {len(_MODELS)} models is traced (seconds per "
              f"full-size model)", file=sys.stderr, flush=True)
    for name, entry in _MODELS.items():
        line = f"{name:<{width}}  {entry.description}"
        if args.counts:
            total = count_params(create_model(name, num_classes=args.num_classes))["total"]
            line += f"  [{total:,} params]"
        print(line, flush=True)  # one line per model as it is counted, also into a pipe
    return 0
