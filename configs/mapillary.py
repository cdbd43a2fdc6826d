"""Mapillary Vistas v1.2 (65 classes), long edge resized to 2177, Gaussian blur on.

Set --config.data.root to the folder holding config.json, training/ and validation/.
"""
from ml_collections import ConfigDict

from hmsa_jax.data.config import default_data_config


def get_config(arg=None):
    config = ConfigDict()
    data = default_data_config()
    data.dataset = "mapillary"
    data.root = "~/data/mapillary"
    data.mapillary.long_edge = 2177
    data.augment.crop_size = (1024, 1024)
    data.augment.blur_prob = 0.5
    data.class_uniform.tile_size = 1024
    data.class_uniform.num_workers = 4
    data.loader.batch_size = 8
    data.loader.num_workers = 4
    data.eval.batch_size = 8
    data.eval.pad_to = (2177, 2177)  # Vistas aspect ratios vary; pad so a batch stacks
    data.eval.num_workers = 2
    if arg not in (None, "", "default"):
        raise ValueError(f"configs/mapillary.py: unknown preset {arg!r}; expected default")
    config.data = data
    return config
