"""Strict image and label file reading: every failure names the file and what was expected."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from hmsa_jax.data.errors import DataError
from hmsa_jax.data.labels import INVALID_RAW, describe_valid_raw_values

# Pillow can be told to pad truncated files silently; a dataset must never be read that way.
ImageFile.LOAD_TRUNCATED_IMAGES = False
Image.MAX_IMAGE_PIXELS = 400_000_000  # Vistas has 20+ Mpx images; still refuse absurd sizes


def _open_fully(path: str) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()  # decodes every byte: a truncated or corrupt file fails here, not later
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnidentifiedImageError as error:
        raise _unidentified(path, error) from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: unreadable image ({err})") from None
    return image


def image_size(path: str) -> tuple[int, int]:
    """(height, width) from the file's header, without decoding it; DataError if `path` is not
    an image file."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except UnidentifiedImageError as error:
        raise _unidentified(path, error) from None
    except OSError as error:
        raise DataError(f"{path}: unreadable image ({error.strerror or error})") from None
    return height, width


IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8", b"BM", b"RIFF", b"GIF8", b"II*\x00", b"MM\x00*")


def _unidentified(path: str, error: Exception) -> DataError:
    """A file PIL cannot identify: a damaged image (it has an image's signature) or another
    kind of file named like an image (text, empty, ...)."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(IMAGE_MAGIC):
        return DataError(f"{path}: unreadable image ({error})")
    if not head:
        what = "an empty file"
    elif all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        what = f"text starting {head.decode('ascii').splitlines()[0][:16]!r}"
    else:
        what = f"unknown format, first bytes {head[:8].hex()}"
    return DataError(f"{path}: not an image file ({what}); expected a PNG/JPEG image, remove or "
                     f"rename it")


def read_rgb(path: str) -> np.ndarray:
    """uint8 [H, W, 3]. Greyscale/palette/RGBA files are converted; 16-bit is refused."""
    image = _open_fully(path)
    if image.mode not in ("RGB", "RGBA", "L", "P", "CMYK", "YCbCr", "LA"):
        raise DataError(f"{path}: image mode {image.mode!r}; expected an 8-bit RGB image")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def read_label_raw(path: str) -> np.ndarray:
    """uint8 [H, W] raw label values from a single-channel ('L') or palette ('P') PNG.

    A palette PNG (Mapillary) is read as its indices, never converted to colours or grey.
    """
    image = _open_fully(path)
    if image.mode not in ("L", "P"):
        hint = " (a colour visualisation instead of the id image?)" if image.mode in ("RGB", "RGBA") else ""
        raise DataError(f"{path}: label image mode {image.mode!r}; expected a single-channel "
                        f"8-bit PNG ('L' or 'P'){hint}")
    return np.asarray(image, dtype=np.uint8)


def map_label(raw: np.ndarray, lut: np.ndarray, path: str, table_name: str) -> np.ndarray:
    """Raw values -> train ids (uint8, 255 ignore); values the table lacks raise DataError."""
    mapped = lut[raw]
    if (mapped == INVALID_RAW).any():
        bad = np.unique(raw[mapped == INVALID_RAW])
        shown = ", ".join(str(v) for v in bad[:10]) + (" ..." if len(bad) > 10 else "")
        raise DataError(f"{path}: label values {{{shown}}} are not in the {table_name} table "
                        f"(valid raw values: {describe_valid_raw_values(lut)})"
                        + _mixup_hint(bad, lut))
    return mapped.astype(np.uint8)


def _mixup_hint(bad: np.ndarray, lut: np.ndarray) -> str:
    valid = lut != INVALID_RAW
    if valid[:34].all() and not valid[255] and 255 in bad:
        return "; 255 is the trainIds ignore value: is this a *_labelTrainIds.png given as labelIds?"
    if valid[:19].all() and not valid[19:255].any() and bad.max() <= 33:
        return "; values 19..33 look like Cityscapes labelIds given where trainIds were expected"
    return ""


def check_same_size(image: np.ndarray, label: np.ndarray, image_path: str, label_path: str):
    if image.shape[:2] != label.shape[:2]:
        raise DataError(f"{label_path}: label size {label.shape[1]}x{label.shape[0]} (WxH) differs "
                        f"from its image {os.path.basename(image_path)} "
                        f"{image.shape[1]}x{image.shape[0]}")


def write_png(path: str, array: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)
