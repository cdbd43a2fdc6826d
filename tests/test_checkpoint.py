"""Checkpoint manager retention (last N + best by mIoU), variables-only restore, and
initialisation from another checkpoint with its report. Small hand-made states: no model."""
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from hmsa_jax import checkpoint
from hmsa_jax.train.pretrained import load_pretrained, merge_variables
from hmsa_jax.train.state import TrainState


def _state(step, value=1.0, classes=3):
    params = {"trunk": {"kernel": jnp.full((2, 4), value)}, "cls": {"kernel": jnp.full((4, classes), value),
                                                                     "bias": jnp.zeros(classes)}}
    tx = optax.sgd(0.1, momentum=0.9)
    return TrainState(step=jnp.int32(step), params=params,
                      batch_stats={"bn": {"mean": jnp.full((4,), value)}}, opt_state=tx.init(params)), tx


def _save_run(directory, steps_and_mious, **options):
    manager = checkpoint.make_manager(str(directory), **options)
    for step, miou in steps_and_mious:
        state, _ = _state(step, value=float(step))
        metrics = None if miou is None else {"val/miou": miou}
        checkpoint.save(manager, state, None, {"step": step, "metrics": metrics}, metrics)
    manager.wait_until_finished()
    return manager


def test_keeps_last_n_and_the_best(tmp_path):
    manager = _save_run(tmp_path / "ckpt", [(1, 0.2), (2, 0.7), (3, None), (4, 0.3), (5, None), (6, None)],
                        max_to_keep=2, keep_best=1)
    assert manager.all_steps() == [2, 5, 6]
    manager.close()
    assert checkpoint.resolve_step_dir(str(tmp_path / "ckpt")).endswith("/6")
    assert checkpoint.resolve_step_dir(str(tmp_path / "ckpt"), which="best").endswith("/2")


def test_reading_variables_logs_no_orbax_metadata_warning(tmp_path, caplog):
    _save_run(tmp_path / "run" / checkpoint.CHECKPOINTS_SUBDIR, [(3, 0.5)], max_to_keep=1).close()
    with caplog.at_level(logging.WARNING):
        checkpoint.restore_variables(str(tmp_path / "run"))
    assert not [r for r in caplog.records if "_CHECKPOINT_METADATA" in r.getMessage()]
    # ... while Orbax itself still warns (so the test above can fail).
    with caplog.at_level(logging.WARNING):
        ocp.PyTreeCheckpointer().metadata(str(tmp_path / "run" / "checkpoints" / "3" / "state"))
    assert [r for r in caplog.records if "_CHECKPOINT_METADATA" in r.getMessage()]


def test_restore_state_and_variables_only(tmp_path):
    manager = _save_run(tmp_path / "run" / checkpoint.CHECKPOINTS_SUBDIR, [(3, 0.5)], max_to_keep=1)
    state, tx = _state(0, value=0.0)
    abstract = jax.eval_shape(lambda: state)
    restored, _, meta = checkpoint.restore(manager, abstract)
    manager.close()
    assert int(restored.step) == 3 and meta == {"step": 3, "metrics": {"val/miou": 0.5}}
    np.testing.assert_array_equal(restored.params["trunk"]["kernel"], np.full((2, 4), 3.0))
    # From the workdir, the checkpoints folder or the step folder: params + batch_stats only.
    for path in (tmp_path / "run", tmp_path / "run" / "checkpoints", tmp_path / "run" / "checkpoints" / "3"):
        variables, meta = checkpoint.restore_variables(str(path))
        assert set(variables) == {"params", "batch_stats"} and meta["step"] == 3
        np.testing.assert_array_equal(variables["batch_stats"]["bn"]["mean"], np.full(4, 3.0))


def test_bad_paths_name_the_problem(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="no such checkpoint folder"):
        checkpoint.resolve_step_dir(str(tmp_path / "missing"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(checkpoint.CheckpointError, match="holds no checkpoint"):
        checkpoint.resolve_step_dir(str(tmp_path / "empty"))
    _save_run(tmp_path / "ckpt", [(1, None)]).close()
    with pytest.raises(checkpoint.CheckpointError, match=r"no step 9; steps present: \[1\]"):
        checkpoint.resolve_step_dir(str(tmp_path / "ckpt"), step=9)


def test_merge_reports_loaded_reinitialised_skipped_and_missing():
    old, _ = _state(0, value=2.0, classes=3)
    new, _ = _state(0, value=0.0, classes=5)
    pretrained = {"params": {**old.params, "extra": {"kernel": jnp.ones(2)}}, "batch_stats": {}}
    merged, report = merge_variables(new.variables, pretrained, source="x")
    assert report.loaded == ["params/trunk/kernel"]
    assert report.reinitialized == [("params/cls/kernel", (4, 3), (4, 5)),
                                    ("params/cls/bias", (3,), (5,))]
    assert report.skipped == ["params/extra/kernel"] and report.missing == ["batch_stats/bn/mean"]
    np.testing.assert_array_equal(merged["params"]["trunk"]["kernel"], np.full((2, 4), 2.0))
    np.testing.assert_array_equal(merged["params"]["cls"]["kernel"], np.zeros((4, 5)))
    text = report.format()
    assert "re-initialised (shape differs): 2" in text and "checkpoint [4, 3] -> model [4, 5]" in text


def test_load_pretrained_from_a_run(tmp_path):
    _save_run(tmp_path / "ckpt", [(4, 0.9), (5, 0.1)], max_to_keep=2).close()
    fresh, _ = _state(0, value=0.0, classes=3)
    merged, report = load_pretrained(fresh.variables, str(tmp_path / "ckpt"), which="best")
    assert report.source.endswith("/4") and len(report.loaded) == 4
    np.testing.assert_array_equal(merged["params"]["trunk"]["kernel"], np.full((2, 4), 4.0))
    unrelated = {"params": {"other": {"kernel": jnp.zeros(1)}}, "batch_stats": {}}
    with pytest.raises(checkpoint.CheckpointError, match="fills 0% of this model.s parameters"):
        load_pretrained(unrelated, str(tmp_path / "ckpt"))


def test_inference_restore_through_orbax_v1_load_equals_the_low_level_partial_restore(tmp_path):
    manager = _save_run(tmp_path / "ckpt", [(3, None)], async_save=False)
    manager.close()
    step_dir = checkpoint.resolve_step_dir(str(tmp_path / "ckpt"))
    variables, meta = checkpoint.read_variables(step_dir)
    assert set(variables) == {"params", "batch_stats"} and meta["step"] == 3
    item = os.path.join(step_dir, checkpoint.STATE)
    stored = checkpoint.stored_tree_metadata(item)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = {k: jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                                        stored[k]) for k in ("params", "batch_stats")}
    low_level = ocp.PyTreeCheckpointer().restore(item, args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True))
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                           {k: low_level[k] for k in variables}, variables)
    assert jax.tree_util.tree_leaves(variables)[0].sharding == device
    # StandardCheckpointer, the other high-level API, cannot leave the optimiser state out.
    with pytest.raises(ValueError, match="tree structures do not match"):
        ocp.StandardCheckpointer().restore(item, target)
