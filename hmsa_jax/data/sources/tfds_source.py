"""Cityscapes (or any segmentation dataset) prepared by TFDS as ArrayRecord files.

Reading uses `tfds.data_source` (random access, decoded by pillow): no TensorFlow needed.
Preparation of the stock `cityscapes` builder needs TensorFlow once, on any machine:

    pip install tensorflow tensorflow-datasets
    # put leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip in ~/tensorflow_datasets/downloads/manual
    tfds build cityscapes/semantic_segmentation --file_format=array_record --data_dir=DATA_DIR

The stock builder stores raw labelIds under 'segmentation_label' and the image under
'image_left'; both keys and the label format are settings.
"""
from __future__ import annotations

import glob
import hashlib
import os

import numpy as np

from hmsa_jax.data import imageio
from hmsa_jax.data import labels as label_tables
from hmsa_jax.data.errors import DataError
from hmsa_jax.data.labels import ClassTable
from hmsa_jax.data.sources.base import Source


class TfdsSource(Source):
    def __init__(self, name: str = "cityscapes/semantic_segmentation", split: str = "train",
                 data_dir: str | None = None, image_key: str = "image_left",
                 label_key: str = "segmentation_label", id_key: str | None = "image_id",
                 classes: ClassTable | None = None, lut: np.ndarray | None = None,
                 table_name: str = "Cityscapes labelIds"):
        self.dataset_name, self.split, self.data_dir = name, split, data_dir or None
        self.image_key, self.label_key, self.id_key = image_key, label_key, id_key
        self.classes = classes or label_tables.cityscapes_classes()
        self.lut = np.asarray(label_tables.cityscapes_label_id_lut() if lut is None else lut, np.int16)
        self.table_name = table_name
        self._data = None
        self._length = len(self._open())

    def _open(self):
        if self._data is None:
            import tensorflow_datasets as tfds  # only the cityscapes_tfds dataset needs it (0.26 s)

            try:
                self._data = tfds.data_source(self.dataset_name, split=self.split,
                                              data_dir=self.data_dir, download=False)
            except Exception as err:  # tfds raises several types for "not prepared"
                raise DataError(f"TFDS dataset {self.dataset_name!r} split {self.split!r} in "
                                f"{self.data_dir or '~/tensorflow_datasets'}: cannot open as an "
                                f"ArrayRecord data source ({type(err).__name__}: {err}); prepare it "
                                f"with `tfds build ... --file_format=array_record`") from None
        return self._data

    def __getstate__(self):  # open file handles do not travel to worker processes
        state = dict(self.__dict__)
        state["_data"] = None
        return state

    def __len__(self) -> int:
        return self._length

    def _where(self, index: int) -> str:
        return f"TFDS {self.dataset_name}[{self.split}][{index}]"

    def _record(self, index: int) -> dict:
        record = self._open()[self._check_index(index)]
        for key in (self.image_key, self.label_key):
            if key not in record:
                raise DataError(f"{self._where(index)}: no feature {key!r}; features are {sorted(record)}")
        return record

    def load(self, index: int) -> dict:
        record = self._record(index)
        image = np.asarray(record[self.image_key])
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise DataError(f"{self._where(index)}: image {image.dtype}{list(image.shape)}; expected uint8 [H,W,3]")
        label = self._label(record, index)
        imageio.check_same_size(image, label, self._where(index), self._where(index) + " label")
        return {"image": image, "label": label, "index": int(index)}

    def _label(self, record: dict, index: int) -> np.ndarray:
        raw = np.asarray(record[self.label_key])
        if raw.ndim == 3 and raw.shape[-1] == 1:
            raw = raw[..., 0]
        if raw.ndim != 2 or raw.dtype != np.uint8:
            raise DataError(f"{self._where(index)}: label {raw.dtype}{list(raw.shape)}; expected uint8 [H,W(,1)]")
        return imageio.map_label(raw, self.lut, self._where(index), self.table_name)

    def load_label(self, index: int) -> np.ndarray:
        return self._label(self._record(index), index)

    def name(self, index: int) -> str:
        if self.id_key:
            value = self._open()[self._check_index(index)].get(self.id_key)
            if value is not None:
                return value.decode() if isinstance(value, bytes) else str(value)
        return f"{self.dataset_name}/{self.split}/{index:06d}"

    def fingerprint(self) -> str:
        import tensorflow_datasets as tfds  # only the cityscapes_tfds dataset needs it (0.26 s)

        builder = tfds.builder(self.dataset_name, data_dir=self.data_dir)
        files = sorted(glob.glob(os.path.join(str(builder.data_dir), f"*{self.split.split('[')[0]}*")))
        digest = hashlib.sha256(repr((self.dataset_name, self.split, self._length)).encode())
        digest.update(self.lut.tobytes())
        for path in files:
            stat = os.stat(path)
            digest.update(f"{os.path.basename(path)}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        return digest.hexdigest()
