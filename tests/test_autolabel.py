"""`hmsa autolabel`: hard thresholds, the border mask, per-image coverage JSON, and output that
the training's auto-label source reads as it is."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from inference_helpers import HEIGHT, WIDTH, save_init_checkpoint, tiny_config

from hmsa_jax import autolabel, cli
from hmsa_jax.data.build import build_autolabel_source
from hmsa_jax.data.labels import IGNORE_LABEL
from hmsa_jax.data.sources.synthetic import SyntheticScenes, synthetic_classes
from hmsa_jax.inference import Predictor
from hmsa_jax.input_checks import InferenceError


def test_hard_labels_keep_only_confident_pixels_inside_the_border():
    confidence = np.array([[0.95, 0.9, 0.2], [0.91, 0.99, 0.5]], np.float32)
    argmax = np.array([[1, 2, 3], [4, 5, 6]], np.uint8)
    np.testing.assert_array_equal(autolabel.hard_labels(confidence, argmax, 0.9),
                                  [[1, 255, 255], [4, 5, 255]])  # 0.9 does not exceed 0.9
    keep = np.array([[True, True, True], [False, True, True]])
    np.testing.assert_array_equal(autolabel.hard_labels(confidence, argmax, 0.5, keep),
                                  [[1, 2, 255], [255, 5, 255]])


def test_border_mask_is_the_reference_region_scaled_to_the_image():
    full = autolabel.CITYSCAPES_BORDER.keep(1024, 2048)
    rows, cols = np.flatnonzero(full.any(1)), np.flatnonzero(full.any(0))
    assert (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1) == (15, 840, 14, 2030)
    half = autolabel.CITYSCAPES_BORDER.keep(512, 1024)
    rows, cols = np.flatnonzero(half.any(1)), np.flatnonzero(half.any(0))
    assert (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1) == (8, 420, 7, 1015)
    assert autolabel.parse_border("none") is None
    custom = autolabel.parse_border("2,30,1,60@32,64")
    assert custom.keep(32, 64).sum() == 28 * 59
    with pytest.raises(InferenceError, match="expected none, cityscapes or R0,R1,C0,C1@H,W"):
        autolabel.parse_border("2,30")
    with pytest.raises(InferenceError, match="border rows=\\[30, 2\\]"):
        autolabel.parse_border("30,2,1,60@32,64")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("autolabel")
    workdir = str(root / "teacher")
    save_init_checkpoint(workdir, tiny_config(), synthetic_classes(8).names, seed=1, sharpen=30.0)
    images_root = root / "coarse"
    source = SyntheticScenes(3, HEIGHT, WIDTH, 8, 9, "train")
    paths = []
    for index in range(3):
        folder = images_root / ("cityA" if index < 2 else "cityB")
        folder.mkdir(parents=True, exist_ok=True)
        paths.append(folder / f"frame{index}.png")
        Image.fromarray(source.load(index)["image"]).save(paths[-1])
    out = root / "labels"
    code = cli.main(["autolabel", f"--checkpoint={workdir}", f"--images={images_root}", f"--out={out}",
                     "--threshold=0.5", "--border=2,30,1,60@32,64", "--scales=0.5,1.0,2.0", "--flip"])
    return workdir, images_root, out, paths, code


def test_labels_are_the_thresholded_teacher_inside_the_border(labelled):
    workdir, images_root, out, paths, code = labelled
    assert code == 0
    teacher = Predictor.from_checkpoint(workdir, scales=(0.5, 1.0, 2.0), flip=True)
    keep = autolabel.parse_border("2,30,1,60@32,64").keep(HEIGHT, WIDTH)
    for path in paths:
        relative = path.relative_to(images_root).with_suffix("")
        saved = Image.open(out / f"{relative}.png")
        assert saved.mode == "L"
        labels = np.asarray(saved)
        probabilities = teacher(np.asarray(Image.open(path)))["probabilities"][0]
        confidence, argmax = probabilities.max(-1), probabilities.argmax(-1)
        expected = np.where((confidence > 0.5) & keep, argmax, IGNORE_LABEL)
        near = np.abs(confidence - 0.5) < 1e-5  # float ties at the threshold may go either way
        np.testing.assert_array_equal(labels[~near], expected[~near])
        assert (labels[~keep] == IGNORE_LABEL).all()
        assert 0.05 < np.mean(labels[keep] != IGNORE_LABEL) < 0.95, "threshold should matter here"
        stats = json.loads((out / f"{relative}.json").read_text())
        assert stats["labelled"] == pytest.approx(np.mean(labels != IGNORE_LABEL))
        assert stats["per_class"]["road"] == pytest.approx(np.mean(labels == 0))
        assert stats["threshold"] == 0.5 and stats["scales"] == [0.5, 1.0, 2.0] and stats["flip"]
    summary = json.loads((out / autolabel.SUMMARY_NAME).read_text())
    assert summary["images"] == 3 and sum(summary["per_class"].values()) == pytest.approx(
        summary["labelled"] * summary["pixels"])


def test_output_is_a_training_auto_label_source(labelled):
    _, images_root, out, paths, _ = labelled
    config = tiny_config()
    config.data.autolabel.labels_dir = str(out)
    config.data.autolabel.images_root = str(images_root)
    source = build_autolabel_source(config.data, synthetic_classes(8))
    assert len(source) == 3
    names = sorted(source.name(i) for i in range(3))
    assert names == ["cityA/frame0", "cityA/frame1", "cityB/frame2"]
    record = source.load(0)
    np.testing.assert_array_equal(record["label"], np.asarray(Image.open(out / "cityA" / "frame0.png")))


@pytest.mark.parametrize("args, message", [
    (["--threshold=1.5"], "--threshold=1.5; expected 0 <= threshold < 1"),
    (["--scales=2.0"], "scales must contain 1.0"),
    (["--border=diagonal"], "expected none, cityscapes"),
])
def test_bad_options_fail_with_one_line(labelled, tmp_path, capsys, args, message):
    workdir, images_root, _, _, _ = labelled
    assert cli.main(["autolabel", f"--checkpoint={workdir}", f"--images={images_root}",
                     f"--out={tmp_path / 'o'}", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert cli.main(["autolabel", f"--checkpoint={workdir}", f"--images={tmp_path / 'none'}",
                     f"--out={tmp_path / 'o'}"]) == 2
    assert "not a folder of images" in capsys.readouterr().err


def test_a_rerun_keeps_finished_labels_and_refuses_other_settings(labelled, tmp_path, capsys):
    workdir, images_root, out, paths, _ = labelled
    copy = tmp_path / "labels"
    shutil.copytree(out, copy)
    (copy / "cityB" / "frame2.json").unlink()  # as if killed after frame2's PNG, before its JSON
    first = json.loads((out / autolabel.SUMMARY_NAME).read_text())
    args = ["autolabel", f"--checkpoint={workdir}", f"--images={images_root}", f"--out={copy}",
            "--threshold=0.5", "--border=2,30,1,60@32,64", "--scales=0.5,1.0,2.0", "--flip"]
    assert cli.main(args) == 0
    again = json.loads((copy / autolabel.SUMMARY_NAME).read_text())
    assert again["kept_from_earlier_run"] == 2 and again["images"] == 3
    assert again["pixels"] == first["pixels"] and again["per_class"] == first["per_class"]
    assert (copy / "cityB" / "frame2.json").is_file()

    capsys.readouterr()
    assert cli.main(args[:4] + ["--threshold=0.7"] + args[5:]) == 2
    assert "labelled by an earlier run with other settings (threshold: 0.5, now 0.7)" in capsys.readouterr().err
    assert cli.main(args[:4] + ["--threshold=0.7", "--overwrite"] + args[5:]) == 0
    assert json.loads((copy / autolabel.SUMMARY_NAME).read_text())["threshold"] == 0.7


def test_labels_never_overwrite_the_input_images(labelled, tmp_path, capsys):
    workdir, images_root, _, paths, _ = labelled
    images = tmp_path / "images"
    shutil.copytree(images_root, images)
    before = {p: p.read_bytes() for p in images.rglob("*.png")}
    assert cli.main(["autolabel", f"--checkpoint={workdir}", f"--images={images}", f"--out={images}"]) == 2
    assert "is the input folder" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in images.rglob("*.png")} == before


def test_batches_over_devices_with_a_progress_bar(labelled, tmp_path, monkeypatch, capsys):
    from console_helpers import FakeTerminal

    workdir, images_root, out, paths, _ = labelled
    terminal = FakeTerminal()
    monkeypatch.setattr("sys.stderr", terminal)
    again = tmp_path / "labels"
    assert cli.main(["autolabel", f"--checkpoint={workdir}", f"--images={images_root}", f"--out={again}",
                     "--threshold=0.5", "--border=2,30,1,60@32,64", "--scales=0.5,1.0,2.0", "--flip",
                     "--batch-size=2"]) == 0
    assert "autolabel: 100%" in terminal.getvalue() and "3/3 [" in terminal.getvalue()
    assert capsys.readouterr().out.count("% labelled\n") == 3  # one line per image
    for path in paths:  # batches of 2 (then 1, padded) give the labels of the 8-device first run
        relative = path.relative_to(images_root).with_suffix(".png")
        np.testing.assert_array_equal(np.asarray(Image.open(again / relative)),
                                      np.asarray(Image.open(out / relative)))
