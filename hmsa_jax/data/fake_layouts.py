"""Small datasets in the published folder layouts, drawn from the synthetic scenes.

For tests, benchmarks and trying the pipeline without the real data: the label files hold the
layout's *raw* values (Cityscapes labelIds, Mapillary indices), as the real files do.
"""
from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from hmsa_jax.data.labels import MAPILLARY_V12_NAMES, cityscapes_label_id_lut
from hmsa_jax.data.sources import synthetic as syn

# Synthetic class -> Cityscapes labelId (lane markings are 'road' in Cityscapes).
SYNTHETIC_TO_CITYSCAPES_ID = {syn.ROAD: 7, syn.SIDEWALK: 8, syn.BUILDING: 11, syn.SKY: 23,
                              syn.VEGETATION: 21, syn.POLE: 17, syn.SIGN: 20, syn.LANE: 7,
                              syn.TERRAIN: 22, syn.CAR: 26}
# Synthetic class -> Mapillary Vistas v1.2 index.
SYNTHETIC_TO_MAPILLARY = {syn.ROAD: 13, syn.SIDEWALK: 15, syn.BUILDING: 17, syn.SKY: 27,
                          syn.VEGETATION: 30, syn.POLE: 45, syn.SIGN: 50, syn.LANE: 24,
                          syn.TERRAIN: 29, syn.CAR: 55}
EGO_VEHICLE_ID = 1  # Cityscapes 'ego vehicle' (ignored), painted on the bottom rows
MAPILLARY_UNLABELED = 65


def _lut(mapping: dict[int, int]) -> np.ndarray:
    lut = np.zeros(256, np.uint8)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut


def _scenes(count: int, height: int, width: int, seed: int, split: str):
    source = syn.SyntheticScenes(count, height, width, len(syn.ALL_CLASSES), seed, split)
    for index in range(count):
        record = source.load(index)
        yield index, record["image"], record["label"]


def write_fake_cityscapes(root: str, splits: dict[str, int], *, height: int = 64, width: int = 128,
                          cities: tuple[str, ...] = ("aachen", "bochum"), seed: int = 0,
                          write_train_ids: bool = False) -> None:
    """leftImg8bit/<split>/<city>/..., gtFine (or gtCoarse for train_extra) labelIds PNGs."""
    to_label_id = _lut(SYNTHETIC_TO_CITYSCAPES_ID)
    to_train_id = cityscapes_label_id_lut().astype(np.uint8)
    for split, count in splits.items():
        kind = "gtCoarse" if split == "train_extra" else "gtFine"
        for index, image, label in _scenes(count, height, width, seed, split):
            city = cities[index % len(cities)]
            stem = f"{city}_{index:06d}_000019"
            label_ids = to_label_id[label]
            label_ids[-3:] = EGO_VEHICLE_ID
            image_dir = os.path.join(root, "leftImg8bit", split, city)
            label_dir = os.path.join(root, kind, split, city)
            os.makedirs(image_dir, exist_ok=True)
            os.makedirs(label_dir, exist_ok=True)
            Image.fromarray(image).save(os.path.join(image_dir, f"{stem}_leftImg8bit.png"))
            Image.fromarray(label_ids).save(os.path.join(label_dir, f"{stem}_{kind}_labelIds.png"))
            if write_train_ids:
                Image.fromarray(to_train_id[label_ids]).save(
                    os.path.join(label_dir, f"{stem}_{kind}_labelTrainIds.png"))


def mapillary_config_labels() -> list[dict]:
    rng = np.random.default_rng(1)
    return [{"name": name.lower().replace(" ", "-"), "readable": name,
             "color": [int(c) for c in rng.integers(0, 256, 3)], "instances": False,
             "evaluate": name != "Unlabeled"} for name in MAPILLARY_V12_NAMES]


def write_fake_mapillary(root: str, splits: dict[str, int], *, height: int = 64, width: int = 96,
                         seed: int = 0) -> None:
    """config.json, <split>/images/<key>.jpg and <split>/labels/<key>.png (palette PNG)."""
    os.makedirs(root, exist_ok=True)
    labels = mapillary_config_labels()
    with open(os.path.join(root, "config.json"), "w") as f:
        json.dump({"labels": labels, "version": 1.2}, f)
    palette = [c for entry in labels for c in entry["color"]]
    to_index = _lut(SYNTHETIC_TO_MAPILLARY)
    for split, count in splits.items():
        for index, image, label in _scenes(count, height, width, seed, split):
            key = f"{split[:2]}{index:08d}k"
            raw = to_index[label]
            raw[:, :2] = MAPILLARY_UNLABELED
            os.makedirs(os.path.join(root, split, "images"), exist_ok=True)
            Image.fromarray(image).save(os.path.join(root, split, "images", key + ".jpg"), quality=95)
            if split != "testing":
                os.makedirs(os.path.join(root, split, "labels"), exist_ok=True)
                png = Image.fromarray(raw)
                png.putpalette(palette)  # 'L' -> 'P': indices stay, colours for viewers
                png.save(os.path.join(root, split, "labels", key + ".png"))


def write_fake_folder(root: str, splits: dict[str, int], *, height: int = 64, width: int = 128,
                      num_classes: int = 8, seed: int = 0, ignore_border: int = 2) -> None:
    """images/<split>/*.png, masks/<split>/*.png (synthetic class ids, 255 on a border) and
    classes.txt with names and colours."""
    table = syn.synthetic_classes(num_classes)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "classes.txt"), "w") as f:
        f.write("# name R G B\n")
        for name, color in zip(table.names, table.colors):
            f.write(f"{name} {color[0]} {color[1]} {color[2]}\n")
    for split, count in splits.items():
        source = syn.SyntheticScenes(count, height, width, num_classes, seed, split)
        for index in range(count):
            record = source.load(index)
            mask = record["label"].copy()
            if ignore_border:
                mask[:ignore_border] = 255
            sub = os.path.join(f"group{index % 2}")
            for kind, array in (("images", record["image"]), ("masks", mask)):
                os.makedirs(os.path.join(root, kind, split, sub), exist_ok=True)
                Image.fromarray(array).save(os.path.join(root, kind, split, sub, f"img{index:04d}.png"))
