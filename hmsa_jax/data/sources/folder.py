"""Users' own data, and auto-labelled images, as plain folders.

Folder source:
    images/<any/sub/path>/<stem>.{png,jpg,jpeg}
    masks/<any/sub/path>/<stem>.png      single-channel, values 0..K-1 or the ignore value
    classes.txt                          one class per line: `name` or `name R G B`

Auto-labelled images (hard labels written by `hmsa autolabel`):
    <labels_dir>/<relative path of the image under images_root, extension .png>
holding train ids (255 = ignore, e.g. below the confidence threshold).
"""
from __future__ import annotations

import colorsys
import glob
import os

from hmsa_jax.data import imageio
from hmsa_jax.data.errors import DataError
from hmsa_jax.data.labels import IGNORE_LABEL, ClassTable, identity_lut
from hmsa_jax.data.sources.base import PairedFileSource

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def read_class_list(path: str) -> ClassTable:
    """`name` or `name R G B` per line; '#' comments and blank lines skipped."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as err:
        raise DataError(f"{path}: cannot read the class list ({err})") from None
    names, colors = [], []
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) >= 4 and all(p.isdigit() for p in parts[-3:]):
            name, rgb = " ".join(parts[:-3]), tuple(int(p) for p in parts[-3:])
            if max(rgb) > 255:
                raise DataError(f"{path}:{number}: colour {rgb} outside 0..255")
        else:
            name, rgb = line, None
        names.append(name)
        colors.append(rgb)
    if not names:
        raise DataError(f"{path}: no classes listed; expected one class name per line")
    if len(names) >= IGNORE_LABEL:
        raise DataError(f"{path}: {len(names)} classes; at most {IGNORE_LABEL - 1} fit uint8 labels")
    filled = []
    for k, rgb in enumerate(colors):  # evenly spaced hues for classes listed without a colour
        if rgb is None:
            r, g, b = colorsys.hsv_to_rgb(k / len(colors), 0.65, 0.9)
            rgb = (int(r * 255), int(g * 255), int(b * 255))
        filled.append(rgb)
    return ClassTable(os.path.basename(path), tuple(names), tuple(filled))


def _find_images(image_dir: str) -> list[str]:
    if not os.path.isdir(image_dir):
        raise DataError(f"{image_dir}: not a directory of images")
    found = []
    for ext in IMAGE_EXTENSIONS:
        found += glob.glob(os.path.join(image_dir, "**", "*" + ext), recursive=True)
    return sorted(found)


def folder_source(images_dir: str, masks_dir: str, classes_file: str,
                  ignore_value: int = IGNORE_LABEL) -> PairedFileSource:
    classes = read_class_list(classes_file)
    if ignore_value < classes.num_classes:
        raise DataError(f"ignore value {ignore_value} collides with class ids 0..{classes.num_classes - 1}")
    pairs = []
    images = _find_images(images_dir)
    if not images:
        raise DataError(f"{images_dir}: empty split, no {'/'.join(IMAGE_EXTENSIONS)} images")
    for image_path in images:
        relative = os.path.splitext(os.path.relpath(image_path, images_dir))[0]
        mask_path = os.path.join(masks_dir, relative + ".png")
        if not os.path.isfile(mask_path):
            imageio.image_size(image_path)  # a stray non-image is named as that, not as unlabelled
            raise DataError(f"{mask_path}: missing mask for image {image_path}")
        pairs.append((image_path, mask_path))
    return PairedFileSource(pairs, root=images_dir, classes=classes,
                            lut=identity_lut(classes.num_classes, (ignore_value,)),
                            table_name=f"class list {classes_file}")


def autolabel_source(images_root: str, labels_dir: str, classes: ClassTable) -> PairedFileSource:
    if not os.path.isdir(labels_dir):
        raise DataError(f"{labels_dir}: not a directory of auto-labels")
    pairs = []
    for label_path in sorted(glob.glob(os.path.join(labels_dir, "**", "*.png"), recursive=True)):
        relative = os.path.splitext(os.path.relpath(label_path, labels_dir))[0]
        candidates = [os.path.join(images_root, relative + ext) for ext in IMAGE_EXTENSIONS]
        image_path = next((c for c in candidates if os.path.isfile(c)), None)
        if image_path is None:
            raise DataError(f"{label_path}: no image for this auto-label; looked for "
                            f"{candidates[0]} (or .jpg/.jpeg)")
        pairs.append((image_path, label_path))
    if not pairs:
        raise DataError(f"{labels_dir}: no auto-label .png files")
    return PairedFileSource(pairs, root=images_root, classes=classes,
                            lut=identity_lut(classes.num_classes),
                            table_name=f"{classes.name} trainIds (auto-labels)")
