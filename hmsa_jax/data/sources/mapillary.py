"""Mapillary Vistas v1.2 in its published layout, resized so the long edge is 2177.

    root/config.json                               ('labels': name, readable, color, evaluate)
    root/{training,validation,testing}/images/<key>.jpg
    root/{training,validation}/labels/<key>.png    (palette PNG whose indices are the classes)

Images are resized (bicubic; labels nearest) so that their long edge is `long_edge`, as in the
paper's recipe; `long_edge=None` keeps the published resolution.
"""
from __future__ import annotations

import glob
import json
import os

from hmsa_jax.data import imageio
from hmsa_jax.data import labels as label_tables
from hmsa_jax.data.errors import DataError
from hmsa_jax.data.sources.base import PairedFileSource

SPLITS = {"train": "training", "val": "validation", "test": "testing",
          "training": "training", "validation": "validation", "testing": "testing"}
DEFAULT_LONG_EDGE = 2177


def mapillary_class_table(root: str):
    config_path = os.path.join(root, "config.json")
    if not os.path.isfile(config_path):
        return label_tables.mapillary_default_classes()
    try:
        with open(config_path) as f:
            entries = json.load(f)["labels"]
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"{config_path}: expected JSON with a 'labels' list ({err})") from None
    try:
        return label_tables.mapillary_classes_from_config(entries, config_path)
    except ValueError as err:
        raise DataError(str(err)) from None


def mapillary_source(root: str, split: str = "train",
                     long_edge: int | None = DEFAULT_LONG_EDGE) -> PairedFileSource:
    if split not in SPLITS:
        raise DataError(f"mapillary split {split!r}; expected one of {tuple(SPLITS)}")
    split_dir = os.path.join(root, SPLITS[split])
    image_dir = os.path.join(split_dir, "images")
    if not os.path.isdir(image_dir):
        raise DataError(f"{image_dir}: not a directory; expected the Mapillary Vistas layout "
                        f"root/{SPLITS[split]}/images/*.jpg")
    images = sorted(glob.glob(os.path.join(image_dir, "*.jpg")) + glob.glob(os.path.join(image_dir, "*.png")))
    if not images:
        raise DataError(f"{image_dir}: empty split, no .jpg images")
    label_dir = os.path.join(split_dir, "labels")
    pairs = []
    for image_path in images:
        if SPLITS[split] == "testing":
            pairs.append((image_path, None))
            continue
        key = os.path.splitext(os.path.basename(image_path))[0]
        label_path = os.path.join(label_dir, key + ".png")
        if not os.path.isfile(label_path):
            imageio.image_size(image_path)  # a stray non-image is named as that, not as unlabelled
            raise DataError(f"{label_path}: missing label for image {image_path}")
        pairs.append((image_path, label_path))
    classes, lut = mapillary_class_table(root)
    return PairedFileSource(pairs, root=root, classes=classes, lut=lut,
                            table_name="Mapillary Vistas", long_edge=long_edge)
