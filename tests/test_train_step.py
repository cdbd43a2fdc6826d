"""The sharded train step: 8 simulated devices give the same update as one device on the same
global batch (synchronised BatchNorm), and the step learns."""
import jax
import numpy as np
import pytest

import hmsa_jax
from hmsa_jax import parallel
from hmsa_jax.train import state as train_state
from hmsa_jax.train import step as train_step
from hmsa_jax.train.optimizer import make_optimizer

MODEL = "resnet_tiny_deeplabv3plus_mscale"  # two-scale hierarchical, fastest to compile
NUM_CLASSES = 5
# float32 sums over 8 shards vs one device differ only in summation order. Measured after one
# step (lr 0.05): params 1.2e-7 (updates up to 7e-3), BN statistics 3.6e-7 (moves up to 0.76),
# momentum 4.4e-7. A second step amplifies this to 3e-5 in params, so the comparison is after one.
ATOL, RTOL = 2e-6, 1e-5


def _batch(seed=0, batch=8):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, size=(batch, 32, 64)).astype(np.int32)
    labels[:, :4] = 255  # some ignored pixels
    return {"image": rng.normal(size=(batch, 32, 64, 3)).astype(np.float32), "label": labels}


@pytest.fixture(scope="module")
def setup():
    model = hmsa_jax.create_model(MODEL, num_classes=NUM_CLASSES)
    tx = make_optimizer(learning_rate=0.05, total_steps=100)
    config = train_step.StepConfig(loss=train_step.LossConfig(criterion="ce"))
    # Jitted: an eager init dispatches the forward op by op (11 s here against 3 s).
    state = jax.jit(lambda key: train_state.create_train_state(model, tx, key, (1, 32, 64, 3)))(
        jax.random.key(0))
    host_state = jax.tree_util.tree_map(np.asarray, state)
    results = {}
    for devices in (8, 1):
        mesh = parallel.make_mesh(devices)
        step = train_step.jit_train_step(model, tx, config, mesh)
        current = parallel.replicate(host_state, mesh)
        current, metrics = step(current, parallel.global_batch(_batch(), mesh), jax.random.key(1))
        results[devices] = jax.tree_util.tree_map(np.asarray, (current, metrics))
    return host_state, results


def _max_abs_diff(a, b):
    return max(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))), a, b)))


def test_eight_devices_equal_one_device(setup):
    _, results = setup
    (sharded, sharded_metrics), (single, single_metrics) = results[8], results[1]
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, atol=ATOL, rtol=RTOL),
                           sharded.params, single.params)
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, atol=ATOL, rtol=RTOL),
                           sharded.batch_stats, single.batch_stats)
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, atol=ATOL, rtol=RTOL),
                           sharded.opt_state, single.opt_state)
    np.testing.assert_allclose(sharded_metrics["loss"], single_metrics["loss"], rtol=1e-5)
    assert int(sharded.step) == int(single.step)
    assert int(sharded.step) == 1


def test_batch_stats_are_global_not_per_device(setup):
    """The statistics after a sharded step are those of the whole global batch (recomputed here
    unsharded), not those a per-device BN would track (one image per device)."""
    initial, results = setup
    after = results[8][0]
    stats_before = jax.tree_util.tree_leaves(initial.batch_stats)
    stats_after = jax.tree_util.tree_leaves(after.batch_stats)
    # Every running mean started at 0 and every running var at 1, and all moved.
    assert any(np.abs(a - b).max() > 1e-4 for a, b in zip(stats_before, stats_after))
    # A per-device BN would have used one image: its stem statistics differ from the global ones.
    model = hmsa_jax.create_model(MODEL, num_classes=NUM_CLASSES)
    batch = _batch(0)
    forward = jax.jit(lambda images: train_step.training_forward(model, initial.variables, images,
                                                                 jax.random.key(0)))
    _, global_stats = forward(batch["image"])
    _, one_image_stats = forward(batch["image"][:1])
    assert _max_abs_diff(global_stats, after.batch_stats) < ATOL
    assert _max_abs_diff(one_image_stats, after.batch_stats) > 1e-3


def test_parameters_change_and_loss_is_finite(setup):
    initial, results = setup
    state, metrics = results[8]
    assert np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
    assert _max_abs_diff(initial.params, state.params) > 1e-4
    assert set(metrics) >= {"loss", "loss/main", "loss/scale_0", "loss/scale_1", "grad_norm"}



def test_steps_make_no_implicit_host_device_transfer(setup):
    """Under the transfer guard the loop's debug runs use ("disallow"), two steps on device-put
    state, batches and key run: nothing in the step copies between host and device implicitly."""
    initial, _ = setup
    model = hmsa_jax.create_model(MODEL, num_classes=NUM_CLASSES)
    tx = make_optimizer(learning_rate=0.05, total_steps=100)
    config = train_step.StepConfig(loss=train_step.LossConfig(criterion="ce"))
    mesh = parallel.make_mesh(8)
    step = train_step.jit_train_step(model, tx, config, mesh)
    state = parallel.replicate(initial, mesh)
    batches = [parallel.global_batch(_batch(seed), mesh) for seed in (0, 1)]
    key = parallel.replicate(jax.random.key(1), mesh)
    with train_step.transfer_guard("disallow"):
        for batch in batches:
            state, metrics = step(state, batch, key)
    assert int(state.step) == 2 and np.isfinite(float(metrics["loss"]))
    with pytest.raises(Exception, match="[Dd]isallowed"):  # the guard does catch a host copy
        with train_step.transfer_guard("disallow"):
            step(state, _batch(2), key)
