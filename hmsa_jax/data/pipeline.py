"""Grain pipelines: an endless, resumable training iterator and full-resolution eval batches.

Batch layout across processes: global batch b holds samples b*B .. b*B+B-1 and process p of P
receives the contiguous rows p*B/P .. (p+1)*B/P-1, which is the order
`jax.make_array_from_process_local_data` concatenates process-local data in over a 1-D
"data" mesh of `jax.devices()`. The global batches are therefore the same for any number of
processes, and every sample appears exactly once across them.

Determinism: sample g of the run is record `plan(epoch)[g % epoch_size]`, augmented with a
generator seeded by (seed, g); neither depends on workers, threads or processes. The iterator's
`get_state()` / `set_state()` (or Orbax with `grain.checkpoint.CheckpointSave/Restore`) resume it
exactly, for the same worker count.
"""
from __future__ import annotations

import dataclasses

import grain
import jax
import numpy as np
from absl import flags

from hmsa_jax.data import transforms
from hmsa_jax.data.class_uniform import Centroids, EpochPlan, build_epoch_plan
from hmsa_jax.data.errors import DataError
from hmsa_jax.data.labels import IGNORE_LABEL
from hmsa_jax.data.sources.base import Source

_AUGMENT_STREAM = 0xA06
ENDLESS = 1 << 40  # samples in an "endless" training stream (about 10^12)


def _process_layout(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        # Only the main process asks JAX; workers get explicit numbers.
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise DataError(f"process_index={process_index} outside 0..{process_count - 1}")
    return int(process_index), int(process_count)


def _local_batch_size(global_batch_size: int, process_count: int, what: str) -> int:
    if global_batch_size < 1 or global_batch_size % process_count:
        raise DataError(f"{what}={global_batch_size} must be a positive multiple of the process "
                        f"count {process_count}")
    return global_batch_size // process_count


@dataclasses.dataclass(frozen=True)
class _GlobalIndex:
    """Local position k of process p -> global sample index (contiguous rows per process)."""

    global_batch: int
    local_batch: int
    process_index: int

    def __call__(self, position: int) -> int:
        batch, row = divmod(int(position), self.local_batch)
        return batch * self.global_batch + self.process_index * self.local_batch + row


class TrainSample:
    """Global sample index -> augmented training element. Picklable; caches one epoch plan."""

    def __init__(self, source: Source, augment: transforms.AugmentConfig, *, seed: int,
                 epoch_size: int, num_primary: int, centroids: Centroids | None,
                 class_uniform_fraction: float, extra_probability: float):
        self.source, self.augment, self.seed = source, augment, int(seed)
        self.plan_args = dict(seed=int(seed), epoch_size=int(epoch_size), num_primary=int(num_primary),
                              centroids=centroids, class_uniform_fraction=float(class_uniform_fraction),
                              num_extra=len(source) - int(num_primary),
                              extra_probability=float(extra_probability))
        self.epoch_size = int(epoch_size)
        self._plan: tuple[int, EpochPlan] | None = None
        build_epoch_plan(0, **self.plan_args)  # validate the settings in the caller's process

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_plan"] = None
        return state

    def plan(self, epoch: int) -> EpochPlan:
        if self._plan is None or self._plan[0] != epoch:
            self._plan = (epoch, build_epoch_plan(epoch, **self.plan_args))
        return self._plan[1]

    def spec(self, sample: int) -> tuple[int, tuple[int, int] | None]:
        epoch, position = divmod(int(sample), self.epoch_size)
        plan = self.plan(epoch)
        cy, cx = int(plan.centroid_y[position]), int(plan.centroid_x[position])
        return int(plan.record[position]), (None if cy < 0 else (cy, cx))

    def __call__(self, sample: int) -> dict:
        record_index, centroid = self.spec(sample)
        record = self.source.load(record_index)
        rng = np.random.default_rng([self.seed, _AUGMENT_STREAM, int(sample)])
        return transforms.augment(record["image"], record["label"], rng, self.augment, centroid)


def _stack(elements: list[dict]) -> dict:
    shapes = {tuple(e["image"].shape) for e in elements}
    if len(shapes) > 1:
        detail = ", ".join(f"record {e.get('index', '?')}: {e['image'].shape[0]}x{e['image'].shape[1]}"
                           for e in elements)
        raise DataError(f"a batch mixes image sizes ({detail}); set data.eval.pad_to to a size "
                        f"that holds every image, or use a batch of 1 per process")
    return {key: np.stack([e[key] for e in elements]) for key in elements[0]}


def _finish(dataset: grain.MapDataset, *, num_workers: int, read_threads: int,
            prefetch: int) -> grain.IterDataset:
    iter_ds = dataset.to_iter_dataset(grain.ReadOptions(num_threads=max(1, read_threads),
                                                        prefetch_buffer_size=max(1, prefetch)))
    if num_workers > 0:  # Grain's worker processes read an absl flag
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=num_workers, per_worker_buffer_size=max(1, prefetch)))
    return iter_ds


def train_dataset(source: Source, augment: transforms.AugmentConfig, *, global_batch_size: int,
                  seed: int = 0, epoch_size: int | None = None, num_primary: int | None = None,
                  centroids: Centroids | None = None, class_uniform_fraction: float = 0.0,
                  extra_probability: float = 0.0, process_index: int | None = None,
                  process_count: int | None = None, num_workers: int = 0, read_threads: int = 2,
                  prefetch: int = 2, num_samples: int = ENDLESS) -> grain.IterDataset:
    """This process's share of the training stream, batched: {"image": [b,h,w,3] float32,
    "label": [b,h,w] int32} with b = global_batch_size / process_count.

    `source` records 0..num_primary-1 are the fine set (an epoch is `epoch_size` samples,
    default num_primary); records from num_primary on are auto-labelled extras, drawn with
    `extra_probability` (see class_uniform.py). `centroids` enable class-uniform sampling.
    """
    process_index, process_count = _process_layout(process_index, process_count)
    local_batch = _local_batch_size(global_batch_size, process_count, "global_batch_size")
    num_primary = len(source) if num_primary is None else int(num_primary)
    sample = TrainSample(source, augment, seed=seed, epoch_size=epoch_size or num_primary,
                         num_primary=num_primary, centroids=centroids,
                         class_uniform_fraction=class_uniform_fraction,
                         extra_probability=extra_probability)
    local_count = (num_samples // global_batch_size) * local_batch
    dataset = (grain.MapDataset.range(local_count)
               .map(_GlobalIndex(global_batch_size, local_batch, process_index))
               .map(sample)
               .batch(local_batch, drop_remainder=True, batch_fn=_stack))
    return _finish(dataset, num_workers=num_workers, read_threads=read_threads, prefetch=prefetch)


def num_eval_batches(num_records: int, global_batch_size: int) -> int:
    return -(-num_records // global_batch_size)


@dataclasses.dataclass(frozen=True)
class EvalSample:
    """Global eval slot -> element; slots past the last record are padding (valid=False,
    label all ignore) so that every process runs the same number of batches."""

    source: Source
    pad_to: tuple[int, int] | None = None
    normalize: bool = True

    def __call__(self, slot: int) -> dict:
        slot = int(slot)
        valid = slot < len(self.source)
        index = slot if valid else slot % len(self.source)
        record = self.source.load(index)
        image, label = record["image"], record["label"]
        if not valid:
            label = np.full_like(label, IGNORE_LABEL)
        if self.pad_to:
            image, label = transforms.pad_to_size(image, label, self.pad_to, self.source.name(index))
        element = transforms.eval_element(image, label, self.normalize)
        element["valid"] = np.bool_(valid)
        element["index"] = np.int32(index)
        return element


def eval_dataset(source: Source, *, global_batch_size: int, process_index: int | None = None,
                 process_count: int | None = None, pad_to: tuple[int, int] | None = None,
                 normalize: bool = True, num_workers: int = 0, read_threads: int = 2,
                 prefetch: int = 2) -> tuple[grain.IterDataset, int]:
    """(this process's eval batches, number of batches). Every record appears in exactly one
    valid slot across all processes; batch k of every process belongs to global batch k.

    Elements: {"image": [b,H,W,3] float32, "label": [b,H,W] int32, "valid": [b] bool,
    "index": [b] int32 (record index; `source.name(i)` names it)}.
    """
    if len(source) == 0:
        raise DataError("the evaluation split is empty")
    process_index, process_count = _process_layout(process_index, process_count)
    local_batch = _local_batch_size(global_batch_size, process_count, "eval global_batch_size")
    batches = num_eval_batches(len(source), global_batch_size)
    dataset = (grain.MapDataset.range(batches * local_batch)
               .map(_GlobalIndex(global_batch_size, local_batch, process_index))
               .map(EvalSample(source, tuple(pad_to) if pad_to else None, normalize))
               .batch(local_batch, drop_remainder=True, batch_fn=_stack))
    return _finish(dataset, num_workers=num_workers, read_threads=read_threads, prefetch=prefetch), batches


def close_iterator(iterator) -> None:
    """Stop a Grain iterator's prefetch threads now. Left to the garbage collector, an iterator
    of a pipeline with worker processes can be collected on its own prefetch thread, whose
    __del__ then tries to join that thread ("RuntimeError: cannot join current thread")."""
    close = getattr(iterator, "close", None)
    if close is not None:
        close()
