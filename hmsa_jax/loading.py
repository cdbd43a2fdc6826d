"""A checkpoint -> the model it holds, its variables on devices, its meta and class table.

    loaded = load_model("/tmp/hmsa_demo")     # a training workdir, its checkpoints/, one step
                                              # folder, or a `hmsa convert` output
    loaded.model.apply(loaded.variables, images, train=False, scales=(0.5, 1.0, 2.0))

The model is built from the checkpoint's own metadata and its variables are checked against it
by path and shape before anything is read. Only params and batch_stats are read, never the
optimiser state. A `hmsa convert` output has a training step's layout (step 0 with `state` and
`meta` items), so it loads the same way.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util
from jax.sharding import Sharding

from hmsa_jax import checkpoint as checkpoint_lib
from hmsa_jax import parallel
from hmsa_jax.data import labels as label_tables
from hmsa_jax.data.labels import ClassTable
from hmsa_jax.data.sources.scale_bench import CLASSES as SCALE_BENCH_CLASSES
from hmsa_jax.data.sources.synthetic import ALL_CLASSES, synthetic_classes
from hmsa_jax.models import create_model, list_models


@dataclasses.dataclass
class LoadedModel:
    """A model, its variables (placed on devices) and what the checkpoint says about it."""
    model: Any
    variables: dict
    meta: dict
    classes: ClassTable
    path: str  # the step folder read

    @property
    def num_classes(self) -> int:
        return self.classes.num_classes

    @property
    def model_name(self) -> str:
        return self.meta["model"]


def class_table_for(meta: dict) -> ClassTable:
    """The class table (names and colours) of a checkpoint: the colours its meta records (the
    training's own table, so pictures match those of the run), else recognised from the names."""
    num_classes = int(meta["num_classes"])
    names = meta.get("class_names")
    cityscapes = label_tables.cityscapes_classes()
    if names is None:
        if num_classes == cityscapes.num_classes:
            return cityscapes
        if num_classes == label_tables.MAPILLARY_NUM_CLASSES:
            return label_tables.mapillary_default_classes()[0]
        names = [f"class_{k}" for k in range(num_classes)]
    names = tuple(names)
    if len(names) != num_classes:
        raise checkpoint_lib.CheckpointError(
            f"checkpoint meta lists {len(names)} class names for num_classes={num_classes}")
    colors = meta.get("class_colors")
    if colors is not None and len(colors) == num_classes:
        return ClassTable("checkpoint", names, tuple(tuple(int(v) for v in c) for c in colors))
    if names == cityscapes.names:
        return cityscapes
    if names == SCALE_BENCH_CLASSES.names:
        return SCALE_BENCH_CLASSES
    if 4 <= num_classes <= len(ALL_CLASSES) and names == synthetic_classes(num_classes).names:
        return synthetic_classes(num_classes)
    return ClassTable("checkpoint", names, label_tables.hue_colors(num_classes))


def build_model_from_meta(meta: dict, dtype: str | None = None):
    """The model a checkpoint's meta describes (name, class count, dtype and lo_scale of its config)."""
    name = meta.get("model")
    if name not in list_models():
        raise checkpoint_lib.CheckpointError(f"checkpoint meta names model {name!r}; expected one of "
                                             f"{', '.join(list_models())}")
    model_config = (meta.get("config") or {}).get("model", {})
    overrides = {}
    if model_config.get("lo_scale", 0.5) != 0.5:
        overrides["lo_scale"] = float(model_config["lo_scale"])
    return create_model(name, num_classes=int(meta["num_classes"]),
                        dtype=jnp.dtype(dtype or model_config.get("dtype", "float32")), **overrides)


def abstract_variables(model, sharding: Sharding | None = None) -> dict:
    """{"params", "batch_stats"} shapes and dtypes of `model`, nothing computed."""
    images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), images)
    shapes = {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})}
    return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                                  shapes)


def _flat_shapes(tree: dict) -> dict[str, tuple]:
    flat = {}
    for collection in ("params", "batch_stats"):
        for path, leaf in traverse_util.flatten_dict(dict(tree.get(collection) or {}), sep="/").items():
            flat[f"{collection}/{path}"] = tuple(leaf.shape)
    return flat


def check_variables_fit(stored: dict, expected: dict, where: str, model_name: str) -> None:
    """Raise CheckpointError listing variables missing, unexpected or of another shape."""
    have, want = _flat_shapes(stored), _flat_shapes(expected)
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    reshaped = sorted(k for k in set(have) & set(want) if have[k] != want[k])
    if not (missing or unexpected or reshaped):
        return
    detail = []
    if reshaped:
        detail.append(f"{len(reshaped)} of another shape, e.g. {reshaped[0]}: checkpoint "
                      f"{list(have[reshaped[0]])} vs model {list(want[reshaped[0]])}")
    if missing:
        detail.append(f"{len(missing)} missing, e.g. {missing[0]}")
    if unexpected:
        detail.append(f"{len(unexpected)} not in the model, e.g. {unexpected[0]}")
    raise checkpoint_lib.CheckpointError(
        f"{where}: the variables do not fit model {model_name!r} ({'; '.join(detail)}); is it a "
        f"checkpoint of another architecture?")


def load_model(path: str, *, step: int | None = None, which: str = "latest",
               sharding: Sharding | None = None, expect_model: str | None = None,
               dtype: str | None = None) -> LoadedModel:
    """Restore a checkpoint for inference: params + batch_stats placed with `sharding` (default:
    replicated over this process's devices), on any device count. `expect_model` (a config's
    model name) must match the checkpoint's. The newest (or best) sound step is used: damaged
    ones are set aside on the way (hmsa_jax.checkpoint.load_usable)."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        raise checkpoint_lib.CheckpointError(f"{path}: no such checkpoint folder")
    sharding = sharding or parallel.replicated(parallel.make_mesh(local=True))
    load = functools.partial(_load_step, sharding=sharding, expect_model=expect_model, dtype=dtype)
    _, loaded = checkpoint_lib.load_usable(path, load, step, which)
    return loaded


def _load_step(step_dir: str, *, sharding: Sharding, expect_model: str | None,
               dtype: str | None) -> LoadedModel:
    meta = checkpoint_lib.read_meta(step_dir)
    if expect_model is not None and meta.get("model") != expect_model:
        raise checkpoint_lib.CheckpointError(
            f"{step_dir}: holds a {meta.get('model')!r} checkpoint, but the config asks for model "
            f"{expect_model!r}; pass the matching --config or checkpoint")
    model = build_model_from_meta(meta, dtype)
    stored = checkpoint_lib.stored_tree_metadata(os.path.join(step_dir, checkpoint_lib.STATE))
    check_variables_fit(stored, abstract_variables(model), step_dir, meta["model"])
    variables, meta = checkpoint_lib.read_variables(step_dir, sharding=sharding)
    variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    return LoadedModel(model, variables, meta, class_table_for(meta), step_dir)


__all__ = ["LoadedModel", "abstract_variables", "build_model_from_meta", "check_variables_fit",
           "class_table_for", "load_model"]
