"""Prepare a TFDS ArrayRecord copy of Cityscapes from its published folders, without TensorFlow.

The result has the stock `cityscapes/semantic_segmentation` builder's feature names
('image_id', 'image_left', 'segmentation_label' holding raw labelIds), so TfdsSource reads
either. PNG files are stored as they are (no decode/re-encode):

    from hmsa_jax.data.tfds_prepare import prepare_cityscapes_tfds
    prepare_cityscapes_tfds("/data/cityscapes", "/data/tfds")       # -> hmsa_cityscapes
    # config: --config=configs/cityscapes.py:tfds --config.data.tfds.name=hmsa_cityscapes
    #         --config.data.tfds.data_dir=/data/tfds
"""
from __future__ import annotations

import os

import tensorflow_datasets as tfds

from hmsa_jax.data.sources.cityscapes import IMAGE_SUFFIX, cityscapes_pairs

DATASET_NAME = "hmsa_cityscapes"


class HmsaCityscapes(tfds.core.GeneratorBasedBuilder):
    """Cityscapes fine annotations (labelIds) from the published folder layout."""

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, cityscapes_root: str = "", splits: tuple[str, ...] = ("train", "val"),
                 **kwargs):
        self._cityscapes_root, self._splits = cityscapes_root, tuple(splits)
        super().__init__(**kwargs)

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image_id": tfds.features.Text(),
            "image_left": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
            "segmentation_label": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
        }))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in self._splits}

    def _generate_examples(self, split):
        for image_path, label_path in cityscapes_pairs(self._cityscapes_root, split, "fine"):
            image_id = os.path.basename(image_path)[: -len(IMAGE_SUFFIX)]
            # Open files: tfds copies their PNG bytes as they are (needs no TensorFlow).
            yield image_id, {"image_id": image_id, "image_left": open(image_path, "rb"),
                             "segmentation_label": open(label_path, "rb")}


def prepare_cityscapes_tfds(cityscapes_root: str, data_dir: str,
                            splits: tuple[str, ...] = ("train", "val")) -> str:
    """Writes DATA_DIR/hmsa_cityscapes/1.0.0/*.array_record; returns the dataset name."""
    builder = HmsaCityscapes(cityscapes_root=cityscapes_root, splits=splits,
                             data_dir=os.path.expanduser(data_dir), file_format="array_record")
    builder.download_and_prepare()
    return DATASET_NAME
