"""Which record (and which class centroid) each training sample of an epoch uses.

An epoch of `epoch_size` samples is: a `class_uniform_fraction` share spread evenly over the
classes that have centroids (each sample a random centroid of its class, classes without any
skipped), the rest drawn without repetition from the records. With auto-labelled extras,
each of those uniform draws picks an extra record with probability `extra_probability`.
The plan is a pure function of (seed, epoch): any worker can compute any sample.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from hmsa_jax.data.class_uniform import Centroids
from hmsa_jax.data.errors import DataError

_PLAN_STREAM = 0x5A3D  # separates the plan's random stream from augmentation's


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    record: np.ndarray  # int64 [epoch_size]
    centroid_y: np.ndarray  # int32, -1 where the sample has no centroid
    centroid_x: np.ndarray


def _draw_without_repetition(rng: np.random.Generator, population: int, count: int) -> np.ndarray:
    """`count` indices of 0..population-1, cycling through fresh permutations."""
    if count == 0:
        return np.zeros(0, np.int64)
    reps = -(-count // population)
    return np.concatenate([rng.permutation(population) for _ in range(reps)])[:count]


def build_epoch_plan(epoch: int, *, seed: int, epoch_size: int, num_primary: int,
                     centroids: Centroids | None = None, class_uniform_fraction: float = 0.0,
                     num_extra: int = 0, extra_probability: float = 0.0,
                     shuffle: bool = True) -> EpochPlan:
    if num_primary < 1:
        raise DataError("the training split is empty: no records to sample")
    if not 0 <= class_uniform_fraction <= 1 or not 0 <= extra_probability <= 1:
        raise DataError(f"class_uniform_fraction={class_uniform_fraction}, extra_probability="
                        f"{extra_probability}; expected values in [0, 1]")
    rng = np.random.default_rng([seed, _PLAN_STREAM, epoch])
    records, cys, cxs = [], [], []

    present = centroids.classes_present() if centroids is not None and class_uniform_fraction > 0 else []
    per_class = int(epoch_size * class_uniform_fraction) // len(present) if len(present) else 0
    for cls in present:
        rows = centroids.rows_of_class(cls)
        chosen = rows[rng.choice(len(rows), per_class, replace=per_class > len(rows))]
        records.append(centroids.record[chosen].astype(np.int64))
        cys.append(centroids.y[chosen])
        cxs.append(centroids.x[chosen])

    num_uniform = epoch_size - per_class * len(present)
    if num_extra > 0 and extra_probability > 0:
        is_extra = rng.uniform(size=num_uniform) < extra_probability
    else:
        is_extra = np.zeros(num_uniform, bool)
    uniform = np.empty(num_uniform, np.int64)
    uniform[~is_extra] = _draw_without_repetition(rng, num_primary, int((~is_extra).sum()))
    uniform[is_extra] = num_primary + _draw_without_repetition(rng, max(num_extra, 1), int(is_extra.sum()))
    records.append(uniform)
    cys.append(np.full(num_uniform, -1, np.int32))
    cxs.append(np.full(num_uniform, -1, np.int32))

    record, cy, cx = (np.concatenate(a) for a in (records, cys, cxs))
    order = rng.permutation(epoch_size) if shuffle else np.arange(epoch_size)
    return EpochPlan(record[order], cy[order].astype(np.int32), cx[order].astype(np.int32))
