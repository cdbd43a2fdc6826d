"""A built-in benchmark of the two ways scale matters: large look-alike regions, thin structures.

Each scene is a patchwork of large rectangular regions, each of class `field` or `water`, with
thin wires and small dots drawn over them:

* Large regions that local appearance cannot tell apart. Both classes share one grey texture
  (the same brightness distribution, per region and per pixel); the only difference is the
  orientation of faint stripes 24-40 px apart (field: about horizontal, water: about
  vertical) under stronger fine noise. A window narrower than the period sees no difference:
  the class needs a wide view.
* Thin and small structures that a downscale destroys. Wires are 3 px wide lines and dots
  5-7 px squares at the design size (128 px high). The models predict at stride 4 of their
  input, i.e. at stride 8 of the scene for a 0.5x input, where a wire is a third of a cell.

What this does and does not make a lower scale win is measured, not assumed: see
benchmarks/scale_study.py and WORKSPACE_NOTES.md ("Scale benchmark"). A scene is a pure
function of (seed, split, index) and the size: no files, no download.
"""
from __future__ import annotations

import zlib

import numpy as np
from PIL import Image

from hmsa_jax.data.errors import DataError
from hmsa_jax.data.labels import ClassTable
from hmsa_jax.data.sources.base import Source

GENERATOR_VERSION = 1  # bump whenever a scene's pixels change (keys cached centroids)

CLASSES = ClassTable(
    "scale_bench",
    ("field", "water", "wire", "dot"),
    ((107, 142, 35), (70, 130, 180), (250, 170, 30), (220, 20, 60)),
)
FIELD, WATER, WIRE, DOT = range(4)
LARGE_CLASSES = ("field", "water")  # need a wide view
THIN_CLASSES = ("wire", "dot")  # need resolution
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
DESIGN_HEIGHT = 128
# The two region classes differ only in the orientation of faint, wide stripes (field: about
# horizontal, water: about vertical) under stronger fine noise.
STRIPE_PERIOD = (24.0, 40.0)
STRIPE_TILT = np.pi / 12
STRIPE_AMPLITUDE = 28.0
# Optional distractor (`distractor` > 0): fine stripes across each region's cue (field: about
# vertical, water: about horizontal), 6-10 px apart. Seen at 2x they are 12-20 px apart, the
# cue's period in a training crop scaled by 0.5: only their period relative to the cue's tells
# them apart, which makes 2x worse than 1x on the regions (WORKSPACE_NOTES.md, "Scale benchmark").
DISTRACTOR_PERIOD = (6.0, 10.0)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Zero-mean value noise with features about `cell` pixels wide."""
    cell = max(cell, 1.0)
    coarse = rng.standard_normal((int(height / cell) + 2, int(width / cell) + 2)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))


def partition(rng: np.random.Generator, height: int, width: int, unit: float) -> list[tuple[int, int, int, int]]:
    """Rectangles (y0, y1, x0, x1) tiling the image, sides mostly 64-192 px at the design size."""
    pending, regions = [(0, height, 0, width)], []
    while pending:
        y0, y1, x0, x1 = pending.pop()
        long_side = max(y1 - y0, x1 - x0)
        if long_side < 128 * unit or (long_side <= 192 * unit and rng.uniform() < 0.5):
            regions.append((y0, y1, x0, x1))
            continue
        if y1 - y0 >= x1 - x0:
            cut = y0 + int(round((y1 - y0) * rng.uniform(0.3, 0.7)))
            pending += [(y0, cut, x0, x1), (cut, y1, x0, x1)]
        else:
            cut = x0 + int(round((x1 - x0) * rng.uniform(0.3, 0.7)))
            pending += [(y0, y1, x0, cut), (y0, y1, cut, x1)]
    return regions


def _wire_mask(rng, height: int, width: int, half_width: float) -> np.ndarray:
    """A straight line across the image: pixels whose centre is within half_width of it."""
    y = np.arange(height, dtype=np.float32)[:, None] + 0.5
    x = np.arange(width, dtype=np.float32)[None, :] + 0.5
    angle = rng.uniform(0, np.pi)
    cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
    distance = np.abs((x - cx) * np.sin(angle) - (y - cy) * np.cos(angle))
    return distance <= half_width


def _regions(rng, height: int, width: int, unit: float, distractor: float = 0.0, distractor_rng=None):
    """Region classes (label), region index per pixel, and each region's stripes (the cue, plus
    `distractor` times the fine cross stripes) in amplitude units."""
    regions = partition(rng, height, width, unit)
    label = np.empty((height, width), np.uint8)
    region_id = np.empty((height, width), np.int32)
    stripes = np.zeros((height, width), np.float32)
    yy = np.arange(height, dtype=np.float32)[:, None] / unit
    xx = np.arange(width, dtype=np.float32)[None, :] / unit

    def wave(angle, period, phase):
        return np.sin(2 * np.pi * (yy * np.cos(angle) + xx * np.sin(angle)) / period + phase)

    for k, (y0, y1, x0, x1) in enumerate(regions):
        cls = FIELD if rng.uniform() < 0.5 else WATER
        label[y0:y1, x0:x1] = cls
        region_id[y0:y1, x0:x1] = k
        angle = rng.uniform(-STRIPE_TILT, STRIPE_TILT) + (0.0 if cls == FIELD else np.pi / 2)
        stripes[y0:y1, x0:x1] = wave(angle, rng.uniform(*STRIPE_PERIOD), rng.uniform(0, 2 * np.pi))[y0:y1, x0:x1]
        if distractor:  # from a generator of its own: the same scenes, only the texture changes
            cross = distractor_rng.uniform(-STRIPE_TILT, STRIPE_TILT) + angle + np.pi / 2
            fine = wave(cross, distractor_rng.uniform(*DISTRACTOR_PERIOD), distractor_rng.uniform(0, 2 * np.pi))
            stripes[y0:y1, x0:x1] += distractor * fine[y0:y1, x0:x1]
    return label, region_id, stripes, len(regions)


def _thin_structures(rng, height: int, width: int, unit: float):
    """Wire pixels (a mask) and dots (y0, x0, side)."""
    wires = np.zeros((height, width), bool)
    for _ in range(rng.integers(2, 5)):
        wires |= _wire_mask(rng, height, width, half_width=1.5 * unit)
    dots = []
    for _ in range(rng.integers(12, 25)):
        side = max(1, int(round(rng.choice([5, 6, 7]) * unit)))
        dots.append((int(rng.integers(0, height - side)), int(rng.integers(0, width - side)), side))
    return wires, dots


def _paint(rng, region_id, num_regions: int, stripes, wires, dots, unit: float) -> np.ndarray:
    height, width = region_id.shape
    base = rng.uniform(110, 150)
    offsets = rng.uniform(-12, 12, num_regions).astype(np.float32)
    grey = (base + offsets[region_id] + STRIPE_AMPLITUDE * stripes
            + 10 * _smooth_noise(rng, height, width, 4 * unit)
            + 14 * rng.standard_normal((height, width))).astype(np.float32)
    image = np.repeat(grey[..., None], 3, axis=2) * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    image[wires] = np.array([235, 205, 40], np.float32) + rng.uniform(-15, 15, 3)
    for y0, x0, side in dots:
        image[y0:y0 + side, x0:x0 + side] = np.array([40, 200, 225], np.float32) + rng.uniform(-15, 15, 3)
    image += 3.0 * rng.standard_normal(image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def render_scene(rng: np.random.Generator, height: int, width: int, with_image: bool = True,
                 distractor: float = 0.0, distractor_rng: np.random.Generator | None = None
                 ) -> tuple[np.ndarray | None, np.ndarray]:
    """One scene: (uint8 [H, W, 3] image or None, uint8 [H, W] label in 0..3).

    The layout is drawn from `rng` before any texture, so the label does not depend on
    `with_image`. `distractor`: amplitude of the fine cross stripes relative to the cue's, drawn
    from `distractor_rng`."""
    unit = height / DESIGN_HEIGHT
    if distractor and distractor_rng is None:
        raise ValueError("render_scene(distractor=...) needs distractor_rng")
    label, region_id, stripes, num_regions = _regions(rng, height, width, unit, distractor, distractor_rng)
    wires, dots = _thin_structures(rng, height, width, unit)
    label[wires] = WIRE
    for y0, x0, side in dots:
        label[y0:y0 + side, x0:x0 + side] = DOT
    if not with_image:
        return None, label
    return _paint(rng, region_id, num_regions, stripes, wires, dots, unit), label


class ScaleBenchScenes(Source):
    """`num_images` scale-benchmark scenes of one split, deterministic in (seed, split, index)."""

    classes = CLASSES

    def __init__(self, num_images: int = 512, height: int = 128, width: int = 256, seed: int = 0,
                 split: str = "train", distractor: float = 0.0):
        if num_images < 1:
            raise DataError(f"scale_bench num_images={num_images}; expected >= 1")
        if height < 32 or width < 32:
            raise DataError(f"scale_bench size {height}x{width}; expected at least 32x32")
        if not 0 <= distractor <= 2:
            raise DataError(f"scale_bench distractor={distractor}; expected 0..2")
        self.num_images, self.height, self.width = int(num_images), int(height), int(width)
        self.seed, self.split, self.distractor = int(seed), str(split), float(distractor)
        self._split_code = _SPLIT_CODES.get(self.split, zlib.crc32(self.split.encode()))

    def __len__(self) -> int:
        return self.num_images

    def _rng(self, index: int, stream: int = 7) -> np.random.Generator:
        return np.random.default_rng([self.seed, self._split_code, index, stream])

    def _render(self, index: int, with_image: bool):
        return render_scene(self._rng(index), self.height, self.width, with_image,
                            self.distractor, self._rng(index, stream=11) if self.distractor else None)

    def load(self, index: int) -> dict:
        index = self._check_index(index)
        image, label = self._render(index, with_image=True)
        return {"image": image, "label": label, "index": index}

    def load_label(self, index: int) -> np.ndarray:
        index = self._check_index(index)
        return self._render(index, with_image=False)[1]

    def name(self, index: int) -> str:
        return f"scale_bench/{self.split}/{self._check_index(index):06d}"

    def fingerprint(self) -> str:
        distractor = f"-d{self.distractor:g}" if self.distractor else ""
        return (f"scale_bench-v{GENERATOR_VERSION}-{self.num_images}-{self.height}x{self.width}-"
                f"s{self.seed}-{self.split}{distractor}")
