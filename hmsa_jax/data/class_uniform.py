"""Class-uniform sampling: per-tile class centroids (computed once, cached on disk) and the
epoch plan that draws training samples from them.

Centroids: for every image, every `tile_size` x `tile_size` tile and every class present in
the tile we record one point, the class's centre of mass in the tile. Where that point is not
itself a pixel of the class (a ring, an L-shape, two blobs) it is moved to the nearest pixel of
the class in the tile, so that a crop containing the point always contains the class (the
reference only records the centre of mass; transforms.scale_pad_crop keeps the point in the
crop).

Epoch plan: which record (and which centroid) each training sample of an epoch uses. An epoch
of `epoch_size` samples is a `class_uniform_fraction` share spread evenly over the classes that
have centroids (each sample a random centroid of its class, classes without any skipped), the
rest drawn without repetition from the records. With auto-labelled extras, each of those
uniform draws picks an extra record with probability `extra_probability`. The plan is a pure
function of (seed, epoch): any worker can compute any sample.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import multiprocessing
import os

import numpy as np

from hmsa_jax.data.errors import DataError
from hmsa_jax.data.labels import IGNORE_LABEL

CACHE_VERSION = 1
_PLAN_STREAM = 0x5A3D  # separates the plan's random stream from augmentation's


@dataclasses.dataclass(frozen=True)
class Centroids:
    """One row per (record, tile, class present): the record index, class, and (y, x) in the
    record's label coordinates."""

    record: np.ndarray  # int32
    cls: np.ndarray  # int32
    y: np.ndarray  # int32
    x: np.ndarray  # int32

    def __len__(self) -> int:
        return len(self.record)

    def classes_present(self) -> np.ndarray:
        return np.unique(self.cls)

    def rows_of_class(self, cls: int) -> np.ndarray:
        return np.flatnonzero(self.cls == cls)

    @staticmethod
    def concatenate(parts: list[np.ndarray]) -> "Centroids":
        table = np.concatenate(parts) if parts else np.zeros((0, 4), np.int32)
        return Centroids(*(np.ascontiguousarray(table[:, k], np.int32) for k in range(4)))


def label_centroids(label: np.ndarray, num_classes: int, tile_size: int) -> np.ndarray:
    """[n, 3] int32 rows (class, y, x) for one label image."""
    rows = []
    height, width = label.shape
    for top in range(0, height, tile_size):
        for left in range(0, width, tile_size):
            tile = label[top:top + tile_size, left:left + tile_size]
            flat = tile.ravel().astype(np.int64)
            counts = np.bincount(flat, minlength=256)
            ys, xs = np.divmod(np.arange(flat.size), tile.shape[1])
            sum_y = np.bincount(flat, weights=ys, minlength=256)
            sum_x = np.bincount(flat, weights=xs, minlength=256)
            for cls in np.flatnonzero(counts[:num_classes]):
                cy = int(round(sum_y[cls] / counts[cls]))
                cx = int(round(sum_x[cls] / counts[cls]))
                if tile[cy, cx] != cls:
                    py, px = np.nonzero(tile == cls)
                    nearest = np.argmin((py - cy) ** 2 + (px - cx) ** 2)
                    cy, cx = int(py[nearest]), int(px[nearest])
                rows.append((cls, top + cy, left + cx))
    return np.asarray(rows, np.int32).reshape(-1, 3)


def _centroids_of_records(source, indices, tile_size: int) -> list[np.ndarray]:
    out = []
    for index in indices:
        label = source.load_label(int(index))
        found = label_centroids(label, source.classes.num_classes, tile_size)
        out.append(np.concatenate([np.full((len(found), 1), index, np.int32), found], axis=1))
    return out


def compute_centroids(source, tile_size: int = 1024, num_workers: int = 0) -> Centroids:
    """Centroids of every record; `num_workers` > 0 spreads the labels over spawned processes."""
    indices = np.arange(len(source))
    if num_workers <= 0 or len(source) < 32:
        return Centroids.concatenate(_centroids_of_records(source, indices, tile_size))
    chunks = np.array_split(indices, min(len(indices), num_workers * 8))
    context = multiprocessing.get_context("spawn")  # forking a process that holds JAX is unsafe
    with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context) as pool:
        results = pool.map(_centroids_of_records, [source] * len(chunks), chunks,
                           [tile_size] * len(chunks))
        parts = [part for chunk in results for part in chunk]
    return Centroids.concatenate(parts)


def cache_key(source, tile_size: int) -> str:
    text = f"v{CACHE_VERSION}|{source.fingerprint()}|{tile_size}|{source.classes.names}|{IGNORE_LABEL}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def load_or_compute_centroids(source, tile_size: int = 1024, cache_dir: str | None = None,
                              num_workers: int = 0) -> Centroids:
    """Reads `cache_dir/centroids_<key>.npz` if present, else computes and writes it. The key
    covers the source's fingerprint (file names, sizes, mtimes, label mapping), the tile size
    and the class table, so changed data never reuses stale centroids."""
    if not cache_dir:
        return compute_centroids(source, tile_size, num_workers)
    path = os.path.join(os.path.expanduser(cache_dir), f"centroids_{cache_key(source, tile_size)}.npz")
    if os.path.isfile(path):
        try:
            with np.load(path) as stored:
                return Centroids(stored["record"], stored["cls"], stored["y"], stored["x"])
        except (OSError, ValueError, KeyError) as err:
            raise DataError(f"{path}: unreadable centroid cache ({err}); delete it to recompute") from None
    centroids = compute_centroids(source, tile_size, num_workers)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(temporary, **dataclasses.asdict(centroids))
    os.replace(temporary, path)  # atomic: concurrent hosts never see half a file
    return centroids


# ----------------------------------------------------------------------------- epoch plan
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
