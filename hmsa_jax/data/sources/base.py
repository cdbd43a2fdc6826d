"""The source interface, the file-pair source every on-disk layout reduces to, concatenation."""
from __future__ import annotations

import abc
import hashlib
import os
from typing import Sequence

import numpy as np
from PIL import Image

from hmsa_jax.data import imageio
from hmsa_jax.data.errors import DataError
from hmsa_jax.data.labels import IGNORE_LABEL, ClassTable


class Source(abc.ABC):
    """Random access to labelled images. Must be picklable (it travels to Grain workers)."""

    classes: ClassTable

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def load(self, index: int) -> dict:
        """{"image": uint8 [H,W,3], "label": uint8 [H,W], "index": int}; DataError if malformed."""

    def load_label(self, index: int) -> np.ndarray:
        return self.load(index)["label"]

    @abc.abstractmethod
    def name(self, index: int) -> str:
        """A stable, human-readable id of the record (a relative path without extension)."""

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """Changes whenever the data or its label mapping changes (keys on-disk caches)."""

    def __getitem__(self, index: int) -> dict:
        return self.load(index)

    def _check_index(self, index: int) -> int:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} out of range for a source of {len(self)} records")
        return index


def resize_long_edge(array: np.ndarray, long_edge: int, resample: int) -> np.ndarray:
    height, width = array.shape[:2]
    scale = long_edge / max(height, width)
    size = (max(1, int(width * scale)), max(1, int(height * scale)))
    if size == (width, height):
        return array
    return np.asarray(Image.fromarray(array).resize(size, resample))


class PairedFileSource(Source):
    """(image file, label file or None) pairs plus the lut from stored values to train ids."""

    def __init__(self, pairs: Sequence[tuple[str, str | None]], *, root: str, classes: ClassTable,
                 lut: np.ndarray, table_name: str, long_edge: int | None = None):
        self.pairs = [(str(i), None if l is None else str(l)) for i, l in pairs]
        self.root = str(root)
        self.classes = classes
        self.lut = np.asarray(lut, np.int16)
        self.table_name = table_name
        self.long_edge = long_edge

    def __len__(self) -> int:
        return len(self.pairs)

    def name(self, index: int) -> str:
        image_path = self.pairs[self._check_index(index)][0]
        return os.path.splitext(os.path.relpath(image_path, self.root))[0]

    def image_path(self, index: int) -> str:
        return self.pairs[self._check_index(index)][0]

    def label_path(self, index: int) -> str | None:
        return self.pairs[self._check_index(index)][1]

    def _read_label(self, label_path: str) -> np.ndarray:
        raw = imageio.read_label_raw(label_path)
        return imageio.map_label(raw, self.lut, label_path, self.table_name)

    def load(self, index: int) -> dict:
        image_path, label_path = self.pairs[self._check_index(index)]
        image = imageio.read_rgb(image_path)
        if label_path is None:
            label = np.full(image.shape[:2], IGNORE_LABEL, np.uint8)
        else:
            label = self._read_label(label_path)
            imageio.check_same_size(image, label, image_path, label_path)
        if self.long_edge:
            image = resize_long_edge(image, self.long_edge, Image.BICUBIC)
            label = resize_long_edge(label, self.long_edge, Image.NEAREST)
        return {"image": image, "label": label, "index": index}

    def load_label(self, index: int) -> np.ndarray:
        image_path, label_path = self.pairs[self._check_index(index)]
        if label_path is None:
            with Image.open(image_path) as image:
                width, height = image.size
            label = np.full((height, width), IGNORE_LABEL, np.uint8)
        else:
            label = self._read_label(label_path)
        if self.long_edge:
            label = resize_long_edge(label, self.long_edge, Image.NEAREST)
        return label

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        digest.update(repr((type(self).__name__, self.table_name, self.long_edge,
                            self.classes.names)).encode())
        digest.update(self.lut.tobytes())
        for image_path, label_path in self.pairs:
            for path in (image_path, label_path):
                if path is None:
                    digest.update(b"-")
                    continue
                try:
                    stat = os.stat(path)
                except OSError as err:
                    raise DataError(f"{path}: cannot stat ({err})") from None
                digest.update(f"{os.path.relpath(path, self.root)}|{stat.st_size}|"
                              f"{stat.st_mtime_ns}".encode())
        return digest.hexdigest()


class ConcatSource(Source):
    """Records of several sources with one class table, numbered one after the other."""

    def __init__(self, sources: Sequence[Source]):
        if not sources:
            raise DataError("ConcatSource: no sources given")
        first = sources[0].classes
        for source in sources[1:]:
            if source.classes.names != first.names:
                raise DataError(f"ConcatSource: class tables differ ({first.name!r} with "
                                f"{first.num_classes} classes vs {source.classes.name!r} with "
                                f"{source.classes.num_classes})")
        self.sources = list(sources)
        self.classes = first
        self.offsets = np.cumsum([0] + [len(s) for s in sources])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _locate(self, index: int) -> tuple[Source, int]:
        index = self._check_index(index)
        which = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return self.sources[which], index - int(self.offsets[which])

    def load(self, index: int) -> dict:
        source, local = self._locate(index)
        record = source.load(local)
        record["index"] = int(index)
        return record

    def load_label(self, index: int) -> np.ndarray:
        source, local = self._locate(index)
        return source.load_label(local)

    def name(self, index: int) -> str:
        source, local = self._locate(index)
        return source.name(local)

    def fingerprint(self) -> str:
        return hashlib.sha256("|".join(s.fingerprint() for s in self.sources).encode()).hexdigest()
