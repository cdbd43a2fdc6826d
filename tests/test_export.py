"""`hmsa export`: the file reloads with jax.export.deserialize, runs in a process that never
imports hmsa_jax, and gives `Predictor`'s labels and logits at any batch size."""
import json
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest

from inference_helpers import HEIGHT, WIDTH, save_init_checkpoint, tiny_config

from hmsa_jax import cli, export
from hmsa_jax.data.sources.synthetic import SyntheticScenes, synthetic_classes
from hmsa_jax.inference import Predictor

SCALES = (0.5, 1.0, 2.0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    workdir = str(root / "ckpt")
    save_init_checkpoint(workdir, tiny_config(), synthetic_classes(8).names, seed=2)
    path = root / "tiny.hmsa"
    assert cli.main(["export", f"--checkpoint={workdir}", "--scales=0.5,1.0,2.0", "--flip",
                     f"--size={HEIGHT}x{WIDTH}", f"--out={path}"]) == 0
    source = SyntheticScenes(3, HEIGHT, WIDTH, 8, 4, "val")
    images = np.stack([source.load(i)["image"] for i in range(3)])
    return workdir, path, images


def test_reloaded_file_matches_the_predictor_at_any_batch_size(exported):
    workdir, path, images = exported
    with zipfile.ZipFile(path) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        program = jax.export.deserialize(bytearray(archive.read("predictor.jaxexport")))
    assert manifest["format"] == "hmsa_jax.exported/1" and manifest["scales"] == list(SCALES)
    assert manifest["flip"] and manifest["step"] == 7 and manifest["input"]["shape"] == ["B", HEIGHT, WIDTH, 3]
    assert [c["name"] for c in manifest["classes"]] == list(synthetic_classes(8).names)
    expected = Predictor.from_checkpoint(workdir, scales=SCALES, flip=True)(images)
    for batch in (images[:1], images):
        out = program.call(batch)
        np.testing.assert_allclose(np.asarray(out["logits"]), expected["logits"][:len(batch)], atol=1e-5)
        np.testing.assert_array_equal(np.asarray(out["labels"]), expected["labels"][:len(batch)])
    assert export.read_exported(str(path))[0] == manifest


def test_a_plain_jax_process_runs_it_without_this_package(exported, tmp_path):
    workdir, path, images = exported
    np.save(tmp_path / "images.npy", images)
    script = f"""
import json, sys, zipfile
import jax, numpy as np
with zipfile.ZipFile({str(path)!r}) as z:
    manifest = json.loads(z.read("manifest.json"))
    program = jax.export.deserialize(bytearray(z.read("predictor.jaxexport")))
out = program.call(np.load({str(tmp_path / 'images.npy')!r}))
np.save({str(tmp_path / 'labels.npy')!r}, np.asarray(out["labels"]))
assert not [m for m in sys.modules if m.startswith("hmsa_jax")], "imported hmsa_jax"
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, timeout=300,
                   env={"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"})
    expected = Predictor.from_checkpoint(workdir, scales=SCALES, flip=True)(images)["labels"]
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), expected)


@pytest.mark.parametrize("args, message", [
    (["--size=abc"], "--size='abc'; expected HxW"),
    (["--size=32x64", "--platforms=gpu"], "--platforms='gpu'; expected some of cpu, cuda"),
    (["--size=32x64", "--scales=0.5,2.0"], "must contain 1.0 for hierarchical fusion"),
])
def test_bad_options_fail_with_one_line(exported, tmp_path, capsys, args, message):
    workdir, _, _ = exported
    assert cli.main(["export", f"--checkpoint={workdir}", f"--out={tmp_path / 'x.hmsa'}", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x.hmsa").exists()


def test_another_format_is_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("manifest.json", json.dumps({"format": "something/2"}))
    with pytest.raises(ValueError, match="format 'something/2'; expected 'hmsa_jax.exported/1'"):
        export.read_exported(str(tmp_path / "other.zip"))
