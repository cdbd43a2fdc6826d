"""Built-in synthetic street scenes: the default demo and test data (no download).

Presets: `default` (128x256 scenes, 8 classes), `tiny` (64x128, for tests and smoke runs).
"""
from ml_collections import ConfigDict

from hmsa_jax.data.config import default_data_config


def get_config(arg=None):
    config = ConfigDict()
    data = default_data_config()
    data.dataset = "synthetic"
    data.class_uniform.tile_size = 64  # several tiles per 128x256 scene, like 1024 on Cityscapes
    data.loader.batch_size = 8
    data.eval.batch_size = 8
    preset = arg or "default"
    if preset == "tiny":
        data.synthetic.update(num_train=32, num_eval=8, height=64, width=128)
        data.augment.crop_size = (64, 128)
        data.class_uniform.tile_size = 32
        data.class_uniform.cache_dir = ""
        data.loader.batch_size = 4
        data.eval.batch_size = 4
    elif preset != "default":
        raise ValueError(f"configs/synthetic_demo.py: unknown preset {preset!r}; expected default or tiny")
    config.data = data
    return config
