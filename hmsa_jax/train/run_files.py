"""Files a training run leaves in its workdir besides metrics.jsonl and checkpoints:
config.json (the resolved config, and the check that a workdir is resumed with the model it
trains), scores.json / scores.txt (the latest validation's per-class table) and init_from.txt
(what `checkpoint.init_from` loaded). Written by process 0, each replaced whole (tmp + rename).
"""
from __future__ import annotations

import json
import os
from typing import Sequence

from hmsa_jax import checkpoint
from hmsa_jax.configlib import ConfigError
from hmsa_jax.metrics import format_scores, scores_to_json

CONFIG_JSON, SCORES_JSON, SCORES_TEXT, INIT_REPORT = (
    "config.json", "scores.json", "scores.txt", "init_from.txt")
# Changing these under an existing workdir would restore a checkpoint into another model.
IDENTITY_KEYS = (("model", "name"), ("model", "num_classes"))


def _replace(path: str, text: str) -> None:
    """A kill mid-write leaves the old file or the new one, never half of one."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomically(path: str, value) -> None:
    _replace(path, json.dumps(value, indent=2))


def saved_config(workdir: str) -> tuple[str, dict] | None:
    """(where, config) of what the workdir trains: config.json, else the config in the latest
    complete checkpoint (a run killed before it wrote config.json)."""
    path = os.path.join(workdir, CONFIG_JSON)
    if os.path.exists(path):
        try:
            with open(path) as f:
                return path, json.load(f)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}: unreadable ({error}); it should hold the config this "
                              f"workdir was trained with") from None
    directory = os.path.join(workdir, checkpoint.CHECKPOINTS_SUBDIR)
    steps = checkpoint.step_candidates(directory) if os.path.isdir(directory) else []
    for step in reversed(steps):  # a damaged step is dealt with when restoring
        step_dir = os.path.join(directory, str(step))
        try:
            meta = checkpoint.read_meta(step_dir)
        except (checkpoint.CheckpointError, OSError):
            continue
        return (os.path.join(step_dir, checkpoint.META), meta["config"]) if "config" in meta else None
    return None


def check_workdir(workdir: str, resolved: dict) -> None:
    """Refuse a workdir whose saved config trains another model or class count."""
    found = saved_config(workdir)
    if found is None:
        return
    path, saved = found
    for section, key in IDENTITY_KEYS:
        old, new = saved.get(section, {}).get(key), resolved[section][key]
        if old != new:
            raise ConfigError(f"{path}: this workdir trains {section}.{key}={old!r}, the config asks "
                              f"for {new!r}; use another --workdir (nothing was overwritten)")


def write_config(workdir: str, resolved: dict) -> None:
    write_json_atomically(os.path.join(workdir, CONFIG_JSON), resolved)


def scores_report(step: int, scores: dict, class_names: Sequence[str], scales: Sequence[float],
                  fusion: str) -> dict:
    return {"step": step, "scales": [float(s) for s in scales], "fusion": fusion,
            **scores_to_json(scores, class_names)}


def scores_heading(step: int, scales: Sequence[float], fusion: str) -> str:
    scale_text = ", ".join(str(float(s)) for s in scales)
    return f"validation at step {step}, scales {scale_text}" + (f", fusion {fusion}" if len(scales) > 1 else "")


def write_scores(workdir: str, step: int, scores: dict, class_names: Sequence[str],
                 scales: Sequence[float], fusion: str) -> None:
    report = scores_report(step, scores, class_names, scales, fusion)
    _replace(os.path.join(workdir, SCORES_JSON), json.dumps(report, indent=1) + "\n")
    table = format_scores(scores, class_names)
    _replace(os.path.join(workdir, SCORES_TEXT), f"{scores_heading(step, scales, fusion)}\n{table}\n")


def validation_heading(workdir: str) -> dict:
    """{"validation": mIoU, step, scales, fusion of the run's last validation} from
    scores.json, so the pictures page says at which scales the run's score was measured
    (they may differ from the pictures' scales); {} without one."""
    try:
        with open(os.path.join(workdir, SCORES_JSON)) as f:
            report = json.load(f)
        return {"validation": f"mIoU {100 * report['miou']:.2f}% at step {report['step']} on the whole "
                              f"split, scales {', '.join(f'{s:g}x' for s in report['scales'])}, "
                              f"fusion {report['fusion']}"}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def write_init_report(workdir: str, report_text: str) -> str:
    path = os.path.join(workdir, INIT_REPORT)
    _replace(path, report_text + "\n")
    return path


__all__ = ["CONFIG_JSON", "IDENTITY_KEYS", "INIT_REPORT", "SCORES_JSON", "SCORES_TEXT", "check_workdir",
           "saved_config", "scores_heading", "scores_report", "validation_heading", "write_config",
           "write_init_report", "write_json_atomically", "write_scores"]
