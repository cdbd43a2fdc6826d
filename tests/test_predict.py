"""`Predictor` and `hmsa predict`: outputs, flip averaging, effective scale weights, pictures and
the index page, the training demo's `write_pictures`, and clear errors for bad input."""
import os
import re

import numpy as np
import pytest
from PIL import Image

from inference_helpers import HEIGHT, WIDTH, save_init_checkpoint, tiny_config

from hmsa_jax import cli, inference, loading, visualize
from hmsa_jax.data.labels import cityscapes_classes
from hmsa_jax.data.sources.synthetic import SyntheticScenes, synthetic_classes
from hmsa_jax.input_checks import InferenceError

SCALES = (0.5, 1.0, 2.0)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ckpt_predict"))
    save_init_checkpoint(path, tiny_config(), synthetic_classes(8).names, seed=1)
    return path


@pytest.fixture(scope="module")
def images():
    source = SyntheticScenes(3, HEIGHT, WIDTH, 8, 5, "val")
    return np.stack([source.load(i)["image"] for i in range(3)])


@pytest.fixture(scope="module")
def predictor(workdir):
    return inference.Predictor.from_checkpoint(workdir, scales=SCALES, flip=True)


def test_predictor_outputs(predictor, images):
    out = predictor(images[0])
    assert out["logits"].shape == (1, HEIGHT, WIDTH, 8) and out["labels"].shape == (1, HEIGHT, WIDTH)
    np.testing.assert_array_equal(out["labels"], np.argmax(out["logits"], -1))
    np.testing.assert_allclose(out["probabilities"].sum(-1), 1.0, atol=1e-5)
    for s in SCALES:
        h, w = int(HEIGHT * s), int(WIDTH * s)
        assert out["per_scale"][s]["logits"].shape == (1, h, w, 8)
        attention = out["per_scale"][s]["attention"]
        assert attention.shape == (1, h, w) and ((attention > 0) & (attention < 1)).all()
    weights = out["scale_weights"]
    np.testing.assert_allclose(sum(weights.values()), 1.0, atol=1e-6)
    # The smallest scale's weight is its own attention, upsampled (checked with PIL's bilinear).
    from hmsa_jax.visualize import resize_map

    np.testing.assert_allclose(weights[0.5][0], resize_map(out["per_scale"][0.5]["attention"][0],
                                                           (HEIGHT, WIDTH)), atol=1e-4)
    # uint8 and [0, 1] float input agree.
    np.testing.assert_allclose(predictor(images[0].astype(np.float32) / 255.0)["logits"], out["logits"],
                               atol=1e-4)


def test_flip_averaging_is_mirror_equivariant(predictor, images):
    # mean(g(x), flip(g(flip(x)))) mirrors exactly with its input, whatever g does (g itself
    # is not mirror-symmetric: stride-2 convolutions sample even columns).
    out = predictor(images[1])["logits"]
    mirrored = predictor(images[1][:, ::-1])["logits"]
    np.testing.assert_allclose(mirrored, out[:, :, ::-1], atol=1e-5)


def test_scale_weights_follow_the_hierarchy():
    rng = np.random.default_rng(0)
    a = {s: rng.uniform(0.05, 0.95, (1, 8, 8, 1)).astype(np.float32) for s in (0.5, 1.0, 2.0)}
    weights = inference.scale_weights(a, (8, 8))  # all at one size: no resize effects
    lo, mid = a[0.5][..., 0], a[1.0][..., 0]
    np.testing.assert_allclose(weights[0.5], lo, rtol=1e-6)
    np.testing.assert_allclose(weights[1.0], (1 - lo) * mid, rtol=1e-6)
    np.testing.assert_allclose(weights[2.0], (1 - lo) * (1 - mid), rtol=1e-6)  # a at 2.0x unused


def test_bad_images_are_refused(predictor):
    with pytest.raises(InferenceError, match=r"RGB \[H, W, 3\]"):
        predictor(np.zeros((HEIGHT, WIDTH), np.uint8))
    with pytest.raises(InferenceError, match=r"in \[0, 1\]"):
        predictor(np.full((HEIGHT, WIDTH, 3), 200.0, np.float32))


def test_class_tables_from_checkpoint_meta():
    assert loading.class_table_for({"num_classes": 19}).name == "cityscapes"
    assert loading.class_table_for({"num_classes": 19, "class_names": list(cityscapes_classes().names)}
                                   ).colors == cityscapes_classes().colors
    assert loading.class_table_for({"num_classes": 8, "class_names": list(synthetic_classes(8).names)}
                                   ).colors == synthetic_classes(8).colors
    custom = loading.class_table_for({"num_classes": 3, "class_names": ["a", "b", "c"]})
    assert custom.names == ("a", "b", "c") and len(set(custom.colors)) == 3
    # The colours a training run records win, so predict's pictures match the run's own.
    recorded = loading.class_table_for({"num_classes": 2, "class_names": ["a", "b"],
                                        "class_colors": [[1, 2, 3], [4, 5, 6]]})
    assert recorded.colors == ((1, 2, 3), (4, 5, 6))
    from hmsa_jax.data.sources.scale_bench import CLASSES

    assert loading.class_table_for({"num_classes": CLASSES.num_classes, "class_names": list(CLASSES.names)}
                                   ).colors == CLASSES.colors  # recorded before class_colors existed


def test_predict_command_writes_pictures_and_index(workdir, images, tmp_path, capsys):
    inputs = tmp_path / "in"
    (inputs / "street").mkdir(parents=True)
    Image.fromarray(images[0]).save(inputs / "street" / "a.png")
    Image.fromarray(images[1]).save(inputs / "b.jpg", quality=95)
    single = tmp_path / "single.png"
    Image.fromarray(images[2]).save(single)
    out = tmp_path / "out"
    assert cli.main(["predict", f"--checkpoint={workdir}", str(inputs), str(single), f"--out={out}",
                     "--flip"]) == 0
    for name in ("street/a", "b", "single"):
        for suffix in ("pred", "overlay", "panel", "trust", "scale0.5_attention", "scale1_attention",
                       "scale2_pred"):
            picture = Image.open(out / f"{name}_{suffix}.png")
            if suffix != "panel":
                assert picture.size == (WIDTH, HEIGHT), (name, suffix)
        assert not (out / f"{name}_scale2_attention.png").exists()  # the largest scale's is unused
        labels = np.asarray(Image.open(out / f"{name}_labels.png"))
        assert labels.shape == (HEIGHT, WIDTH) and labels.max() < 8
    index = (out / "index.html").read_text()
    linked = re.findall(r'src="([^"]+)"', index)
    assert len(linked) >= 3 * 9 and all((out / p).is_file() for p in linked)
    # The saved labels are the Predictor's (same checkpoint, scales, flip).
    expected = inference.Predictor.from_checkpoint(workdir, scales=SCALES, flip=True)(images[2])["labels"][0]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "single_labels.png")), expected)


def test_predict_command_reports_unreadable_images(workdir, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert cli.main(["predict", f"--checkpoint={workdir}", str(broken), f"--out={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err
    assert f"{broken}: unreadable image" in err and "Traceback" not in err
    assert cli.main(["predict", f"--checkpoint={workdir}", str(tmp_path / "nope.png"),
                     f"--out={tmp_path / 'o'}"]) == 2
    assert "no such image file or folder" in capsys.readouterr().err


def test_predict_command_reports_an_out_that_is_a_file(workdir, images, tmp_path, capsys):
    image, taken = tmp_path / "street.png", tmp_path / "taken"
    Image.fromarray(images[0]).save(image)
    taken.write_text("someone's file")
    assert cli.main(["predict", f"--checkpoint={workdir}", str(image), f"--out={taken}"]) == 2
    err = capsys.readouterr().err
    assert str(taken) in err and "Traceback" not in err
    assert taken.read_text() == "someone's file"


def test_write_pictures_for_the_training_demo(predictor, images, tmp_path):
    from hmsa_jax.data.transforms import normalize_image

    index = visualize.write_pictures(predictor.model, predictor.variables, normalize_image(images[:2]),
                                   predictor.classes, str(tmp_path / "pics"), scales=SCALES,
                                   flip=True, names=["val_0", "val_1"], normalized=True)
    assert os.path.basename(index) == "index.html"
    shown = np.asarray(Image.open(tmp_path / "pics" / "val_0_input.png"))
    assert np.abs(shown.astype(int) - images[0]).max() <= 1  # de-normalised for display
    assert (tmp_path / "pics" / "val_1_panel.png").is_file()


def test_predictor_batches_over_the_local_devices(predictor, images):
    import jax

    assert predictor.batch_size == len(jax.local_devices()) == 8
    together = predictor(images)  # 3 images: 3 devices, no padding
    padded = predictor(np.concatenate([images] * 3))  # 9 images: padded to 16, cut back to 9
    assert padded["labels"].shape == (9, HEIGHT, WIDTH)
    for k in range(3):
        alone = predictor(images[k])
        np.testing.assert_allclose(together["logits"][k], alone["logits"][0], atol=1e-5)
        np.testing.assert_allclose(padded["logits"][k + 6], alone["logits"][0], atol=1e-5)
        np.testing.assert_allclose(together["scale_weights"][2.0][k], alone["scale_weights"][2.0][0],
                                   atol=1e-5)


def test_predict_command_shows_a_bar_and_writes_the_page_header(workdir, images, tmp_path, monkeypatch,
                                                                 capsys):
    from console_helpers import FakeTerminal

    inputs = tmp_path / "in"
    inputs.mkdir()
    for k in range(3):
        Image.fromarray(images[k]).save(inputs / f"{k}.png")
    Image.fromarray(np.zeros((HEIGHT, 2 * WIDTH, 3), np.uint8)).save(inputs / "3_wide.png")
    terminal = FakeTerminal()
    monkeypatch.setattr("sys.stderr", terminal)
    out = tmp_path / "out"
    assert cli.main(["predict", f"--checkpoint={workdir}", str(inputs), f"--out={out}",
                     "--scales=0.5,1.0", "--batch-size=2"]) == 0
    assert "predict: 100%" in terminal.getvalue() and "4/4 [" in terminal.getvalue()
    printed = capsys.readouterr().out
    assert "batches of 2 images on 8 devices" in printed and printed.count("_*.png") == 4
    page = (out / "index.html").read_text()
    assert "<th>step</th><td>7</td>" in page and "<th>scales</th><td>0.5x, 1x</td>" in page
    assert "<th>flip</th><td>no</td>" in page and "Which scale wins" in page
    assert Image.open(out / "3_wide_pred.png").size == (2 * WIDTH, HEIGHT)
    terminal.seek(0), terminal.truncate()
    assert cli.main(["predict", f"--checkpoint={workdir}", str(inputs), f"--out={out}", "--quiet"]) == 0
    assert "predict:" not in terminal.getvalue()
    assert cli.main(["predict", f"--checkpoint={workdir}", str(inputs), f"--out={out}",
                     "--batch-size=-1"]) == 2
    assert "--batch-size=-1; expected 0" in terminal.getvalue()


def test_avg_fusion_takes_scales_without_one(workdir, images, tmp_path):
    averaged = inference.Predictor.from_checkpoint(workdir, scales="0.5,2.0", fusion="avg")
    out = averaged(images[0])
    assert out["logits"].shape == (1, HEIGHT, WIDTH, 8) and sorted(out["per_scale"]) == [0.5, 2.0]
    with pytest.raises(InferenceError, match="must contain 1.0 for hierarchical fusion"):
        inference.InferenceOptions((0.5, 2.0), "hierarchical")
    image = tmp_path / "street.png"
    Image.fromarray(images[0]).save(image)
    assert cli.main(["predict", f"--checkpoint={workdir}", str(image), f"--out={tmp_path / 'o'}",
                     "--scales=0.5,2.0", "--fusion=max"]) == 0
    assert Image.open(tmp_path / "o" / "street_pred.png").size == (WIDTH, HEIGHT)
