"""What other people's values cannot do: a TPU launcher value never runs as a command on the
workers, and a checkpoint's saved run-time settings never apply on the machine that reads it."""
import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fake_tool(bin_dir, name, record):
    """An executable `name` on PATH that writes its arguments (NUL-separated) to `record`."""
    path = bin_dir / name
    path.write_text(f'#!/bin/bash\nprintf "%s\\0" "$@" > {record}\n')
    path.chmod(0o755)


def _recorded(path):
    return path.read_bytes().decode().split("\0")[:-1]


def test_tpu_pod_launcher_quotes_every_value_for_the_workers_shell(tmp_path):
    bin_dir, home = tmp_path / "bin", tmp_path / "home"
    bin_dir.mkdir()
    (home / "hmsa_jax").mkdir(parents=True)
    _fake_tool(bin_dir, "gcloud", tmp_path / "gcloud.args")
    _fake_tool(bin_dir, "python", tmp_path / "python.args")
    injected = tmp_path / "INJECTED"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home), "TPU_NAME": "pod one",
           "ZONE": "z", "PROJECT": "p q", "WORKDIR": f"/x y; touch {injected}",
           "CONFIG": f"configs/c.py:$(touch {injected})"}
    extra = ["--config.data.tfds.data_dir=/d e", f"`touch {injected}`"]
    subprocess.run(["bash", os.path.join(REPO, "launch", "tpu_pod.sh"), *extra], env=env,
                   check=True, cwd=tmp_path)
    args = _recorded(tmp_path / "gcloud.args")
    assert args[:8] == ["compute", "tpus", "tpu-vm", "ssh", "pod one", "--zone=z", "--project=p q",
                        "--worker=all"]
    assert args[8].startswith("--command=cd ~/hmsa_jax && python ") and len(args) == 9
    # What each worker runs: its bash reads the command; the default REPO_DIR is its ~/hmsa_jax.
    subprocess.run(["bash", "-c", args[8].removeprefix("--command=")], env=env, check=True,
                   cwd=tmp_path)
    assert _recorded(tmp_path / "python.args") == [
        "-m", "hmsa_jax.cli", "train", f"--config=configs/c.py:$(touch {injected})",
        f"--workdir=/x y; touch {injected}", "--config.model.dtype=bfloat16",
        "--config.distributed.mode=on", "--config.distributed.initialization_timeout_s=600", *extra]
    assert not injected.exists()


def test_tpu_pod_launcher_repo_dir_with_spaces_and_no_project(tmp_path):
    bin_dir, repo = tmp_path / "bin", tmp_path / "my repo; touch INJECTED"
    bin_dir.mkdir()
    repo.mkdir()
    _fake_tool(bin_dir, "gcloud", tmp_path / "gcloud.args")
    _fake_tool(bin_dir, "python", tmp_path / "python.args")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "TPU_NAME": "t", "ZONE": "z",
           "WORKDIR": "/w", "REPO_DIR": str(repo)}
    subprocess.run(["bash", os.path.join(REPO, "launch", "tpu_pod.sh")], env=env, check=True,
                   cwd=tmp_path)
    args = _recorded(tmp_path / "gcloud.args")
    assert not [a for a in args if a.startswith("--project")]
    subprocess.run(["bash", "-c", args[-1].removeprefix("--command=")], env=env, check=True,
                   cwd=tmp_path)
    assert _recorded(tmp_path / "python.args")[:4] == ["-m", "hmsa_jax.cli", "train",
                                                       "--config=configs/cityscapes.py:tfds"]
    assert not (tmp_path / "INJECTED").exists() and not (repo / "INJECTED").exists()


class _Configured(Exception):
    """Stops a command once it has configured its run-time settings."""


@pytest.fixture(scope="module")
def checkpoint_from_elsewhere(tmp_path_factory):
    """A checkpoint whose saved config names run-time settings of the machine it came from."""
    from inference_helpers import save_init_checkpoint, tiny_config

    from hmsa_jax.data.sources.synthetic import synthetic_classes

    root = tmp_path_factory.mktemp("elsewhere")
    config = tiny_config()
    config.runtime.compile_cache = str(root / "their_cache")
    config.runtime.cpu_fast_compile = False
    workdir = save_init_checkpoint(str(root / "run"), config, synthetic_classes(8).names)
    return workdir, root


@pytest.mark.parametrize("command", ["eval", "predict", "autolabel"])
def test_a_checkpoints_runtime_settings_do_not_apply_here(checkpoint_from_elsewhere, tmp_path,
                                                          monkeypatch, command):
    from PIL import Image

    from hmsa_jax import autolabel, evaluate, predict
    from hmsa_jax import runtime as runtime_setup
    from hmsa_jax.train.config import default_config

    workdir, root = checkpoint_from_elsewhere
    applied = []

    def record(runtime):
        applied.append(runtime.to_dict())
        raise _Configured

    monkeypatch.setattr(runtime_setup, "configure_runtime", record)
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "a.png")
    main, argv = {
        "eval": (evaluate.main, [f"--checkpoint={workdir}"]),
        "predict": (predict.main, [f"--checkpoint={workdir}", str(images), f"--out={tmp_path}/o"]),
        "autolabel": (autolabel.main, [f"--checkpoint={workdir}", f"--images={images}",
                                       f"--out={tmp_path}/o"]),
    }[command]
    with pytest.raises(_Configured):
        main(argv)
    assert applied == [default_config().runtime.to_dict()]
    assert not (root / "their_cache").exists()
