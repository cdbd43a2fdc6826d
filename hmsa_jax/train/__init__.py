"""Training: optimiser and schedule (train step, loop and checkpoints live beside them)."""
from hmsa_jax.train.optimizer import kernel_only_decay_mask, make_optimizer, poly_schedule

__all__ = ["kernel_only_decay_mask", "make_optimizer", "poly_schedule"]
