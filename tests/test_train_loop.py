"""`train()` end to end on synthetic scenes: resume is bit-identical (10 steps straight vs
5 + restart + 5), logs and checkpoints are written, and the eval-side restore reads them."""
import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from hmsa_jax import checkpoint
from hmsa_jax.configlib import ConfigError
from hmsa_jax.train.config import default_config
from hmsa_jax.train.loop import train


def _config():
    config = default_config()
    data = config.data
    data.synthetic.update(num_train=16, num_eval=4, height=32, width=64)
    data.augment.crop_size = (32, 64)
    data.class_uniform.tile_size = 32
    data.class_uniform.cache_dir = ""
    data.loader.batch_size = 4
    data.eval.batch_size = 4
    config.model.name = "resnet_tiny_deeplabv3plus_mscale"
    config.model.dtype = "float32"
    config.train.update(steps=10, criterion="ce", num_devices=4, log_every=2, checkpoint_every=3)
    config.optim.learning_rate = 0.05
    config.validation.update(every_steps=5, scales=(1.0,), fusion="hierarchical")
    config.runtime.progress = False
    return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    straight = tmp_path_factory.mktemp("straight")
    resumed = tmp_path_factory.mktemp("resumed")
    logs = []
    summary_straight = train(_config(), str(straight), log=logs.append)
    summary_first = train(_config(), str(resumed), stop_after=5, log=logs.append)
    summary_second = train(_config(), str(resumed), log=logs.append)
    return straight, resumed, (summary_straight, summary_first, summary_second), logs


def _final_state(workdir):
    manager = checkpoint.make_manager(str(workdir / "checkpoints"))
    step = manager.latest_step()
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    manager.close()
    return step, restored["state"]


def test_restart_continues_bit_identically(runs):
    straight, resumed, (s_straight, s_first, s_second), logs = runs
    assert (s_first["steps"], s_first["steps_this_run"]) == (5, 5)
    assert (s_second["steps"], s_second["steps_this_run"]) == (10, 5)
    assert any("resumed from" in line and line.endswith("/5") for line in logs)
    step_a, state_a = _final_state(straight)
    step_b, state_b = _final_state(resumed)
    assert step_a == step_b == 10
    leaves_a, tree_a = jax.tree_util.tree_flatten(state_a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(state_b)
    assert tree_a == tree_b
    for a, b in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(a, b)
    assert s_straight["final_loss"] == s_second["final_loss"]
    assert s_straight["val_miou"] == s_second["val_miou"]


def test_logs_events_and_checkpoints(runs):
    straight, _, (summary, _, _), _ = runs
    lines = [json.loads(l) for l in (straight / "metrics.jsonl").read_text().splitlines()]
    train_lines = [l for l in lines if "loss" in l]
    assert [l["step"] for l in train_lines] == [2, 4, 6, 8, 10]
    assert all({"learning_rate", "images_per_s", "grad_norm", "loss/main"} <= set(l) for l in train_lines)
    assert train_lines[-1]["learning_rate"] < train_lines[0]["learning_rate"]
    val_lines = [l for l in lines if "val/miou" in l]
    assert [l["step"] for l in val_lines] == [5, 10] and 0 <= val_lines[-1]["val/miou"] <= 1
    assert list((straight / "tensorboard").glob("events.out.tfevents.*"))
    # Last 3 kept (6, 9, 10 -> plus 5 kept as one of the best by mIoU, or 10 if better).
    steps = sorted(int(p.name) for p in (straight / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-3:] == [6, 9, 10] and len(steps) <= 4
    variables, meta = checkpoint.restore_variables(str(straight))
    assert meta["step"] == 10 and meta["config"]["model"]["name"] == "resnet_tiny_deeplabv3plus_mscale"
    assert meta["num_classes"] == 8 and len(meta["class_names"]) == 8
    saved = json.loads((straight / "config.json").read_text())
    assert saved["model"]["num_classes"] == 8 and saved["train"]["steps"] == 10


def test_workdir_of_another_model_is_refused_before_compute(runs):
    straight = runs[0]
    config = _config()
    config.model.name = "resnet_tiny_deeplabv3plus"
    with pytest.raises(ConfigError, match="this workdir trains model.name"):
        train(config, str(straight))
