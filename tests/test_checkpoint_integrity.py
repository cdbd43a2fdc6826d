"""Checkpoints that defend themselves: every step carries a manifest (sizes + sha256) written
before Orbax commits it; a damaged step is reported in one line, moved to corrupt/<step> (never
deleted) and the next older one used, alike for training's resume and for eval / predict /
init_from. Small hand-made states (no model) except one `hmsa eval` run on the tiny model."""
import errno
import json
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hmsa_jax import checkpoint
from hmsa_jax.train.pretrained import load_pretrained
from hmsa_jax.train.state import TrainState


def _state(step, value=None):
    value = float(step) if value is None else value
    params = {"trunk": {"kernel": jnp.full((64, 64), value)}, "cls": {"bias": jnp.zeros(3)}}
    return TrainState(step=jnp.int32(step), params=params,
                      batch_stats={"bn": {"mean": jnp.full((4,), value)}},
                      opt_state=optax.sgd(0.1, momentum=0.9).init(params))


def _run(directory, steps=(1, 2), async_save=True, values=None):
    """A checkpoints folder holding `steps` (params = the step number unless `values` says)."""
    manager = checkpoint.make_manager(str(directory), max_to_keep=5, async_save=async_save)
    for step in steps:
        value = None if values is None else values[step]
        checkpoint.save(manager, _state(step, value), None,
                        {"step": step, "model": "toy", "metrics": None})
    manager.wait_until_finished()
    manager.close()
    return str(directory)


def _largest_state_file(step_dir):
    files = [os.path.join(root, n) for root, _, names in os.walk(os.path.join(step_dir, "state"))
             for n in names]
    return max(files, key=os.path.getsize)


def _truncate(step_dir):
    path = _largest_state_file(step_dir)
    os.truncate(path, os.path.getsize(path) // 2)


def _empty(step_dir):
    open(_largest_state_file(step_dir), "w").close()


def _overwrite(step_dir):
    path = _largest_state_file(step_dir)
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        f.write(b"\xff\x7f" * 8)


def _drop_state(step_dir):
    shutil.rmtree(os.path.join(step_dir, "state"))


def _drop_state_metadata(step_dir):
    os.remove(os.path.join(step_dir, "state", "_METADATA"))


def _drop_meta(step_dir):
    os.remove(os.path.join(step_dir, "meta", "metadata"))


def _empty_folder(step_dir):
    shutil.rmtree(step_dir)
    os.makedirs(step_dir)


DAMAGE = [
    (_truncate, "bytes, expected"),
    (_empty, "has 0 bytes"),
    (_overwrite, "differs from its sha256"),
    (_drop_state, "no state/ folder"),
    (_drop_state_metadata, "state/_METADATA missing"),
    (_drop_meta, "no meta/ JSON"),
    (_empty_folder, "empty folder"),
]


def _restore_for_training(directory, lines):
    manager = checkpoint.make_manager(directory, max_to_keep=5)
    abstract = jax.eval_shape(lambda: _state(0))
    try:
        restored = checkpoint.restore_usable(manager, abstract, None, log=lines.append)
        return None if restored is None else int(restored[0].step), manager.latest_step()
    finally:
        manager.close()


def _one_line_about(lines, step_dir, problem):
    aside = [line for line in lines if "set aside" in line]
    assert len(aside) == 1 and "\n" not in aside[0], lines
    assert step_dir in aside[0] and problem in aside[0], aside[0]


@pytest.mark.parametrize("damage,problem", DAMAGE, ids=[d.__name__.strip("_") for d, _ in DAMAGE])
def test_damaged_newest_step_is_set_aside_and_train_and_eval_take_the_same_older_one(
        tmp_path, damage, problem):
    original = _run(tmp_path / "original")
    damage(os.path.join(original, "2"))
    for_train, for_eval = (shutil.copytree(original, tmp_path / name) for name in ("train", "eval"))

    lines = []
    assert _restore_for_training(str(for_train), lines) == (1, 1)
    _one_line_about(lines, os.path.join(str(for_train), "2"), problem)

    lines = []
    variables, meta = checkpoint.restore_variables(str(for_eval), log=lines.append)
    assert meta["step"] == 1
    np.testing.assert_array_equal(variables["params"]["trunk"]["kernel"], np.full((64, 64), 1.0))
    _one_line_about(lines, os.path.join(str(for_eval), "2"), problem)

    for folder in (for_train, for_eval):  # moved, not deleted; the older step untouched
        assert sorted(os.listdir(folder)) == ["1", "corrupt"]
        assert os.listdir(os.path.join(folder, "corrupt")) == ["2"]
        assert sorted(os.listdir(os.path.join(folder, "corrupt", "2"))) == sorted(
            os.listdir(os.path.join(original, "2")))
        assert checkpoint.inspect_step(os.path.join(folder, "1")) == (None, True)


def test_a_step_that_vanishes_while_inspected_is_a_problem_not_a_crash(tmp_path):
    problem, verified = checkpoint.inspect_step(str(tmp_path / "7"))  # set aside by process 0
    assert problem.startswith("unreadable (No such file or directory") and not verified


def test_a_damaged_step_that_cannot_be_moved_is_one_clear_error(tmp_path):
    directory = _run(tmp_path / "ckpt")
    _empty(os.path.join(directory, "2"))
    open(os.path.join(directory, "corrupt"), "w").close()  # a file where the folder would go
    with pytest.raises(checkpoint.CheckpointError, match=r"/2: .*has 0 bytes.*could not be set "
                                                         r"aside as .*/corrupt/2 .*move it away"):
        checkpoint.restore_variables(directory)


def test_every_step_carries_a_manifest_of_its_item_files_also_with_synchronous_saves(tmp_path):
    for async_save in (True, False):
        directory = _run(tmp_path / f"async_{async_save}", steps=(3,), async_save=async_save)
        step_dir = os.path.join(directory, "3")
        with open(os.path.join(step_dir, checkpoint.MANIFEST)) as f:
            files = json.load(f)["files"]
        assert {"meta/metadata", "state/_METADATA"} <= set(files)
        assert all(rel.split("/")[0] in ("state", "meta") for rel in files)
        assert checkpoint.inspect_step(step_dir) == (None, True)
        assert not [n for n in os.listdir(directory) if "tmp" in n]


def test_a_step_the_user_names_is_reported_not_replaced_or_moved(tmp_path):
    directory = _run(tmp_path / "ckpt")
    _overwrite(os.path.join(directory, "2"))
    for path, step in ((os.path.join(directory, "2"), None), (directory, 2)):
        with pytest.raises(checkpoint.DamagedCheckpointError, match=r"/2: .*differs from its sha256"):
            checkpoint.restore_variables(path, step=step)
    assert sorted(os.listdir(directory)) == ["1", "2"]


def test_every_step_damaged_is_one_clear_error_then_and_on_the_next_run(tmp_path):
    directory = _run(tmp_path / "ckpt")
    for step in ("1", "2"):
        _empty(os.path.join(directory, step))
    lines = []
    with pytest.raises(checkpoint.CheckpointError, match=r"no usable checkpoint left \(2 damaged.*1, 2\)"):
        _restore_for_training(directory, lines)
    assert len(lines) == 2
    # The next run does not silently start afresh either (hmsa train checks this too).
    with pytest.raises(checkpoint.CheckpointError, match="no usable checkpoint left"):
        checkpoint.restore_variables(directory)
    assert sorted(os.listdir(os.path.join(directory, "corrupt"))) == ["1", "2"]


def test_a_second_damaged_copy_of_a_step_is_kept_beside_the_first(tmp_path):
    directory = _run(tmp_path / "ckpt")
    os.makedirs(os.path.join(directory, "corrupt", "2"))
    _drop_state(os.path.join(directory, "2"))
    checkpoint.restore_variables(directory, log=lambda line: None)
    assert sorted(os.listdir(os.path.join(directory, "corrupt"))) == ["2", "2.1"]


def _strip_manifests(directory):
    for step in checkpoint.step_candidates(directory):
        os.remove(os.path.join(directory, str(step), checkpoint.MANIFEST))


def test_checkpoints_without_manifest_still_load_with_a_note(tmp_path):
    directory = _run(tmp_path / "ckpt")
    _strip_manifests(directory)
    lines = []
    variables, meta = checkpoint.restore_variables(directory, log=lines.append)
    assert meta["step"] == 2 and len(lines) == 1
    assert "note:" in lines[0] and "/2 has no hmsa_manifest.json" in lines[0]
    assert _restore_for_training(directory, []) == (2, 2)


def test_without_manifest_a_step_that_fails_to_restore_or_holds_nan_is_set_aside(tmp_path):
    directory = _run(tmp_path / "ckpt", steps=(1, 2, 3), values={1: 1.0, 2: 2.0, 3: float("nan")})
    _strip_manifests(directory)
    _truncate(os.path.join(directory, "2"))
    lines = []
    assert _restore_for_training(shutil.copytree(directory, tmp_path / "train"), lines) == (1, 1)
    aside = [line for line in lines if "set aside" in line]
    assert "/3: batch_stats/bn/mean holds 4 NaN/inf values of 4;" in aside[0]
    assert "/2: does not restore (" in aside[1] and len(aside) == 2
    variables, meta = checkpoint.restore_variables(directory, log=lambda line: None)
    assert meta["step"] == 1 and sorted(os.listdir(os.path.join(directory, "corrupt"))) == ["2", "3"]


def test_verified_step_that_does_not_fit_the_target_is_an_error_not_set_aside(tmp_path):
    directory = _run(tmp_path / "ckpt")
    manager = checkpoint.make_manager(directory)
    other = jax.eval_shape(lambda: _state(0).replace(params={"trunk": {"kernel": jnp.zeros((8, 8))},
                                                            "cls": {"bias": jnp.zeros(3)}}))
    with pytest.raises(checkpoint.CheckpointError, match="/2: its files match hmsa_manifest.json but it "
                                                         "does not restore"):
        checkpoint.restore_usable(manager, other, None)
    manager.close()
    assert sorted(os.listdir(directory)) == ["1", "2"]


def test_init_from_skips_a_damaged_newest_step(tmp_path):
    directory = _run(tmp_path / "run" / "checkpoints")
    _overwrite(os.path.join(directory, "2"))
    fresh = {"params": {"trunk": {"kernel": np.zeros((64, 64), np.float32)}}, "batch_stats": {}}
    merged, report = load_pretrained(fresh, str(tmp_path / "run"))
    assert report.source.endswith("/1") and merged["params"]["trunk"]["kernel"][0, 0] == 1.0
    assert os.listdir(os.path.join(directory, "corrupt")) == ["2"]


def test_hmsa_eval_uses_the_older_step_when_bytes_of_the_newest_were_overwritten(tmp_path, capsys):
    from inference_helpers import save_init_checkpoint, tiny_config

    from hmsa_jax import evaluate
    from hmsa_jax.data.sources.synthetic import synthetic_classes

    config = tiny_config(num_eval=4)
    workdir = str(tmp_path / "run")
    for step in (7, 8):
        save_init_checkpoint(workdir, config, synthetic_classes(8).names, step=step)
    newest = os.path.join(workdir, "checkpoints", "8")
    _overwrite(newest)
    assert evaluate.main(["--checkpoint", workdir, "--scales=1.0", "--max-batches=1"]) == 0
    out, err = capsys.readouterr()
    assert f"hmsa: checkpoint {newest}: state/" in err and "differs from its sha256" in err
    assert "/checkpoints/7: " in out and "step 7;" in out
    # Named explicitly, the damaged step is an error in one line, exit 2, and stays put.
    shutil.move(os.path.join(workdir, "checkpoints", "corrupt", "8"), newest)
    assert evaluate.main(["--checkpoint", newest, "--scales=1.0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"hmsa eval: {newest}: state/") and len(err.splitlines()) == 1


def _train_config():
    from hmsa_jax.train.config import default_config

    config = default_config()
    config.data.synthetic.update(num_train=8, num_eval=4, height=32, width=64)
    config.data.augment.crop_size = (32, 64)
    config.data.class_uniform.update(tile_size=32, cache_dir="")
    config.data.loader.batch_size = 2
    config.model.update(name="resnet_tiny_deeplabv3plus_mscale", dtype="float32")
    config.train.update(steps=4, criterion="ce", num_devices=2, log_every=1, checkpoint_every=1)
    config.validation.every_steps = -1
    config.runtime.progress = False
    return config


def test_hmsa_train_resumes_from_the_newest_sound_step(tmp_path):
    from hmsa_jax.train.loop import train

    workdir, logs = tmp_path / "run", []
    train(_train_config(), str(workdir), stop_after=3, log=logs.append)
    checkpoints = workdir / "checkpoints"
    assert checkpoint.step_candidates(str(checkpoints)) == [1, 2, 3]
    _overwrite(str(checkpoints / "3"))
    summary = train(_train_config(), str(workdir), log=logs.append)
    aside = [line for line in logs if "set aside" in line]
    assert len(aside) == 1 and f"checkpoint {checkpoints / '3'}: state/" in aside[0]
    assert any(line == f"resumed from {checkpoints}/2" for line in logs)
    assert summary["steps"] == 4 and summary["steps_this_run"] == 2
    assert os.listdir(checkpoints / "corrupt") == ["3"]
    assert checkpoint.inspect_step(str(checkpoints / "4")) == (None, True)
    # Every step damaged: one clear error, now and on the next run (no silent fresh start).
    assert checkpoint.step_candidates(str(checkpoints)) == [2, 3, 4]
    for step in ("2", "3", "4"):
        _empty(str(checkpoints / step))
    for _ in range(2):
        with pytest.raises(checkpoint.CheckpointError, match="no usable checkpoint left"):
            train(_train_config(), str(workdir), log=logs.append)
    assert sorted(os.listdir(checkpoints / "corrupt")) == ["2", "3", "3.1", "4"]


# ---------------------------------------------------------------- storage faults while saving

def test_a_save_that_runs_out_of_space_is_one_error_and_commits_nothing(tmp_path, monkeypatch, caplog):
    directory = str(tmp_path / "ckpt")
    manager = checkpoint.make_manager(directory, max_to_keep=5)
    checkpoint.save(manager, _state(1), None, {"step": 1})
    manager.wait_until_finished()

    def disk_full(step_dir):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(step_dir, "hmsa_manifest.json"))

    monkeypatch.setattr(checkpoint, "write_manifest", disk_full)
    with caplog.at_level(logging.ERROR), pytest.raises(checkpoint.CheckpointWriteError) as info:
        checkpoint.save(manager, _state(2), None, {"step": 2})
        manager.wait_until_finished()
    message = str(info.value)
    assert "\n" not in message and "No space left on device while writing" in message
    assert "/2.orbax-checkpoint-tmp" in message and "run the same command again" in message
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no Orbax tracebacks
    assert checkpoint.step_candidates(directory) == [1]
    monkeypatch.undo()
    # Space is back: the same code resumes, the leftover folder is cleaned.
    manager = checkpoint.make_manager(directory, max_to_keep=5)
    checkpoint.save(manager, _state(2), None, {"step": 2})
    manager.close()
    assert sorted(os.listdir(directory)) == ["1", "2"]
    assert checkpoint.inspect_step(os.path.join(directory, "2")) == (None, True)


def test_the_os_cause_is_found_in_orbax_and_tensorstore_errors():
    tensorstore = ValueError(
        'RESOURCE_EXHAUSTED: Error writing "opt_state/0" in OCDBT database at local file "/c/3.orbax-'
        'checkpoint-tmp/state/": Failed writing: "/c/3.orbax-checkpoint-tmp/state/d/ab": Failed to '
        "write 261847 bytes to file 18: No space left on device [os_error_code='28']")
    assert checkpoint._os_cause(tensorstore) == ("/c/3.orbax-checkpoint-tmp/state/d/ab",
                                                 os.strerror(errno.ENOSPC))
    try:
        try:
            raise PermissionError(errno.EACCES, "Permission denied", "/c/4.orbax-checkpoint-tmp")
        except PermissionError as error:
            raise RuntimeError("Save Finalize thread failed") from error
    except RuntimeError as chained:
        assert checkpoint._os_cause(chained) == ("/c/4.orbax-checkpoint-tmp", "Permission denied")
    assert checkpoint._os_cause(ValueError("Checkpoint for step 3 already exists.")) is None


def test_closing_the_manager_deletes_retired_steps(tmp_path):
    directory = _run(tmp_path / "ckpt", steps=(1, 2, 3, 4))  # max_to_keep=5: nothing retired
    manager = checkpoint.make_manager(directory, max_to_keep=1, keep_best=0)
    checkpoint.save(manager, _state(5), None, {"step": 5})
    manager.close()
    assert sorted(os.listdir(directory)) == ["5"]


def test_hmsa_train_exit_status_74_and_one_line_when_a_checkpoint_cannot_be_written(
        tmp_path, monkeypatch, capsys):
    from hmsa_jax.train import cli as train_cli
    from hmsa_jax.train import loop

    def cannot_write(*args, **kwargs):
        raise checkpoint.CheckpointWriteError("/w/checkpoints/3.orbax-checkpoint-tmp: No space left "
                                              "on device while writing checkpoint step 3; ...")

    monkeypatch.setattr(loop, "train", cannot_write)
    argv = ["--config=configs/synthetic_demo.py:tiny", f"--workdir={tmp_path / 'w'}"]
    assert train_cli.main(argv) == train_cli.WRITE_FAILED_EXIT_CODE == 74
    err = capsys.readouterr().err.strip()
    assert err.startswith("hmsa train: /w/checkpoints/3.orbax-checkpoint-tmp: No space left")
    assert len(err.splitlines()) == 1


def test_a_finished_run_run_again_says_so_instead_of_a_nan_loss():
    from hmsa_jax.train.cli import format_summary

    text = format_summary({"steps": 30, "total_steps": 30, "steps_this_run": 0, "seconds": 0.0,
                           "final_loss": float("nan"), "checkpoint": "/w/checkpoints/30",
                           "workdir": "/w"})
    assert "nan" not in text and "nothing to train: step 30 of 30 reached before" in text
