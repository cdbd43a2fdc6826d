"""Mapillary Vistas v1.2 (65 classes), long edge resized to 2177, Gaussian blur on.

The reference's pre-training stage: HRNet-W48 + OCR (single scale, preset `default`, whose
checkpoint initialises the Cityscapes recipe) or with hierarchical attention (preset `mscale`,
the paper's Mapillary result). Initialise the trunk from ImageNet weights with
--config.checkpoint.init_from. Set --config.data.root to the folder holding config.json,
training/ and validation/. Evaluated at scales 0.25/0.5/1.0/2.0.
"""
from hmsa_jax.train.config import default_config


def get_config(arg=None):
    config = default_config()
    data = config.data
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
    config.model.name = "hrnet48_ocr"
    config.model.dtype = "bfloat16"
    config.train.epochs = 200.0
    config.train.criterion = "rmi"
    config.train.checkpoint_every = 2000
    config.optim.learning_rate = 1e-2
    config.validation.every_steps = 10000
    config.validation.scales = (1.0,)
    preset = arg or "default"
    if preset == "mscale":
        config.model.name = "hrnet48_ocr_mscale"
        config.validation.scales = (0.25, 0.5, 1.0, 2.0)
    elif preset != "default":
        raise ValueError(f"configs/mapillary.py: unknown preset {preset!r}; expected default or mscale")
    return config
