"""Cityscapes in its published layout.

    root/leftImg8bit/{train,val,test,train_extra}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    root/gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
    root/gtCoarse/{train,val,train_extra}/<city>/<city>_<seq>_<frame>_gtCoarse_labelIds.png

labelIds are mapped to the 19 trainIds with cityscapesscripts' tables. `label_format=
"trainIds"` reads *_labelTrainIds.png instead (made by cityscapesscripts' createTrainIdLabelImgs).
"""
from __future__ import annotations

import glob
import os

from hmsa_jax.data import imageio
from hmsa_jax.data import labels as label_tables
from hmsa_jax.data.errors import DataError
from hmsa_jax.data.sources.base import PairedFileSource

SPLITS = ("train", "val", "test", "train_extra")
IMAGE_SUFFIX = "_leftImg8bit.png"
_LABEL_DIRS = {"fine": "gtFine", "coarse": "gtCoarse"}
_FORMATS = {"labelIds": "labelIds", "trainIds": "labelTrainIds"}


def cityscapes_pairs(root: str, split: str, label_kind: str = "fine",
                     label_format: str = "labelIds") -> list[tuple[str, str | None]]:
    if split not in SPLITS:
        raise DataError(f"cityscapes split {split!r}; expected one of {SPLITS}")
    if label_kind not in (*_LABEL_DIRS, "none"):
        raise DataError(f"cityscapes label_kind {label_kind!r}; expected fine, coarse or none")
    if label_format not in _FORMATS:
        raise DataError(f"cityscapes label_format {label_format!r}; expected one of {tuple(_FORMATS)}")
    if split == "train_extra" and label_kind == "fine":
        label_kind = "coarse"  # train_extra is published with coarse labels only
    image_dir = os.path.join(root, "leftImg8bit", split)
    if not os.path.isdir(image_dir):
        raise DataError(f"{image_dir}: not a directory; expected the Cityscapes layout "
                        f"root/leftImg8bit/{split}/<city>/*{IMAGE_SUFFIX}")
    images = sorted(glob.glob(os.path.join(image_dir, "*", "*" + IMAGE_SUFFIX)))
    if not images:
        raise DataError(f"{image_dir}: empty split, no <city>/*{IMAGE_SUFFIX} images")
    # The published test labels are placeholders (all 'unlabeled'): treat test as unlabelled.
    if label_kind == "none" or split == "test":
        return [(path, None) for path in images]
    label_dir = os.path.join(root, _LABEL_DIRS[label_kind], split)
    suffix = f"_{_LABEL_DIRS[label_kind]}_{_FORMATS[label_format]}.png"
    pairs = []
    for image_path in images:
        city = os.path.basename(os.path.dirname(image_path))
        stem = os.path.basename(image_path)[: -len(IMAGE_SUFFIX)]
        label_path = os.path.join(label_dir, city, stem + suffix)
        if not os.path.isfile(label_path):
            imageio.image_size(image_path)  # a stray non-image is named as that, not as unlabelled
            raise DataError(f"{label_path}: missing label for image {image_path}")
        pairs.append((image_path, label_path))
    return pairs


def cityscapes_source(root: str, split: str = "train", label_kind: str = "fine",
                      label_format: str = "labelIds") -> PairedFileSource:
    """`split` may join several with '+', e.g. "train+val"."""
    pairs = []
    for part in split.split("+"):
        pairs += cityscapes_pairs(root, part, label_kind, label_format)
    lut = (label_tables.cityscapes_label_id_lut() if label_format == "labelIds"
           else label_tables.cityscapes_train_id_lut())
    return PairedFileSource(pairs, root=root, classes=label_tables.cityscapes_classes(), lut=lut,
                            table_name=f"Cityscapes {label_format}")
