"""Built-in synthetic street scenes: the first command of the README (no download).

    hmsa train --config=configs/synthetic_demo.py --workdir=/tmp/hmsa_demo

Presets: `default` (the demo: a tiny HRNet-OCR with hierarchical attention trained on 64x128
crops of 128x256 scenes, a few minutes on a 2-core CPU), `tiny` (64x128 scenes, for tests and
smoke runs).
"""
from hmsa_jax.train.config import default_config


def get_config(arg=None):
    config = default_config()
    data = config.data
    data.dataset = "synthetic"
    data.class_uniform.tile_size = 64  # several tiles per 128x256 scene, like 1024 on Cityscapes
    data.augment.crop_size = (64, 128)
    data.loader.batch_size = 4
    data.eval.batch_size = 8
    config.model.name = "hrnet_tiny_ocr_mscale"
    config.model.dtype = "float32"  # bf16 is slower than f32 on CPU
    # Sized so that a 2-core CPU finishes in a few minutes, compilation included.
    config.train.steps = 300  # 42 mIoU, thin classes not learned; 16 with the reference init (WORKSPACE_NOTES.md)
    config.train.criterion = "ce"
    config.train.log_every = 10
    config.train.checkpoint_every = 100
    config.optim.learning_rate = 0.05
    config.validation.every_steps = 150
    config.validation.scales = (1.0,)
    config.validation.pictures = 3  # the demo ends with attention pictures
    preset = arg or "default"
    if preset == "tiny":
        data.synthetic.update(num_train=32, num_eval=8, height=64, width=128)
        data.augment.crop_size = (32, 64)
        data.class_uniform.tile_size = 32
        data.class_uniform.cache_dir = ""
        data.loader.batch_size = 4
        data.eval.batch_size = 4
        config.train.steps = 10
        config.train.checkpoint_every = 5
        config.validation.every_steps = -1
        config.validation.scales = (1.0,)
        config.validation.pictures = 0
    elif preset == "default":
        config.model.trunk_init = "he"  # from scratch (the tests' tiny preset keeps the reference init)
    else:
        raise ValueError(f"configs/synthetic_demo.py: unknown preset {preset!r}; expected default or tiny")
    return config
