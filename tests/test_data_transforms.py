"""Augmentation invariants, centroid crops and class-uniform epoch plans."""
import dataclasses

import numpy as np
import pytest
from PIL import Image

from hmsa_jax.data import class_uniform, transforms
from hmsa_jax.data.class_uniform import Centroids, build_epoch_plan, label_centroids
from hmsa_jax.data.errors import DataError
from hmsa_jax.data.sources import SyntheticScenes
from hmsa_jax.data.sources import synthetic as syn

NO_COLOUR = dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)


@pytest.fixture(scope="module")
def scene():
    record = SyntheticScenes(4, 64, 128, num_classes=10).load(1)
    return record["image"], record["label"]


def test_label_values_preserved_and_padding_ignored(scene):
    image, label = scene
    config = transforms.AugmentConfig(crop_size=(80, 160), scale_range=(0.5, 2.0))
    for seed in range(12):
        out = transforms.augment(image, label, np.random.default_rng(seed), config)
        assert out["image"].shape == (80, 160, 3) and out["image"].dtype == np.float32
        assert out["label"].shape == (80, 160) and out["label"].dtype == np.int32
        assert set(np.unique(out["label"])) <= set(np.unique(label)) | {255}


def test_small_scale_pads_image_with_zero_and_label_with_ignore(scene):
    image, label = scene
    config = transforms.AugmentConfig(crop_size=(48, 96), scale_range=(0.5, 0.5), flip_prob=0.0,
                                      normalize=False, **NO_COLOUR)
    out = transforms.augment(image, label, np.random.default_rng(0), config)
    # 64x128 at 0.5 is 32x64: the crop is that image in the top-left, padding elsewhere.
    assert (out["label"][32:] == 255).all() and (out["label"][:, 64:] == 255).all()
    assert (out["image"][32:] == 0).all() and (out["image"][:, 64:] == 0).all()
    np.testing.assert_array_equal(out["label"][:32, :64], label[1::2, 1::2])  # pixel centres
    np.testing.assert_array_equal(out["image"][:32, :64],
                                  np.asarray(Image.fromarray(image).resize((64, 32), Image.BICUBIC)))


@pytest.mark.parametrize("scale", [0.5, 0.77, 1.0, 1.5, 2.0])
def test_fused_scale_and_crop_equals_resize_then_crop(scene, scale):
    image, label = scene
    crop = (40, 72)
    out_image, out_label = transforms.scale_pad_crop(image, label, scale, crop, np.random.default_rng(7))
    h, w = int(64 * scale), int(128 * scale)
    full_image = np.asarray(Image.fromarray(image).resize((w, h), Image.BICUBIC))
    # Nearest: the source pixel under each output pixel's centre.
    rows = np.minimum(((np.arange(h) + 0.5) * 64 / h).astype(int), 63)
    cols = np.minimum(((np.arange(w) + 0.5) * 128 / w).astype(int), 127)
    full_label = label[np.ix_(rows, cols)]
    pil_label = np.asarray(Image.fromarray(label).resize((w, h), Image.NEAREST))
    assert (full_label != pil_label).mean() < 0.03  # PIL rounds in fixed point
    padded_image = np.zeros((max(h, crop[0]), max(w, crop[1]), 3), np.uint8)
    padded_label = np.full(padded_image.shape[:2], 255, np.uint8)
    padded_image[:h, :w], padded_label[:h, :w] = full_image, full_label
    rng = np.random.default_rng(7)  # same draws as the fused version: y origin, then x origin
    y0 = int(rng.integers(0, padded_image.shape[0] - crop[0] + 1))
    x0 = int(rng.integers(0, padded_image.shape[1] - crop[1] + 1))
    np.testing.assert_array_equal(out_label, padded_label[y0:y0 + crop[0], x0:x0 + crop[1]])
    diff = np.abs(out_image.astype(int) - padded_image[y0:y0 + crop[0], x0:x0 + crop[1]])
    assert diff.max() <= 1  # float rounding in the resampler's box arithmetic


def test_flip_mirrors_image_and_label_together(scene):
    image, label = scene
    base = transforms.AugmentConfig(crop_size=(64, 96), flip_prob=0.0)
    flipped = dataclasses.replace(base, flip_prob=1.0)
    a = transforms.augment(image, label, np.random.default_rng(3), base)
    b = transforms.augment(image, label, np.random.default_rng(3), flipped)
    np.testing.assert_array_equal(b["label"], a["label"][:, ::-1])
    np.testing.assert_allclose(b["image"], a["image"][:, ::-1], atol=1e-6)


def test_normalisation_and_colour_jitter(scene):
    image, label = scene
    pixel = np.array([[[255, 0, 128]]], np.uint8)
    expected = (np.array([1.0, 0.0, 128 / 255]) - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(transforms.normalize_image(pixel)[0, 0], expected, rtol=1e-5)
    np.testing.assert_array_equal(transforms.denormalize_image(transforms.normalize_image(image)), image)
    rng = np.random.default_rng(0)
    assert np.array_equal(transforms.color_jitter(image, rng, 0, 0, 0, 0), image)
    jittered = transforms.color_jitter(image, rng, 0.25, 0.25, 0.25, 0.25)
    assert jittered.shape == image.shape and jittered.dtype == np.uint8
    assert not np.array_equal(jittered, image)


def test_colour_jitter_steps_behave_like_their_definitions():
    rng = np.random.default_rng(1)
    mean = np.array([100.0, 120.0, 90.0])
    grey_weights = np.array([0.299, 0.587, 0.114])
    for _ in range(20):
        matrix, offset = transforms.color_jitter_affine(rng, mean, 0.25, 0, 0, 0)
        factor = matrix[0, 0]
        assert 0.75 <= factor <= 1.25
        np.testing.assert_allclose(matrix, factor * np.eye(3)) and np.testing.assert_allclose(offset, 0)
        # Contrast pulls towards the image's mean grey, which it therefore keeps.
        matrix, offset = transforms.color_jitter_affine(rng, mean, 0, 0.25, 0, 0)
        grey = np.full(3, grey_weights @ mean)
        np.testing.assert_allclose(matrix @ grey + offset, grey)
        # Saturation and hue leave grey pixels grey and keep every pixel's grey value (luma).
        for args in ((0, 0, 0.25, 0), (0, 0, 0, 0.25)):
            matrix, offset = transforms.color_jitter_affine(rng, mean, *args)
            np.testing.assert_allclose(matrix @ np.full(3, 77.0) + offset, np.full(3, 77.0), atol=1e-9)
            colour = np.array([200.0, 40.0, 90.0])
            np.testing.assert_allclose(grey_weights @ (matrix @ colour + offset), grey_weights @ colour, atol=1e-6)
    # A hue shift of a third of the circle turns pure-ish red towards green.
    rotated = transforms._hue_rotation(1 / 3) @ np.array([200.0, 30.0, 30.0])
    assert rotated[1] > rotated[0] and rotated[1] > rotated[2]
    # Fused with normalisation, the colour map equals map-then-normalise.
    image = np.random.default_rng(2).integers(0, 256, (5, 7, 3)).astype(np.uint8)
    matrix, offset = transforms.color_jitter_affine(np.random.default_rng(3), image.reshape(-1, 3).mean(0),
                                                    0.25, 0.25, 0.25, 0.25)
    fused = transforms.apply_color(image, matrix, offset, normalize=True)
    mapped = np.clip(image.reshape(-1, 3) @ matrix.T + offset, 0, 255).reshape(image.shape)
    np.testing.assert_allclose(fused, (mapped / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]),
                               atol=1e-4)


def test_gaussian_blur_and_settings_checks(scene):
    image, _ = scene
    blurred = transforms.gaussian_blur(image, 1.0)
    assert np.abs(np.diff(blurred.astype(int), axis=1)).mean() < np.abs(np.diff(image.astype(int), axis=1)).mean()
    with pytest.raises(DataError, match="scale_range"):
        transforms.AugmentConfig(scale_range=(2.0, 0.5))


def test_label_centroids_by_hand():
    label = np.full((8, 8), 255, np.uint8)
    label[0:2, 0:2] = 1  # tile (0,0): centre (0.5, 0.5) -> rounds to (0, 0)... a class pixel
    label[4:8, 4:8] = 2  # tile (1,1): a ring whose centre is not class 2
    label[5:7, 5:7] = 0
    rows = {tuple(r) for r in label_centroids(label, num_classes=3, tile_size=4)}
    assert (1, 0, 0) in rows or (1, 1, 1) in rows
    ring = [r for r in rows if r[0] == 2]
    assert len(ring) == 1 and label[ring[0][1], ring[0][2]] == 2  # snapped onto the ring
    assert (0, 5, 5) in rows or (0, 6, 6) in rows
    assert len(rows) == 3  # ignore (255) gets no centroid
    # One entry per tile a class occupies.
    label = np.zeros((4, 8), np.uint8)
    assert sorted(map(tuple, label_centroids(label, 3, 4))) == [(0, 2, 2), (0, 2, 6)]


def test_centroid_crop_always_contains_the_class():
    source = SyntheticScenes(6, 64, 128, num_classes=8)
    centroids = class_uniform.compute_centroids(source, tile_size=32)
    rows = centroids.rows_of_class(syn.SIGN)
    assert len(rows) > 0
    config = transforms.AugmentConfig(crop_size=(24, 24), scale_range=(1.0, 2.0))
    hits_with, hits_without = 0, 0
    for k, row in enumerate(np.resize(rows, 30)):
        record = source.load(int(centroids.record[row]))
        point = (int(centroids.y[row]), int(centroids.x[row]))
        assert record["label"][point] == syn.SIGN
        out = transforms.augment(record["image"], record["label"], np.random.default_rng(k), config, point)
        hits_with += (out["label"] == syn.SIGN).any()
        out = transforms.augment(record["image"], record["label"], np.random.default_rng(k), config)
        hits_without += (out["label"] == syn.SIGN).any()
    assert hits_with == 30
    assert hits_without < 15  # signs are tiny: an ordinary crop mostly misses them


def _centroids(table):
    return Centroids.concatenate([np.asarray(table, np.int32)])


def test_epoch_plan_spreads_half_over_present_classes():
    centroids = _centroids([(r, c, 10 * r + c, c) for r in range(10) for c in (0, 1, 3) if (r + c) % 2 == 0])
    plan = build_epoch_plan(0, seed=1, epoch_size=60, num_primary=10, centroids=centroids,
                            class_uniform_fraction=0.5)
    assert len(plan.record) == 60
    with_centroid = plan.centroid_y >= 0
    assert with_centroid.sum() == 30  # 3 classes present (class 2 has none: skipped) x 10
    # Each class-uniform sample is one of its class's centroids.
    by_point = {(int(y), int(x)): (r, c) for r, c, y, x in zip(centroids.record, centroids.cls, centroids.y, centroids.x)}
    classes = [by_point[(y, x)][1] for y, x in zip(plan.centroid_y[with_centroid], plan.centroid_x[with_centroid])]
    assert np.bincount(classes, minlength=4).tolist() == [10, 10, 0, 10]
    for r, y, x in zip(plan.record[with_centroid], plan.centroid_y[with_centroid], plan.centroid_x[with_centroid]):
        assert by_point[(int(y), int(x))][0] == r
    # The uniform half visits every record, three times, without favouring any.
    assert np.bincount(plan.record[~with_centroid], minlength=10).tolist() == [3] * 10
    again = build_epoch_plan(0, seed=1, epoch_size=60, num_primary=10, centroids=centroids,
                             class_uniform_fraction=0.5)
    np.testing.assert_array_equal(plan.record, again.record)
    other = build_epoch_plan(1, seed=1, epoch_size=60, num_primary=10, centroids=centroids,
                             class_uniform_fraction=0.5)
    assert not np.array_equal(plan.record, other.record)


def test_epoch_plan_without_any_centroid_is_uniform():
    empty = _centroids(np.zeros((0, 4)))
    plan = build_epoch_plan(0, seed=0, epoch_size=8, num_primary=8, centroids=empty,
                            class_uniform_fraction=0.5)
    assert sorted(plan.record.tolist()) == list(range(8)) and (plan.centroid_y < 0).all()
    with pytest.raises(DataError, match="empty"):
        build_epoch_plan(0, seed=0, epoch_size=8, num_primary=0)


def test_epoch_plan_mixes_autolabelled_extras_with_probability():
    plan = build_epoch_plan(0, seed=0, epoch_size=4000, num_primary=100, num_extra=50,
                            extra_probability=0.5)
    share = (plan.record >= 100).mean()
    assert 0.46 < share < 0.54  # binomial(4000, 0.5): 5 sigma is 0.04
    assert plan.record.max() < 150
    none = build_epoch_plan(0, seed=0, epoch_size=400, num_primary=100, num_extra=50)
    assert none.record.max() < 100


def test_centroid_cache_is_reused_and_keyed_by_the_data(tmp_path, monkeypatch):
    from hmsa_jax.data.fake_layouts import write_fake_folder
    from hmsa_jax.data.sources import folder_source

    write_fake_folder(str(tmp_path / "ds"), {"train": 3}, height=32, width=64)
    make = lambda: folder_source(str(tmp_path / "ds/images/train"), str(tmp_path / "ds/masks/train"),  # noqa: E731
                                 str(tmp_path / "ds/classes.txt"))
    first = class_uniform.load_or_compute_centroids(make(), 16, str(tmp_path / "cache"))
    assert len(list((tmp_path / "cache").glob("centroids_*.npz"))) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("recomputed despite a valid cache")
    monkeypatch.setattr(class_uniform, "compute_centroids", refuse)
    cached = class_uniform.load_or_compute_centroids(make(), 16, str(tmp_path / "cache"))
    np.testing.assert_array_equal(first.y, cached.y)
    monkeypatch.undo()

    mask = sorted((tmp_path / "ds/masks/train").rglob("*.png"))[0]
    Image.fromarray(np.zeros((32, 64), np.uint8)).save(mask)  # the data changes
    changed = class_uniform.load_or_compute_centroids(make(), 16, str(tmp_path / "cache"))
    assert len(list((tmp_path / "cache").glob("centroids_*.npz"))) == 2
    assert len(changed) != len(first) or not np.array_equal(changed.cls, first.cls)


def test_parallel_centroids_equal_serial():
    source = SyntheticScenes(40, 64, 128)
    serial = class_uniform.compute_centroids(source, 32, num_workers=0)
    parallel = class_uniform.compute_centroids(source, 32, num_workers=2)
    for field in ("record", "cls", "y", "x"):
        np.testing.assert_array_equal(getattr(serial, field), getattr(parallel, field))
