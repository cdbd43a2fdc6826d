"""The `data` section of a run's config. (`load_config` lives in hmsa_jax.configlib.)"""
from __future__ import annotations

from ml_collections import ConfigDict

# The values of data.dataset (hmsa_jax.data.build makes each one's sources).
DATASETS = ("synthetic", "scale_bench", "cityscapes", "cityscapes_tfds", "mapillary", "folder")


def default_data_config() -> ConfigDict:
    c = ConfigDict()
    c.dataset = "synthetic"  # one of DATASETS
    c.root = ""  # dataset root folder (cityscapes, mapillary, folder)
    c.train_split = "train"  # cityscapes: train, val, test, train_extra, or joined with '+'
    c.eval_split = "val"
    c.seed = 0

    c.synthetic = ConfigDict(dict(num_train=512, num_eval=64, height=128, width=256,
                                  num_classes=8, seed=0))
    # The built-in scale benchmark (hmsa_jax/data/sources/scale_bench.py).
    # distractor: amplitude of fine cross stripes over the regions' cue (0: none), see scale_bench.py.
    c.scale_bench = ConfigDict(dict(num_train=512, num_eval=64, height=128, width=256, seed=0,
                                    distractor=0.0))
    # label_kind fine|coarse|none; label_format labelIds|trainIds (*_labelTrainIds.png)
    c.cityscapes = ConfigDict(dict(label_kind="fine", label_format="labelIds"))
    c.tfds = ConfigDict(dict(name="cityscapes/semantic_segmentation", data_dir="",
                             image_key="image_left", label_key="segmentation_label",
                             id_key="image_id", label_format="labelIds"))
    c.mapillary = ConfigDict(dict(long_edge=2177))  # 0 keeps the published resolution
    # Relative to root; '{split}' is replaced by train_split / eval_split.
    c.folder = ConfigDict(dict(images="images/{split}", masks="masks/{split}",
                               classes_file="classes.txt", ignore_value=255))
    # Auto-labelled extras mixed into training when labels_dir is set (hmsa autolabel output).
    c.autolabel = ConfigDict(dict(labels_dir="", images_root="", probability=0.5))

    c.augment = ConfigDict(dict(crop_size=(128, 256), scale_min=0.5, scale_max=2.0,
                                flip_prob=0.5, brightness=0.25, contrast=0.25, saturation=0.25,
                                hue=0.25, blur_prob=0.0, blur_sigma_min=0.15, blur_sigma_max=1.3,
                                normalize=True))
    # Half of each epoch spread over classes (0 disables); centroids cached under cache_dir
    # ('' disables the cache), computed with num_workers processes.
    c.class_uniform = ConfigDict(dict(fraction=0.5, tile_size=1024,
                                      cache_dir="~/.cache/hmsa_jax/centroids", num_workers=0))
    # batch_size is global (all processes); epoch_size 0 = the number of training records.
    c.loader = ConfigDict(dict(batch_size=8, num_workers=0, read_threads=2, prefetch=2,
                               epoch_size=0))
    # pad_to (0, 0) = no padding (images must share a size); else (height, width).
    c.eval = ConfigDict(dict(batch_size=8, pad_to=(0, 0), num_workers=0, read_threads=2))
    return c
