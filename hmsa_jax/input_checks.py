"""Rules for the inputs of `hmsa predict`, `hmsa autolabel` and `hmsa eval` that depend on the
images and folders given, checked before a checkpoint is loaded or anything is compiled.

Each rule raises the error type of its kind of mistake, with one line naming the culprit and
what was expected: InferenceError for a scale that does not fit an image, DataError for a
file that is not an image or inputs that name none, FileExistsError for an output folder that
would mix with inputs, NotADirectoryError / PermissionError for one that cannot be made.
"""
from __future__ import annotations

import os
from typing import Sequence

from hmsa_jax.data.errors import DataError
from hmsa_jax.data.imageio import image_size

# What find_images takes from an input folder (any file named directly is read).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# Largest scaled input one image may become (4x the paper's largest: 1024x2048 at 2.0).
MAX_SCALED_PIXELS = 4 * 1024 * 2048 * 4
# Pictures (predict) of thinner strips are unreadable and their panels huge.
MAX_PICTURE_ASPECT = 32


class InferenceError(ValueError):
    """Unusable inference input: scales, fusion, images, or a checkpoint that does not fit."""


def check_scaled_size(where: str, height: int, width: int, scales: Sequence[float]) -> None:
    """Every scale leaves at least one pixel each way and the largest stays under
    MAX_SCALED_PIXELS (`where` names the image or split)."""
    for scale in sorted(scales):
        rows, cols = int(height * scale), int(width * scale)
        if min(rows, cols) < 1:
            raise InferenceError(
                f"{where}: scale {scale:g} makes this {height}x{width} image {rows}x{cols}; expected "
                f"every scale to leave at least 1 pixel each way (drop {scale:g} or use larger images)")
    largest = max(scales)
    pixels = int(height * largest) * int(width * largest)
    if pixels > MAX_SCALED_PIXELS:
        raise InferenceError(
            f"{where}: scale {largest:g} makes this {height}x{width} image "
            f"{int(height * largest)}x{int(width * largest)} = {pixels / 1e6:.0f} Mpx; expected at most "
            f"{MAX_SCALED_PIXELS / 1e6:.0f} Mpx per scaled image (use smaller scales or --window)")


def check_picture_shape(path: str, height: int, width: int) -> None:
    """Pictures need an aspect ratio within 1:MAX_PICTURE_ASPECT."""
    if max(height, width) > MAX_PICTURE_ASPECT * min(height, width):
        raise InferenceError(
            f"{path}: a {height}x{width} image (HxW); expected an aspect ratio within 1:"
            f"{MAX_PICTURE_ASPECT} for pictures (crop it into tiles first)")


def find_images(inputs: Sequence[str]) -> list[tuple[str, str]]:
    """(path, name) of every image in `inputs` (files, or folders searched recursively); name is
    the path relative to its folder without extension (the file stem for files)."""
    found = []
    for item in inputs:
        if os.path.isdir(item):
            for root, _, files in sorted(os.walk(item)):
                for f in sorted(files):
                    if f.lower().endswith(IMAGE_EXTENSIONS):
                        path = os.path.join(root, f)
                        found.append((path, os.path.splitext(os.path.relpath(path, item))[0]))
        elif os.path.isfile(item):
            found.append((item, os.path.splitext(os.path.basename(item))[0]))
        else:
            raise DataError(f"{item}: no such image file or folder")
    if not found:
        raise DataError(f"no images ({'/'.join(IMAGE_EXTENSIONS)}) found in {', '.join(inputs)}")
    names = [n for _, n in found]
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise DataError(f"two inputs give the output name {duplicate!r}; pass their common folder instead")
    return found


def check_inputs_fit(images: Sequence[tuple[str, str]], scales: Sequence[float],
                     pictures: bool = False) -> list[tuple[int, int]]:
    """Header sizes of every (path, name) image, each checked against the scales (and, for
    `pictures`, the aspect rule). Returns the sizes."""
    sizes = []
    for path, _ in images:
        height, width = image_size(path)
        check_scaled_size(path, height, width, scales)
        if pictures:
            check_picture_shape(path, height, width)
        sizes.append((height, width))
    return sizes


def check_output_folder(out_dir: str, option: str, given: str | None = None) -> None:
    """`out_dir` is a folder, or can be made: its nearest existing ancestor is a writable folder.
    `given`: what the user typed, when `out_dir` was derived from it (a file's folder)."""
    given = given or out_dir
    existing = os.path.abspath(out_dir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        if existing == os.path.abspath(given):
            raise NotADirectoryError(f"{option}={given} exists and is not a folder; expected a "
                                     f"folder, or a path where one can be made")
        raise NotADirectoryError(f"{option}={given}: {existing} is a file, not a folder; expected "
                                 f"a path whose folders exist or can be made")
    if not os.access(existing, os.W_OK):
        raise PermissionError(f"{option}={given}: {existing} is not writable; expected a folder "
                              f"this user can write")


def check_output_file(path: str, option: str) -> None:
    """`path` can be written as a file: not a folder, and its folder can be made."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"{option}={path} is a folder; expected a file path")
    check_output_folder(os.path.dirname(os.path.abspath(path)), option, given=path)


def check_out_dir(out_dir: str, inputs: Sequence[str], option: str = "--out") -> None:
    """`out_dir` is (or can be made) a writable folder, and is not an input folder nor inside
    one: the next run would read the outputs as inputs (predict) or outputs would mix with the
    images (autolabel)."""
    check_output_folder(out_dir, option)
    out = os.path.realpath(out_dir)
    for item in inputs:
        if not os.path.isdir(item):
            continue
        folder = os.path.realpath(item)
        if out == folder or out.startswith(folder + os.sep):
            where = "is" if out == folder else "is inside"
            raise FileExistsError(f"{option}={out_dir} {where} the input folder {item}: outputs would "
                                  f"mix with the images and be read as inputs next time; expected "
                                  f"an output folder outside the inputs")


__all__ = ["IMAGE_EXTENSIONS", "InferenceError", "MAX_PICTURE_ASPECT", "MAX_SCALED_PIXELS",
           "check_inputs_fit", "check_out_dir", "check_output_file", "check_output_folder",
           "check_picture_shape", "check_scaled_size", "find_images"]
