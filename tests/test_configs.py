"""Config files, presets, overrides and the checks that run before any compute."""
import pathlib

import pytest

from hmsa_jax.configlib import ConfigError, check_fields, load_config
from hmsa_jax.train.config import default_config, validate_config
from hmsa_jax.train.run_files import check_workdir

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"
PRESETS = {
    "synthetic_demo.py": ("", ":tiny"),
    "cityscapes.py": ("", ":tfds", ":autolabel", ":trainval"),
    "mapillary.py": ("", ":mscale"),
    "cityscapes_ablation.py": (":single", ":average", ":explicit", ":hierarchical"),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_config_and_preset_loads_and_validates(name):
    for preset in PRESETS[name]:
        config, _ = load_config([f"--config={CONFIGS / name}{preset}"])
        validate_config(config)
        check_fields(config, default_config())


def test_recipes_hold_the_papers_settings():
    city, _ = load_config([f"--config={CONFIGS / 'cityscapes.py'}"])
    assert (city.model.name, city.train.criterion, city.optim.learning_rate) == ("hrnet48_ocr_mscale", "rmi", 5e-3)
    assert city.data.augment.crop_size == (1024, 2048) and city.validation.scales == (0.5, 1.0, 2.0)
    models = {}
    for preset in ("single", "average", "explicit", "hierarchical"):
        c, _ = load_config([f"--config={CONFIGS / 'cityscapes_ablation.py'}:{preset}"])
        models[preset] = (c.model.name, c.train.scale_mode)
    assert models == {"single": ("resnet50_deeplabv3plus", "model"),
                      "average": ("resnet50_deeplabv3plus", "average"),
                      "explicit": ("resnet50_deeplabv3plus_explicit", "model"),
                      "hierarchical": ("resnet50_deeplabv3plus_mscale", "model")}


def test_overrides_set_fields_with_their_types():
    config, _ = load_config([f"--config={CONFIGS / 'synthetic_demo.py'}:tiny", "--config.train.steps=7",
                             "--config.optim.learning_rate=0.5", "--config.validation.scales=(0.5, 1.0)"])
    assert (config.train.steps, config.optim.learning_rate, config.validation.scales) == (7, 0.5, (0.5, 1.0))


@pytest.mark.parametrize("override, message", [
    ("--config.train.stepz=3", r"--config.train.stepz: unknown key 'stepz' in train"),
    ("--config.trian.steps=3", r"unknown key 'trian' in the top level"),
    ("--config.train.steps=abc", r"train.steps=abc"),
    ("--config.train.steps=1.5", r"train.steps=1.5"),
])
def test_unknown_keys_and_wrong_types_fail(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config([f"--config={CONFIGS / 'synthetic_demo.py'}", override])


def test_unknown_preset_fails_naming_the_file():
    with pytest.raises(ConfigError, match=r"synthetic_demo.py: line \d+: ValueError: unknown preset 'nope'"):
        load_config([f"--config={CONFIGS / 'synthetic_demo.py'}:nope"])


@pytest.mark.parametrize("text, message", [
    (None, r"missing.py: no such config file"),
    ("def get_config(:\n", r"broken.py: line 1: SyntaxError"),
    ("import math\n\ndef get_config(arg=None):\n    return math.nope\n",
     r"broken.py: line 4: AttributeError: .*nope"),
])
def test_a_config_file_that_cannot_load_fails_naming_the_file_and_line(tmp_path, text, message):
    path = tmp_path / ("missing.py" if text is None else "broken.py")
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config([f"--config={path}"])


@pytest.mark.parametrize("key, value, message", [
    ("model.name", "hrnet99", r"config.model.name='hrnet99'; expected one of"),
    ("model.dtype", "float16", r"model.dtype='float16'"),
    ("train.criterion", "focal", r"train.criterion='focal'"),
    ("train.remat", "some", r"train.remat='some'"),
    ("runtime.transfer_guard", "always", r"runtime.transfer_guard='always'; expected one of"),
    ("validation.scales", (0.5, 2.0), r"validation.scales: .*must contain 1.0"),
    ("validation.picture_scales", (0.0, 1.0), r"validation.picture_scales: .*must be positive"),
    ("train.scale_mode", "average", r"scale_mode='average' needs a single-scale model"),
])
def test_validate_config_names_the_bad_value(key, value, message):
    config, _ = load_config([f"--config={CONFIGS / 'synthetic_demo.py'}"])
    section, field = key.split(".")
    config[section][field] = value
    with pytest.raises(ConfigError, match=message):
        validate_config(config)


def test_a_workdir_of_another_model_is_refused(tmp_path):
    import json

    resolved = {"model": {"name": "hrnet_tiny_ocr_mscale", "num_classes": 8}}
    (tmp_path / "config.json").write_text(json.dumps(resolved))
    check_workdir(str(tmp_path), resolved)  # same model: fine
    with pytest.raises(ConfigError, match=r"model.num_classes=8, the config asks for 19"):
        check_workdir(str(tmp_path), {"model": {"name": "hrnet_tiny_ocr_mscale", "num_classes": 19}})
    with pytest.raises(ConfigError, match=r"model.name='hrnet_tiny_ocr_mscale'"):
        check_workdir(str(tmp_path), {"model": {"name": "resnet_tiny_deeplabv3plus", "num_classes": 8}})


def test_check_fields_rejects_saved_configs_with_unknown_keys_or_types():
    with pytest.raises(ConfigError, match=r"config.train.foo: unknown key"):
        check_fields({"train": {"foo": 1}}, default_config())
    with pytest.raises(ConfigError, match=r"config.train.steps='x': expected a int"):
        check_fields({"train": {"steps": "x"}}, default_config())
