"""Initialise a model from another run's checkpoint (ImageNet trunk, Mapillary model, ...).

Each variable of the new model is taken from the checkpoint when a variable of the same path
and shape exists there; a same-path variable of another shape (a classifier after a change of
class count) keeps its fresh initialisation; checkpoint variables the model does not have are
skipped. The report lists all three, plus the model's variables the checkpoint lacked.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import traverse_util

from hmsa_jax.checkpoint import CheckpointError, load_usable, read_variables

COLLECTIONS = ("params", "batch_stats")
# init_from must fill at least this share of the model's parameters (an ImageNet trunk fills
# 56-90% of the segmentation models here): less means a checkpoint of another architecture.
MIN_LOADED_SHARE = 0.25


@dataclasses.dataclass
class InitReport:
    source: str
    loaded: list[str] = dataclasses.field(default_factory=list)
    reinitialized: list[tuple[str, tuple, tuple]] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)  # in the checkpoint only
    missing: list[str] = dataclasses.field(default_factory=list)  # in the model only

    def format(self, max_lines: int = 12) -> str:
        def listing(title, items):
            lines = [f"  {title}: {len(items)}"]
            lines += [f"    {item}" for item in items[:max_lines]]
            if len(items) > max_lines:
                lines.append(f"    ... and {len(items) - max_lines} more")
            return lines

        reinit = [f"{path}: checkpoint {list(old)} -> model {list(new)}"
                  for path, old, new in self.reinitialized]
        lines = [f"initialised from {self.source}",
                 f"  loaded: {len(self.loaded)} variables"]
        lines += listing("re-initialised (shape differs)", reinit)
        lines += listing("skipped (not in this model)", self.skipped)
        lines += listing("kept fresh (not in the checkpoint)", self.missing)
        return "\n".join(lines)


def merge_variables(fresh: dict, pretrained: dict, source: str = "checkpoint") -> tuple[dict, InitReport]:
    """`fresh` with every variable that `pretrained` has at the same path and shape."""
    report = InitReport(source)
    merged = {}
    for collection in COLLECTIONS:
        new = traverse_util.flatten_dict(fresh.get(collection, {}), sep="/")
        old = traverse_util.flatten_dict(pretrained.get(collection, {}), sep="/")
        out = {}
        for path, value in new.items():
            name = f"{collection}/{path}"
            if path not in old:
                report.missing.append(name)
                out[path] = value
            elif tuple(old[path].shape) != tuple(value.shape):
                report.reinitialized.append((name, tuple(old[path].shape), tuple(value.shape)))
                out[path] = value
            else:
                report.loaded.append(name)
                out[path] = np.asarray(jax.device_get(old[path])).astype(value.dtype)
        report.skipped += [f"{collection}/{p}" for p in old if p not in new]
        merged[collection] = traverse_util.unflatten_dict(out, sep="/")
    return merged, report


def load_pretrained(fresh: dict, path: str, which: str = "latest") -> tuple[dict, InitReport]:
    """Merge the variables of the checkpoint at `path` (workdir, checkpoints/ or a step
    folder) into `fresh`; see `merge_variables`."""
    # The newest (or best) sound step: damaged ones are set aside as for a resume.
    step_dir, (pretrained, _) = load_usable(path, read_variables, which=which)
    merged, report = merge_variables(fresh, pretrained, source=step_dir)
    share = loaded_share(fresh, report)
    if share < MIN_LOADED_SHARE:
        raise CheckpointError(
            f"config.checkpoint.init_from={path}: {step_dir} fills {100 * share:.0f}% of this "
            f"model's parameters ({len(report.loaded)} variables match by name and shape); expected "
            f"at least {100 * MIN_LOADED_SHARE:.0f}%: is it a checkpoint of another architecture?")
    return merged, report


def loaded_share(fresh: dict, report: InitReport) -> float:
    """Share of the parameters (by element count, params collection) `report` loaded."""
    sizes = {f"params/{path}": int(np.size(leaf))
             for path, leaf in traverse_util.flatten_dict(fresh.get("params", {}), sep="/").items()}
    total = sum(sizes.values())
    return sum(sizes.get(name, 0) for name in report.loaded) / total if total else 1.0


__all__ = ["InitReport", "load_pretrained", "merge_variables"]
