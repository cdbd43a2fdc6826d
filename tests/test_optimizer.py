"""The optax SGD chain against torch.optim.SGD + LambdaLR, and the poly schedule's values."""

import math

import numpy as np
import pytest

import jax
import jax.numpy as jnp
import optax

from hmsa_jax.train import kernel_only_decay_mask, make_optimizer, poly_schedule

try:
    import torch
except ImportError:  # torch is the `convert` extra; without it only the torch comparisons skip.
    torch = None
needs_torch = pytest.mark.skipif(
    torch is None,
    reason="needs torch (the `convert` extra: pip install -e '.[convert]'), the independent reference for SGD",
)

NUM_STEPS = 6
TOTAL_STEPS = 10


def _initial_params():
    rng = np.random.default_rng(0)
    return {
        "conv": {
            "kernel": rng.standard_normal((3, 3, 2, 4)).astype(np.float32),
            "bias": rng.standard_normal((4,)).astype(np.float32),
        },
        "bn": {
            "scale": (1 + 0.1 * rng.standard_normal((4,))).astype(np.float32),
            "bias": rng.standard_normal((4,)).astype(np.float32),
        },
    }


def _gradient(params, step):
    """A gradient that depends on the parameters and the step, the same for both frameworks."""
    rng = np.random.default_rng(100 + step)
    return jax.tree.map(lambda p: (0.5 * p + rng.standard_normal(p.shape)).astype(np.float32), params)


def _run_optax(tx, params):
    params = jax.tree.map(jnp.asarray, params)
    state = tx.init(params)
    update = jax.jit(tx.update)
    for step in range(NUM_STEPS):
        grads = jax.tree.map(jnp.asarray, _gradient(jax.tree.map(np.asarray, params), step))
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return jax.tree.map(np.asarray, params)


def _run_torch(params, *, lr, momentum, weight_decay, nesterov=False, power=2.0, decay_mask=None, clip=None):
    leaves, treedef = jax.tree.flatten(params)
    tensors = [torch.nn.Parameter(torch.from_numpy(leaf.copy())) for leaf in leaves]
    mask = jax.tree.leaves(decay_mask) if decay_mask is not None else [True] * len(tensors)
    groups = [
        {"params": [t for t, m in zip(tensors, mask) if m], "weight_decay": weight_decay},
        {"params": [t for t, m in zip(tensors, mask) if not m], "weight_decay": 0.0},
    ]
    opt = torch.optim.SGD([g for g in groups if g["params"]], lr=lr, momentum=momentum, nesterov=nesterov)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: math.pow(1 - step / TOTAL_STEPS, power))
    for step in range(NUM_STEPS):
        current = jax.tree.unflatten(treedef, [t.detach().numpy().copy() for t in tensors])
        for t, g in zip(tensors, jax.tree.leaves(_gradient(current, step))):
            t.grad = torch.from_numpy(g)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(tensors, clip)
        opt.step()
        sched.step()
    return jax.tree.unflatten(treedef, [t.detach().numpy() for t in tensors])


def _assert_trees_close(actual, expected, atol=1e-6):
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, e, atol=atol, rtol=0)


@needs_torch
@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_weight_decay_poly_matches_torch(nesterov):
    params = _initial_params()
    kwargs = dict(lr=0.05, momentum=0.9, weight_decay=0.05, nesterov=nesterov)
    tx = make_optimizer(learning_rate=0.05, total_steps=TOTAL_STEPS, momentum=0.9, weight_decay=0.05, nesterov=nesterov)
    expected = _run_torch(params, **kwargs)
    _assert_trees_close(_run_optax(tx, params), expected)
    # The order matters: decay after the momentum is measurably different.
    swapped = optax.chain(
        optax.sgd(poly_schedule(0.05, TOTAL_STEPS), momentum=0.9, nesterov=nesterov),
        optax.add_decayed_weights(-0.05 * 0.05),
    )
    with pytest.raises(AssertionError):
        _assert_trees_close(_run_optax(swapped, params), expected)


@needs_torch
def test_weight_decay_mask_matches_torch_param_groups():
    params = _initial_params()
    mask = kernel_only_decay_mask(params)
    assert mask == {"conv": {"kernel": True, "bias": False}, "bn": {"scale": False, "bias": False}}
    tx = make_optimizer(
        learning_rate=0.05, total_steps=TOTAL_STEPS, weight_decay=0.05, weight_decay_mask=kernel_only_decay_mask
    )
    expected = _run_torch(params, lr=0.05, momentum=0.9, weight_decay=0.05, decay_mask=mask)
    _assert_trees_close(_run_optax(tx, params), expected)


@needs_torch
def test_gradient_clipping_matches_torch():
    params = _initial_params()
    tx = make_optimizer(learning_rate=0.05, total_steps=TOTAL_STEPS, weight_decay=1e-4, grad_clip_norm=1.0)
    expected = _run_torch(params, lr=0.05, momentum=0.9, weight_decay=1e-4, clip=1.0)
    _assert_trees_close(_run_optax(tx, params), expected)
    unclipped = _run_torch(params, lr=0.05, momentum=0.9, weight_decay=1e-4)
    assert not np.allclose(expected["conv"]["kernel"], unclipped["conv"]["kernel"], atol=1e-3)


def test_poly_schedule_values():
    schedule = poly_schedule(0.01, total_steps=100, power=2.0)
    for step, lr in [(0, 0.01), (50, 0.0025), (90, 0.01 * 0.1**2), (100, 0.0), (150, 0.0)]:
        assert float(schedule(step)) == pytest.approx(lr, rel=1e-6, abs=1e-12)


def test_poly_schedule_with_warmup_and_end_lr():
    schedule = poly_schedule(0.01, total_steps=110, power=1.0, warmup_steps=10, end_lr=0.001)
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(0.005, rel=1e-6)
    assert float(schedule(10)) == pytest.approx(0.01, rel=1e-6)
    assert float(schedule(60)) == pytest.approx(0.001 + 0.009 * 0.5, rel=1e-6)
    assert float(schedule(110)) == pytest.approx(0.001, rel=1e-6)
    assert float(jax.jit(schedule)(jnp.int32(60))) == pytest.approx(0.0055, rel=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(total_steps=0), "total_steps"),
        (dict(warmup_steps=100), "warmup_steps"),
        (dict(momentum=1.5), "momentum"),
        (dict(nesterov=True, momentum=0.0), "nesterov"),
        (dict(grad_clip_norm=0.0), "grad_clip_norm"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    args = dict(learning_rate=0.01, total_steps=100) | kwargs
    with pytest.raises(ValueError, match=message):
        make_optimizer(**args)


def _formula_schedule(base_lr, total_steps, power, warmup_steps, end_lr):
    """The schedule as this package wrote it before optax's schedules (float32 jnp ops)."""
    decay_steps = total_steps - warmup_steps

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        progress = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
        decayed = end_lr + (base_lr - end_lr) * (1.0 - progress) ** power
        if warmup_steps == 0:
            return decayed
        return jnp.where(step < warmup_steps, base_lr * step / warmup_steps, decayed)

    return schedule


@pytest.mark.parametrize(
    "args",
    [
        (0.01, 100, 2.0, 0, 0.0),
        (0.05, 300, 0.9, 10, 1e-4),
        (5e-3, 1000, 2.0, 37, 0.0),
        (1.0, 7, 3.0, 3, 0.1),
        (5e-3, 90000, 2.0, 1000, 0.0),
    ],
)
def test_optax_schedules_give_the_formula_values(args):
    steps = jnp.arange(args[1] + 5)
    ours, formula = poly_schedule(*args), _formula_schedule(*args)
    # Op by op (as XLA runs each operation alone): the same float32 values, bit for bit.
    np.testing.assert_array_equal(np.asarray(jax.vmap(ours)(steps)), np.asarray(jax.vmap(formula)(steps)))
    # Compiled, XLA rewrites either program's division by a constant (the formula itself then
    # differs from its op-by-op values where 1 - t cancels, near the end): float32 rounding only.
    np.testing.assert_allclose(
        np.asarray(jax.jit(jax.vmap(ours))(steps)),
        np.asarray(jax.jit(jax.vmap(formula))(steps)),
        rtol=0,
        atol=1e-6 * args[0],
    )


def test_optax_tree_norm_is_the_norm_the_step_used():
    # optax.tree.norm: optax.global_norm's successor (deprecated in optax 0.2.8).
    rng = np.random.default_rng(3)
    tree = {
        "a": rng.standard_normal((3, 4, 5)).astype(np.float32),
        "b": [rng.standard_normal(7).astype(np.float32)],
        "c": rng.standard_normal((64, 64, 3, 3)).astype(np.float32),
    }
    ours = lambda t: jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(t)))
    assert np.asarray(optax.tree.norm(tree)) == np.asarray(ours(tree))
    assert np.asarray(jax.jit(optax.tree.norm)(tree)) == np.asarray(jax.jit(ours)(tree))
