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

Integrity: every step carries MANIFEST (relative path, size and sha256 of each of its files),
written on process 0 after every process wrote its files and before Orbax renames the
temporary folder to "<step>", so it commits with the step. Restores check it first. A damaged
step (a file missing, truncated or altered, no state/, a restore that fails) is reported in one
line and moved to `corrupt/<step>` (never deleted), and the next older step is used; a step the
user named (`--step`, a step folder) is reported, not moved. Steps written before manifests
existed are restored with a note (and refused if their variables are not finite).

A save that fails for an operating-system reason (disk full, no permission) raises one
CheckpointWriteError naming the path and the cause; the steps committed before stay intact.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import sys
from typing import Any, Callable

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import v1 as ocp_v1
from orbax.checkpoint.checkpoint_managers import preservation_policy

from hmsa_jax import parallel

STATE, DATA_ITER, META = "state", "data_iter", "meta"
BEST_METRIC = "val/miou"
CHECKPOINTS_SUBDIR = "checkpoints"
# Retired steps are first renamed here (atomic), then deleted: Orbax's own deletion removes a
# step's files one by one, and a process killed midway would leave a partial "<step>/" folder
# that looks complete.
TODELETE_SUBDIR = "todelete"
MANIFEST = "hmsa_manifest.json"
MANIFEST_FORMAT = "hmsa_jax.manifest/1"
CORRUPT_SUBDIR = "corrupt"
# Orbax writes a step into "<step>.orbax-checkpoint-tmp[-<time>]" and renames it when complete.
PENDING_STEP = re.compile(r"\d+\.orbax-checkpoint-tmp.*")
_BLOCK = 1 << 22


class CheckpointError(ValueError):
    """A checkpoint path that holds no usable checkpoint."""


class DamagedCheckpointError(CheckpointError):
    """A step whose files are not what was saved (or cannot be read back)."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, no permission, ...): the steps committed
    before it are intact, and the same command resumes from them once the cause is fixed."""


_OS_ERROR_CODE = re.compile(r"os_error_code='(\d+)'")
_QUOTED_PATH = re.compile(r'(?:Failed writing|local file): "(/[^"]+)"')


def _os_cause(error: BaseException) -> tuple[str, str] | None:
    """(path, reason) of the operating-system failure behind an error (Orbax and TensorStore
    wrap them in ValueErrors and in exceptions of other threads), else None."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return str(seen.filename or ""), seen.strerror or os.strerror(seen.errno)
        code = _OS_ERROR_CODE.search(str(seen))
        if code:
            paths = _QUOTED_PATH.findall(str(seen))
            return (paths[-1] if paths else ""), os.strerror(int(code.group(1)))
        seen = seen.__cause__ or seen.__context__
    return None


@contextlib.contextmanager
def _write_errors(directory: str, step: int | None = None):
    """Turn a failed checkpoint write into one CheckpointWriteError naming the path and cause."""
    try:
        yield
    except CheckpointWriteError:
        raise
    except Exception as error:  # noqa: BLE001 - only those with an OS cause are translated
        cause = _os_cause(error)
        if cause is None:
            raise
        path, reason = cause
        what = f"checkpoint step {step}" if step is not None else "a checkpoint"
        raise CheckpointWriteError(
            f"{path or directory}: {reason} while writing {what}; the checkpoints committed "
            f"before it in {directory} are intact: once this is fixed, run the same command "
            f"again to resume") from None


class _OrbaxBackgroundErrors(logging.Filter):
    """Drops Orbax's error logs (with tracebacks) from its background save threads: the same
    error is raised to the caller of save / wait_until_finished, which reports it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in record.pathname)


def _quiet_orbax_errors() -> None:
    logger = logging.getLogger("absl")
    if not any(isinstance(f, _OrbaxBackgroundErrors) for f in logger.filters):
        logger.addFilter(_OrbaxBackgroundErrors())


class _Manager(ocp.CheckpointManager):
    """Orbax's manager, with failed writes reported as CheckpointWriteError (its own save waits
    for the previous one here) and retired steps deleted on close."""

    wait_after_save = False

    def wait_until_finished(self):
        with _write_errors(str(self.directory)):
            return super().wait_until_finished()

    def close(self):
        try:
            super().close()
        finally:
            purge_retired(str(self.directory))
            with contextlib.suppress(OSError):  # only if empty, and only at the end
                os.rmdir(os.path.join(str(self.directory), TODELETE_SUBDIR))


def _warn(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- manifests
def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _step_files(step_dir: str) -> list[str]:
    """Relative paths of the files of a step's items (state/, meta/, ...). The step folder's own
    files are Orbax's bookkeeping, which it rewrites as it commits (_CHECKPOINT_METADATA)."""
    found = []
    for root, _, names in os.walk(step_dir):
        if os.path.samefile(root, step_dir):
            continue
        found += [os.path.relpath(os.path.join(root, name), step_dir) for name in names]
    return sorted(found)


def manifest_of(step_dir: str) -> dict:
    files = {rel: {"size": os.path.getsize(os.path.join(step_dir, rel)),
                   "sha256": file_sha256(os.path.join(step_dir, rel))}
             for rel in _step_files(step_dir)}
    return {"format": MANIFEST_FORMAT, "files": files}


def write_manifest(step_dir: str) -> None:
    """MANIFEST of `step_dir`'s files, written tmp + fsync + rename (never half a file)."""
    tmp = os.path.join(step_dir, f"{MANIFEST}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(manifest_of(step_dir), f, indent=0, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(step_dir, MANIFEST))


def manifest_on_commit(directory: str) -> Callable[[], None]:
    """An Orbax post_finalization_callback: it runs on the primary process once every process
    has written its files, before the pending folder is renamed to "<step>"."""
    def write_pending() -> None:
        for name in os.listdir(directory):
            if PENDING_STEP.fullmatch(name):
                write_manifest(os.path.join(directory, name))
    return write_pending


def _manifest_problem(step_dir: str, manifest: dict) -> str | None:
    found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if found != MANIFEST_FORMAT or not isinstance(files, dict):
        return f"{MANIFEST}: format {found!r}; expected {MANIFEST_FORMAT!r} with a file table"
    problems = []
    for rel, expected in sorted(files.items()):
        path = os.path.join(step_dir, rel)
        if not os.path.isfile(path):
            problems.append(f"{rel} missing")
        elif os.path.getsize(path) != expected["size"]:
            problems.append(f"{rel} has {os.path.getsize(path)} bytes, expected {expected['size']} "
                            f"(truncated or emptied)")
        elif file_sha256(path) != expected["sha256"]:
            problems.append(f"{rel} differs from its sha256 in {MANIFEST} (overwritten or corrupted)")
    if not problems:
        return None
    more = f" (and {len(problems) - 1} more damaged files)" if len(problems) > 1 else ""
    return problems[0] + more


def inspect_step(step_dir: str) -> tuple[str | None, bool]:
    """(what is wrong with a step folder or None, whether its files were verified against its
    manifest). Without a manifest only the layout is checked."""
    try:
        return _inspect_step(step_dir)
    except OSError as error:  # e.g. another process set the step aside meanwhile
        return f"unreadable ({error.strerror or error}: {error.filename or step_dir})", False


def _inspect_step(step_dir: str) -> tuple[str | None, bool]:
    if not os.listdir(step_dir):
        return "empty folder", False
    if not os.path.isdir(os.path.join(step_dir, STATE)):
        return f"no {STATE}/ folder", False
    for rel in (os.path.join(STATE, "_METADATA"),):
        if not os.path.isfile(os.path.join(step_dir, rel)):
            return f"{rel} missing", False
    if _meta_file(step_dir) is None:
        return f"no {META}/ JSON", False
    manifest_path = os.path.join(step_dir, MANIFEST)
    if not os.path.exists(manifest_path):
        return None, False
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as error:
        return f"{MANIFEST} unreadable ({error})", False
    problem = _manifest_problem(step_dir, manifest)
    return problem, problem is None


def set_aside(step_dir: str, problem: str, log: Callable[[str], None] = _warn) -> str:
    """Move a damaged step to `<checkpoints>/corrupt/<step>` (process 0; never deleted), in one
    line that says why. Returns the new path."""
    parent, name = os.path.split(step_dir.rstrip(os.sep))
    corrupt = os.path.join(parent, CORRUPT_SUBDIR)
    target, n = os.path.join(corrupt, name), 1
    while os.path.exists(target):
        target, n = os.path.join(corrupt, f"{name}.{n}"), n + 1
    if jax.process_index() == 0:
        try:
            os.makedirs(corrupt, exist_ok=True)
            os.replace(step_dir, target)
        except OSError as error:
            raise CheckpointError(f"{step_dir}: {problem}; it could not be set aside as {target} "
                                  f"({error.strerror or error}): move it away by hand") from None
        log(f"hmsa: checkpoint {step_dir}: {problem}; set aside as {target} (not deleted), "
            f"trying the next older checkpoint")
    return target


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    text = text[0].split(". See full TensorStore details")[0] if text else ""  # Orbax's suffix
    return f"{type(error).__name__}: {text}"[:300]


def attempt(step_dir: str, load: Callable[[str], Any], *, named: bool = False,
            log: Callable[[str], None] = _warn) -> tuple[bool, Any]:
    """(True, load(step_dir)) if the step is sound; a damaged one is set aside and (False, None)
    returned, or, if the user `named` it, raised as DamagedCheckpointError. A step whose files
    match their manifest but does not restore is not the files' fault: that is raised."""
    problem, verified = inspect_step(step_dir)
    if problem is None:
        if not verified and jax.process_index() == 0:
            log(f"hmsa: note: checkpoint {step_dir} has no {MANIFEST} (written before checkpoints "
                f"carried one): its files cannot be verified")
        try:
            return True, load(step_dir)
        except DamagedCheckpointError as error:
            problem = str(error).removeprefix(f"{step_dir}: ")
        except CheckpointError:
            raise
        except Exception as error:  # noqa: BLE001 - Orbax/TensorStore raise many kinds
            if verified:
                raise CheckpointError(f"{step_dir}: its files match {MANIFEST} but it does not "
                                      f"restore ({_first_line(error)})") from error
            problem = f"does not restore ({_first_line(error)})"
    if named:
        raise DamagedCheckpointError(f"{step_dir}: {problem}")
    set_aside(step_dir, problem, log)
    return False, None


def check_finite(tree, step_dir: str) -> None:
    """DamagedCheckpointError if a leaf holds NaN or inf: training never saves such values (it
    skips non-finite steps), so they mean damaged bytes in an unverifiable checkpoint."""
    for keys, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        path = "/".join(str(getattr(k, "key", k)) for k in keys)
        values = np.asarray(leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf)
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            bad = int(values.size - np.isfinite(values).sum())
            raise DamagedCheckpointError(f"{step_dir}: {path} holds {bad} NaN/inf values of "
                                         f"{values.size}")


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
    # The manifest is written by Orbax's post-finalisation hook, which only the asynchronous
    # checkpointer has: a synchronous save is an asynchronous one waited for (see `save`).
    directory = os.path.abspath(os.path.expanduser(directory))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=preservation_policy.AnyPreservationPolicy(policies),
        enable_async_checkpointing=True, create=True, cleanup_tmp_directories=True,
        todelete_subdir=TODELETE_SUBDIR,
        # Created on the caller's thread: an unwritable folder fails the save at once (in a
        # background thread it left the save waiting 300 s for a TimeoutError).
        async_options=ocp.AsyncOptions(post_finalization_callback=manifest_on_commit(directory),
                                       create_directories_asynchronously=False))
    _quiet_orbax_errors()
    manager = _Manager(directory, item_names=(STATE, DATA_ITER, META), options=options)
    manager.wait_after_save = not async_save
    purge_retired(directory)
    return manager


def purge_retired(directory: str) -> None:
    """Delete the steps Orbax retired into TODELETE_SUBDIR (process 0; partial deletion there is
    harmless: nothing reads that folder)."""
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
    step = int(jax.device_get(state.step))
    purge_retired(str(manager.directory))
    items = {STATE: ocp.args.StandardSave(state_tree(state)), META: ocp.args.JsonSave(meta)}
    if data_iterator is not None:
        items[DATA_ITER] = grain.checkpoint.CheckpointSave(data_iterator)
    ranked = None if metrics is None or BEST_METRIC not in metrics else {
        BEST_METRIC: float(metrics[BEST_METRIC])}
    with _write_errors(str(manager.directory), step):
        saved = manager.save(step, args=ocp.args.Composite(**items), metrics=ranked, force=force)
        if getattr(manager, "wait_after_save", False):
            manager.wait_until_finished()
    return saved


def restore(manager: ocp.CheckpointManager, abstract_state, data_iterator=None,
            step: int | None = None):
    """(state, data_iterator, meta) at `step` (latest by default) into the abstract state's
    shapes, dtypes and shardings; the iterator (if given) is restored in place."""
    step = manager.latest_step() if step is None else step
    if step is None:
        raise CheckpointError(f"{manager.directory}: no checkpoint to restore")
    items = {STATE: ocp.args.StandardRestore(state_tree(abstract_state)), META: ocp.args.JsonRestore()}
    if data_iterator is not None:
        items[DATA_ITER] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    state = abstract_state.replace(**restored[STATE])
    return state, restored.get(DATA_ITER) if data_iterator is not None else None, restored[META]


def restore_usable(manager: ocp.CheckpointManager, abstract_state, data_iterator=None,
                   log: Callable[[str], None] = _warn):
    """`restore` of the newest sound step: damaged steps are set aside (see `attempt`) and the
    next older one tried. None if the folder holds no step; CheckpointError if every step was
    set aside. All processes take the same step."""
    directory = str(manager.directory)
    steps = step_candidates(directory)
    if not steps:
        return None
    for step in reversed(steps):
        step_dir = os.path.join(directory, str(step))
        ok, restored = attempt(step_dir, lambda d: _restore_checked(manager, abstract_state,
                                                                    data_iterator, step, d), log=log)
        failed_somewhere = parallel.process_any(not ok)  # after the set-aside: also a barrier
        manager.reload()
        if not failed_somewhere:
            return restored
    raise CheckpointError(no_usable_message(directory))


def _restore_checked(manager, abstract_state, data_iterator, step: int, step_dir: str):
    state, iterator, meta = restore(manager, abstract_state, data_iterator, step)
    if not os.path.exists(os.path.join(step_dir, MANIFEST)):
        check_finite({"params": state.params, "batch_stats": state.batch_stats}, step_dir)
    return state, iterator, meta


def set_aside_steps(directory: str) -> list[str]:
    corrupt = os.path.join(directory, CORRUPT_SUBDIR)
    return sorted(os.listdir(corrupt)) if os.path.isdir(corrupt) else []


def no_usable_message(directory: str) -> str:
    aside = set_aside_steps(directory)
    return (f"{directory}: no usable checkpoint left ({len(aside)} damaged step(s) set aside in "
            f"{os.path.join(directory, CORRUPT_SUBDIR)}: {', '.join(aside)}); nothing was deleted. "
            f"To start afresh, use another --workdir or move that folder away")


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


def step_candidates(directory: str) -> list[int]:
    """Every committed step folder ("<digits>"), complete or not: what train, eval, predict and
    init_from consider, oldest first (Orbax's pending folders have another name)."""
    return sorted(int(n) for n in os.listdir(directory)
                  if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def is_step_dir(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, n))
               for n in (STATE, META, MANIFEST, "_CHECKPOINT_METADATA"))


def _checkpoints_folder(path: str) -> str:
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(os.path.join(path, CHECKPOINTS_SUBDIR)):
        path = os.path.join(path, CHECKPOINTS_SUBDIR)
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such checkpoint folder")
    return path


def _best_first(path: str, steps: list[int]) -> list[int]:
    """Steps with a validation mIoU, best first (steps whose meta cannot be read are left out)."""
    scored = []
    for step in steps:
        try:
            metrics = read_meta(os.path.join(path, str(step))).get("metrics") or {}
        except (CheckpointError, OSError, ValueError):
            continue
        if metrics.get(BEST_METRIC) is not None:
            scored.append((metrics[BEST_METRIC], step))
    return [step for _, step in sorted(scored, reverse=True)]


def resolve_step_dir(path: str, step: int | None = None, which: str = "latest") -> str:
    """The folder of one checkpoint step, from a workdir, its checkpoints folder or a step
    folder. `which`: "latest" or "best" (highest val/miou) when `step` is not given. Only
    the layout is looked at: `load_usable` checks the files."""
    if which not in ("latest", "best"):
        raise ValueError(f"which={which!r}; expected 'latest' or 'best'")
    absolute = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(absolute) and is_step_dir(absolute):
        return absolute
    path = _checkpoints_folder(path)
    steps = step_candidates(path)
    if not steps:
        if set_aside_steps(path):
            raise CheckpointError(no_usable_message(path))
        raise CheckpointError(f"{path}: holds no checkpoint (expected <step>/state/ folders)")
    if step is not None:
        if step not in steps:
            raise CheckpointError(f"{path}: no step {step}; steps present: {steps}")
        return os.path.join(path, str(step))
    best = _best_first(path, steps) if which == "best" else []
    return os.path.join(path, str(best[0] if best else steps[-1]))


def load_usable(path: str, load: Callable[[str], Any], step: int | None = None,
                which: str = "latest", log: Callable[[str], None] = _warn) -> tuple[str, Any]:
    """(step folder, load(step folder)) of the newest (or best) sound step at `path`; damaged
    steps are set aside on the way (see `attempt`). A step the caller named (`step`, or `path`
    a step folder) is never replaced by another. Processes decide alike without talking: the
    verdict on a step depends only on its files."""
    absolute = os.path.abspath(os.path.expanduser(path))
    named = step is not None or (os.path.isdir(absolute) and is_step_dir(absolute))
    while True:
        step_dir = resolve_step_dir(path, step, which)
        ok, loaded = attempt(step_dir, load, named=named, log=log)
        if ok:
            return step_dir, loaded


def _meta_file(step_dir: str) -> str | None:
    meta_dir = os.path.join(step_dir, META)
    candidates = [os.path.join(meta_dir, n) for n in ("metadata", "meta")] + [meta_dir]
    return next((c for c in candidates if os.path.isfile(c)), None)


def read_meta(step_dir: str) -> dict:
    candidate = _meta_file(step_dir)
    if candidate is None:
        raise CheckpointError(f"{step_dir}: no {META}/ JSON")
    try:
        with open(candidate) as f:
            return json.load(f)
    except ValueError as error:
        raise DamagedCheckpointError(f"{step_dir}: {os.path.relpath(candidate, step_dir)} is not "
                                     f"JSON ({error})") from None


def load_partial(step_dir: str, item: str, target: dict) -> dict:
    """The subtree `target` (ShapeDtypeStructs with shardings) of item `item` of a step folder,
    nothing else read (params + batch_stats without the optimiser state), through Orbax's
    high-level v1 `load` with partial loading. (`StandardCheckpointer` cannot: orbax 0.12.8's
    StandardRestore has no partial restore and refuses a target without opt_state.)"""
    context = ocp_v1.Context()
    context.pytree.loading.partial_load = True
    with context:
        return ocp_v1.load(step_dir, target, checkpointable_name=item)


def read_variables(step_dir: str, sharding: jax.sharding.Sharding | None = None) -> tuple[dict, dict]:
    """({"params", "batch_stats"}, meta) of one step folder, without the optimiser state; no
    manifest check (see `load_usable`), but non-finite values in a step without one are refused."""
    stored = stored_tree_metadata(os.path.join(step_dir, STATE))
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = {key: jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), stored[key])
        for key in ("params", "batch_stats")}
    with _quiet_item_metadata():
        restored = load_partial(step_dir, STATE, target)
    variables = {"params": restored["params"], "batch_stats": restored["batch_stats"]}
    if not os.path.exists(os.path.join(step_dir, MANIFEST)):
        check_finite(variables, step_dir)
    return variables, read_meta(step_dir)


def restore_variables(path: str, step: int | None = None, which: str = "latest",
                      sharding: jax.sharding.Sharding | None = None,
                      log: Callable[[str], None] = _warn) -> tuple[dict, dict]:
    """({"params", "batch_stats"}, meta) from a checkpoint, without the optimiser state: the
    newest sound step (see `load_usable`).

    `sharding` places every array (default: the first local device). `meta["config"]` is the
    run's resolved config (model name, num_classes, data section).
    """
    _, loaded = load_usable(path, lambda d: read_variables(d, sharding), step, which, log)
    return loaded


__all__ = ["BEST_METRIC", "CHECKPOINTS_SUBDIR", "CORRUPT_SUBDIR", "CheckpointError",
           "CheckpointWriteError", "DamagedCheckpointError", "MANIFEST", "TODELETE_SUBDIR", "attempt", "check_finite",
           "inspect_step", "is_step_dir", "load_partial", "load_usable", "make_manager", "manifest_of",
           "purge_retired", "read_meta", "read_variables", "resolve_step_dir", "restore",
           "restore_usable", "restore_variables", "save", "set_aside", "state_tree",
           "step_candidates", "stored_tree_metadata", "write_manifest"]
