"""Cityscapes with the paper's recipe (crop 1024x2048, scale 0.5-2.0, class-uniform 0.5).

Presets: `default` (folders; set --config.data.root), `tfds` (prepared ArrayRecord copy, see
hmsa_jax/data/sources/tfds_source.py), `autolabel` (fine + auto-labelled train_extra mixed 0.5;
set data.autolabel.labels_dir), `trainval` (train+val for the test-server model).
"""
from ml_collections import ConfigDict

from hmsa_jax.data.config import default_data_config


def get_config(arg=None):
    config = ConfigDict()
    data = default_data_config()
    data.dataset = "cityscapes"
    data.root = "~/data/cityscapes"
    data.augment.crop_size = (1024, 2048)
    data.class_uniform.tile_size = 1024
    data.class_uniform.num_workers = 4
    data.loader.batch_size = 8  # one image per device on 8 devices, as the reference
    data.loader.num_workers = 4
    data.eval.batch_size = 8
    data.eval.num_workers = 2
    preset = arg or "default"
    if preset == "tfds":
        data.dataset = "cityscapes_tfds"
        data.root = ""
    elif preset == "autolabel":
        data.autolabel.images_root = "~/data/cityscapes/leftImg8bit/train_extra"
        data.autolabel.labels_dir = "~/data/cityscapes/autolabel/train_extra"
        data.autolabel.probability = 0.5
    elif preset == "trainval":
        data.train_split = "train+val"
    elif preset != "default":
        raise ValueError(f"configs/cityscapes.py: unknown preset {preset!r}; expected default, "
                         f"tfds, autolabel or trainval")
    config.data = data
    return config
