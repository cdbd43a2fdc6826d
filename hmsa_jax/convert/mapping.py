"""Place a PyTorch state dict into a model's variable tree, and account for every tensor.

Each checkpoint tensor ends up in exactly one list of the report: loaded, skipped (no such
variable in the model), shape-mismatched (left at initialisation), or ignored
(`num_batches_tracked`, which carries no information). Every model variable no tensor was
loaded into is listed as missing or mismatched. Names are mapped by the rule in
`hmsa_jax.models.torch_names`; conv kernels go OIHW -> HWIO.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from hmsa_jax.models.torch_names import from_torch_layout, torch_key

IGNORED_SUFFIX = ".num_batches_tracked"
TRUNK_PREFIX = "backbone."
# The ImageNet HRNet's classification head: not part of any segmentation model.
CLASSIFICATION_ONLY_PREFIXES = ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier.")
# The final classifier of each architecture, in torch names: its rows are the classes.
CLASSIFIER_KEYS = ("ocr.cls_head.weight", "final.6.weight")
# A conversion must fill at least this share of the model's variables (an ImageNet trunk fills
# 56-90% of the models here); less means --arch is not the checkpoint's architecture.
MIN_LOADED_SHARE = 0.25
INIT_IMAGE_SIZE = (64, 64)  # HRNet's coarsest branch is stride 32: 64 leaves it 2x2


class ConversionError(ValueError):
    """A --strict conversion that was not a full match; `report` says what did not match."""

    def __init__(self, message: str, report: "ConversionReport | None" = None):
        super().__init__(message)
        self.report = report


@dataclasses.dataclass
class ConversionReport:
    source: str
    model: str
    num_classes: int
    loaded: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)
    mismatched: list[dict] = dataclasses.field(default_factory=list)
    ignored: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def full_match(self) -> bool:
        return not (self.skipped or self.missing or self.mismatched)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "full_match": self.full_match}

    def summary(self, max_listed: int = 20) -> str:
        lines = [f"{self.source} -> {self.model} ({self.num_classes} classes)",
                 f"  loaded     {len(self.loaded):5d}",
                 f"  skipped    {len(self.skipped):5d}  (in the checkpoint, not in the model)",
                 f"  missing    {len(self.missing):5d}  (in the model, not in the checkpoint: left at initialisation)",
                 f"  mismatched {len(self.mismatched):5d}  (shapes differ: left at initialisation)",
                 f"  ignored    {len(self.ignored):5d}  (num_batches_tracked)"]
        lines += [f"  note: {note}" for note in self.notes]
        mismatched = [f"{m['key']}: checkpoint {tuple(m['checkpoint_shape'])} vs model {tuple(m['model_shape'])}"
                      for m in self.mismatched]
        for title, keys in (("skipped", self.skipped), ("missing", self.missing), ("mismatched", mismatched)):
            if keys:
                lines.append(f"  {title}:")
                lines += [f"    {k}" for k in keys[:max_listed]]
                if len(keys) > max_listed:
                    lines.append(f"    ... and {len(keys) - max_listed} more (see the JSON report)")
        lines.append("  FULL MATCH" if self.full_match else "  NOT a full match")
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class ModelSlot:
    """Where a torch key lives in our tree, and the shape/dtype it must have there."""
    flat_key: tuple[str, ...]   # (collection, *module path, leaf)
    shape: tuple[int, ...]      # our layout (HWIO for conv kernels)
    dtype: Any


def model_slots(abstract_variables: Mapping) -> dict[str, ModelSlot]:
    """{torch key: slot} for every params / batch_stats leaf of a (possibly abstract) variable tree."""
    slots = {}
    for flat_key, leaf in traverse_util.flatten_dict(dict(abstract_variables)).items():
        collection, path = flat_key[0], flat_key[1:]
        if collection not in ("params", "batch_stats"):
            continue
        slots[torch_key(collection, path)] = ModelSlot(flat_key, tuple(leaf.shape), leaf.dtype)
    return slots


def is_trunk_only(keys, slots: Mapping[str, ModelSlot]) -> bool:
    """An ImageNet classification checkpoint: trunk keys without the `backbone.` prefix."""
    if any(k.startswith(TRUNK_PREFIX) for k in keys):
        return False
    return any(TRUNK_PREFIX + k in slots for k in keys)


def model_key_for(checkpoint_key: str, trunk_only: bool) -> str:
    if trunk_only and not checkpoint_key.startswith(CLASSIFICATION_ONLY_PREFIXES):
        return TRUNK_PREFIX + checkpoint_key
    return checkpoint_key


def infer_num_classes(state: Mapping[str, np.ndarray]) -> int | None:
    """Rows of the final classifier, or None when the checkpoint has none (an ImageNet trunk)."""
    for key in CLASSIFIER_KEYS:
        if key in state:
            return int(state[key].shape[0])
    return None


def plan_placement(state: Mapping[str, np.ndarray], slots: Mapping[str, ModelSlot],
                   report: ConversionReport) -> dict[str, ModelSlot]:
    """Sort every checkpoint key into the report's lists; return {checkpoint key: slot} to load.

    Looks at names and shapes only: cheap enough to run before deciding anything.
    """
    trunk_only = is_trunk_only(state, slots)
    if trunk_only:
        report.notes.append(f"trunk-only checkpoint (ImageNet classification): its keys were read as "
                            f"'{TRUNK_PREFIX}<key>'; its classification head is skipped")
    to_load: dict[str, ModelSlot] = {}
    for checkpoint_key, array in state.items():
        if checkpoint_key.endswith(IGNORED_SUFFIX):
            report.ignored.append(checkpoint_key)
            continue
        key = model_key_for(checkpoint_key, trunk_only)
        slot = slots.get(key)
        if slot is None:
            report.skipped.append(checkpoint_key)
        elif tuple(np.shape(array)) != _torch_shape(slot.shape):
            report.mismatched.append({"key": key, "checkpoint_shape": list(np.shape(array)),
                                      "model_shape": list(_torch_shape(slot.shape))})
        else:
            to_load[checkpoint_key] = slot
            report.loaded.append(key)
    placed = {slot.flat_key for slot in to_load.values()}
    mismatched_keys = {m["key"] for m in report.mismatched}
    report.missing.extend(k for k, slot in slots.items() if slot.flat_key not in placed and k not in mismatched_keys)
    return to_load


def place_state_dict(state: Mapping[str, np.ndarray], abstract_variables: Mapping,
                     initial_variables: Callable[[], Mapping], report: ConversionReport) -> dict:
    """Return a full variables dict: checkpoint values where they fit, `initial_variables()` elsewhere.

    `state` is in torch layout, keys without `module.`. `initial_variables` is called only when
    some variable is left unloaded (so a full match never pays for a model init). Fills `report`.
    """
    slots = model_slots(abstract_variables)
    to_load = plan_placement(state, slots, report)
    values = {slot.flat_key: np.ascontiguousarray(from_torch_layout(np.asarray(state[key])), dtype=slot.dtype)
              for key, slot in to_load.items()}
    if len(values) < len(slots):
        initial = traverse_util.flatten_dict(dict(initial_variables()))
        for slot in slots.values():
            if slot.flat_key not in values:
                values[slot.flat_key] = np.asarray(initial[slot.flat_key])
    return traverse_util.unflatten_dict(values)


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape


def _init_fn(model):
    """model.init through the cheapest method that still creates every variable.

    One scale creates them all unless the model has an explicit-attention head, which only the
    multi-scale `explicit` forward builds. Parameter RNGs follow module paths, so the values
    are those of a full `model.init` with the same seed.
    """
    method = model.explicit if model.attention == "explicit" else model.one_scale
    return functools.partial(model.init, train=False, method=method)


def abstract_model_variables(model) -> dict:
    """The model's variable tree as ShapeDtypeStructs (nothing computed)."""
    images = jax.ShapeDtypeStruct((1, *INIT_IMAGE_SIZE, 3), jnp.float32)
    return jax.eval_shape(_init_fn(model), jax.random.key(0), images)


def initial_model_variables(model, seed: int = 0) -> dict:
    """The model's own initialisation (what training from scratch would start from)."""
    images = jnp.zeros((1, *INIT_IMAGE_SIZE, 3), jnp.float32)
    key = jax.random.key(seed)
    lowered = jax.jit(_init_fn(model)).lower(key, images)
    # Run once: XLA:CPU's LLVM optimisation would cost minutes on a full-size model (W48 init:
    # >3.5 min at the default level, ~1.5 min at level 0 on a 2-core CPU) and save nothing.
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    return lowered.compile(compiler_options=options)(key, images)


def loaded_share(report: ConversionReport, slots: Mapping[str, ModelSlot]) -> float:
    """Share of the model's variables (by element count) that `report` loads."""
    sizes = {key: int(np.prod(slot.shape)) for key, slot in slots.items()}
    total = sum(sizes.values())
    return sum(sizes.get(key, 0) for key in report.loaded) / total if total else 1.0


def convert_state_dict(state: Mapping[str, np.ndarray], model, *, source: str, model_name: str,
                       strict: bool = False, seed: int = 0) -> tuple[dict, ConversionReport]:
    """State dict (torch layout, no `module.`) -> (variables {"params", "batch_stats"}, report).

    With `strict`, anything but a full match raises ConversionError carrying the report.
    """
    report = ConversionReport(source=source, model=model_name, num_classes=model.num_classes)
    abstract = abstract_model_variables(model)
    # Decide on names and shapes, before any array is copied or initialised.
    trial = ConversionReport(source=source, model=model_name, num_classes=model.num_classes)
    slots = model_slots(abstract)
    plan_placement(state, slots, trial)
    if strict and not trial.full_match:
        raise ConversionError(f"--strict: not a full match\n{trial.summary()}", trial)
    share = loaded_share(trial, slots)
    if share < MIN_LOADED_SHARE:
        raise ConversionError(
            f"{source}: fills {100 * share:.0f}% of model {model_name!r}'s variables "
            f"({len(trial.loaded)} tensors match by name and shape, {len(trial.skipped)} do not); "
            f"expected at least {100 * MIN_LOADED_SHARE:.0f}%: is --arch the checkpoint's architecture?",
            trial)
    variables = place_state_dict(state, abstract, lambda: initial_model_variables(model, seed), report)
    return {k: variables[k] for k in ("params", "batch_stats") if k in variables}, report
