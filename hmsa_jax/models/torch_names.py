"""The one-to-one map between our variable tree and the reference's PyTorch state dict.

Module names are the PyTorch ones with "." written as "_" before an index
(`stage3_2/fuse_layers_1_0_0/kernel` <-> `backbone.stage3.2.fuse_layers.1.0.0.weight`), so the
map is a rule, not a table. Layouts: conv kernels HWIO here, OIHW there.
"""
from __future__ import annotations

import re

import jax
import numpy as np

_LEAF_NAMES = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}


def torch_key(collection: str, path: tuple[str, ...]) -> str:
    """('params', ('backbone', 'layer1_0', 'conv1', 'kernel')) -> 'backbone.layer1.0.conv1.weight'."""
    leaf = _LEAF_NAMES.get((collection, path[-1]))
    if leaf is None:
        raise KeyError(f"no PyTorch counterpart for {collection}/{'/'.join(path)}")
    modules = [re.sub(r"_(\d+)", r".\1", name) for name in path[:-1]]
    return ".".join(modules + [leaf])


def to_torch_layout(value: np.ndarray) -> np.ndarray:
    """HWIO conv kernels -> OIHW; everything else unchanged."""
    return np.transpose(value, (3, 2, 0, 1)) if value.ndim == 4 else value


def from_torch_layout(value: np.ndarray) -> np.ndarray:
    """OIHW conv weights -> HWIO; everything else unchanged."""
    return np.transpose(value, (2, 3, 1, 0)) if value.ndim == 4 else value


def torch_state_shapes(variables) -> dict[str, tuple[int, ...]]:
    """{torch key: torch-layout shape} for a variables dict (arrays or ShapeDtypeStructs)."""
    shapes = {}
    for collection in ("params", "batch_stats"):
        flat = jax.tree_util.tree_flatten_with_path(variables.get(collection, {}))[0]
        for keypath, leaf in flat:
            path = tuple(k.key for k in keypath)
            shape = tuple(leaf.shape)
            shapes[torch_key(collection, path)] = (
                (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape)
    return shapes
