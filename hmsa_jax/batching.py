"""Group a stream of images into same-size batches, so one call can use every local device."""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

Item = TypeVar("Item")


def same_size_batches(items: Iterable[Item], read: Callable[[Item], np.ndarray],
                      batch_size: int) -> Iterator[list[tuple[Item, np.ndarray]]]:
    """Consecutive [(item, read(item))] of up to `batch_size`, all images of one shape; a batch
    ends early where the next image has another size (input order is kept)."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; expected >= 1")
    batch: list[tuple[Item, np.ndarray]] = []
    for item in items:
        image = read(item)
        if batch and (len(batch) == batch_size or batch[0][1].shape != image.shape):
            yield batch
            batch = []
        batch.append((item, image))
    if batch:
        yield batch


def stack(batch: Sequence[tuple[Item, np.ndarray]]) -> np.ndarray:
    return np.stack([image for _, image in batch])


__all__ = ["same_size_batches", "stack"]
