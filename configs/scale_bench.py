"""The built-in scale benchmark (hmsa_jax/data/sources/scale_bench.py): no download.

    hmsa train --config=configs/scale_bench.py --workdir=runs/demo

Presets: `default` (the demo: tiny ResNet DeepLabV3+ with hierarchical attention, a few
minutes on a 2-core CPU, ending with the same checkpoint evaluated at single scale and with
each multi-scale fusion), `study` (the recipe benchmarks/scale_study.py trains every method
with), `tiny` (for tests and smoke runs).
"""
from hmsa_jax.train.config import default_config


def get_config(arg=None):
    config = default_config()
    data = config.data
    data.dataset = "scale_bench"
    # Crops as large as the evaluated scenes, as the paper's 1024x2048 crops of Cityscapes.
    data.augment.crop_size = (128, 256)
    # No hue or saturation jitter: the thin classes have colours of their own.
    data.augment.update(brightness=0.1, contrast=0.1, saturation=0.0, hue=0.0)
    data.class_uniform.tile_size = 64
    data.loader.batch_size = 4
    data.eval.batch_size = 16
    config.model.name = "resnet_tiny_deeplabv3plus_mscale"
    config.model.dtype = "float32"  # bf16 is slower than f32 on CPU
    config.train.steps = 800
    config.train.criterion = "ce"
    config.train.log_every = 20
    config.train.checkpoint_every = 200
    config.optim.learning_rate = 0.05
    config.validation.every_steps = 0  # at the end
    config.validation.scales = (1.0,)
    config.validation.compare_scales = True
    config.validation.pictures = 3
    preset = arg or "default"
    if preset == "study":
        config.validation.compare_scales = False  # the study evaluates every variant itself
        config.validation.pictures = 0
        config.checkpoint.max_to_keep = 1
        config.runtime.progress = False
    elif preset == "tiny":
        data.scale_bench.update(num_train=16, num_eval=4, height=64, width=128)
        data.augment.crop_size = (64, 128)
        data.class_uniform.tile_size = 32
        data.class_uniform.cache_dir = ""
        data.eval.batch_size = 4
        config.train.steps = 4
        config.train.checkpoint_every = 2
        config.validation.pictures = 0
    elif preset != "default":
        raise ValueError(f"configs/scale_bench.py: unknown preset {preset!r}; expected default, study or tiny")
    return config
