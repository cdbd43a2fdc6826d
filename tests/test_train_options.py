"""Rematerialisation changes memory, not results; bf16 compute keeps float32 master weights."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hmsa_jax
from hmsa_jax import parallel
from hmsa_jax.train import state as train_state
from hmsa_jax.train import step as train_step
from hmsa_jax.train.optimizer import make_optimizer

pytestmark = pytest.mark.slow  # three compilations of a two-scale step (~1.5 min cold)
MODEL, K = "resnet_tiny_deeplabv3plus_mscale", 5


def _run(dtype, remat):
    model = hmsa_jax.create_model(MODEL, num_classes=K, dtype=dtype, remat_trunk=remat == "trunk")
    tx = make_optimizer(learning_rate=0.05, total_steps=10)
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(2, 32, 64, 3)).astype(np.float32),
             "label": rng.integers(0, K, size=(2, 32, 64)).astype(np.int32)}
    mesh = parallel.make_mesh(2)
    state = jax.jit(lambda key: train_state.create_train_state(model, tx, key, (1, 32, 64, 3)),
                    out_shardings=parallel.replicated(mesh))(jax.random.key(0))
    config = train_step.StepConfig(loss=train_step.LossConfig(criterion="ce"))
    step = train_step.jit_train_step(model, tx, config, mesh)
    lowered = step.lower(state, parallel.global_batch(batch, mesh), jax.random.key(1))
    temp_bytes = lowered.compile().memory_analysis().temp_size_in_bytes
    new_state, metrics = step(state, parallel.global_batch(batch, mesh), jax.random.key(1))
    return jax.device_get(new_state), jax.device_get(metrics), temp_bytes


@pytest.fixture(scope="module")
def runs():
    return {(d, r): _run(d, r) for d, r in ((jnp.float32, "none"), (jnp.float32, "trunk"),
                                            (jnp.bfloat16, "none"))}


def test_remat_gives_the_same_step_with_less_temporary_memory(runs):
    plain, remat = runs[(jnp.float32, "none")], runs[(jnp.float32, "trunk")]
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5),
                           plain[0], remat[0])
    assert remat[2] < plain[2], (remat[2], plain[2])


def test_bf16_compute_keeps_float32_parameters(runs):
    f32, bf16 = runs[(jnp.float32, "none")], runs[(jnp.bfloat16, "none")]
    momentum = [x for x in jax.tree_util.tree_leaves(bf16[0].opt_state) if np.ndim(x)]
    dtypes = {x.dtype for x in jax.tree_util.tree_leaves((bf16[0].params, bf16[0].batch_stats,
                                                          momentum))}
    assert dtypes == {np.dtype(np.float32)}
    assert np.isfinite(bf16[1]["loss"])
    # Same initial parameters and data: bf16 rounding moves the loss by well under 5%.
    assert abs(bf16[1]["loss"] - f32[1]["loss"]) < 0.05 * f32[1]["loss"]
    assert bf16[1]["loss"] != f32[1]["loss"]
