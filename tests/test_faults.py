"""Faults: non-finite steps skipped inside the jitted step, SIGTERM/SIGINT preemption with a
checkpoint and a resume, kill -9 at random moments (also during asynchronous saves), a peer
that never starts, workdirs of another model or class count, and the pure helpers.

The process-level tests run `python -m hmsa_jax.cli train` as real subprocesses on the tiny
ResNet DeepLabV3+ with the repository's persistent compile cache, so a restart costs seconds.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hmsa_jax import checkpoint, parallel
from hmsa_jax.configlib import ConfigError
from hmsa_jax.train import step as step_lib
from hmsa_jax.train.metric_writer import drop_partial_last_line
from hmsa_jax.train.run_files import check_workdir, write_json_atomically
from hmsa_jax.train.state import TrainState

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("HMSA_JAX_CACHE", os.path.join(REPO, ".jax_cache"))
TINY = ["--config=configs/synthetic_demo.py:tiny", "--config.model.name=resnet_tiny_deeplabv3plus",
        "--config.runtime.progress=False", "--config.train.log_every=1",
        f"--config.runtime.compile_cache={CACHE}"]


# ---------------------------------------------------------------- non-finite steps (in jit)

class _Toy(nn.Module):
    """The smallest model train_step accepts: logits and one batch statistic."""

    @nn.compact
    def __call__(self, images, train=False):
        mean = self.variable("batch_stats", "mean", lambda: jnp.zeros(()))
        if train:
            mean.value = jnp.mean(images)
        return {"logits": nn.Conv(3, (1, 1))(images)}


def _toy_step(max_nonfinite):
    model, tx = _Toy(), optax.sgd(0.1)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)))
    state = TrainState(step=jnp.int32(0), params=variables["params"],
                       batch_stats=variables["batch_stats"], opt_state=tx.init(variables["params"]))
    config = step_lib.StepConfig(loss=step_lib.LossConfig(criterion="ce", aux_weight=0.0),
                                 max_nonfinite_steps=max_nonfinite)
    fn = jax.jit(lambda s, b: step_lib.train_step(s, b, jax.random.key(1), model=model, tx=tx,
                                                  config=config, learning_rate_fn=lambda n: 0.1 + 0 * n))
    return state, fn


def _batch(value):
    labels = np.tile(np.arange(3, dtype=np.int32), 6)[:16].reshape(1, 4, 4)
    return {"image": jnp.full((1, 4, 4, 3), value, jnp.float32), "label": jnp.asarray(labels)}


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_nonfinite_step_is_skipped_counted_and_sticky_at_the_limit():
    state, fn = _toy_step(max_nonfinite=2)
    good, _ = fn(state, _batch(0.5))
    assert not _same(good.params, state.params) and int(good.skipped_steps) == 0
    bad, metrics = fn(good, _batch(np.nan))  # NaN loss and gradients
    assert _same(bad.params, good.params) and _same(bad.batch_stats, good.batch_stats)
    assert _same(bad.opt_state, good.opt_state)
    assert (int(bad.step), int(bad.nonfinite_streak), int(bad.skipped_steps)) == (2, 1, 1)
    assert int(metrics["nonfinite"]) == 1 and int(metrics["skipped_steps"]) == 1
    recovered, _ = fn(bad, _batch(0.25))  # a finite step resets the streak
    assert not _same(recovered.params, bad.params)
    assert (int(recovered.nonfinite_streak), int(recovered.skipped_steps)) == (0, 1)
    inf_image, _ = fn(recovered, _batch(np.inf))
    at_limit, _ = fn(inf_image, _batch(np.nan))
    assert int(at_limit.nonfinite_streak) == 2
    # At the limit even a finite batch is skipped: the state stays the last good one until the
    # loop sees the streak, whenever it looks.
    after, metrics = fn(at_limit, _batch(0.5))
    assert _same(after.params, recovered.params)
    assert (int(after.nonfinite_streak), int(after.skipped_steps), int(after.step)) == (3, 4, 6)


def test_skip_decision_without_limit():
    decide = step_lib.skip_nonfinite_decision
    assert bool(decide(jnp.float32(1.0), jnp.float32(2.0), jnp.int32(99), 0))
    assert not bool(decide(jnp.float32(1.0), jnp.float32(np.inf), jnp.int32(0), 0))
    assert not bool(decide(jnp.float32(np.nan), jnp.float32(1.0), jnp.int32(0), 5))
    assert not bool(decide(jnp.float32(1.0), jnp.float32(1.0), jnp.int32(5), 5))


# ---------------------------------------------------------------- workdir identity, files

def test_workdir_of_another_class_count_is_refused_and_kept(tmp_path):
    saved = {"model": {"name": "resnet_tiny_deeplabv3plus", "num_classes": 8}}
    write_json_atomically(str(tmp_path / "config.json"), saved)
    before = (tmp_path / "config.json").read_bytes()
    check_workdir(str(tmp_path), saved)  # the same model: accepted
    with pytest.raises(ConfigError, match=r"model.num_classes=8, the config asks for 19"):
        check_workdir(str(tmp_path), {"model": {"name": "resnet_tiny_deeplabv3plus", "num_classes": 19}})
    with pytest.raises(ConfigError, match=r"model.name='resnet_tiny_deeplabv3plus'.*'hrnet_tiny_ocr'"):
        check_workdir(str(tmp_path), {"model": {"name": "hrnet_tiny_ocr", "num_classes": 8}})
    assert (tmp_path / "config.json").read_bytes() == before
    (tmp_path / "config.json").write_text('{"model": {"na')  # torn by a kill
    with pytest.raises(ConfigError, match="config.json: unreadable"):
        check_workdir(str(tmp_path), saved)


def test_workdir_without_config_json_is_checked_against_its_checkpoint(tmp_path):
    params = {"w": jnp.ones(2)}
    state = TrainState(step=jnp.int32(3), params=params, batch_stats={}, opt_state=optax.sgd(0.1).init(params))
    manager = checkpoint.make_manager(str(tmp_path / "checkpoints"))
    checkpoint.save(manager, state, None, {"config": {"model": {"name": "a", "num_classes": 5}}, "step": 3})
    manager.close()
    check_workdir(str(tmp_path), {"model": {"name": "a", "num_classes": 5}})
    with pytest.raises(ConfigError, match=r"checkpoints/3/meta: this workdir trains model.num_classes=5"):
        check_workdir(str(tmp_path), {"model": {"name": "a", "num_classes": 7}})


def test_torn_metrics_line_is_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"st')
    drop_partial_last_line(str(path))
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'


# ---------------------------------------------------------------- distributed plan (pure)

class _Settings:
    def __init__(self, **kw):
        self.mode, self.coordinator_address, self.num_processes, self.process_id = "auto", "", 0, -1
        self.__dict__.update(kw)


def test_distributed_plan_reads_config_and_environment():
    plan = parallel.distributed_plan
    assert plan(_Settings(), {}) is None
    assert plan(_Settings(), {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
    slurm = plan(_Settings(), {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"})
    assert slurm.reason == "SLURM job 7 with 16 tasks" and slurm.coordinator_address is None
    mpi = plan(_Settings(), {"OMPI_MCA_orte_hnp_uri": "x", "OMPI_COMM_WORLD_SIZE": "4"})
    assert mpi.reason == "Open MPI job with 4 ranks"
    assert plan(_Settings(), {"TPU_WORKER_HOSTNAMES": "a,b"}).reason == "TPU pod with 2 workers"
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    explicit = plan(_Settings(), env)
    assert (explicit.coordinator_address, explicit.num_processes, explicit.process_id) == ("10.0.0.1:1234", 2, 1)
    config_wins = plan(_Settings(coordinator_address="h:1", num_processes=4, process_id=3), env)
    assert (config_wins.coordinator_address, config_wins.num_processes, config_wins.process_id) == ("h:1", 4, 3)
    assert plan(_Settings(mode="off"), env) is None
    assert plan(_Settings(mode="on"), {}).reason == "distributed.mode='on'"
    with pytest.raises(parallel.DistributedError, match="JAX_NUM_PROCESSES='two'"):
        plan(_Settings(), {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two"})


# ---------------------------------------------------------------- real processes

def _env(devices=2):
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices), PYTHONUNBUFFERED="1")
    for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_JOB_ID"):
        env.pop(key, None)
    return env


def _start(workdir, *extra, devices=2, log=None):
    argv = [sys.executable, "-m", "hmsa_jax.cli", "train", *TINY, f"--workdir={workdir}", *extra]
    out = open(log, "w") if log else subprocess.PIPE
    return subprocess.Popen(argv, cwd=REPO, env=_env(devices), stdout=out, stderr=subprocess.STDOUT, text=True)


def _run(workdir, *extra, devices=2, timeout=300):
    proc = _start(workdir, *extra, devices=devices)
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _complete_steps(ckpt_dir):
    if not os.path.isdir(ckpt_dir):
        return []
    return sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit())


def _wait_for(predicate, timeout, interval=0.02):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(interval)
    return False


def _read_log(path):
    with open(path) as f:
        return f.read()


def _final_params(workdir):
    variables, meta = checkpoint.restore_variables(str(workdir))
    return meta["step"], jax.tree_util.tree_map(np.asarray, variables)


@pytest.mark.slow
def test_nonfinite_run_stops_with_the_last_good_checkpoint(tmp_path):
    code, out = _run(tmp_path, "--config.optim.learning_rate=1e30", "--config.train.checkpoint_every=1",
                     "--config.faults.max_nonfinite_steps=2")
    assert code == 1, out
    assert "steps in a row had a non-finite loss or gradient (faults.max_nonfinite_steps=2)" in out
    assert "stopped without saving" in out and "Last good checkpoint" in out
    steps = _complete_steps(tmp_path / "checkpoints")
    assert steps and steps[-1] <= 3, steps
    step, variables = _final_params(tmp_path)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(variables))


@pytest.mark.slow
def test_sigterm_and_sigint_save_and_resume(tmp_path):
    workdir = tmp_path / "run"
    log = str(tmp_path / "first.log")
    codes, stopped_at = [], []
    for signum in (signal.SIGTERM, signal.SIGINT):
        proc = _start(workdir, "--config.train.steps=40", "--config.train.checkpoint_every=100", log=log)
        first = (stopped_at[-1] if stopped_at else 0) + 2
        assert _wait_for(lambda: f"step {first}/40" in _read_log(log), 240), _read_log(log)
        proc.send_signal(signum)
        proc.wait(timeout=120)
        text = _read_log(log)
        codes.append(proc.returncode)
        name = signal.Signals(signum).name
        assert f"{name} received: stopped after step" in text and "To resume, run the same command" in text, text
        step = int(text.split(f"{name} received: stopped after step ")[1].split()[0])
        assert f"checkpoints/{step}" in text
        stopped_at.append(step)
        assert _complete_steps(workdir / "checkpoints")[-1] == step  # saved although checkpoint_every=100
    assert codes == [75, 75]
    code, out = _run(workdir, "--config.train.steps=40", "--config.train.checkpoint_every=100")
    assert code == 0 and f"resumed from {workdir}/checkpoints/{stopped_at[-1]}" in out, out
    assert stopped_at[0] < stopped_at[1] < 40
    assert _complete_steps(workdir / "checkpoints")[-1] == 40


def _kill_once(workdir, common, log, during_save, rng):
    """Start a run, let it complete one more checkpoint than it found, then kill -9 it: right
    after the next asynchronous save starts (`during_save`) or after a random delay. Returns
    (resumed_from, newest complete step before the kill, tmp folders at the kill, steps after)."""
    ckpts = workdir / "checkpoints"
    before = _complete_steps(ckpts)
    proc = _start(workdir, *common, log=log)
    resumed = None
    if before:
        assert _wait_for(lambda: "resumed from" in _read_log(log), 240), _read_log(log)
        resumed = int(_read_log(log).split("resumed from ")[1].split()[0].rsplit("/", 1)[1])
    target = (before[-1] if before else 0) + 1
    assert _wait_for(lambda: (_complete_steps(ckpts) or [0])[-1] >= target, 240), _read_log(log)
    if during_save:
        newest = _complete_steps(ckpts)[-1]
        _wait_for(lambda: any(n.startswith(f"{newest + 1}.orbax-checkpoint-tmp")
                              for n in os.listdir(ckpts)), 30, 0.002)
    else:
        time.sleep(rng.uniform(0.0, 1.5))
    newest_seen = _complete_steps(ckpts)[-1]
    tmp_at_kill = sorted(n for n in os.listdir(ckpts) if ".orbax-checkpoint-tmp" in n)
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, _read_log(log)
    return resumed, before, newest_seen, tmp_at_kill, _complete_steps(ckpts)


@pytest.mark.slow
def test_kill_9_at_random_moments_resumes_from_the_newest_complete_checkpoint(tmp_path):
    """Kill -9 four times (twice right after an async save started, twice at a random moment
    after a new checkpoint completed), then let the run finish: every restart resumes from the
    newest complete step, no complete step seen before a kill disappears, leftovers of killed
    saves are never read, and the final state equals an uninterrupted run's bit for bit."""
    steps = 14
    common = [f"--config.train.steps={steps}", "--config.train.checkpoint_every=1",
              "--config.checkpoint.max_to_keep=2"]
    workdir = tmp_path / "killed"
    rng = random.Random(0)
    report = []
    for attempt in range(4):
        resumed, before, newest_seen, tmp_at_kill, after = _kill_once(
            workdir, common, str(tmp_path / f"attempt{attempt}.log"), attempt % 2 == 0, rng)
        report.append(dict(attempt=attempt, resumed_from=resumed, newest_complete_at_kill=newest_seen,
                           tmp_at_kill=tmp_at_kill, complete_after=after))
        assert resumed == (before[-1] if before else None), report
        assert after and after[-1] >= newest_seen, report  # no completed checkpoint lost
        if after[-1] >= steps - 1:
            break
    print("kills:", json.dumps(report))
    assert any(r["tmp_at_kill"] for r in report), f"no kill landed during a save: {report}"
    code, out = _run(workdir, *common)
    assert code == 0 and f"resumed from {workdir}/checkpoints/{report[-1]['complete_after'][-1]}" in out, out
    assert not [n for n in os.listdir(workdir / "checkpoints") if "tmp" in n]
    code, out = _run(tmp_path / "straight", f"--config.train.steps={steps}",
                     f"--config.train.checkpoint_every={steps}")
    assert code == 0, out
    step_a, killed = _final_params(workdir)
    step_b, straight = _final_params(tmp_path / "straight")
    assert step_a == step_b == steps
    for a, b in zip(jax.tree_util.tree_leaves(killed), jax.tree_util.tree_leaves(straight)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_peer_that_never_starts_fails_within_the_timeout(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.time()
    code, out = _run(tmp_path, f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                     "--config.distributed.num_processes=2", "--config.distributed.process_id=0",
                     "--config.distributed.initialization_timeout_s=5", timeout=120)
    elapsed = time.time() - start
    assert code != 0
    assert "joining a multi-process job (coordinator 127.0.0.1:" in out and "waiting up to 5 s" in out
    assert "DEADLINE_EXCEEDED" in out, out[-3000:]
    assert elapsed < 60, elapsed
