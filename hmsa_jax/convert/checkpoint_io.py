"""The converted checkpoint on disk: an Orbax CheckpointManager directory with one step.

    DIR/0/state       StandardSave of {"params": ..., "batch_stats": ...} (float32, our layouts)
    DIR/0/meta        JsonSave of {"format", "model", "num_classes", "source", "source_sha256",
                                   "report"}
    DIR/convert_report.json   the same report, for people

Item names match a training checkpoint's step (hmsa_jax/checkpoint.py: `state`, `meta` with
"model" and "num_classes"), so `hmsa_jax.checkpoint.restore_variables(DIR)` reads it too.
`restore_converted(DIR)` reads it back; eval, predict and training initialisation build the
model with `create_model(meta["model"], num_classes=meta["num_classes"])`.
"""
from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any, Mapping

import orbax.checkpoint as ocp

from hmsa_jax.checkpoint import manifest_on_commit

FORMAT = "hmsa_jax.converted/1"
STEP = 0
ITEMS = ("state", "meta")
REPORT_NAME = "convert_report.json"


def file_sha256(path: str | pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _manager(directory: pathlib.Path) -> ocp.CheckpointManager:
    # Each step carries the manifest eval/predict/init_from verify (hmsa_jax.checkpoint).
    options = ocp.CheckpointManagerOptions(async_options=ocp.AsyncOptions(
        post_finalization_callback=manifest_on_commit(str(directory.resolve()))))
    return ocp.CheckpointManager(directory.resolve(), item_names=ITEMS, options=options)


def save_converted(directory: str | pathlib.Path, variables: Mapping, meta: Mapping[str, Any],
                   overwrite: bool = False) -> pathlib.Path:
    """Write `variables` and `meta` as step 0 of an Orbax checkpoint in `directory`."""
    directory = pathlib.Path(directory).resolve()
    others = sorted(p.name for p in directory.iterdir() if p.name != REPORT_NAME) if directory.exists() else []
    if others and not overwrite:
        raise FileExistsError(f"{directory} already holds {', '.join(others[:5])}; pass --overwrite to replace "
                              f"the checkpoint there")
    directory.mkdir(parents=True, exist_ok=True)
    manager = _manager(directory)
    if overwrite and STEP in manager.all_steps():
        manager.delete(STEP)
    manager.save(STEP, args=ocp.args.Composite(
        state=ocp.args.StandardSave(dict(variables)),
        meta=ocp.args.JsonSave({"format": FORMAT, **meta})))
    manager.wait_until_finished()
    manager.close()
    if "report" in meta:
        (directory / REPORT_NAME).write_text(json.dumps(meta["report"], indent=1) + "\n")
    return directory


def restore_converted(directory: str | pathlib.Path, abstract_variables: Mapping | None = None
                      ) -> tuple[dict, dict]:
    """(variables, meta) from a directory written by `save_converted`.

    Pass `abstract_variables` (ShapeDtypeStructs, with shardings where needed) to restore onto
    devices in a given layout; without it, arrays come back as Orbax restores them by default.
    """
    directory = pathlib.Path(directory).resolve()
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no converted checkpoint here (no such directory)")
    manager = _manager(directory)
    if STEP not in manager.all_steps():
        raise FileNotFoundError(f"{directory}: no converted checkpoint here (no step {STEP}; "
                                f"steps found: {list(manager.all_steps())})")
    restore_variables = (ocp.args.StandardRestore(dict(abstract_variables)) if abstract_variables is not None
                         else ocp.args.StandardRestore())
    restored = manager.restore(STEP, args=ocp.args.Composite(state=restore_variables,
                                                               meta=ocp.args.JsonRestore()))
    manager.close()
    meta = dict(restored["meta"])
    if meta.get("format") != FORMAT:
        raise ValueError(f"{directory}: meta format is {meta.get('format')!r}, expected {FORMAT!r}")
    return dict(restored["state"]), meta
