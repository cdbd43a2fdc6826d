"""`hmsa data-check`: each kind of bad input is reported with the file and the problem."""
import pathlib

import numpy as np
import pytest
from PIL import Image

from hmsa_jax import cli
from hmsa_jax.data.fake_layouts import write_fake_cityscapes, write_fake_folder

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture
def cityscapes(tmp_path):
    write_fake_cityscapes(str(tmp_path), {"train": 3, "val": 2}, height=32, width=64, write_train_ids=True)
    return tmp_path


def _check(capsys, root, *extra):
    code = cli.main(["data-check", f"--config={CONFIGS / 'cityscapes.py'}",
                     f"--config.data.root={root}", "--threads=2", *extra])
    return code, capsys.readouterr().out


def _first(root, pattern):
    return sorted(pathlib.Path(root).rglob(pattern))[0]


def test_good_dataset_passes_and_prints_a_histogram(capsys, cityscapes):
    code, out = _check(capsys, cityscapes)
    assert code == 0, out
    assert "train (cityscapes train): 3 of 3 records checked, 0 problems" in out
    assert "eval (cityscapes val): 2 of 2 records checked" in out
    road = next(line for line in out.splitlines() if " road " in line)
    assert int(road.split()[2].replace(",", "")) > 0
    assert "(absent)" in next(line for line in out.splitlines() if " train " in line)
    assert "data-check: OK" in out


def test_truncated_image(capsys, cityscapes):
    victim = _first(cityscapes / "leftImg8bit" / "train", "*.png")
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    code, out = _check(capsys, cityscapes)
    assert code == 1
    assert f"ERROR {victim}: unreadable image" in out and "data-check: FAILED" in out


def test_image_label_size_mismatch(capsys, cityscapes):
    victim = _first(cityscapes / "gtFine" / "val", "*_labelIds.png")
    Image.fromarray(np.full((16, 64), 7, np.uint8)).save(victim)
    code, out = _check(capsys, cityscapes)
    assert code == 1
    assert f"ERROR {victim}: label size 64x16 (WxH) differs from its image" in out


def test_train_ids_where_label_ids_expected(capsys, cityscapes):
    victim = _first(cityscapes / "gtFine" / "train", "*_labelIds.png")
    train_ids = str(victim).replace("_labelIds", "_labelTrainIds")
    victim.write_bytes(pathlib.Path(train_ids).read_bytes())
    code, out = _check(capsys, cityscapes)
    assert code == 1
    assert f"ERROR {victim}: label values" in out and "labelTrainIds" in out
    # The same files are fine when the config says they hold trainIds.
    code, out = _check(capsys, cityscapes, "--config.data.cityscapes.label_format=trainIds",
                       "--splits=eval")
    assert code == 0, out


def test_label_ids_where_train_ids_expected(capsys, tmp_path):
    write_fake_folder(str(tmp_path), {"train": 2, "val": 1}, height=32, width=64, num_classes=8)
    mask = _first(tmp_path / "masks" / "val", "*.png")
    Image.fromarray(np.full((32, 64), 26, np.uint8)).save(mask)  # 'car' as a Cityscapes labelId
    code = cli.main(["data-check", f"--config={CONFIGS / 'synthetic_demo.py'}",
                     "--config.data.dataset=folder", f"--config.data.root={tmp_path}"])
    out = capsys.readouterr().out
    assert code == 1 and f"ERROR {mask}: label values {{26}}" in out


def test_empty_split_and_missing_label(capsys, cityscapes):
    for label in (cityscapes / "gtFine" / "train").rglob("*_labelIds.png"):
        missing = label
    missing.unlink()
    (cityscapes / "leftImg8bit" / "val").rename(cityscapes / "leftImg8bit" / "val_moved")
    (cityscapes / "leftImg8bit" / "val").mkdir()
    code, out = _check(capsys, cityscapes)
    assert code == 1
    assert f"{missing}: missing label" in out
    assert "val: empty split" in out


def test_synthetic_default_passes_with_overrides(capsys):
    code = cli.main(["data-check", f"--config={CONFIGS / 'synthetic_demo.py'}:tiny",
                     "--config.data.synthetic.num_eval=3", "--max_records=5"])
    out = capsys.readouterr().out
    assert code == 0 and "5 of 32 records checked" in out and "3 of 3 records checked" in out


def test_max_records_in_either_spelling_and_quiet(capsys):
    for spelling in ("--max-records=2", "--max_records=2"):
        code = cli.main(["data-check", f"--config={CONFIGS / 'synthetic_demo.py'}:tiny", spelling, "--quiet",
                         "--splits=train"])
        captured = capsys.readouterr()
        assert code == 0 and "train (synthetic train): 2 of 32 records checked, 0 problems" in captured.out
        assert captured.err == ""


def test_help_lists_the_options(capsys):
    assert cli.main(["data-check", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal width
    for option in ("--max-records N", "default 0: all", "--max_records too", "--splits LIST",
                   "default train,eval", "--threads N", "default 4", "--quiet", "--config FILE[:preset]"):
        assert option in out


def test_config_files_and_presets_load():
    from hmsa_jax.configlib import load_config

    for name, presets in (("synthetic_demo.py", ("", ":tiny")),
                          ("cityscapes.py", ("", ":tfds", ":autolabel", ":trainval")),
                          ("mapillary.py", ("",))):
        for preset in presets:
            config, _ = load_config([f"--config={CONFIGS / name}{preset}",
                                     "--config.data.augment.crop_size=(32, 64)"])
            assert config.data.augment.crop_size == (32, 64)
    config, _ = load_config([f"--config={CONFIGS / 'cityscapes.py'}"])
    assert config.data.augment.crop_size == (1024, 2048) and config.data.class_uniform.fraction == 0.5


def test_a_bad_config_override_is_reported_not_raised(capsys):
    code = cli.main(["data-check", f"--config={CONFIGS / 'cityscapes.py'}", "--config.data.rot=/x"])
    assert code == 2
    assert "--config.data.rot: unknown key 'rot' in data" in capsys.readouterr().err


def test_training_on_bad_labels_stops_with_the_file_named(capsys, cityscapes, tmp_path):
    bad = _first(cityscapes / "gtFine" / "train", "*_labelIds.png")
    Image.fromarray(np.full((32, 64), 40, np.uint8)).save(bad)
    code = cli.main(["train", f"--config={CONFIGS / 'cityscapes.py'}", f"--workdir={tmp_path / 'run'}",
                     f"--config.data.root={cityscapes}", "--config.model.name=hrnet_tiny_ocr_mscale",
                     "--config.data.augment.crop_size=(32, 64)", "--config.data.loader.batch_size=2",
                     "--config.data.class_uniform.fraction=0.0", "--config.train.num_devices=1",
                     "--config.train.steps=2", "--config.validation.every_steps=-1"])
    assert code == 2
    assert f"{bad.name}: label values {{40}}" in capsys.readouterr().err
