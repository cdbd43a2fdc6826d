"""Training augmentation and evaluation preprocessing on numpy/PIL (runs in Grain workers).

Order, as in the reference recipe: random scale (bicubic image, nearest label) -> pad to the
crop (image 0, label ignore, bottom/right) -> crop (random, or containing a class centroid)
-> horizontal flip -> colour jitter -> optional Gaussian blur -> normalise.

Scale, pad and crop are fused: only the part of the rescaled image that the crop keeps is
resampled (PIL's `resize(box=...)`), which gives the same pixels as resizing the whole image
and cropping afterwards, at a fraction of the cost for scales above 1.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image, ImageFilter

from hmsa_jax.data.errors import DataError
from hmsa_jax.data.labels import IGNORE_LABEL, IMAGENET_MEAN, IMAGENET_STD

_MEAN = np.asarray(IMAGENET_MEAN, np.float32)
_STD = np.asarray(IMAGENET_STD, np.float32)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    crop_size: tuple[int, int] = (1024, 2048)  # (height, width)
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip_prob: float = 0.5
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    hue: float = 0.25
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.15, 1.3)
    normalize: bool = True

    def __post_init__(self):
        if len(self.crop_size) != 2:
            raise DataError(f"augment.crop_size={self.crop_size}; expected (height, width)")
        h, w = self.crop_size
        if h < 1 or w < 1:
            raise DataError(f"augment.crop_size={self.crop_size}; expected positive (height, width)")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise DataError(f"augment.scale_range={self.scale_range}; expected 0 < min <= max")
        if not 0 <= self.hue <= 0.5:
            raise DataError(f"augment.hue={self.hue}; expected 0..0.5")
        for field in ("flip_prob", "blur_prob"):
            if not 0 <= getattr(self, field) <= 1:
                raise DataError(f"augment.{field}={getattr(self, field)}; expected a probability")


def normalize_image(image):
    """uint8 RGB -> float32 (x/255 - mean) / std. Works on numpy and jax arrays."""
    scale = 1.0 / (255.0 * _STD)
    return image.astype(np.float32) * scale - (_MEAN / _STD)


def denormalize_image(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint((image * _STD + _MEAN) * 255.0), 0, 255).astype(np.uint8)


def scaled_size_at_least_1px(height: int, width: int, scale: float) -> tuple[int, int]:
    """floor(H*s) x floor(W*s), at least 1 px: the size the reference's RandomSizeAndCrop
    resizes a training image to (`int(w * scale_amt)`). The model's rescaling rule,
    `ops.scaled_size` (F.interpolate's), refuses an empty size instead of clamping."""
    return max(1, int(height * scale)), max(1, int(width * scale))


def _crop_origin(rng, padded: int, crop: int, centroid: float | None, scaled: int, factor: float) -> int:
    """First row (or column) of the crop in rescaled+padded coordinates."""
    if centroid is None:
        return int(rng.integers(0, padded - crop + 1))
    # The rescaled pixel whose footprint holds the centroid; the crop must include it.
    pixel = min(int((centroid + 0.5) / factor), scaled - 1)
    return int(rng.integers(max(0, pixel - crop + 1), min(pixel, padded - crop) + 1))


def _nearest_source(start: int, count: int, size: int, scaled: int) -> np.ndarray:
    """Source pixels of output pixels start..start+count-1 of a nearest resize size -> scaled:
    the pixel under each output pixel's centre (PIL's NEAREST up to its fixed-point rounding).
    Multiplying before dividing keeps the arithmetic exact up to one rounding."""
    centres = (start + np.arange(count) + 0.5) * size / scaled
    return np.minimum(centres.astype(np.int64), size - 1)


def scale_pad_crop(image: np.ndarray, label: np.ndarray, scale: float, crop_size: tuple[int, int],
                   rng: np.random.Generator, centroid: tuple[float, float] | None = None):
    """Rescale by `scale`, pad to the crop (bottom/right) and crop; keeps `centroid` (y, x in
    source pixels) inside the crop when given."""
    height, width = label.shape
    crop_h, crop_w = crop_size
    scaled_h, scaled_w = scaled_size_at_least_1px(height, width, scale)
    factor_y, factor_x = height / scaled_h, width / scaled_w
    cy, cx = centroid if centroid is not None else (None, None)
    y0 = _crop_origin(rng, max(scaled_h, crop_h), crop_h, cy, scaled_h, factor_y)
    x0 = _crop_origin(rng, max(scaled_w, crop_w), crop_w, cx, scaled_w, factor_x)
    visible_h, visible_w = min(crop_h, scaled_h - y0), min(crop_w, scaled_w - x0)
    box = (x0 * factor_x, y0 * factor_y, (x0 + visible_w) * factor_x, (y0 + visible_h) * factor_y)
    part_image = Image.fromarray(image).resize((visible_w, visible_h), Image.BICUBIC, box=box)
    part_label = label[np.ix_(_nearest_source(y0, visible_h, height, scaled_h),
                              _nearest_source(x0, visible_w, width, scaled_w))]
    if (visible_h, visible_w) == (crop_h, crop_w):
        return np.asarray(part_image), part_label
    out_image = np.zeros((crop_h, crop_w, 3), np.uint8)
    out_label = np.full((crop_h, crop_w), IGNORE_LABEL, np.uint8)
    out_image[:visible_h, :visible_w] = np.asarray(part_image)
    out_label[:visible_h, :visible_w] = part_label
    return out_image, out_label


_GRAY = np.array([0.299, 0.587, 0.114])  # PIL's "L" weights, as ImageEnhance uses
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _hue_rotation(shift: float) -> np.ndarray:
    """Hue shift (fraction of the colour circle) as a rotation about the grey axis in YIQ."""
    angle = -2 * np.pi * shift  # the sign that turns red towards green, as HSV hue does
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    return np.linalg.inv(_RGB_TO_YIQ) @ rotation @ _RGB_TO_YIQ


def color_jitter_affine(rng: np.random.Generator, mean_rgb: np.ndarray, brightness: float,
                        contrast: float, saturation: float, hue: float) -> tuple[np.ndarray, np.ndarray]:
    """torchvision ColorJitter as one affine colour map x -> A x + c: factors drawn from
    [1-s, 1+s] (hue shift from [-h, h]), the four adjustments composed in random order.

    Brightness, contrast (towards the mean grey of the image so far) and saturation (towards
    each pixel's grey) are exactly ImageEnhance's blends; hue is a YIQ rotation rather than an
    HSV round trip, and clipping happens once at the end instead of after every step. The
    result is a few times faster than four PIL passes on a 2-Mpixel crop."""
    steps = []
    if brightness > 0:
        steps.append(("brightness", rng.uniform(max(0, 1 - brightness), 1 + brightness)))
    if contrast > 0:
        steps.append(("contrast", rng.uniform(max(0, 1 - contrast), 1 + contrast)))
    if saturation > 0:
        steps.append(("saturation", rng.uniform(max(0, 1 - saturation), 1 + saturation)))
    if hue > 0:
        steps.append(("hue", rng.uniform(-hue, hue)))
    matrix, offset = np.eye(3), np.zeros(3)
    mean = np.asarray(mean_rgb, np.float64)
    for k in rng.permutation(len(steps)):
        kind, factor = steps[k]
        if kind == "brightness":
            step, shift = factor * np.eye(3), np.zeros(3)
        elif kind == "contrast":
            step, shift = factor * np.eye(3), np.full(3, (1 - factor) * (_GRAY @ mean))
        elif kind == "saturation":
            step, shift = factor * np.eye(3) + (1 - factor) * np.outer(np.ones(3), _GRAY), np.zeros(3)
        else:
            step, shift = _hue_rotation(factor), np.zeros(3)
        matrix, offset = step @ matrix, step @ offset + shift
        mean = step @ mean + shift
    return matrix, offset


def apply_color(image: np.ndarray, matrix: np.ndarray, offset: np.ndarray, normalize: bool) -> np.ndarray:
    """Affine colour map, clipped to [0, 255], fused with normalisation when asked:
    float32 normalised, else uint8."""
    if normalize:
        scale = 1.0 / (255.0 * _STD)
        matrix, offset = matrix * scale[:, None], offset * scale - _MEAN / _STD
        low, high = -_MEAN / _STD, (1 - _MEAN) / _STD
    else:
        low, high = np.zeros(3, np.float32), np.full(3, 255.0, np.float32)
    pixels = image.reshape(-1, 3).astype(np.float32)
    out = np.einsum("nc,dc->nd", pixels, matrix.astype(np.float32), optimize=True)  # BLAS, unlike @
    out += offset.astype(np.float32)
    out = np.clip(out, low.astype(np.float32), high.astype(np.float32)).reshape(image.shape)
    return out if normalize else np.rint(out).astype(np.uint8)


def color_jitter(image: np.ndarray, rng: np.random.Generator, brightness: float, contrast: float,
                 saturation: float, hue: float) -> np.ndarray:
    """uint8 -> uint8 colour jitter (see color_jitter_affine)."""
    if not (brightness or contrast or saturation or hue):
        return image
    mean = image.reshape(-1, 3).mean(0)
    return apply_color(image, *color_jitter_affine(rng, mean, brightness, contrast, saturation, hue),
                       normalize=False)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius=sigma)))


def augment(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, config: AugmentConfig,
            centroid: tuple[float, float] | None = None) -> dict:
    """One training element {"image": float32 (or uint8) [h,w,3], "label": int32 [h,w]}."""
    scale = rng.uniform(*config.scale_range)
    image, label = scale_pad_crop(image, label, scale, config.crop_size, rng, centroid)
    # Contrast's pivot is the mean grey; a 1/16 pixel sample estimates it well and fast.
    mean = image[::4, ::4].reshape(-1, 3).mean(0) if config.contrast > 0 else np.zeros(3)
    if rng.uniform() < config.flip_prob:
        image, label = image[:, ::-1], label[:, ::-1]
    matrix, offset = color_jitter_affine(rng, mean, config.brightness, config.contrast,
                                         config.saturation, config.hue)
    if config.blur_prob > 0 and rng.uniform() < config.blur_prob:
        image = gaussian_blur(apply_color(image, matrix, offset, normalize=False),
                              rng.uniform(*config.blur_sigma))
        matrix, offset = np.eye(3), np.zeros(3)
    image = apply_color(image, matrix, offset, config.normalize)
    return {"image": image, "label": np.ascontiguousarray(label, dtype=np.int32)}


def pad_to_size(image: np.ndarray, label: np.ndarray, size: tuple[int, int], where: str):
    """Pad bottom/right to `size` (image 0, label ignore) for batching unequal eval images."""
    height, width = label.shape
    target_h, target_w = size
    if height > target_h or width > target_w:
        raise DataError(f"{where}: image {height}x{width} larger than eval pad_to {target_h}x{target_w}")
    out_image = np.zeros((target_h, target_w, 3), image.dtype)
    out_label = np.full((target_h, target_w), IGNORE_LABEL, label.dtype)
    out_image[:height, :width] = image
    out_label[:height, :width] = label
    return out_image, out_label


def eval_element(image: np.ndarray, label: np.ndarray, normalize: bool = True) -> dict:
    image = normalize_image(image) if normalize else image
    return {"image": image, "label": label.astype(np.int32)}
