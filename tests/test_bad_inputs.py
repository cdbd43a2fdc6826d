"""A corpus of bad inputs a user can produce (issue 14): config files and overrides, command
lines, checkpoints, images, data trees and file-system states.

Each case runs the `hmsa` entry point in-process and asserts a non-zero exit, no traceback, and
exactly one line that names the culprit (the file, key or value) with what was expected:
stderr's `hmsa ...` line, or data-check's `ERROR` line. Every case fails before anything is
compiled, so the corpus is cheap; the fixtures are built once per module.
"""
import json
import os
import pathlib
import re

import numpy as np
import pytest
from PIL import Image

from hmsa_jax import cli
from hmsa_jax.data.fake_layouts import write_fake_cityscapes, write_fake_folder

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"
DEMO = f"--config={CONFIGS / 'synthetic_demo.py'}:tiny"
CITY = f"--config={CONFIGS / 'cityscapes.py'}"


# ----------------------------------------------------------------------------- fixtures
def _png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)
    return path


def _text(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pathlib.Path(path).write_text(text)
    return path


def _config_files(root):
    files = {
        "yaml": "model:\n  name: hrnet_tiny_ocr\n",
        "json": '{"model": {"name": "x"}}\n',
        "syntax.py": "def get_config(:\n",
        "noget.py": "x = 1\n",
        "int.py": "def get_config(arg=None):\n    return 3\n",
        "dict.py": "def get_config(arg=None):\n    return {'model': {}}\n",
        "raises.py": "def get_config(arg=None):\n    raise ValueError('only presets a, b')\n",
        "nodata.py": ("from ml_collections import ConfigDict\n\ndef get_config(arg=None):\n"
                      "    return ConfigDict({'model': {'name': 'x'}})\n"),
    }
    names = {"yaml": "c.yaml", "json": "c.json"}
    return {key.removesuffix(".py"): _text(os.path.join(root, "configs", names.get(key, key)), text)
            for key, text in files.items()}


def _images(root):
    zeros = lambda h, w: np.zeros((h, w, 3), np.uint8)  # noqa: E731
    paths = {
        "good": _png(f"{root}/images/good/a.png", zeros(32, 64)),
        "one": _png(f"{root}/images/one/one.png", zeros(1, 1)),
        "tall": _png(f"{root}/images/tall.png", zeros(4000, 8)),
        "wide": _png(f"{root}/images/wide.png", zeros(8, 4000)),
        "huge": _png(f"{root}/images/huge.png", zeros(4096, 4096)),
        "text": _text(f"{root}/images/text.png", "hello, not a picture\n"),
        "empty": _text(f"{root}/images/empty.jpg", ""),
        "binary": f"{root}/images/binary.png",
        "truncated": f"{root}/images/truncated.png",
        "jpgs": f"{root}/images/jpgs",
        "dup": f"{root}/images/dup",
        "none": f"{root}/images/none",
    }
    pathlib.Path(paths["binary"]).write_bytes(b"\x00\x01\x02\x03" * 8)
    pathlib.Path(paths["truncated"]).write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 4)
    os.makedirs(paths["jpgs"])
    Image.fromarray(zeros(32, 64)).save(f"{paths['jpgs']}/x.jpg")
    _png(f"{paths['dup']}/a/x.png", zeros(32, 64))
    _png(f"{root}/images/dup2/x.png", zeros(32, 64))
    _text(f"{paths['none']}/notes.txt", "no images here")
    _text(f"{root}/images/textonly/text2.png", "saved as .png by mistake\n")
    return paths


def _cityscapes_variants(root):
    """One fake Cityscapes tree per kind of damage (train 2, val 1 images of 32x64)."""
    def tree(name, train_ids=False):
        path = os.path.join(root, "city", name)
        write_fake_cityscapes(path, {"train": 2, "val": 1}, height=32, width=64, write_train_ids=train_ids)
        return path

    def first(path, pattern):
        return str(sorted(pathlib.Path(path).rglob(pattern))[0])

    roots = {}
    roots["no_label"] = tree("no_label")
    os.remove(first(roots["no_label"], "*gtFine_labelIds.png"))
    roots["text_image"] = tree("text_image")
    city = os.path.dirname(first(roots["text_image"], "*_leftImg8bit.png"))
    _text(os.path.join(city, "aachen_999999_000019_leftImg8bit.png"), "a note saved with .png\n")
    roots["truncated"] = tree("truncated")
    victim = first(roots["truncated"], "*_leftImg8bit.png")
    data = pathlib.Path(victim).read_bytes()
    pathlib.Path(victim).write_bytes(data[: len(data) // 2])
    roots["size"] = tree("size")
    _png(first(roots["size"], "*gtFine_labelIds.png"), np.full((16, 64), 7, np.uint8))
    roots["rgb_label"] = tree("rgb_label")
    _png(first(roots["rgb_label"], "*gtFine_labelIds.png"), np.full((32, 64, 3), 7, np.uint8))
    roots["values"] = tree("values")
    _png(first(roots["values"], "*gtFine_labelIds.png"), np.full((32, 64), 200, np.uint8))
    roots["trainids_255"] = tree("trainids_255", train_ids=True)
    for path in pathlib.Path(roots["trainids_255"]).rglob("*_labelTrainIds.png"):
        os.replace(path, str(path).replace("_labelTrainIds.png", "_labelIds.png"))
    roots["trainids_no255"] = tree("trainids_no255", train_ids=True)
    for path in pathlib.Path(roots["trainids_no255"]).rglob("*_labelTrainIds.png"):
        ids = np.asarray(Image.open(path)).copy()
        ids[ids == 255] = 0
        _png(str(path).replace("_labelTrainIds.png", "_labelIds.png"), ids)
    roots["labelids_as_trainids"] = tree("labelids_as_trainids", train_ids=True)
    for path in pathlib.Path(roots["labelids_as_trainids"]).rglob("*_labelIds.png"):
        os.replace(path, str(path).replace("_labelIds.png", "_labelTrainIds.png"))
    roots["empty_split"] = os.path.join(root, "city", "empty_split")
    os.makedirs(os.path.join(roots["empty_split"], "leftImg8bit", "train"))
    roots["not_cityscapes"] = _text(os.path.join(root, "city", "not_cityscapes", "README"), "x")
    roots["not_cityscapes"] = os.path.dirname(roots["not_cityscapes"])
    roots["folder_text_image"] = os.path.join(root, "folder", "text_image")
    write_fake_folder(roots["folder_text_image"], {"train": 2, "val": 1}, height=32, width=64)
    _text(os.path.join(roots["folder_text_image"], "images", "train", "group0", "readme.png"), "notes\n")
    roots["folder_no_mask"] = os.path.join(root, "folder", "no_mask")
    write_fake_folder(roots["folder_no_mask"], {"train": 2, "val": 1}, height=32, width=64)
    os.remove(first(os.path.join(roots["folder_no_mask"], "masks", "train"), "*.png"))
    roots["folder_no_classes"] = os.path.join(root, "folder", "no_classes")
    write_fake_folder(roots["folder_no_classes"], {"train": 2, "val": 1}, height=32, width=64)
    os.remove(os.path.join(roots["folder_no_classes"], "classes.txt"))
    return roots


def _checkpoint(root):
    from inference_helpers import save_init_checkpoint, tiny_config

    from hmsa_jax.data.sources.synthetic import synthetic_classes

    workdir = os.path.join(root, "ckpt")
    save_init_checkpoint(workdir, tiny_config(), synthetic_classes(8).names)
    return workdir


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("bad_inputs"))
    paths = {"root": root, "ckpt": _checkpoint(root), "missing": os.path.join(root, "missing")}
    paths.update({f"cfg_{k}": v for k, v in _config_files(root).items()})
    paths.update({f"img_{k}": v for k, v in _images(root).items()})
    paths.update({f"city_{k}": v for k, v in _cityscapes_variants(root).items()})
    paths["a_file"] = _text(os.path.join(root, "a_file"), "someone's file")
    paths["empty_dir"] = os.path.join(root, "empty_dir")
    os.makedirs(paths["empty_dir"])
    paths["pth_other"] = _torch_file(root)
    return paths


def _torch_file(root):
    """A state dict of no model here (a classifier of another architecture)."""
    try:
        import torch
    except ImportError:
        return None
    path = os.path.join(root, "other.pth")
    torch.save({"features.0.weight": torch.zeros(8, 3, 3, 3), "classifier.weight": torch.zeros(10, 8)}, path)
    return path


# ----------------------------------------------------------------------------- the corpus
# (id, argv with {placeholders} from env, regex the one culprit line must match)
CONFIG_CASES = [
    ("no --config", ["config"], r"missing --config="),
    ("config file missing", ["config", "--config={missing}.py"], r"missing.py: no such config file"),
    ("config is a folder", ["config", "--config={empty_dir}"], r"empty_dir: no such config file"),
    ("YAML config", ["config", "--config={cfg_yaml}"], r"c.yaml: a .yaml file; expected a Python config"),
    ("JSON config", ["config", "--config={cfg_json}"], r"c.json: a .json file; expected a Python config"),
    ("config without extension", ["config", "--config={a_file}"], r"a_file: a file without extension"),
    ("syntax error", ["config", "--config={cfg_syntax}"], r"syntax.py: line 1: SyntaxError"),
    ("no get_config", ["config", "--config={cfg_noget}"], r"noget.py: defines no get_config\(\)"),
    ("get_config returns int", ["config", "--config={cfg_int}"], r"int.py: get_config\(\) returned a int"),
    ("get_config returns dict", ["config", "--config={cfg_dict}"], r"dict.py: get_config\(\) returned a dict"),
    ("get_config raises", ["config", "--config={cfg_raises}"], r"raises.py: line 2: ValueError: only presets"),
    ("config without data section", ["config", "--config={cfg_nodata}"], r"no 'data' section"),
    ("unknown preset", ["config", DEMO.replace(":tiny", ":nope")], r"synthetic_demo.py: line \d+: .*nope"),
    ("unknown top-level key", ["config", DEMO, "--config.trian.steps=3"], r"unknown key 'trian' in the top level"),
    ("unknown nested key", ["config", DEMO, "--config.train.stepz=3"], r"unknown key 'stepz' in train"),
    ("too deep key", ["config", DEMO, "--config.train.steps.x=3"], r"unknown key 'x' in train.steps"),
    ("int field given text", ["config", DEMO, "--config.train.steps=abc"], r"train.steps=abc"),
    ("int field given float", ["config", DEMO, "--config.train.steps=1.5"], r"train.steps=1.5"),
    ("override without --config", ["config", "--config.train.steps=3"], r"missing --config="),
]


def _override(key, value, message):
    return (f"{key}={value}", ["config", DEMO, f"--config.{key}={value}"], message)


OVERRIDE_CASES = [
    _override("data.augment.crop_size", "(64,)", r"crop_size=\(64,\); expected two integers"),
    _override("data.augment.crop_size", "(64,0)", r"crop_size=\(64, 0\); expected two integers"),
    _override("data.augment.crop_size", "(-8,64)", r"crop_size=\(-8, 64\); expected two integers"),
    _override("data.augment.crop_size", "(1,2,3)", r"crop_size=\(1, 2, 3\); expected two integers"),
    _override("data.eval.pad_to", "(1,2,3)", r"pad_to=\(1, 2, 3\); expected two integers"),
    _override("data.eval.pad_to", "(-1,0)", r"pad_to=\(-1, 0\); expected two integers"),
    _override("data.augment.scale_min", "0.0", r"scale_min=0.0, scale_max=2.0; expected 0 < scale_min"),
    _override("data.augment.scale_min", "3.0", r"scale_min=3.0, scale_max=2.0; expected 0 < scale_min"),
    _override("data.augment.flip_prob", "1.5", r"flip_prob=1.5; expected 0..1"),
    _override("data.augment.blur_prob", "-0.1", r"blur_prob=-0.1; expected 0..1"),
    _override("data.augment.hue", "0.9", r"hue=0.9; expected 0..0.5"),
    _override("data.augment.brightness", "-1.0", r"brightness=-1.0; expected >= 0"),
    _override("data.class_uniform.fraction", "2.0", r"fraction=2.0; expected 0..1"),
    _override("data.class_uniform.tile_size", "0", r"tile_size=0; expected > 0"),
    _override("data.autolabel.probability", "1.5", r"probability=1.5; expected 0..1"),
    _override("data.autolabel.labels_dir", "/x", r"labels_dir is set but data.autolabel.images_root is empty"),
    _override("data.loader.batch_size", "0", r"loader.batch_size=0; expected > 0"),
    _override("data.eval.batch_size", "-1", r"eval.batch_size=-1; expected > 0"),
    _override("data.loader.num_workers", "-1", r"num_workers=-1; expected >= 0"),
    _override("data.loader.read_threads", "0", r"read_threads=0; expected > 0"),
    _override("data.dataset", "imagenet", r"data.dataset='imagenet'; expected one of"),
    _override("data.synthetic.height", "0", r"synthetic.height=0; expected > 0"),
    _override("data.train_split", "", r"data.train_split is empty"),
    _override("model.name", "hrnet99", r"model.name='hrnet99'; expected one of"),
    _override("model.dtype", "float16", r"model.dtype='float16'"),
    _override("model.num_classes", "-1", r"num_classes=-1; expected 0 \(the dataset's count\) or >= 2"),
    _override("model.lo_scale", "1.5", r"lo_scale=1.5; expected in \(0, 1\)"),
    _override("model.trunk_init", "xavier", r"model.trunk_init='xavier'; expected one of"),
    ("he init on a ResNet", ["config", "--config=configs/scale_bench.py", "--config.model.trunk_init=he"],
     r"trunk_init='he' applies to HRNet models only; 'resnet_tiny_deeplabv3plus_mscale'"),
    _override("train.criterion", "focal", r"criterion='focal'"),
    _override("train.scale_mode", "sum", r"scale_mode='sum'"),
    _override("train.remat", "all", r"remat='all'"),
    _override("train.steps", "-1", r"train.steps=-1; expected >= 0"),
    _override("train.log_every", "0", r"log_every=0; expected > 0"),
    _override("train.checkpoint_every", "0", r"checkpoint_every=0; expected > 0"),
    _override("train.ignore_label", "300", r"ignore_label=300; expected 0..255"),
    _override("train.aux_weight", "-0.4", r"aux_weight=-0.4; expected >= 0"),
    _override("optim.decay", "none", r"optim.decay='none'"),
    _override("optim.learning_rate", "0.0", r"learning_rate=0.0; expected > 0"),
    _override("optim.momentum", "1.5", r"momentum=1.5; expected 0..1"),
    _override("optim.weight_decay", "-1e-4", r"weight_decay=-0.0001; expected >= 0"),
    _override("optim.warmup_steps", "-5", r"warmup_steps=-5; expected >= 0"),
    _override("optim.grad_clip_norm", "-1.0", r"grad_clip_norm=-1.0; expected >= 0"),
    _override("checkpoint.init_which", "oldest", r"init_which='oldest'"),
    _override("checkpoint.max_to_keep", "0", r"max_to_keep=0; expected > 0"),
    _override("validation.fusion", "median", r"validation.fusion='median'"),
    _override("validation.scales", "(0.5,2.0)", r"validation.scales: .*must contain 1.0"),
    _override("validation.scales", "(1.0,64.0)", r"validation.scales: .*at most 8"),
    _override("validation.scales", "(1.0,1.0)", r"validation.scales: .*must not repeat"),
    _override("validation.picture_scales", "(0.0,1.0)", r"picture_scales: .*must be positive"),
    _override("validation.pictures", "-1", r"pictures=-1; expected >= 0"),
    _override("distributed.mode", "maybe", r"distributed.mode='maybe'"),
    _override("distributed.process_id", "-2", r"process_id=-2; expected -1"),
    _override("distributed.heartbeat_timeout_s", "0", r"heartbeat_timeout_s=0; expected > 0"),
    _override("faults.max_nonfinite_steps", "0", r"max_nonfinite_steps=0; expected > 0"),
    _override("train.scale_mode", "average", r"scale_mode='average' needs a single-scale model"),
    _override("model.num_classes", "1", r"num_classes=1; expected 0 \(the dataset's count\) or >= 2"),
    _override("data.synthetic.num_classes", "2", r"synthetic.num_classes=2; expected 4..10"),
    _override("data.scale_bench.distractor", "3.0", r"data.scale_bench.distractor=3.0; expected 0..2"),
    _override("data.cityscapes.label_format", "ids", r"label_format='ids'; expected one of"),
    _override("data.cityscapes.label_kind", "medium", r"label_kind='medium'; expected one of"),
    _override("data.tfds.label_format", "TrainIds", r"tfds.label_format='TrainIds'; expected one of"),
    _override("validation.scales", "(1.0,0.001)", r"scale 0.001 makes the 64x128 synthetic images empty"),
    _override("data.augment.crop_size", "(1,1)", r"lo_scale=0.5 makes the 1x1 training crop empty"),
    _override("data.augment.crop_size", "(a,b)", r"crop_size=\('\(a,b\)',\); expected two integers"),
]

TRAIN_CASES = [
    ("train without --workdir", ["train", DEMO], r"missing --workdir"),
    ("workdir is a file", ["train", DEMO, "--workdir={a_file}"], r"a_file: exists and is not a folder"),
    ("workdir under a file", ["train", DEMO, "--workdir={a_file}/run"], r"a_file/run: cannot create it"),
    ("init_from missing", ["train", DEMO, "--workdir={root}/w_init", "--config.checkpoint.init_from={missing}"],
     r"init_from='.*missing': no such checkpoint folder"),
    ("train crop (64,)", ["train", DEMO, "--workdir={root}/w_crop", "--config.data.augment.crop_size=(64,)"],
     r"crop_size=\(64,\); expected two integers"),
    ("train --stop_after=-1", ["train", DEMO, "--workdir={root}/w_stop", "--stop_after=-1"],
     r"--stop-after=-1; expected a number of steps > 0"),
    ("train --stop_after=abc", ["train", DEMO, "--workdir={root}/w_stop", "--stop_after=abc"],
     r"--stop-after: invalid int value: 'abc'"),
    ("train unknown flag", ["train", DEMO, "--workdir={root}/w_stop", "--wrokdir=x"],
     r"unrecognized arguments: --wrokdir=x"),
    ("train batch not divisible by devices", ["train", DEMO, "--workdir={root}/w_batch",
                                              "--config.data.loader.batch_size=3"],
     r"data.loader.batch_size=3 is not divisible by the 8 devices"),
    ("train YAML config", ["train", "--config={cfg_yaml}", "--workdir={root}/w_yaml"], r"c.yaml: a .yaml file"),
]

COMMAND_CASES = [
    ("unknown command", ["trian"], r"unknown command 'trian'"),
    ("predict without --checkpoint", ["predict", "{img_good}", "--out={root}/o"], r"--checkpoint"),
    ("predict without --out", ["predict", "--checkpoint={ckpt}", "{img_good}"], r"--out"),
    ("predict unknown fusion", ["predict", "--checkpoint={ckpt}", "{img_good}", "--out={root}/o", "--fusion=median"],
     r"--fusion: invalid choice: 'median'"),
    ("scales not numbers", ["predict", "--checkpoint={ckpt}", "{img_good}", "--out={root}/o", "--scales=a,b"],
     r"scales='a,b': expected comma-separated numbers"),
    ("scales without 1.0", ["predict", "--checkpoint={ckpt}", "{img_good}", "--out={root}/o", "--scales=0.5,2.0"],
     r"must contain 1.0"),
    ("scales repeated", ["predict", "--checkpoint={ckpt}", "{img_good}", "--out={root}/o", "--scales=1.0,1.0"],
     r"must not repeat"),
    ("scale negative", ["predict", "--checkpoint={ckpt}", "{img_good}", "--out={root}/o", "--scales=-1,1.0"],
     r"must be positive, got \[-1.0\]"),
    ("scale nan", ["predict", "--checkpoint={ckpt}", "{img_good}", "--out={root}/o", "--scales=1.0,nan"],
     r"must be positive, got \[nan\]"),
    ("scale inf", ["predict", "--checkpoint={ckpt}", "{img_good}", "--out={root}/o", "--scales=1.0,inf"],
     r"finite and at most 8 .* got \[inf\]"),
    ("scale 64", ["predict", "--checkpoint={ckpt}", "{img_good}", "--out={root}/o", "--scales=1.0,64"],
     r"finite and at most 8 .* got \[64.0\]"),
    ("window not a pair", ["predict", "--checkpoint={ckpt}", "{img_good}", "--out={root}/o", "--window=abc"],
     r"--window='abc'; expected two integers"),
    ("window zero", ["predict", "--checkpoint={ckpt}", "{img_good}", "--out={root}/o", "--window=0,5"],
     r"window=\(0, 5\); expected \(height, width\) > 0"),
    ("overlap 1.5", ["predict", "--checkpoint={ckpt}", "{img_good}", "--out={root}/o", "--overlap=1.5"],
     r"overlap=1.5; expected 0 <= overlap < 1"),
    ("autolabel threshold", ["autolabel", "--checkpoint={ckpt}", "--images={img_jpgs}", "--out={root}/al",
                             "--threshold=1.5"], r"--threshold=1.5; expected 0 <= threshold < 1"),
    ("autolabel border", ["autolabel", "--checkpoint={ckpt}", "--images={img_jpgs}", "--out={root}/al",
                          "--border=garbage"], r"border"),
    ("autolabel images is a file", ["autolabel", "--checkpoint={ckpt}", "--images={img_good}", "--out={root}/al"],
     r"--images=.*a.png: not a folder of images"),
    ("eval unknown argument", ["eval", "--checkpoint={ckpt}", "--bogus"], r"unrecognized arguments: --bogus"),
    ("eval override without --config", ["eval", "--checkpoint={ckpt}", "--config.data.seed=1"],
     r"--config.data.seed=1: --config.\* overrides need --config=FILE"),
    ("convert unknown arch", ["convert", "{a_file}", "--arch=hrnet99", "--out={root}/cv"], r"unknown model 'hrnet99'"),
    ("data-check unknown split", ["data-check", DEMO, "--splits=train,bogus"], r"--splits entry 'bogus'; expected"),
    ("data-check bad override", ["data-check", DEMO, "--config.data.augment.crop_size=(64,)"],
     r"crop_size=\(64,\); expected two integers"),
]

CHECKPOINT_CASES = [
    ("checkpoint missing", ["predict", "--checkpoint={missing}", "{img_good}", "--out={root}/o"],
     r"missing: no such checkpoint folder"),
    ("checkpoint empty folder", ["predict", "--checkpoint={empty_dir}", "{img_good}", "--out={root}/o"],
     r"empty_dir.*holds no checkpoint"),
    ("checkpoint is a file", ["predict", "--checkpoint={a_file}", "{img_good}", "--out={root}/o"], r"a_file"),
    ("checkpoint step absent", ["predict", "--checkpoint={ckpt}", "--step=99", "{img_good}", "--out={root}/o"],
     r"no step 99; steps present: \[7\]"),
    ("eval config of another model", ["eval", "--checkpoint={ckpt}", DEMO],
     r"holds a 'resnet_tiny_deeplabv3plus_mscale' checkpoint, but the config asks for model 'hrnet_tiny_ocr_mscale'"),
    ("eval batch not divisible by devices", ["eval", "--checkpoint={ckpt}", "--batch-size=3"],
     r"data.eval.batch_size=3 is not divisible by the 8 devices"),
    ("eval on a dataset of another class count", ["eval", "--checkpoint={ckpt}", DEMO, "--batch-size=8",
                                                  "--config.model.name=resnet_tiny_deeplabv3plus_mscale",
                                                  "--config.data.synthetic.num_classes=5"],
     r"the checkpoint predicts 8 classes, dataset 'synthetic' has 5"),
    ("eval scale empties images", ["eval", "--checkpoint={ckpt}", "--scales=0.01,1.0"],
     r"synthetic val: scale 0.01 makes this 32x64 image 0x0"),
    ("autolabel checkpoint missing", ["autolabel", "--checkpoint={missing}", "--images={img_jpgs}",
                                      "--out={root}/al2"], r"missing: no such checkpoint folder"),
    ("convert missing file", ["convert", "{missing}.pth", "--arch=hrnet_tiny_ocr", "--out={root}/cv"],
     r"missing.pth"),
    ("convert not a torch file", ["convert", "{a_file}", "--arch=hrnet_tiny_ocr", "--out={root}/cv"], r"a_file"),
]

IMAGE_CASES = [
    ("input missing", ["predict", "--checkpoint={ckpt}", "{missing}.png", "--out={root}/o"],
     r"missing.png: no such image file or folder"),
    ("folder without images", ["predict", "--checkpoint={ckpt}", "{img_none}", "--out={root}/o"], r"no images"),
    ("two inputs one name", ["predict", "--checkpoint={ckpt}", "{img_dup}/a/x.png", "{root}/images/dup2/x.png",
                             "--out={root}/o"], r"two inputs give the output name 'x'"),
    ("text named .png", ["predict", "--checkpoint={ckpt}", "{img_text}", "--out={root}/o"],
     r"text.png: not an image file \(text starting 'hello, not a pic'\)"),
    ("empty .jpg", ["predict", "--checkpoint={ckpt}", "{img_empty}", "--out={root}/o"],
     r"empty.jpg: not an image file \(an empty file\)"),
    ("binary named .png", ["predict", "--checkpoint={ckpt}", "{img_binary}", "--out={root}/o"],
     r"binary.png: not an image file \(unknown format"),
    ("damaged PNG", ["predict", "--checkpoint={ckpt}", "{img_truncated}", "--out={root}/o"],
     r"truncated.png: unreadable image"),
    ("scale 0.001 empties image", ["predict", "--checkpoint={ckpt}", "{img_good}", "--out={root}/o",
                                   "--scales=0.001,1.0"], r"a.png: scale 0.001 makes this 32x64 image 0x0"),
    ("1x1 image at 0.5", ["predict", "--checkpoint={ckpt}", "{img_one}", "--out={root}/o", "--scales=0.5,1.0"],
     r"one.png: scale 0.5 makes this 1x1 image 0x0"),
    ("4000x8 image pictures", ["predict", "--checkpoint={ckpt}", "{img_tall}", "--out={root}/o", "--scales=1.0"],
     r"tall.png: a 4000x8 image \(HxW\); expected an aspect ratio within 1:32"),
    ("8x4000 image pictures", ["predict", "--checkpoint={ckpt}", "{img_wide}", "--out={root}/o", "--scales=1.0"],
     r"wide.png: a 8x4000 image \(HxW\); expected an aspect ratio within 1:32"),
    ("scaled image too large", ["predict", "--checkpoint={ckpt}", "{img_huge}", "--out={root}/o", "--scales=1.0,2.0"],
     r"huge.png: scale 2 makes this 4096x4096 image 8192x8192 = 67 Mpx; expected at most 34 Mpx"),
    ("autolabel text named .png", ["autolabel", "--checkpoint={ckpt}", "--images={root}/images/textonly",
                                   "--out={root}/al4"], r"text2.png: not an image file \(text starting"),
    ("autolabel 1x1 image at 0.5", ["autolabel", "--checkpoint={ckpt}", "--images={root}/images/one",
                                   "--out={root}/al3", "--scales=0.5,1.0"], r"one.png: scale 0.5 makes"),
]

FILESYSTEM_CASES = [
    ("predict --out is the input folder", ["predict", "--checkpoint={ckpt}", "{root}/images/good", "--out={root}/images/good"],
     r"--out=.* is the input folder"),
    ("predict --out inside the inputs", ["predict", "--checkpoint={ckpt}", "{root}/images/good",
                                         "--out={root}/images/good/pictures"], r"is inside the input folder"),
    ("autolabel --out is the jpg folder", ["autolabel", "--checkpoint={ckpt}", "--images={img_jpgs}",
                                           "--out={img_jpgs}"], r"--out=.*jpgs is the input folder"),
    ("autolabel --out inside images", ["autolabel", "--checkpoint={ckpt}", "--images={img_jpgs}",
                                       "--out={img_jpgs}/labels"], r"is inside the input folder"),
    ("predict --out is a file", ["predict", "--checkpoint={ckpt}", "{img_good}", "--out={a_file}"],
     r"--out=.*a_file exists and is not a folder"),
    ("predict --out under a file", ["predict", "--checkpoint={ckpt}", "{img_good}", "--out={a_file}/pictures"],
     r"--out=.*a_file/pictures: .*a_file is a file, not a folder"),
    ("autolabel --out is a file", ["autolabel", "--checkpoint={ckpt}", "--images={img_jpgs}", "--out={a_file}"],
     r"--out=.*a_file exists and is not a folder"),
    ("eval --save-predictions is a file", ["eval", "--checkpoint={ckpt}", "--save-predictions={a_file}"],
     r"--save-predictions=.*a_file exists and is not a folder"),
    ("eval --json is a folder", ["eval", "--checkpoint={ckpt}", "--json={empty_dir}"],
     r"--json=.*empty_dir is a folder; expected a file path"),
    ("eval --json under a file", ["eval", "--checkpoint={ckpt}", "--json={a_file}/scores.json"],
     r"--json=.*a_file/scores.json: .*a_file is a file, not a folder"),
    ("autolabel --images missing", ["autolabel", "--checkpoint={ckpt}", "--images={missing}", "--out={root}/al"],
     r"--images=.*missing: not a folder of images"),
]

DATA_CASES = [  # data-check: exit 1, an ERROR line naming each damaged file
    ("label missing", "no_label", [], r"labelIds.png: missing label for image"),
    ("text file named like an image", "text_image", [],
     r"aachen_999999_000019_leftImg8bit.png: not an image file \(text starting 'a note saved wit'\)"),
    ("truncated image", "truncated", [], r"leftImg8bit.png: unreadable image"),
    ("label of another size", "size", [], r"label size 64x16 \(WxH\) differs from its image"),
    ("colour label", "rgb_label", [], r"label image mode 'RGB'; expected a single-channel"),
    ("label values outside the table", "values", [], r"label values \{200\} are not in the Cityscapes labelIds"),
    ("trainIds with 255 read as labelIds", "trainids_255", [], r"is this a \*_labelTrainIds.png given as labelIds"),
    ("trainIds without 255 read as labelIds", "trainids_no255", [],
     r"look like trainIds files \(values 0..18\) read as labelIds"),
    ("labelIds read as trainIds", "labelids_as_trainids", ["--config.data.cityscapes.label_format=trainIds"],
     r"look like Cityscapes labelIds given where trainIds were expected"),
    ("empty split", "empty_split", ["--splits=train"], r"empty split"),
    ("not a Cityscapes tree", "not_cityscapes", ["--splits=train"], r"leftImg8bit/train: not a directory"),
]


def _fill(argv, env):
    return [a.format(**env) for a in argv]


def _run(capsys, argv):
    try:
        code = cli.main(argv)
    except SystemExit as stop:  # argparse
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_one_culprit_line(code, out, err, pattern):
    text = out + err
    assert code not in (0, None), text
    assert "Traceback" not in text, text
    lines = [line for line in err.splitlines() if line.startswith("hmsa")]
    assert len(lines) == 1, text
    assert re.search(pattern, lines[0]), lines[0]


ALL_CLI_CASES = CONFIG_CASES + OVERRIDE_CASES + TRAIN_CASES + COMMAND_CASES + CHECKPOINT_CASES \
    + IMAGE_CASES + FILESYSTEM_CASES


@pytest.mark.parametrize("argv, pattern", [c[1:] for c in ALL_CLI_CASES], ids=[c[0] for c in ALL_CLI_CASES])
def test_bad_input_is_one_line_and_a_nonzero_exit(env, capsys, argv, pattern):
    code, out, err = _run(capsys, _fill(argv, env))
    _assert_one_culprit_line(code, out, err, pattern)


@pytest.mark.parametrize("tree, extra, pattern", [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_bad_data_tree_is_one_error_line(env, capsys, tree, extra, pattern):
    code, out, err = _run(capsys, ["data-check", CITY, f"--config.data.root={env['city_' + tree]}",
                                   "--threads=1", "--quiet", *extra])
    assert code == 1 and "data-check: FAILED" in out and "Traceback" not in out + err
    errors = [line for line in out.splitlines() if line.startswith("  ERROR")]
    # one line per damaged file (a tree-wide finding: one per split), each naming the culprit
    assert errors and all(re.search(pattern, line) for line in errors), out


FOLDER_CASES = [
    ("folder: text file named like an image", "folder_text_image", r"readme.png: not an image file \(text starting"),
    ("folder: image without mask", "folder_no_mask", r"img0000.png: missing mask for image"),
]


@pytest.mark.parametrize("tree, pattern", [c[1:] for c in FOLDER_CASES], ids=[c[0] for c in FOLDER_CASES])
def test_bad_folder_dataset_is_one_error_line(env, capsys, tree, pattern):
    code, out, err = _run(capsys, ["data-check", DEMO, "--config.data.dataset=folder", "--splits=train",
                                   f"--config.data.root={env['city_' + tree]}", "--quiet"])
    assert code == 1 and "Traceback" not in out + err
    errors = [line for line in out.splitlines() if line.startswith("  ERROR")]
    assert len(errors) == 1 and re.search(pattern, errors[0]), out


def test_folder_dataset_without_classes_file(env, capsys):
    code, out, err = _run(capsys, ["data-check", DEMO, "--config.data.dataset=folder",
                                   f"--config.data.root={env['city_folder_no_classes']}", "--quiet"])
    assert code == 1 and "Traceback" not in out + err
    errors = [line for line in out.splitlines() if line.startswith("  ERROR")]
    assert errors and all("classes.txt" in line for line in errors)


@pytest.mark.parametrize("root_key, message", [("missing", "no such"), ("a_file", "a_file")])
def test_data_root_that_is_not_a_folder(env, capsys, root_key, message):
    code, out, err = _run(capsys, ["data-check", CITY, f"--config.data.root={env[root_key]}", "--quiet"])
    assert code == 1 and "Traceback" not in out + err
    errors = [line for line in out.splitlines() if line.startswith("  ERROR")]
    assert len(errors) == 2 and all(message in line or "not a directory" in line for line in errors)


def test_convert_of_another_architecture_writes_nothing(env, capsys):
    if env["pth_other"] is None:
        pytest.skip("torch is not installed (the convert extra)")
    out_dir = os.path.join(env["root"], "converted_other")
    code, out, err = _run(capsys, ["convert", env["pth_other"], "--arch=resnet_tiny_deeplabv3plus",
                                   f"--out={out_dir}", "--quiet"])
    assert code == 1 and "Traceback" not in out + err
    first = err.splitlines()[0]
    assert re.search(r"other.pth: fills 0% of model 'resnet_tiny_deeplabv3plus'.s variables .*"
                     r"is --arch the checkpoint's architecture", first), err
    assert not os.path.exists(os.path.join(out_dir, "0"))


def test_init_from_a_checkpoint_of_another_architecture(env):
    import jax

    from hmsa_jax import checkpoint, create_model
    from hmsa_jax.loading import abstract_variables
    from hmsa_jax.train.pretrained import load_pretrained

    other = create_model("hrnet_tiny_ocr_mscale", num_classes=8)
    fresh = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), abstract_variables(other))
    with pytest.raises(checkpoint.CheckpointError, match=r"fills \d+% of this model's parameters .* "
                                                          r"another architecture"):
        load_pretrained(fresh, env["ckpt"])


def test_trainids_heuristic_leaves_real_labelids_alone():
    from hmsa_jax.data.labels import trainids_read_as_labelids

    pixels = np.zeros(19, np.int64)
    pixels[[0, 2, 8, 10, 13]] = 100  # road, building, vegetation, sky, car
    assert trainids_read_as_labelids(pixels, "Cityscapes labelIds") is None
    pixels[6:] = 0
    assert "look like trainIds" in trainids_read_as_labelids(pixels, "Cityscapes labelIds")
    assert trainids_read_as_labelids(pixels, "Cityscapes trainIds") is None
    assert trainids_read_as_labelids(np.zeros(19), "Cityscapes labelIds") is None  # nothing labelled


def test_predict_into_a_fresh_folder_beside_the_inputs_still_works(env, tmp_path, capsys):
    """The --out rule refuses only input folders: a sibling output folder passes the checks."""
    from hmsa_jax import input_checks

    input_checks.check_out_dir(str(tmp_path / "pictures"), [os.path.join(env["root"], "images", "good")])
    assert input_checks.check_inputs_fit([(env["img_good"], "a")], (0.5, 1.0, 2.0), pictures=True) == [(32, 64)]


def test_the_corpus_has_at_least_100_cases():
    kinds = {"config files and overrides": len(CONFIG_CASES) + len(OVERRIDE_CASES) + len(TRAIN_CASES),
             "command lines": len(COMMAND_CASES), "checkpoints": len(CHECKPOINT_CASES) + 2,
             "images": len(IMAGE_CASES), "file-system states": len(FILESYSTEM_CASES) + 2,
             "data trees": len(DATA_CASES) + len(FOLDER_CASES) + 3}
    assert sum(kinds.values()) >= 100, json.dumps(kinds)


def test_eval_refuses_trainids_read_as_labelids(env, capsys):
    """The one corpus case that compiles (a tiny model's eval step): trainIds files without a
    255 pixel, named and read as labelIds, would score the wrong classes without a word."""
    from inference_helpers import save_init_checkpoint, tiny_config

    from hmsa_jax.data.labels import cityscapes_classes

    workdir = save_init_checkpoint(os.path.join(env["root"], "city_ckpt"), tiny_config(num_classes=19),
                                   cityscapes_classes().names)
    code, out, err = _run(capsys, ["eval", f"--checkpoint={workdir}", CITY, "--scales=1.0", "--quiet",
                                   f"--config.data.root={env['city_trainids_no255']}",
                                   "--config.model.name=resnet_tiny_deeplabv3plus_mscale",
                                   "--config.data.eval.batch_size=8"])
    _assert_one_culprit_line(code, out, err, r"cityscapes val: every label maps to train ids 0..5 only "
                                             r".* look like trainIds files")
    assert "mIoU" not in out  # no table of the wrong classes
