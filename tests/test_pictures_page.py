"""The pictures page (training's validation pictures, `hmsa predict`, `hmsa eval --show-dir`):
what its colours mean, per-image scores, same-size batching, and the page as a browser shows it."""
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from inference_helpers import HEIGHT, WIDTH, save_init_checkpoint, tiny_config

from hmsa_jax import visualize
from hmsa_jax.batching import same_size_batches
from hmsa_jax.data.sources.synthetic import SyntheticScenes, synthetic_classes
from hmsa_jax.inference import InferenceOptions
from hmsa_jax.loading import load_model

SCALES = (0.5, 1.0, 2.0)


def test_which_scale_wins_is_solid_for_a_clear_winner_and_pale_for_a_narrow_one():
    clear = {0.5: np.array([[1.0, 0.0]]), 1.0: np.array([[0.0, 0.0]]), 2.0: np.array([[0.0, 1.0]])}
    rgb, legend = visualize.trust_map(clear)
    assert legend == [(0.5, visualize.SCALE_COLORS[0]), (1.0, visualize.SCALE_COLORS[1]),
                      (2.0, visualize.SCALE_COLORS[2])]
    assert tuple(rgb[0, 0]) == visualize.SCALE_COLORS[0] and tuple(rgb[0, 1]) == visualize.SCALE_COLORS[2]
    narrow = {0.5: np.array([[0.34]]), 1.0: np.array([[0.33]]), 2.0: np.array([[0.33]])}
    pale = visualize.trust_map(narrow)[0][0, 0].astype(int)
    assert (pale > 180).all(), pale  # mostly white: nobody really wins
    assert np.argmin(pale) == np.argmax(255 - np.asarray(visualize.SCALE_COLORS[0]))  # 0.5x's hue
    assert visualize.scale_shares(clear) == {0.5: 0.5, 1.0: 0.0, 2.0: 0.5}


def test_image_scores_count_only_labelled_pixels():
    label = np.array([[0, 0, 1, 255]])
    prediction = np.array([[0, 1, 1, 2]])
    scores = visualize.image_scores(prediction, label, num_classes=3)
    # class 0: 1 / 2, class 1: 1 / 2; class 2 only under the ignore pixel: not counted
    assert scores["miou"] == pytest.approx(0.5) and scores["pixel_accuracy"] == pytest.approx(2 / 3)
    assert scores["labelled_pixels"] == 3


def test_same_size_batches_keep_order_and_split_at_size_changes():
    sizes = [(2, 2), (2, 2), (2, 2), (3, 2), (2, 2)]
    batches = list(same_size_batches(range(5), lambda k: np.zeros(sizes[k]), 2))
    assert [[k for k, _ in b] for b in batches] == [[0, 1], [2], [3], [4]]
    with pytest.raises(ValueError, match="batch_size=0"):
        list(same_size_batches(range(2), lambda k: np.zeros(2), 0))


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = tmp_path_factory.mktemp("page")
    save_init_checkpoint(str(root / "ckpt"), tiny_config(), synthetic_classes(8).names, seed=1)
    loaded = load_model(str(root / "ckpt"))
    source = SyntheticScenes(2, HEIGHT, WIDTH, 8, 5, "val")
    records = [source.load(i) for i in range(2)]
    options = InferenceOptions(SCALES, flip=True)
    header = visualize.picture_header(loaded.path, 7, loaded.model_name, options)
    index = visualize.write_pictures(
        loaded.model, loaded.variables, np.stack([r["image"] for r in records]), loaded.classes,
        str(root / "pictures"), scales=SCALES, flip=True, names=["a", "b"], header=header,
        labels=np.stack([r["label"] for r in records]))
    return index, loaded, records


def test_page_names_what_made_it_and_scores_each_image(page):
    index, loaded, records = page
    text = open(index).read()
    for row in ("checkpoint", loaded.path, "step", "0.5x, 1x, 2x", "hierarchical",
                "yes (mean with the mirrored image)", "mean of the per-image mIoU"):
        assert row in text, row
    for k, name in enumerate(loaded.classes.names):  # the class legend, with train ids
        assert f"</span>{k} {name}</li>" in text
    assert text.count('class="swatch"') == len(loaded.classes.names) + 1 + len(SCALES)
    pictures = index.rsplit("/", 1)[0]
    for name, record in zip(("a", "b"), records):
        labels = np.asarray(Image.open(f"{pictures}/{name}_labels.png"))
        expected = visualize.image_scores(labels, record["label"], 8)
        assert f"{name} <span class=\"score\">mIoU {100 * expected['miou']:.1f}%" in text
        truth = np.asarray(Image.open(f"{pictures}/{name}_truth.png"))
        np.testing.assert_array_equal(truth, loaded.classes.colorize(record["label"]))
        panel = Image.open(f"{pictures}/{name}_panel.png")
        assert panel.size[0] >= 4 * 400, panel.size  # four columns of >= 400 px: readable
        assert re.search(rf'<img class="panel" src="{name}_panel.png"', text)
        assert re.search(rf"{name} <span.*wins: 0.5x [\d.]+%, 1x [\d.]+%, 2x [\d.]+%", text)


def _browser():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_browser() is None, reason="needs a headless Chromium (Debian: apt-get install chromium)")
def test_page_renders_in_a_headless_browser(page, tmp_path):
    index, loaded, _ = page
    shot = tmp_path / "page.png"
    subprocess.run([_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1400,1400", f"--screenshot={shot}", f"file://{index}"],
                   check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    colours = {tuple(p) for p in np.unique(pixels, axis=0)}
    # The legends' swatches and the panel's images were drawn, not broken-image icons.
    for colour in loaded.classes.colors[:4] + visualize.SCALE_COLORS[:3]:
        assert tuple(colour) in colours, colour
    assert len(colours) > 1000  # the panel's photo-like input and heatmaps
