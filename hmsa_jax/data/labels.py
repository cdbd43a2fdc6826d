"""Class tables: names, colours, the ignore value, and maps from stored label values.

A stored label file holds *raw* values (Cityscapes labelIds, Mapillary indices, ...). A
`label_lut` is a 256-entry int16 table from raw value to train id, where 255 means ignore and
-1 means "this raw value must not occur" (a strict loader reports it with the file's name).
"""
from __future__ import annotations

import colorsys
import dataclasses

import numpy as np

IGNORE_LABEL = 255
INVALID_RAW = -1

# Normalisation of RGB in [0, 1] (ImageNet statistics); the model expects these. Their one home
# (data/ stays free of JAX): hmsa_jax.ops and data/transforms.py normalise with them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class ClassTable:
    """The K classes a model predicts: train ids 0..K-1, plus IGNORE_LABEL."""

    name: str
    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]

    def __post_init__(self):
        if len(self.names) != len(self.colors):
            raise ValueError(f"class table {self.name!r}: {len(self.names)} names but "
                             f"{len(self.colors)} colours")
        if not 0 < len(self.names) < IGNORE_LABEL:
            raise ValueError(f"class table {self.name!r}: {len(self.names)} classes; expected "
                             f"1..{IGNORE_LABEL - 1}")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def palette(self) -> np.ndarray:
        """[256, 3] uint8 colours indexed by train id (ignore and unused entries black)."""
        table = np.zeros((256, 3), np.uint8)
        table[: self.num_classes] = np.asarray(self.colors, np.uint8)
        return table

    def colorize(self, label: np.ndarray) -> np.ndarray:
        return self.palette()[np.asarray(label, np.uint8)]


def hue_colors(count: int) -> tuple[tuple[int, int, int], ...]:
    """`count` colours of evenly spaced hues, for classes whose table records none."""
    return tuple(tuple(int(255 * c) for c in colorsys.hsv_to_rgb(k / count, 0.65, 0.9))
                 for k in range(count))


def numbered_classes(num_classes: int, name: str = "model") -> ClassTable:
    """Classes class_0 .. class_{K-1} in hue_colors: the table of a model nobody named."""
    return ClassTable(name, tuple(f"class_{k}" for k in range(num_classes)), hue_colors(num_classes))


def identity_lut(num_classes: int, ignore_values: tuple[int, ...] = (IGNORE_LABEL,)) -> np.ndarray:
    """Raw values 0..K-1 are train ids, `ignore_values` map to ignore, all else is invalid."""
    lut = np.full(256, INVALID_RAW, np.int16)
    lut[:num_classes] = np.arange(num_classes)
    for value in ignore_values:
        lut[value] = IGNORE_LABEL
    return lut


def describe_valid_raw_values(lut: np.ndarray) -> str:
    """'0..33' or '0..18, 255': the raw values a lut accepts, as ranges."""
    values = np.flatnonzero(lut != INVALID_RAW)
    parts, start = [], None
    for k, v in enumerate(values):
        if start is None:
            start = v
        if k + 1 == len(values) or values[k + 1] != v + 1:
            parts.append(f"{start}" if start == v else f"{start}..{v}")
            start = None
    return ", ".join(parts)


# ---------------------------------------------------------------------------------- Cityscapes
def _cityscapes_labels():
    # The official tables. Imported here: this module loads with every `import hmsa_jax` (ops,
    # models), which needs only jax and flax; Cityscapes paths alone need cityscapesscripts.
    from cityscapesscripts.helpers import labels as cs_labels

    return cs_labels.labels


def cityscapes_classes() -> ClassTable:
    train = sorted((l for l in _cityscapes_labels() if 0 <= l.trainId < IGNORE_LABEL),
                   key=lambda l: l.trainId)
    return ClassTable("cityscapes", tuple(l.name for l in train), tuple(tuple(l.color) for l in train))


def cityscapes_label_id_lut() -> np.ndarray:
    """labelIds (0..33, as stored in *_labelIds.png) -> trainIds (19 classes, 255 ignore)."""
    lut = np.full(256, INVALID_RAW, np.int16)
    for label in _cityscapes_labels():
        if 0 <= label.id < 256:
            lut[label.id] = label.trainId if 0 <= label.trainId < IGNORE_LABEL else IGNORE_LABEL
    return lut


def cityscapes_train_id_lut() -> np.ndarray:
    """For *_labelTrainIds.png files (made by cityscapesscripts' createTrainIdLabelImgs)."""
    return identity_lut(19)


def trainids_read_as_labelids(train_id_pixels, table_name: str) -> str | None:
    """What is wrong when Cityscapes labels read as labelIds hold only train ids 0..5, else None.

    `train_id_pixels`: pixels per train id after mapping (at least 19 entries). A *_labelTrainIds
    file has raw values 0..18 (and 255); read as labelIds those become road..pole (train ids 0..5)
    or ignore, never vegetation, sky, person, car, ... which real labelIds sets always hold."""
    pixels = np.asarray(train_id_pixels)
    if not table_name.endswith("labelIds") or pixels[:19].sum() == 0 or pixels[6:19].sum() > 0:
        return None
    return ("every label maps to train ids 0..5 only (no vegetation, sky, person, car, ...): these "
            "look like trainIds files (values 0..18) read as labelIds; expected labelIds files, or "
            "set --config.data.cityscapes.label_format=trainIds (data.tfds.label_format for TFDS)")


def cityscapes_train_ids_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Predicted trainIds -> labelIds, the format of the official benchmark submission."""
    back = np.zeros(256, np.uint8)  # ignore -> 0 ('unlabeled')
    for label in _cityscapes_labels():
        if 0 <= label.trainId < IGNORE_LABEL and label.id >= 0:
            back[label.trainId] = label.id
    train_ids = np.asarray(train_ids)
    if train_ids.size and (train_ids.min() < 0 or train_ids.max() > 255):
        raise ValueError(f"train ids out of 0..255: min {train_ids.min()}, max {train_ids.max()}")
    return back[train_ids.astype(np.uint8)]


# ---------------------------------------------------------------------------------- Mapillary
# Mapillary Vistas v1.2: 66 entries in config.json; the last ('Unlabeled') is the ignore class.
# This copy is used only when a dataset folder lacks config.json.
MAPILLARY_V12_NAMES = (
    "Bird", "Ground Animal", "Curb", "Fence", "Guard Rail", "Barrier", "Wall", "Bike Lane",
    "Crosswalk - Plain", "Curb Cut", "Parking", "Pedestrian Area", "Rail Track", "Road",
    "Service Lane", "Sidewalk", "Bridge", "Building", "Tunnel", "Person", "Bicyclist",
    "Motorcyclist", "Other Rider", "Lane Marking - Crosswalk", "Lane Marking - General",
    "Mountain", "Sand", "Sky", "Snow", "Terrain", "Vegetation", "Water", "Banner", "Bench",
    "Bike Rack", "Billboard", "Catch Basin", "CCTV Camera", "Fire Hydrant", "Junction Box",
    "Mailbox", "Manhole", "Phone Booth", "Pothole", "Street Light", "Pole",
    "Traffic Sign Frame", "Utility Pole", "Traffic Light", "Traffic Sign (Back)",
    "Traffic Sign (Front)", "Trash Can", "Bicycle", "Boat", "Bus", "Car", "Caravan",
    "Motorcycle", "On Rails", "Other Vehicle", "Trailer", "Truck", "Wheeled Slow", "Car Mount",
    "Ego Vehicle", "Unlabeled",
)
MAPILLARY_NUM_CLASSES = 65


def mapillary_classes_from_config(labels: list[dict], source: str) -> tuple[ClassTable, np.ndarray]:
    """Class table and lut from the 'labels' list of a Vistas config.json.

    Entries with evaluate=false (v1.2: only 'Unlabeled') become ignore; the others keep their
    order as train ids 0..64.
    """
    names, colors = [], []
    lut = np.full(256, INVALID_RAW, np.int16)
    for raw, entry in enumerate(labels):
        try:
            evaluate = bool(entry.get("evaluate", True))
            name = str(entry.get("readable") or entry["name"])
            color = tuple(int(c) for c in entry["color"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{source}: labels[{raw}] = {entry!r}: expected name, color, "
                             f"evaluate ({err})") from None
        if evaluate:
            lut[raw] = len(names)
            names.append(name)
            colors.append(color)
        else:
            lut[raw] = IGNORE_LABEL
    return ClassTable("mapillary", tuple(names), tuple(colors)), lut


def mapillary_default_classes() -> tuple[ClassTable, np.ndarray]:
    rng = np.random.default_rng(65)  # stand-in colours; the real ones come from config.json
    colors = [tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in MAPILLARY_V12_NAMES]
    entries = [{"readable": n, "color": c, "evaluate": n != "Unlabeled"}
               for n, c in zip(MAPILLARY_V12_NAMES, colors)]
    return mapillary_classes_from_config(entries, "built-in Mapillary v1.2 table")
