"""Cityscapes with the paper's recipe: HRNet-W48 + OCR + hierarchical multi-scale attention,
RMI loss, SGD lr 5e-3 poly 2 over 175 epochs, one 1024x2048 crop per device on 8 devices,
bf16 compute, synchronised BN, scale 0.5-2.0, class-uniform 0.5, initialised from a Mapillary
checkpoint (set --config.checkpoint.init_from), validated at scales 0.5/1.0/2.0.

Presets: `default` (folders; set --config.data.root), `tfds` (prepared ArrayRecord copy, see
hmsa_jax/data/sources/tfds_source.py), `autolabel` (fine + auto-labelled train_extra mixed 0.5;
set data.autolabel.labels_dir), `trainval` (train+val for the test-server model).
"""
from hmsa_jax.train.config import default_config


def get_config(arg=None):
    config = default_config()
    data = config.data
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
    config.model.name = "hrnet48_ocr_mscale"
    config.model.dtype = "bfloat16"
    config.train.epochs = 175.0
    config.train.criterion = "rmi"
    config.train.checkpoint_every = 2000
    config.optim.learning_rate = 5e-3  # 1e-2 for the reference's 16-GPU recipe
    config.optim.weight_decay = 1e-4
    config.validation.every_steps = 5000
    config.validation.scales = (0.5, 1.0, 2.0)
    return config
