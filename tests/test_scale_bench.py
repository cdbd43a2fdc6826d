"""The built-in scale benchmark: a deterministic source, and the construction that makes scale
matter (large regions need a wide view, thin structures need resolution)."""
import pickle

import numpy as np
import pytest

from hmsa_jax.configlib import load_config
from hmsa_jax.data.build import build_source, class_table
from hmsa_jax.data.errors import DataError
from hmsa_jax.data.sources import scale_bench as sb

NAMES = sb.CLASSES.names
LARGE = [NAMES.index(n) for n in sb.LARGE_CLASSES]
THIN = [NAMES.index(n) for n in sb.THIN_CLASSES]


@pytest.fixture(scope="module")
def scenes():
    source = sb.ScaleBenchScenes(32, 128, 256, split="val")
    records = [source.load(i) for i in range(len(source))]
    return np.stack([r["image"] for r in records]), np.stack([r["label"] for r in records])


def test_scenes_are_deterministic_picklable_and_labelled_in_range():
    source = sb.ScaleBenchScenes(3, 64, 128, seed=5, split="train")
    again = pickle.loads(pickle.dumps(source))
    for i in range(3):
        a, b = source.load(i), again.load(i)
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], source.load_label(i))
        assert a["image"].shape == (64, 128, 3) and a["image"].dtype == np.uint8
        assert set(np.unique(a["label"])) <= set(range(len(NAMES)))
    assert not np.array_equal(source.load(0)["image"], sb.ScaleBenchScenes(3, 64, 128, seed=6).load(0)["image"])
    assert source.fingerprint() != sb.ScaleBenchScenes(3, 64, 128, seed=5, split="val").fingerprint()


def test_bad_sizes_are_refused_with_the_value():
    with pytest.raises(DataError, match="num_images=0"):
        sb.ScaleBenchScenes(0)
    with pytest.raises(DataError, match="16x128"):
        sb.ScaleBenchScenes(4, 16, 128)


def test_the_config_builds_it():
    config = load_config(["--config=configs/scale_bench.py:tiny"])[0]
    assert class_table(config.data).names == NAMES
    s = config.data.scale_bench
    for split, role, count in (("train", "train", s.num_train), ("val", "eval", s.num_eval)):
        source = build_source(config.data, split, role)
        assert isinstance(source, sb.ScaleBenchScenes) and len(source) == count
        assert (source.height, source.width, source.split) == (s.height, s.width, split)


def test_every_class_occurs_and_thin_structures_are_thin(scenes):
    _, labels = scenes
    share = np.bincount(labels.ravel(), minlength=len(NAMES)) / labels.size
    assert share[LARGE].min() > 0.2 and 0.005 < share[THIN].min() and share[THIN].sum() < 0.15


def _stride_oracle_iou(labels: np.ndarray, stride: int) -> np.ndarray:
    """Per-class IoU of the best prediction a network can make on a grid of `stride` px: each
    cell's majority label, repeated over the cell."""
    b, h, w = labels.shape
    cells = labels[:, :h - h % stride, :w - w % stride].reshape(b, h // stride, stride, w // stride, stride)
    cells = cells.transpose(0, 1, 3, 2, 4).reshape(b, h // stride, w // stride, stride * stride)
    votes = np.stack([(cells == k).sum(-1) for k in range(len(NAMES))], -1)
    majority = np.repeat(np.repeat(votes.argmax(-1), stride, 1), stride, 2)
    truth = labels[:, :majority.shape[1], :majority.shape[2]]
    return np.array([((majority == k) & (truth == k)).sum() / ((majority == k) | (truth == k)).sum()
                     for k in range(len(NAMES))])


def test_thin_structures_cannot_be_resolved_at_half_scale(scenes):
    """The models predict at stride 4 of their input: stride 8 of the scene at 0.5x, 2 at 2x."""
    _, labels = scenes
    half, one, double = (_stride_oracle_iou(labels, stride) for stride in (8, 4, 2))
    assert half[THIN].max() < 0.25, half
    assert one[THIN].min() > 0.4 and double[THIN].min() > one[THIN].max() + 0.1, (one, double)
    assert half[LARGE].min() > 0.8  # the large regions survive any of these grids


def _window_stats(grey: np.ndarray, labels: np.ndarray, cls: int, window: int = 8) -> np.ndarray:
    """Mean and standard deviation of the grey level in each window lying inside class `cls`."""
    b, h, w = grey.shape
    h, w = h // window * window, w // window * window
    blocks = lambda a: a[:, :h, :w].reshape(b, h // window, window, w // window, window).transpose(0, 1, 3, 2, 4)
    g, inside = blocks(grey).reshape(-1, window * window), np.all(blocks(labels) == cls, axis=(-2, -1)).ravel()
    return np.stack([g[inside].mean(-1), g[inside].std(-1)], -1)


def test_large_regions_look_alike_locally(scenes):
    """Field and water differ only in the orientation of stripes 24-40 px apart: pixel values and
    8x8 windows (a quarter of the 0.5x input's cell) have the same statistics in both."""
    images, labels = scenes
    grey = images.astype(np.float32).mean(-1)
    grey -= grey.mean(axis=(1, 2), keepdims=True)  # each scene's own brightness
    field, water = grey[labels == sb.FIELD], grey[labels == sb.WATER]
    assert abs(field.mean() - water.mean()) < 3 and abs(field.std() - water.std()) < 2
    quantiles = (0.1, 0.5, 0.9)
    for f, w in zip(_window_stats(grey, labels, sb.FIELD).T, _window_stats(grey, labels, sb.WATER).T):
        np.testing.assert_allclose(np.quantile(f, quantiles), np.quantile(w, quantiles), atol=3)
    assert min(sb.STRIPE_PERIOD) >= 3 * 8  # a whole period is three such windows wide


def _dominant_wave(texture: np.ndarray) -> tuple[float, float]:
    """(period in px, |angle| of the wave vector from the x axis in degrees) of the strongest
    Fourier component of a 2-D texture."""
    spectrum = np.abs(np.fft.rfft2(texture - texture.mean()))
    spectrum[0, 0] = 0
    fy, fx = np.unravel_index(np.argmax(spectrum), spectrum.shape)
    fy = fy if fy <= texture.shape[0] // 2 else fy - texture.shape[0]
    cycles_y, cycles_x = fy / texture.shape[0], fx / texture.shape[1]
    return 1 / np.hypot(cycles_y, cycles_x), float(np.degrees(np.arctan2(abs(cycles_y), cycles_x)))


def test_distractor_adds_fine_cross_stripes_to_the_same_scenes():
    """data.scale_bench.distractor: the same layout and labels; the only change to the image is
    a wave 6-10 px apart across each region's cue (field: the cue is about horizontal, so the
    distractor's wave vector lies along x; water: along y)."""
    plain = sb.ScaleBenchScenes(6, 128, 256, split="val")
    distracted = sb.ScaleBenchScenes(6, 128, 256, split="val", distractor=1.0)
    assert plain.fingerprint() != distracted.fingerprint()
    found = {sb.FIELD: [], sb.WATER: []}
    for i in range(6):
        a, b = plain.load(i), distracted.load(i)
        np.testing.assert_array_equal(a["label"], b["label"])
        difference = b["image"].astype(np.float32).mean(-1) - a["image"].astype(np.float32).mean(-1)
        for cls in found:
            rows, cols = np.nonzero(a["label"] == cls)
            if rows.size < 64 * 64:
                continue
            y0, x0 = rows.min(), cols.min()  # a 32x32 window inside one region of that class
            window = next((difference[y:y + 32, x:x + 32] for y in range(y0, rows.max() - 31, 8)
                           for x in range(x0, cols.max() - 31, 8)
                           if np.all(a["label"][y:y + 32, x:x + 32] == cls)), None)
            if window is not None:
                found[cls].append(_dominant_wave(window))
    for cls, waves in found.items():
        assert len(waves) >= 2, (cls, waves)
        for period, angle in waves:
            assert 5 <= period <= 11, (cls, waves)  # 32-px windows quantise the frequency
            assert (angle < 30) if cls == sb.FIELD else (angle > 60), (cls, waves)
    with pytest.raises(DataError, match="distractor=3"):
        sb.ScaleBenchScenes(4, distractor=3)
