"""`hmsa convert`: reading PyTorch checkpoints, placing every tensor, the report, the Orbax output."""
import functools
import json
import os
import pathlib
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch (the `convert` extra: pip install -e '.[convert]') to write PyTorch checkpoints")

import torch_reference as R  # noqa: E402  (tests/ is on sys.path under pytest's rootdir conftest)
from hmsa_jax.convert import cli  # noqa: E402
from hmsa_jax.convert.checkpoint_io import REPORT_NAME, restore_converted  # noqa: E402
from hmsa_jax.convert.mapping import (ConversionError, convert_state_dict, infer_num_classes,  # noqa: E402
                                     initial_model_variables)
from hmsa_jax.convert.torch_reader import CheckpointReadError, read_state_dict  # noqa: E402
from hmsa_jax.models import create_model  # noqa: E402

REFERENCE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "reference"
NEEDS_REFERENCE = (f"needs {REFERENCE}: the PyTorch reference's state-dict listings "
                   "(nvidia_*_state_dict.tsv, names and shapes of every tensor), kept in the "
                   "project's shared folder beside the checkout, not in git")
needs_listings = pytest.mark.skipif(not REFERENCE.is_dir(), reason=NEEDS_REFERENCE)
K = 5


def read_listing(filename):
    """[(key, shape, dtype)] of a reference state-dict listing."""
    rows = []
    for line in (REFERENCE / filename).read_text().splitlines():
        key, shape, dtype = line.split("\t")
        rows.append((key, tuple(int(d) for d in shape.strip("()").split(",") if d.strip()), dtype))
    return rows


def random_state_dict(rows, seed=0):
    """A torch state dict with every key, shape and dtype of `rows`, random values."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape, dtype in rows:
        if dtype == "int64":
            state[key] = torch.tensor(int(rng.integers(1, 1000)), dtype=torch.int64).reshape(shape)
        else:
            state[key] = torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))
    return state


def expected_location(key: str, ndim: int) -> tuple[str, ...]:
    """Where a torch key must land in our tree, derived here from the naming convention itself:
    module names join an index to the name before it with "_"; weight -> kernel (conv) or scale (BN)."""
    *modules, leaf = key.split(".")
    path = []
    for name in modules:
        if name.isdigit() and path:
            path[-1] += f"_{name}"
        else:
            path.append(name)
    leaf_name = {"weight": "kernel" if ndim == 4 else "scale", "bias": "bias",
                 "running_mean": "mean", "running_var": "var"}[leaf]
    # A 1-D "weight" is a BN scale; the only 1-D biases belong to convs (4-D weights) or BNs.
    collection = "batch_stats" if leaf.startswith("running_") else "params"
    return (collection, *path, leaf_name)


def leaf_at(variables, location):
    node = variables
    for name in location:
        node = node[name]
    return np.asarray(node)


def assert_every_value_placed(variables, state):
    """Each tensor is found at its location, conv weights OIHW -> HWIO."""
    for key, tensor in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        value = tensor.numpy()
        placed = leaf_at(variables, expected_location(key, value.ndim))
        if value.ndim == 4:
            o, i, kh, kw = value.shape
            assert placed.shape == (kh, kw, i, o), key
            assert placed[kh - 1, 0, i - 1, o - 1] == value[o - 1, i - 1, kh - 1, 0], key
            np.testing.assert_array_equal(placed, value.transpose(2, 3, 1, 0), err_msg=key)
        else:
            np.testing.assert_array_equal(placed, value, err_msg=key)


# ----------------------------------------------------------------------------- full-size listings

@needs_listings
@pytest.mark.slow
def test_full_hrnet_ocr_mscale_training_checkpoint_places_every_value(tmp_path):
    """A DDP training checkpoint of HRNet_Mscale: {'state_dict': {'module.' + key: ...}, metadata}.

    (The Orbax round trip through the command is checked on the tiny model below: at full size
    it costs ~20 s here and tests nothing the tiny one does not.)
    """
    rows = read_listing("nvidia_hrnet_ocr_mscale_state_dict.tsv")
    state = random_state_dict(rows)
    path = tmp_path / "hrnet_ocr_mscale.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 174,
                "mean_iu": np.float64(0.8692), "command": "train.py ..."}, path)

    read = read_state_dict(path)
    assert read.container == "state_dict" and read.stripped_prefix
    model = create_model("hrnet48_ocr_mscale", num_classes=infer_num_classes(read.arrays))
    variables, report = convert_state_dict(read.arrays, model, source=str(path),
                                           model_name="hrnet48_ocr_mscale", strict=True)

    assert model.num_classes == 19
    assert report.full_match and len(report.loaded) == 1903 - 316 and len(report.ignored) == 316
    assert_every_value_placed(variables, state)


@needs_listings
@pytest.mark.slow
def test_full_deeplab_mscale_bare_state_dict_places_every_value():
    rows = read_listing("nvidia_deepv3r50_mscale_state_dict.tsv")
    state = random_state_dict(rows, seed=1)
    model = create_model("resnet50_deeplabv3plus_mscale", num_classes=19)
    variables, report = convert_state_dict({k: v.numpy() for k, v in state.items()}, model,
                                           source="bare", model_name="resnet50_deeplabv3plus_mscale",
                                           strict=True)
    assert report.full_match and len(report.loaded) == 376 - 62
    assert_every_value_placed(variables, state)


# ----------------------------------------------------------------------------- tiny: partial matches

@pytest.fixture(scope="module")
def tiny_init():
    return initial_model_variables(create_model("hrnet_tiny_ocr_mscale", num_classes=K))


def test_fewer_classes_and_no_attention_head_are_reported_and_left_at_init(tmp_path, tiny_init):
    """The Mapillary OCRNet (65 classes, no attention) -> Cityscapes HRNet-OCR with attention."""
    source = R.randomize_(R.tiny_hrnet_ocr_mscale(num_classes=7, attention=False), seed=3)
    path = tmp_path / "ocrnet.pth"
    torch.save(source.state_dict(), path)

    assert cli.main([str(path), "--arch=hrnet_tiny_ocr_mscale", f"--num-classes={K}",
                     f"--out={tmp_path / 'out'}"]) == 0
    variables, meta = restore_converted(tmp_path / "out")
    report = meta["report"]

    assert not report["full_match"] and report["skipped"] == []
    assert {m["key"]: (m["checkpoint_shape"], m["model_shape"]) for m in report["mismatched"]} == {
        "ocr.cls_head.weight": ([7, 32, 1, 1], [K, 32, 1, 1]), "ocr.cls_head.bias": ([7], [K]),
        "ocr.aux_head.2.weight": ([7, 120, 1, 1], [K, 120, 1, 1]), "ocr.aux_head.2.bias": ([7], [K])}
    assert sorted(report["missing"]) == sorted(
        f"scale_attn.{m}.{leaf}" for m, leaves in (("conv0", ["weight"]), ("conv1", ["weight"]), ("conv2", ["weight"]),
                                                  ("bn0", ["weight", "bias", "running_mean", "running_var"]),
                                                  ("bn1", ["weight", "bias", "running_mean", "running_var"]))
        for leaf in leaves)
    # Left at the model's own initialisation ...
    np.testing.assert_array_equal(variables["params"]["ocr"]["cls_head"]["kernel"],
                                  tiny_init["params"]["ocr"]["cls_head"]["kernel"])
    np.testing.assert_array_equal(variables["params"]["scale_attn"]["conv0"]["kernel"],
                                  tiny_init["params"]["scale_attn"]["conv0"]["kernel"])
    # ... and everything else loaded.
    loaded = {k: v for k, v in source.state_dict().items() if k in report["loaded"]}
    assert len(loaded) == len(report["loaded"]) > 300
    assert_every_value_placed(variables, loaded)


def test_strict_refuses_a_partial_match_and_writes_no_checkpoint(tmp_path, capsys):
    source = R.randomize_(R.tiny_hrnet_ocr_mscale(num_classes=K, attention=False), seed=4)
    path = tmp_path / "ocrnet.pth"
    torch.save(source.state_dict(), path)

    assert cli.main([str(path), "--arch=hrnet_tiny_ocr_mscale", f"--out={tmp_path / 'out'}", "--strict"]) == 1
    err = capsys.readouterr().err
    assert "not a full match" in err and "scale_attn.conv0.weight" in err
    assert not (tmp_path / "out" / "0").exists()
    assert len(json.loads((tmp_path / "out" / REPORT_NAME).read_text())["missing"]) == 11

    with pytest.raises(ConversionError, match="skipped +1"):
        state = {k: v.numpy() for k, v in source.state_dict().items()} | {"extra.weight": np.zeros(3, np.float32)}
        convert_state_dict(state, create_model("hrnet_tiny_ocr", num_classes=K), source="x",
                           model_name="hrnet_tiny_ocr", strict=True)


def test_imagenet_trunk_checkpoint_lands_under_backbone_and_skips_the_classifier(tmp_path):
    trunk = R.randomize_(R.HRNetV2(**R.TINY_HRNET), seed=5)
    classification_only = {"incre_modules.0.0.conv1.weight": torch.ones(4, 8, 1, 1),
                           "downsamp_modules.0.0.weight": torch.ones(16, 32, 3, 3),
                           "final_layer.0.weight": torch.ones(64, 32, 1, 1),
                           "classifier.weight": torch.ones(1000, 64), "classifier.bias": torch.ones(1000)}
    path = tmp_path / "hrnet_imagenet.pth"
    torch.save({**trunk.state_dict(), **classification_only}, path)

    assert cli.main([str(path), "--arch=hrnet_tiny_ocr_mscale", f"--out={tmp_path / 'out'}", f"--num-classes={K}"]) == 0
    variables, meta = restore_converted(tmp_path / "out")
    report = meta["report"]

    assert meta["num_classes"] == K
    assert sorted(report["skipped"]) == sorted(classification_only)
    assert {k.split(".")[0] for k in report["loaded"]} == {"backbone"}
    assert len(report["loaded"]) == len([k for k in trunk.state_dict() if "num_batches" not in k])
    assert {k.split(".")[0] for k in report["missing"]} == {"ocr", "scale_attn"}
    assert any("trunk-only" in note for note in report["notes"])
    assert_every_value_placed(variables, {"backbone." + k: v for k, v in trunk.state_dict().items()})


# ----------------------------------------------------------------------------- reading files

def test_keys_with_and_without_the_ddp_prefix_read_the_same(tmp_path):
    state = {"a.weight": torch.randn(2, 3, 1, 1), "a.bias": torch.randn(2)}
    torch.save(state, tmp_path / "bare.pth")
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 3}, tmp_path / "ddp.pth")
    bare, ddp = read_state_dict(tmp_path / "bare.pth"), read_state_dict(tmp_path / "ddp.pth")
    assert (bare.container, bare.stripped_prefix, ddp.container, ddp.stripped_prefix) == (
        "bare", False, "state_dict", True)
    assert bare.arrays.keys() == ddp.arrays.keys() == state.keys()
    for key in state:
        np.testing.assert_array_equal(ddp.arrays[key], state[key].numpy())


class NotAllowed:
    """Unpickling this needs code from the test module: weights-only loading must refuse it."""


class RunsCode:
    """What a malicious checkpoint holds: unpickling calls os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_file_that_needs_code_to_load_is_refused_with_an_explanation(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"state_dict": {"w": torch.ones(1)}, "args": NotAllowed()}, path)
    with pytest.raises(CheckpointReadError, match="weights-only") as info:
        read_state_dict(path)
    assert "NotAllowed" in str(info.value) and str(path) in str(info.value)


def test_a_file_that_would_run_code_is_refused_without_advice_to_load_it_unsafely(tmp_path, capsys):
    marker, path = tmp_path / "ran", tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.ones(1)}, "x": RunsCode(marker)}, path)
    assert cli.main([str(path), "--arch=hrnet_tiny_ocr", f"--out={tmp_path}/o"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"hmsa convert: {path}: refused")
    assert "system" in err and "would run that code" in err and "weights_only=False" not in err
    assert not marker.exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize("content,message", [
    ({"w": torch.ones(1), "epoch": 3}, "'epoch' is a int, not a tensor"),
    ([torch.ones(1)], "expected a state dict"),
    ({"module.w": torch.ones(1), "w": torch.ones(1)}, "both mean 'w'"),
])
def test_malformed_state_dicts_are_refused_naming_the_problem(tmp_path, content, message):
    torch.save(content, tmp_path / "bad.pth")
    with pytest.raises(CheckpointReadError, match=message):
        read_state_dict(tmp_path / "bad.pth")


def test_half_precision_tensors_become_float32_and_are_noted(tmp_path):
    torch.save({"w": torch.tensor([1.5, -2.0], dtype=torch.bfloat16)}, tmp_path / "bf16.pth")
    state = read_state_dict(tmp_path / "bf16.pth")
    assert state.arrays["w"].dtype == np.float32 and state.arrays["w"].tolist() == [1.5, -2.0]
    assert state.original_dtypes == {"w": "bfloat16"}


def test_cli_errors_are_messages_not_tracebacks(tmp_path, capsys):
    assert cli.main([str(tmp_path / "absent.pth"), "--arch=hrnet_tiny_ocr", f"--out={tmp_path}/o"]) == 2
    assert "absent.pth: no such file" in capsys.readouterr().err
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert cli.main([str(tmp_path / "junk.pth"), "--arch=hrnet_tiny_ocr", f"--out={tmp_path}/o"]) == 2
    err = capsys.readouterr().err
    assert "junk.pth: not a readable PyTorch checkpoint (" in err
    assert len(err.splitlines()) == 1 and "weights_only=False" not in err  # torch's advice page cut
    torch.save({"w": torch.ones(1)}, tmp_path / "w.pth")
    assert cli.main([str(tmp_path / "w.pth"), "--arch=hrnet99_ocr", f"--out={tmp_path}/o"]) == 2
    assert "unknown model 'hrnet99_ocr'" in capsys.readouterr().err


def test_without_torch_the_command_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    assert cli.main([str(tmp_path / "x.pth"), "--arch=hrnet_tiny_ocr", f"--out={tmp_path}/o"]) == 3
    assert "pip install 'hmsa_jax[convert]'" in capsys.readouterr().err


def test_existing_output_is_not_overwritten_unless_asked(tmp_path, capsys):
    source = R.randomize_(R.tiny_hrnet_ocr_mscale(num_classes=K), seed=6)
    torch.save(source.state_dict(), tmp_path / "m.pth")
    args = [str(tmp_path / "m.pth"), "--arch=hrnet_tiny_ocr_mscale", f"--out={tmp_path / 'out'}", "--strict"]
    assert cli.main(args) == 0
    assert cli.main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert cli.main(args + ["--overwrite"]) == 0
    variables, meta = restore_converted(tmp_path / "out")
    assert meta["num_classes"] == K and meta["report"]["full_match"]
    assert_every_value_placed(variables, source.state_dict())
    # What eval and predict apply the model to: the tree of a full model.init.
    model = create_model("hrnet_tiny_ocr_mscale", num_classes=K)
    abstract = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                              jax.ShapeDtypeStruct((1, 64, 64, 3), np.float32))
    assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(dict(abstract))
    assert all(a.shape == b.shape and a.dtype == b.dtype for a, b in
               zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(dict(abstract))))


def test_stages_show_as_a_progress_bar_on_a_terminal_and_errors_print_on_their_own_line(
        tmp_path, monkeypatch):
    from console_helpers import FakeTerminal

    source = R.randomize_(R.tiny_hrnet_ocr_mscale(num_classes=K), seed=6)
    torch.save(source.state_dict(), tmp_path / "m.pth")
    terminal = FakeTerminal()
    monkeypatch.setattr("sys.stderr", terminal)
    args = [str(tmp_path / "m.pth"), "--arch=hrnet_tiny_ocr_mscale", f"--out={tmp_path / 'out'}"]
    assert cli.main(args) == 0
    assert "3/3" in terminal.getvalue() and "saving the Orbax checkpoint" in terminal.getvalue()
    terminal.seek(0), terminal.truncate()
    assert cli.main(args) == 2
    written = terminal.getvalue()
    assert "--overwrite" in written and any(f"{edge}hmsa convert: " in written for edge in "\r\n")
    terminal.seek(0), terminal.truncate()
    assert cli.main(args + ["--overwrite", "--quiet"]) == 0 and terminal.getvalue() == ""


def test_num_classes_comes_from_the_classifier_else_defaults_to_19():
    assert infer_num_classes({"ocr.cls_head.weight": np.zeros((65, 512, 1, 1))}) == 65
    assert infer_num_classes({"final.6.weight": np.zeros((19, 256, 1, 1))}) == 19
    assert infer_num_classes({"conv1.weight": np.zeros((64, 3, 3, 3))}) is None
    assert cli.DEFAULT_NUM_CLASSES == 19


def test_hmsa_dispatches_convert():
    from hmsa_jax import cli as hmsa_cli
    assert hmsa_cli.SUBCOMMANDS["convert"][0] == "hmsa_jax.convert.cli"


def test_training_checkpoint_reader_reads_a_converted_checkpoint(tmp_path):
    """eval/predict read variables through hmsa_jax.checkpoint.restore_variables: same layout."""
    from hmsa_jax.checkpoint import restore_variables
    source = R.randomize_(R.tiny_hrnet_ocr_mscale(num_classes=K), seed=8)
    torch.save(source.state_dict(), tmp_path / "m.pth")
    assert cli.main([str(tmp_path / "m.pth"), "--arch=hrnet_tiny_ocr_mscale", f"--out={tmp_path / 'out'}"]) == 0
    variables, meta = restore_variables(str(tmp_path / "out"))
    assert (meta["model"], meta["num_classes"]) == ("hrnet_tiny_ocr_mscale", K)
    assert_every_value_placed(variables, source.state_dict())
