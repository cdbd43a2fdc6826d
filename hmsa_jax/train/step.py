"""The pure training step and its jitted, sharded form (the evaluation step, shared with
`hmsa eval`, is hmsa_jax.evaluate.eval_step).

`train_step(state, batch, dropout_key) -> (state, metrics)` is a pure function of its inputs:
the dropout key for step s is fold_in(dropout_key, s), so a run restarted from a checkpoint
draws the same masks as one that never stopped. Jitted over a mesh with the batch split over
"data" and the state replicated, XLA computes every BatchNorm's statistics over the global
batch (synchronised BN) and all-reduces the gradients.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from hmsa_jax import losses, ops, parallel
from hmsa_jax.train.state import TrainState

SCALE_MODES = ("model", "average")
# train.remat (checked by train.config): "trunk" is per-block rematerialisation inside the trunk,
# the model's remat_trunk field, set when the model is built. Wrapping the whole forward in one
# jax.checkpoint was measured to save nothing (the forward is recomputed as one unit, so the peak
# is the same).
REMAT_MODES = ("none", "trunk")
# runtime.transfer_guard: "" off; "log" / "disallow" an implicit host<->device copy inside a step
# (jax.transfer_guard; explicit device_put and device_get stay allowed). For debug runs.
TRANSFER_GUARD_MODES = ("", "log", "disallow")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    criterion: str = "rmi"  # one of losses.CRITERIA (losses.hmsa_training_loss refuses others)
    aux_weight: float = 0.4
    scale_supervision_weight: float = 0.05
    ignore_label: int = losses.DEFAULT_IGNORE_LABEL


@dataclasses.dataclass(frozen=True)
class StepConfig:
    loss: LossConfig = LossConfig()
    # "model": the model's own training forward (one scale, two-scale hierarchical attention,
    # or explicit attention). "average": the paper's averaging baseline, the model (attention
    # "none") run at lo_scale and 1.0 with the two logits averaged.
    scale_mode: str = "model"
    # Steps with a non-finite loss or gradient are always skipped. Once this many came in a
    # row (0: no limit), every later step is skipped too, so the run's state stays at the
    # last good one until the loop sees the streak and stops.
    max_nonfinite_steps: int = 0

    def __post_init__(self):
        if self.scale_mode not in SCALE_MODES:
            raise ValueError(f"train.scale_mode={self.scale_mode!r}; expected one of {SCALE_MODES}")


def training_forward(model, variables: dict, images: jax.Array, dropout_key: jax.Array,
                     scale_mode: str = "model") -> tuple[dict, dict]:
    """(model outputs, updated batch_stats) in training mode."""
    kwargs = {}
    if scale_mode == "average":
        kwargs = dict(scales=(model.lo_scale, 1.0), fusion="avg")
    outputs, updates = model.apply(variables, images, train=True, mutable=["batch_stats"],
                                   rngs={"dropout": dropout_key}, **kwargs)
    return outputs, updates["batch_stats"]


def training_loss(outputs: dict, labels: jax.Array, config: LossConfig) -> tuple[jax.Array, dict]:
    """The reference's loss on the fused prediction, plus each scale's own logits resized to the
    label size (two-scale training: [U(P_lo), P_hi]) when the model returns them."""
    per_scale = outputs.get("per_scale")
    per_scale_logits = None
    if per_scale and config.scale_supervision_weight:
        per_scale_logits = [ops.resize_like(per_scale[s]["logits"], outputs["logits"])
                            for s in sorted(per_scale)]
    return losses.hmsa_training_loss(
        outputs["logits"], outputs.get("aux_logits"), per_scale_logits, labels,
        criterion=config.criterion, aux_weight=config.aux_weight,
        scale_supervision_weight=config.scale_supervision_weight, ignore_label=config.ignore_label)


def train_step(state: TrainState, batch: dict, dropout_key: jax.Array, *, model,
               tx: optax.GradientTransformation, config: StepConfig,
               learning_rate_fn: Callable | None = None) -> tuple[TrainState, dict]:
    images, labels = ops.prepare_images(batch["image"]), batch["label"]
    key = jax.random.fold_in(dropout_key, state.step)

    def forward(params, batch_stats):
        return training_forward(model, {"params": params, "batch_stats": batch_stats}, images, key,
                                config.scale_mode)

    def loss_fn(params):
        outputs, batch_stats = forward(params, state.batch_stats)
        total, components = training_loss(outputs, labels, config.loss)
        return total, (components, batch_stats)

    grads, (components, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    apply = skip_nonfinite_decision(components["total"], grad_norm, state.nonfinite_streak,
                                    config.max_nonfinite_steps)
    metrics = {f"loss/{k}" if k != "total" else "loss": v for k, v in components.items()}
    metrics["grad_norm"] = grad_norm
    if learning_rate_fn is not None:
        # The optimiser's schedule advances only on applied updates.
        metrics["learning_rate"] = learning_rate_fn(state.step - state.skipped_steps)
    skipped = jnp.logical_not(apply).astype(jnp.int32)
    new_state = state.replace(
        step=state.step + 1,
        params=select_tree(apply, params, state.params),
        batch_stats=select_tree(apply, batch_stats, state.batch_stats),
        opt_state=select_tree(apply, opt_state, state.opt_state),
        nonfinite_streak=jnp.where(apply, 0, state.nonfinite_streak + 1).astype(jnp.int32),
        skipped_steps=state.skipped_steps + skipped)
    metrics["nonfinite"] = skipped
    metrics["skipped_steps"] = new_state.skipped_steps
    return new_state, metrics


def skip_nonfinite_decision(loss: jax.Array, grad_norm: jax.Array, streak: jax.Array,
                            max_nonfinite_steps: int) -> jax.Array:
    """Whether to apply this step's update: the loss and the gradient norm (non-finite iff some
    gradient is) are finite, and the run has not reached its limit of skipped steps in a row.
    Decided on replicated values inside the step, so every process decides the same."""
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if max_nonfinite_steps:
        finite = finite & (streak < max_nonfinite_steps)
    return finite


def select_tree(pred: jax.Array, on_true, on_false):
    return jax.tree_util.tree_map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def jit_train_step(model, tx, config: StepConfig, mesh: Mesh, learning_rate_fn=None) -> Callable:
    """train_step jitted over `mesh`: state replicated and donated, batch split over "data"."""
    step = functools.partial(train_step, model=model, tx=tx, config=config,
                             learning_rate_fn=learning_rate_fn)
    replicated = parallel.replicated(mesh)
    return jax.jit(step, in_shardings=(replicated, parallel.batch_sharded(mesh), replicated),
                   out_shardings=(replicated, replicated), donate_argnums=(0,))


def transfer_guard(mode: str):
    """A context for one step: jax.transfer_guard(mode), or nothing when mode is ""."""
    if mode not in TRANSFER_GUARD_MODES:
        raise ValueError(f"transfer_guard={mode!r}; expected one of {TRANSFER_GUARD_MODES}")
    return jax.transfer_guard(mode) if mode else contextlib.nullcontext()


__all__ = ["LossConfig", "REMAT_MODES", "SCALE_MODES", "StepConfig", "TRANSFER_GUARD_MODES",
           "jit_train_step", "train_step", "training_forward", "training_loss",
           "transfer_guard"]
