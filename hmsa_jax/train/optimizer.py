"""SGD with momentum, weight decay and per-step polynomial learning-rate decay, as optax chains.

Reproduces torch.optim.SGD(lr, momentum, weight_decay, nesterov) stepped with a LambdaLR poly
schedule: the weight decay is added to the gradient before the momentum buffer, the momentum
buffer starts at the first gradient, and the learning rate multiplies the buffer.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

# A pytree of bools shaped like the parameters, or a function params -> such a pytree.
DecayMask = Any | Callable[[Any], Any]


def poly_schedule(
    base_lr: float, total_steps: int, power: float = 2.0, warmup_steps: int = 0, end_lr: float = 0.0
) -> optax.Schedule:
    """Polynomial decay per step, with an optional linear warm-up.

    step < warmup_steps:  lr = base_lr * step / warmup_steps (from 0).
    otherwise:            lr = end_lr + (base_lr - end_lr) * (1 - t)**power,
                          t = (step - warmup_steps) / (total_steps - warmup_steps), clipped to [0, 1].
    Without warm-up this is the reference's base_lr * (1 - step / total_steps)**power.
    Built from optax.polynomial_schedule, joined after the warm-up by optax.join_schedules.
    """
    if total_steps < 1:
        raise ValueError(f"poly_schedule: total_steps must be >= 1; got {total_steps}")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"poly_schedule: warmup_steps must be in [0, total_steps={total_steps}); got {warmup_steps}")
    if power <= 0:
        raise ValueError(f"poly_schedule: power must be > 0; got {power}")
    decay = optax.polynomial_schedule(base_lr, end_lr, power, total_steps - warmup_steps)
    if warmup_steps == 0:
        return decay
    # Written as base_lr * step / warmup (not optax.linear_schedule's base - base * (1 - step /
    # warmup)), which rounds differently by an ulp on some steps.
    warmup = lambda step: base_lr * jnp.asarray(step, jnp.float32) / warmup_steps
    return optax.join_schedules([warmup, decay], [warmup_steps])


def kernel_only_decay_mask(params: Any) -> Any:
    """Decay mask that decays conv/dense kernels only (no biases, no BatchNorm scales/biases).

    Flax names those leaves "kernel"; every other leaf (bias, scale, embeddings...) is excluded.
    """

    def is_kernel(path, _):
        last = path[-1]
        return getattr(last, "key", getattr(last, "name", None)) == "kernel"

    return jax.tree_util.tree_map_with_path(is_kernel, params)


def make_optimizer(
    *,
    learning_rate: float,
    total_steps: int,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    nesterov: bool = False,
    poly_power: float = 2.0,
    warmup_steps: int = 0,
    end_lr: float = 0.0,
    weight_decay_mask: DecayMask | None = None,
    grad_clip_norm: float | None = None,
) -> optax.GradientTransformation:
    """torch.optim.SGD semantics with a per-step poly schedule (`poly_schedule`).

    Chain: [clip by global norm] -> add weight_decay * param (only where weight_decay_mask is
    True; None decays every parameter, as the reference) -> momentum -> scale by -lr(step).
    Clipping sees the raw gradient, as torch.nn.utils.clip_grad_norm_ before optimizer.step().
    For logging, the learning rate at step s is
    poly_schedule(learning_rate, total_steps, poly_power, warmup_steps, end_lr)(s).
    """
    if learning_rate <= 0:
        raise ValueError(f"make_optimizer: learning_rate must be > 0; got {learning_rate}")
    if not 0 <= momentum < 1:
        raise ValueError(f"make_optimizer: momentum must be in [0, 1); got {momentum}")
    if weight_decay < 0:
        raise ValueError(f"make_optimizer: weight_decay must be >= 0; got {weight_decay}")
    if nesterov and momentum == 0:
        raise ValueError("make_optimizer: nesterov=True needs momentum > 0 (as torch.optim.SGD)")
    if grad_clip_norm is not None and grad_clip_norm <= 0:
        raise ValueError(f"make_optimizer: grad_clip_norm must be > 0 or None; got {grad_clip_norm}")

    schedule = poly_schedule(learning_rate, total_steps, poly_power, warmup_steps, end_lr)
    transforms = []
    if grad_clip_norm is not None:
        transforms.append(optax.clip_by_global_norm(grad_clip_norm))
    if weight_decay > 0:
        transforms.append(optax.add_decayed_weights(weight_decay, mask=weight_decay_mask))
    transforms.append(optax.sgd(schedule, momentum=momentum or None, nesterov=nesterov))
    return optax.chain(*transforms)
