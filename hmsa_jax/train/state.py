"""TrainState: everything a training step reads and writes, as one pytree of arrays.

The model and optimiser are not in it (they are code, closed over by the step), so the state
can be saved, restored against an abstract copy of itself, and sharded leaf by leaf.
Parameters are float32 master weights whatever the compute dtype.
"""
from __future__ import annotations

import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


def _zero_count() -> jax.Array:
    return jnp.zeros((), jnp.int32)


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: training steps taken (batches consumed) so far
    params: Any
    batch_stats: Any
    opt_state: Any
    # Steps whose loss or gradient was not finite: skipped (state unchanged but for `step`).
    nonfinite_streak: jax.Array = flax.struct.field(default_factory=_zero_count)  # in a row, now
    skipped_steps: jax.Array = flax.struct.field(default_factory=_zero_count)  # in all

    @property
    def variables(self) -> dict:
        """What `model.apply` takes for inference."""
        return {"params": self.params, "batch_stats": self.batch_stats}


# No parameter or statistic depends on the image size, so the training state is initialised on
# images of at most this size: at a 1024x2048 crop the init would otherwise run the whole
# two-scale forward at that size once, only to throw the activations away.
INIT_SIZE = (64, 64)


def init_image_shape(crop_size, lo_scale: float = 0.5) -> tuple[int, int, int, int]:
    """[1, H, W, 3] for initialising a model trained on `crop_size` crops: no larger than the crop
    or INIT_SIZE, unless the lower training scale needs more to leave a pixel."""
    needed = math.ceil(1 / lo_scale)
    return (1, *(min(int(c), max(m, needed)) for c, m in zip(crop_size, INIT_SIZE)), 3)


def init_variables(model, rng: jax.Array, image_shape: tuple[int, int, int, int]) -> dict:
    """Model variables for images of `image_shape` [B, H, W, 3]. Multi-scale models create every
    head they train, since init runs the model's default (training) forward."""
    images = jnp.zeros(image_shape, jnp.float32)
    variables = model.init(rng, images, train=False)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def create_train_state(model, tx: optax.GradientTransformation, rng: jax.Array,
                       image_shape: tuple[int, int, int, int], variables: dict | None = None) -> TrainState:
    """A fresh state: initialised variables (or the given ones) and a zero optimiser state."""
    if variables is None:
        variables = init_variables(model, rng, image_shape)
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), variables["params"])
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables["batch_stats"], opt_state=tx.init(params),
                      nonfinite_streak=_zero_count(), skipped_steps=_zero_count())


def abstract_train_state(model, tx, image_shape, sharding=None) -> TrainState:
    """The state's shapes and dtypes without computing it (`sharding` applied to every leaf):
    the target an Orbax restore fills in."""
    shapes = jax.eval_shape(lambda key: create_train_state(model, tx, key, image_shape),
                            jax.random.key(0))
    if sharding is None:
        return shapes
    return jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


__all__ = ["INIT_SIZE", "TrainState", "abstract_train_state", "create_train_state", "init_image_shape",
           "init_variables"]
