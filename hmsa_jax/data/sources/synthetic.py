"""Built-in synthetic street scenes, where scale matters as the paper says it does.

Each scene is a perspective street: sky and buildings above the horizon, a road between two
sidewalks below it, trees, poles with signs, dashed lane lines and optionally terrain and cars.
Two properties make it a small stand-in for Cityscapes' scale problem:

* Texture alone is ambiguous for large regions. Road and sidewalk are painted with one and the
  same asphalt texture (no curb), and vegetation and terrain with one and the same foliage
  texture: only the layout (position relative to the vanishing point, lane lines and horizon)
  tells them apart, which needs the wide context of a downscaled input.
* Thin structures need resolution. Poles and lane lines are 1-2 px wide and signs a few px at
  the default size, so a 0.5x downscale blurs them into their surroundings.

A scene is a pure function of (seed, split, index) and the size: no files, no download.
"""
from __future__ import annotations

import zlib

import numpy as np
from PIL import Image

from hmsa_jax.data.errors import DataError
from hmsa_jax.data.labels import ClassTable
from hmsa_jax.data.sources.base import Source

GENERATOR_VERSION = 1  # bump whenever a scene's pixels change (keys cached centroids)

# In drawing-priority-independent order; `num_classes` keeps the first N.
ALL_CLASSES = (
    ("road", (128, 64, 128)),
    ("sidewalk", (244, 35, 232)),
    ("building", (70, 70, 70)),
    ("sky", (70, 130, 180)),
    ("vegetation", (107, 142, 35)),
    ("pole", (153, 153, 153)),
    ("traffic_sign", (220, 220, 0)),
    ("lane_marking", (255, 255, 255)),
    ("terrain", (152, 251, 152)),
    ("car", (0, 0, 142)),
)
ROAD, SIDEWALK, BUILDING, SKY, VEGETATION, POLE, SIGN, LANE, TERRAIN, CAR = range(len(ALL_CLASSES))
MIN_CLASSES = 4
DEFAULT_NUM_CLASSES = 8
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


def synthetic_classes(num_classes: int = DEFAULT_NUM_CLASSES) -> ClassTable:
    if not MIN_CLASSES <= num_classes <= len(ALL_CLASSES):
        raise DataError(f"synthetic num_classes={num_classes}; expected {MIN_CLASSES}..{len(ALL_CLASSES)}")
    chosen = ALL_CLASSES[:num_classes]
    return ClassTable(f"synthetic{num_classes}", tuple(n for n, _ in chosen), tuple(c for _, c in chosen))


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Zero-mean, unit-ish value noise with features about `cell` pixels wide."""
    cell = max(cell, 1.0)
    coarse = rng.standard_normal((int(height / cell) + 2, int(width / cell) + 2)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))


def _foliage(rng, height, width, unit) -> np.ndarray:
    base = np.array([rng.uniform(40, 90), rng.uniform(90, 140), rng.uniform(20, 60)], np.float32)
    light = 28 * _smooth_noise(rng, height, width, 2.5 * unit) + 14 * rng.standard_normal((height, width))
    return base + light[..., None] * np.array([0.8, 1.0, 0.6], np.float32)


def _asphalt(rng, height, width, unit) -> np.ndarray:
    grey = rng.uniform(75, 140)
    tint = rng.uniform(-6, 6, 3)
    light = 12 * _smooth_noise(rng, height, width, 4 * unit) + 9 * rng.standard_normal((height, width))
    return (grey + tint + light[..., None]).astype(np.float32)


def _sky(rng, height, width, horizon) -> np.ndarray:
    if rng.uniform() < 0.7:  # clear
        top, bottom = np.array([60, 120, 205]), np.array([170, 200, 235])
    else:  # overcast
        top, bottom = np.array([150, 155, 165]), np.array([205, 208, 212])
    top = top + rng.uniform(-15, 15, 3)
    bottom = bottom + rng.uniform(-15, 15, 3)
    frac = np.clip(np.arange(height, dtype=np.float32) / max(horizon, 1.0), 0, 1)[:, None, None]
    sky = top * (1 - frac) + bottom * frac
    return (sky + 4 * _smooth_noise(rng, height, width, 16)[..., None]).astype(np.float32) * np.ones((1, width, 1), np.float32)


def render_scene(rng: np.random.Generator, height: int, width: int,
                 num_classes: int = DEFAULT_NUM_CLASSES,
                 with_image: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
    """One scene: (uint8 [H, W, 3] image, uint8 [H, W] label in 0..num_classes-1).

    The layout is drawn from `rng` before any texture, so `with_image=False` gives the same
    label for a fraction of the cost (image None)."""
    enabled = lambda c: c < num_classes  # noqa: E731
    unit = height / 128.0  # sizes are designed at 128 px high and scale with the image
    y = np.arange(height, dtype=np.float32)[:, None] + 0.5
    x = np.arange(width, dtype=np.float32)[None, :] + 0.5
    horizon = height * rng.uniform(0.36, 0.5)
    vanish_x = width * rng.uniform(0.3, 0.7)
    # Depth factor t: 0 at the horizon, 1 at the bottom row (near), for rows below the horizon.
    depth = np.clip((y - horizon) / (height - horizon), 0, 1)
    below = y > horizon

    def edge(bottom_x):  # a ground line through the vanishing point, x as a function of row
        return vanish_x + (bottom_x - vanish_x) * depth

    road_left_b = vanish_x - width * rng.uniform(0.18, 0.38)
    road_right_b = vanish_x + width * rng.uniform(0.18, 0.38)
    side_left_b = road_left_b - width * rng.uniform(0.12, 0.3)
    side_right_b = road_right_b + width * rng.uniform(0.12, 0.3)
    road_l, road_r, side_l, side_r = edge(road_left_b), edge(road_right_b), edge(side_left_b), edge(side_right_b)

    label = np.full((height, width), SKY, np.uint8)
    outer_left, outer_right = BUILDING, BUILDING
    if enabled(TERRAIN):
        outer_left = TERRAIN if rng.uniform() < 0.5 else BUILDING
        outer_right = TERRAIN if rng.uniform() < 0.5 else BUILDING
    label[below & (x < vanish_x)] = outer_left
    label[below & (x >= vanish_x)] = outer_right
    label[below & (x >= side_l) & (x <= side_r)] = SIDEWALK if enabled(SIDEWALK) else ROAD
    label[below & (x >= road_l) & (x <= road_r)] = ROAD

    # Buildings: blocks of random width and height, leaving a gap of sky around the street.
    gap = width * rng.uniform(0.06, 0.2)
    block_colour = np.zeros((width, 3), np.float32)
    roof = np.full(width, horizon, np.float32)
    start = 0
    while start < width:
        block = int(width * rng.uniform(0.05, 0.16)) + 1
        centre = start + block / 2
        if abs(centre - vanish_x) > gap:
            sideness = min(1.0, abs(centre - vanish_x) / (width / 2))
            roof[start:start + block] = horizon - height * rng.uniform(0.06, 0.36) * (0.4 + sideness)
        block_colour[start:start + block] = (rng.uniform(90, 200)
                                             * np.array([1.0, rng.uniform(0.85, 1.0), rng.uniform(0.7, 0.95)]))
        start += block
    label[(y >= roof[None, :]) & ~below] = BUILDING

    # Trees above the horizon (foliage texture, like terrain below it).
    for _ in range(rng.integers(0, 4)):
        cy = horizon - height * rng.uniform(0.0, 0.15)
        ry = height * rng.uniform(0.06, 0.15)
        rx = ry * rng.uniform(0.8, 1.6)
        cx = width * rng.uniform(0, 1)
        label[((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1] = VEGETATION

    cars = []
    if enabled(CAR):
        for _ in range(rng.integers(0, 3)):
            t = rng.uniform(0.3, 1.0)
            row = horizon + t * (height - horizon)
            left, right = vanish_x + (road_left_b - vanish_x) * t, vanish_x + (road_right_b - vanish_x) * t
            car_w = width * 0.1 * t
            cx = rng.uniform(left + car_w / 2, max(left + car_w / 2, right - car_w / 2))
            box = (int(row - 0.55 * car_w), int(row), int(cx - car_w / 2), int(cx + car_w / 2) + 1)
            label[max(box[0], 0):box[1], max(box[2], 0):box[3]] = CAR
            cars.append(box)

    if enabled(LANE):  # dashed 1-2 px lines along the road, dashes shortening with distance
        fractions = [0.5] if rng.uniform() < 0.5 else [1 / 3, 2 / 3]
        period, phase = rng.uniform(0.6, 1.2), rng.uniform()
        with np.errstate(divide="ignore"):
            on = ((1.0 / np.maximum(depth, 1e-3)) * period + phase) % 1.0 < 0.5
        half_width = np.maximum(0.5, depth * unit) / 2 + 0.25
        for f in fractions:
            centre = road_l + f * (road_r - road_l)
            label[below & (depth > 0.08) & on & (np.abs(x - centre) <= half_width) & (label == ROAD)] = LANE

    poles = []
    if enabled(POLE):  # 1-2 px poles standing on the sidewalks, some carrying a sign
        for _ in range(rng.integers(1, 5)):
            t = rng.uniform(0.15, 1.0)
            row = horizon + t * (height - horizon)
            outer_b, inner_b = (side_left_b, road_left_b) if rng.uniform() < 0.5 else (side_right_b, road_right_b)
            px = vanish_x + ((outer_b + inner_b) / 2 - vanish_x) * t
            pole_w = max(1, int(round((1 if t < 0.6 else 2) * unit)))
            top = max(0, int(row - height * rng.uniform(0.3, 0.55) * (0.3 + t)))
            x0 = int(px)
            if any(x0 - pole_w - 1 <= other_x <= x0 + other_w + 1 for _, other_x, other_w in poles):
                continue  # touching poles would make one thick pole
            label[top:int(row), max(x0, 0):max(x0 + pole_w, 0)] = POLE
            poles.append((top, x0, pole_w))
            if enabled(SIGN) and rng.uniform() < 0.7:
                side = max(3, int(round(rng.uniform(3, 6) * unit * (0.5 + t / 2))))
                sx = x0 + pole_w // 2 - side // 2
                label[top:top + side, max(sx, 0):max(sx + side, 0)] = SIGN

    if not with_image:
        return None, label
    # Paint: each class takes its texture where the label says so.
    asphalt = _asphalt(rng, height, width, unit)
    foliage = _foliage(rng, height, width, unit)
    window_h, window_w = rng.uniform(4, 8) * unit, rng.uniform(4, 8) * unit
    windows = (((y - roof[None, :]) % window_h) < 0.5 * window_h) & ((x % window_w) < 0.5 * window_w)
    facade = block_colour[None, :, :] * np.where(windows, 0.45, 1.0)[..., None]
    facade = facade + 6 * rng.standard_normal((height, width, 1))
    image = _sky(rng, height, width, horizon)
    for cls, texture in ((ROAD, asphalt), (SIDEWALK, asphalt), (BUILDING, facade),
                         (VEGETATION, foliage), (TERRAIN, foliage)):
        image = np.where((label == cls)[..., None], texture, image)
    solid = {
        POLE: rng.uniform(35, 80, 1) * np.ones(3),
        SIGN: np.array([(220, 30, 30), (30, 70, 220), (235, 200, 20), (240, 240, 240)][rng.integers(4)]),
        LANE: rng.uniform(205, 245, 1) * np.ones(3),
        CAR: rng.uniform(20, 230, 3),
    }
    for cls, colour in solid.items():
        if enabled(cls):
            image = np.where((label == cls)[..., None], colour.astype(np.float32), image)
    for y0, y1, x0, x1 in cars:  # darker windscreen band: texture inside the car, label unchanged
        band = slice(max(y0, 0), max(y0 + (y1 - y0) // 3, 0))
        image[band, max(x0, 0):max(x1, 0)] *= 0.45
    image = image + 2.0 * rng.standard_normal(image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), label


class SyntheticScenes(Source):
    """`num_images` scenes of one split, deterministic in (seed, split, index)."""

    def __init__(self, num_images: int = 512, height: int = 128, width: int = 256,
                 num_classes: int = DEFAULT_NUM_CLASSES, seed: int = 0, split: str = "train"):
        if num_images < 1:
            raise DataError(f"synthetic num_images={num_images}; expected >= 1")
        if height < 32 or width < 32:
            raise DataError(f"synthetic size {height}x{width}; expected at least 32x32")
        self.num_images, self.height, self.width = int(num_images), int(height), int(width)
        self.num_classes, self.seed, self.split = int(num_classes), int(seed), str(split)
        self.classes = synthetic_classes(self.num_classes)
        self._split_code = _SPLIT_CODES.get(self.split, zlib.crc32(self.split.encode()))

    def __len__(self) -> int:
        return self.num_images

    def load(self, index: int) -> dict:
        index = self._check_index(index)
        rng = np.random.default_rng([self.seed, self._split_code, index])
        image, label = render_scene(rng, self.height, self.width, self.num_classes)
        return {"image": image, "label": label, "index": index}

    def load_label(self, index: int) -> np.ndarray:
        index = self._check_index(index)
        rng = np.random.default_rng([self.seed, self._split_code, index])
        return render_scene(rng, self.height, self.width, self.num_classes, with_image=False)[1]

    def name(self, index: int) -> str:
        return f"synthetic/{self.split}/{self._check_index(index):06d}"

    def fingerprint(self) -> str:
        return (f"synthetic-v{GENERATOR_VERSION}-{self.num_images}-{self.height}x{self.width}-"
                f"k{self.num_classes}-s{self.seed}-{self.split}")
