"""The training step the benchmarks measure: the library's own `jit_train_step` on a 1-device
mesh (state replicated + donated, batch split over "data"), SGD + poly LR as in the recipe.

Arguments can be abstract (ShapeDtypeStruct: lower and analyse without allocating a
72M-parameter state) or concrete (to run it).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import common

SCHEMES = ("single", "hierarchical", "explicit")


def scheme_model_name(family: str, scheme: str) -> str:
    """('hrnet48', 'hierarchical') -> 'hrnet48_ocr_mscale'; resnet families use deeplabv3plus."""
    head = "ocr" if family.startswith("hrnet") else "deeplabv3plus"
    suffix = {"single": "", "hierarchical": "_mscale", "explicit": "_explicit"}[scheme]
    return f"{family}_{head}{suffix}"


@dataclasses.dataclass(frozen=True)
class StepSpec:
    model_name: str
    height: int
    width: int
    batch: int = 1
    dtype: str = "float32"
    remat: str = "none"  # none | trunk
    criterion: str = "ce"  # ce | rmi
    image_dtype: str = "float32"  # float32 (normalised on host) | uint8 (normalised on device)
    num_classes: int = 19
    scale_mode: str = "model"  # model | average (two scales averaged, attention-free model)


def spec_from_args(args, **fields) -> StepSpec:
    """The StepSpec of `common.add_step_arguments`' --model, --size and --batch, plus `fields`."""
    height, width = common.parse_size(args.size)
    return StepSpec(args.model, height, width, batch=args.batch, **fields)


def build_step(spec: StepSpec):
    """(jitted step, model, tx, mesh) for `spec`."""
    from hmsa_jax import create_model, parallel
    from hmsa_jax.train.optimizer import make_optimizer
    from hmsa_jax.train.step import LossConfig, StepConfig, jit_train_step

    overrides = {"remat_trunk": True} if spec.remat == "trunk" else {}
    model = create_model(spec.model_name, num_classes=spec.num_classes, dtype=jnp.dtype(spec.dtype),
                         **overrides)
    tx = make_optimizer(learning_rate=1e-2, total_steps=1000)
    mesh = parallel.make_mesh(1)
    config = StepConfig(loss=LossConfig(criterion=spec.criterion), scale_mode=spec.scale_mode)
    return jit_train_step(model, tx, config, mesh), model, tx, mesh


def abstract_args(spec: StepSpec, model, tx, mesh):
    """(state, batch, key) as ShapeDtypeStructs with the step's shardings."""
    from hmsa_jax import parallel
    from hmsa_jax.train.state import abstract_train_state

    shape = (spec.batch, spec.height, spec.width, 3)
    state = abstract_train_state(model, tx, shape, sharding=parallel.replicated(mesh))
    sharded = parallel.batch_sharded(mesh)
    batch = {"image": jax.ShapeDtypeStruct(shape, jnp.dtype(spec.image_dtype), sharding=sharded),
             "label": jax.ShapeDtypeStruct(shape[:3], jnp.int32, sharding=sharded)}
    return state, batch, jax.random.key(0)


def synthetic_batch(spec: StepSpec, seed: int = 0) -> dict:
    """A host batch of the step's shapes: random pixels, random labels (some ignored)."""
    rng = np.random.default_rng(seed)
    shape = (spec.batch, spec.height, spec.width, 3)
    if spec.image_dtype == "uint8":
        image = rng.integers(0, 256, shape, dtype=np.uint8)
    else:
        image = rng.standard_normal(shape, dtype=np.float32)
    label = rng.integers(0, spec.num_classes + 1, shape[:3]).astype(np.int32)
    label[label == spec.num_classes] = 255
    return {"image": image, "label": label}


def compile_step(spec: StepSpec, compiler_options: dict | None = None):
    """(compiled step, model, state, batch, key, compile seconds) on concrete inputs;
    `compiler_options` as `jax.stages.Lowered.compile` takes them (e.g. XLA CPU's opt level)."""
    import time

    from hmsa_jax import parallel

    step, model, tx, mesh = build_step(spec)
    state = concrete_state(spec, model, tx, mesh)
    batch = parallel.global_batch(synthetic_batch(spec), mesh)
    key = jax.random.key(0)
    started = time.perf_counter()
    compiled = step.lower(state, batch, key).compile(compiler_options)
    return compiled, model, state, batch, key, time.perf_counter() - started


def concrete_state(spec: StepSpec, model, tx, mesh):
    from hmsa_jax import parallel
    from hmsa_jax.train.state import create_train_state

    # Initialise at a small size: parameter shapes do not depend on the image size.
    init = jax.jit(lambda key: create_train_state(model, tx, key, (1, 64, 64, 3)))
    return parallel.replicate(init(jax.random.key(0)), mesh)
