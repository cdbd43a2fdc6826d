"""Orbax checkpoints of a training run: state, data iterator and resolved config, per step.

Layout (`<workdir>/checkpoints/<step>/`):
  state/      the TrainState as a dict {step, params, batch_stats, opt_state} (Orbax PyTree)
  data_iter/  the Grain iterator's position (exact resume of the data stream)
  meta/       JSON: {"config": resolved config, "model", "num_classes", "class_names", "step",
              "metrics": validation metrics at that step or null}
Kept: the latest `max_to_keep` steps plus the `keep_best` steps with the highest "val/miou".
Saves are asynchronous: call `wait_until_finished()` (or `close()`) before the process exits.

For inference: `restore_variables(path)` reads only params and batch_stats (no optimiser
state, no data iterator) from a workdir, a checkpoints folder or one step's folder.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy

STATE, DATA_ITER, META = "state", "data_iter", "meta"
BEST_METRIC = "val/miou"
CHECKPOINTS_SUBDIR = "checkpoints"
# Retired steps are first renamed here (atomic), then deleted: Orbax's own deletion removes a
# step's files one by one, and a process killed midway would leave a partial "<step>/" folder
# that looks complete.
TODELETE_SUBDIR = "todelete"
# Counters added to TrainState after the first checkpoints were written; restored as 0 from
# checkpoints without them.
OPTIONAL_STATE_KEYS = ("nonfinite_streak", "skipped_steps")


class CheckpointError(ValueError):
    """A checkpoint path that holds no usable checkpoint."""


def make_manager(directory: str, *, max_to_keep: int = 3, keep_best: int = 1,
                 async_save: bool = True) -> ocp.CheckpointManager:
    if max_to_keep < 1:
        raise ValueError(f"checkpoint.max_to_keep={max_to_keep}; expected >= 1")
    if keep_best < 0:
        raise ValueError(f"checkpoint.keep_best={keep_best}; expected >= 0")
    policies = [preservation_policy.LatestN(n=max_to_keep)]
    if keep_best:
        policies.append(preservation_policy.BestN(
            get_metric_fn=lambda metrics: metrics[BEST_METRIC], n=keep_best,
            keep_checkpoints_without_metrics=False))
    # A save is written to "<step>.orbax-checkpoint-tmp-*" and renamed to "<step>" when complete
    # (on every process), so a "<step>" folder is always a whole checkpoint; leftovers of a
    # killed save are removed when the next manager opens the folder.
    options = ocp.CheckpointManagerOptions(
        preservation_policy=preservation_policy.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save, create=True, cleanup_tmp_directories=True,
        todelete_subdir=TODELETE_SUBDIR)
    directory = os.path.abspath(os.path.expanduser(directory))
    manager = ocp.CheckpointManager(directory, item_names=(STATE, DATA_ITER, META), options=options)
    purge_retired(directory)
    return manager


def purge_retired(directory: str) -> None:
    """Delete the steps Orbax retired into TODELETE_SUBDIR (process 0; partial deletion there is
    harmless: nothing reads that folder)."""
    import shutil

    retired = os.path.join(directory, TODELETE_SUBDIR)
    if jax.process_index() != 0 or not os.path.isdir(retired):
        return
    for name in os.listdir(retired):
        shutil.rmtree(os.path.join(retired, name), ignore_errors=True)


def state_tree(state) -> dict:
    return {"step": state.step, "params": state.params, "batch_stats": state.batch_stats,
            "opt_state": state.opt_state, "nonfinite_streak": state.nonfinite_streak,
            "skipped_steps": state.skipped_steps}


def save(manager: ocp.CheckpointManager, state, data_iterator, meta: dict,
         metrics: dict | None = None, *, force: bool = False) -> bool:
    """Start saving `state` at its step (asynchronously). `metrics` (with "val/miou") rank the
    checkpoint for keep-best; pass None for steps without validation."""
    import grain

    step = int(jax.device_get(state.step))
    purge_retired(str(manager.directory))
    items = {STATE: ocp.args.StandardSave(state_tree(state)), META: ocp.args.JsonSave(meta)}
    if data_iterator is not None:
        items[DATA_ITER] = grain.checkpoint.CheckpointSave(data_iterator)
    ranked = None if metrics is None or BEST_METRIC not in metrics else {
        BEST_METRIC: float(metrics[BEST_METRIC])}
    return manager.save(step, args=ocp.args.Composite(**items), metrics=ranked, force=force)


def restore(manager: ocp.CheckpointManager, abstract_state, data_iterator=None,
            step: int | None = None):
    """(state, data_iterator, meta) at `step` (latest by default) into the abstract state's
    shapes, dtypes and shardings; the iterator (if given) is restored in place."""
    import grain

    step = manager.latest_step() if step is None else step
    if step is None:
        raise CheckpointError(f"{manager.directory}: no checkpoint to restore")
    target = state_tree(abstract_state)
    stored_keys = _stored_state_keys(os.path.join(str(manager.directory), str(step)))
    absent = [key for key in OPTIONAL_STATE_KEYS if stored_keys is not None and key not in stored_keys]
    for key in absent:
        del target[key]
    items = {STATE: ocp.args.StandardRestore(target), META: ocp.args.JsonRestore()}
    if data_iterator is not None:
        items[DATA_ITER] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    tree = dict(restored[STATE])
    for key in absent:
        tree[key] = _zeros_like(getattr(abstract_state, key))
    state = abstract_state.replace(**tree)
    return state, restored.get(DATA_ITER) if data_iterator is not None else None, restored[META]


class _StepMetadataNotice(logging.Filter):
    """Drops Orbax's "Metadata file does not exist" warning when a single item of a step is
    opened: the step's _CHECKPOINT_METADATA lives one folder up, as CheckpointManager writes it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "_CHECKPOINT_METADATA" not in record.getMessage()


@contextlib.contextmanager
def _quiet_item_metadata():
    notice, logger = _StepMetadataNotice(), logging.getLogger("absl")
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


def stored_tree_metadata(item_dir: str):
    """The saved PyTree's structure with per-leaf metadata (shape, dtype) of one item folder,
    e.g. `<step>/state`, read without loading any array."""
    with _quiet_item_metadata():
        stored = ocp.PyTreeCheckpointer().metadata(item_dir)
    stored = getattr(stored, "item_metadata", stored)
    return getattr(stored, "tree", stored)


def _stored_state_keys(step_dir: str) -> set[str] | None:
    """Top-level keys of a step's saved state (None if its metadata cannot be read)."""
    try:
        stored = stored_tree_metadata(os.path.join(step_dir, STATE))
    except Exception:  # noqa: BLE001 - then restore everything and let Orbax report
        return None
    return set(stored) if isinstance(stored, dict) else None


def _zeros_like(abstract) -> jax.Array:
    import jax.numpy as jnp

    sharding = getattr(abstract, "sharding", None)
    zeros = jnp.zeros(abstract.shape, abstract.dtype)
    return jax.device_put(zeros, sharding) if sharding is not None else zeros


def _step_dirs(directory: str) -> list[int]:
    return sorted(int(n) for n in os.listdir(directory)
                  if n.isdigit() and os.path.isdir(os.path.join(directory, n, STATE)))


def resolve_step_dir(path: str, step: int | None = None, which: str = "latest") -> str:
    """The folder of one checkpoint step, from a workdir, its checkpoints folder or a step
    folder. `which`: "latest" or "best" (highest val/miou) when `step` is not given."""
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(os.path.join(path, STATE)):
        return path
    if os.path.isdir(os.path.join(path, CHECKPOINTS_SUBDIR)):
        path = os.path.join(path, CHECKPOINTS_SUBDIR)
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such checkpoint folder")
    steps = _step_dirs(path)
    if not steps:
        raise CheckpointError(f"{path}: holds no checkpoint (expected <step>/state/ folders)")
    if step is not None:
        if step not in steps:
            raise CheckpointError(f"{path}: no step {step}; steps present: {steps}")
        return os.path.join(path, str(step))
    if which == "best":
        scored = [(read_meta(os.path.join(path, str(s))).get("metrics") or {}, s) for s in steps]
        scored = [(m[BEST_METRIC], s) for m, s in scored if m.get(BEST_METRIC) is not None]
        if scored:
            return os.path.join(path, str(max(scored)[1]))
    elif which != "latest":
        raise ValueError(f"which={which!r}; expected 'latest' or 'best'")
    return os.path.join(path, str(steps[-1]))


def read_meta(step_dir: str) -> dict:
    meta_dir = os.path.join(step_dir, META)
    candidates = [os.path.join(meta_dir, n) for n in ("metadata", "meta")] + [meta_dir]
    for candidate in candidates:
        if os.path.isfile(candidate):
            with open(candidate) as f:
                return json.load(f)
    raise CheckpointError(f"{step_dir}: no {META}/ JSON")


def restore_variables(path: str, step: int | None = None, which: str = "latest",
                      sharding: jax.sharding.Sharding | None = None) -> tuple[dict, dict]:
    """({"params", "batch_stats"}, meta) from a checkpoint, without the optimiser state.

    `sharding` places every array (default: the first local device). `meta["config"]` is the
    run's resolved config (model name, num_classes, data section).
    """
    step_dir = resolve_step_dir(path, step, which)
    checkpointer = ocp.PyTreeCheckpointer()
    stored = stored_tree_metadata(os.path.join(step_dir, STATE))
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = {key: jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), stored[key])
        for key in ("params", "batch_stats")}
    with _quiet_item_metadata():
        restored = checkpointer.restore(
            os.path.join(step_dir, STATE),
            args=ocp.args.PyTreeRestore(item=target,
                                        restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                        partial_restore=True))
    return {"params": restored["params"], "batch_stats": restored["batch_stats"]}, read_meta(step_dir)


__all__ = ["BEST_METRIC", "CHECKPOINTS_SUBDIR", "CheckpointError", "TODELETE_SUBDIR",
           "make_manager", "purge_retired", "read_meta", "resolve_step_dir", "restore",
           "restore_variables", "save", "state_tree", "stored_tree_metadata"]
