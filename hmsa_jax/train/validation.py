"""Validation during and at the end of training, through the evaluator `hmsa eval` runs
(hmsa_jax.evaluate): the confusion matrix over the eval split, the end-of-run comparison of one
checkpoint at single scale against the multi-scale fusions, and the validation pictures."""
from __future__ import annotations

import os

import jax
import numpy as np

from hmsa_jax import evaluate
from hmsa_jax.data.pipeline import close_iterator
from hmsa_jax.inference import InferenceOptions
from hmsa_jax.metrics import segmentation_scores
from hmsa_jax.multiscale import fusion_fits
from hmsa_jax.train import run_files
from hmsa_jax.visualize import picture_header, write_pictures

# The scale sets of the paper's Table 1 (and Mapillary's {0.25, 0.5, 1, 2}).
COMPARISON_SCALE_SETS = ((1.0,), (0.5, 1.0), (0.5, 1.0, 2.0), (0.25, 0.5, 1.0, 2.0))


def validation_options(model, scales, fusion: str) -> InferenceOptions:
    """The inference a validation at (scales, fusion) runs. A model with explicit attention
    always fuses the scales it was trained on (whatever `scales` says): it is evaluated so."""
    if model.attention == "explicit":
        return InferenceOptions(tuple(model.explicit_scales), "hierarchical")
    return InferenceOptions(tuple(scales), fusion)


def make_validation_fn(model, num_classes: int, mesh, scales=(1.0,), fusion: str = "hierarchical"):
    """The evaluator's jitted step (hmsa_jax.evaluate.make_eval_fn) for these scales and fusion."""
    return evaluate.make_eval_fn(model, num_classes, mesh, validation_options(model, scales, fusion))


def validate(eval_fn, variables, eval_ds, mesh, max_batches: int = 0) -> np.ndarray:
    """The [K, K] confusion matrix over the eval split (or its first max_batches batches)."""
    confusion, _ = evaluate.confusion_over(eval_fn, variables, eval_ds, mesh, max_batches=max_batches)
    return confusion


def comparison_variants(attention: str) -> list[tuple[tuple[float, ...], str]]:
    """(scales, fusion) pairs a model of this attention kind can be evaluated with."""
    if attention == "explicit":  # weights over the scales it was trained on, nothing else
        return [((0.5, 1.0, 2.0), "explicit")]
    fusions = tuple(f for f in ("hierarchical", "avg") if fusion_fits(f, attention, num_scales=2))
    return [(scales, fusion) for scales in COMPARISON_SCALE_SETS for fusion in fusions
            if len(scales) > 1 or fusion == fusions[0]]


def compare_scales(model, variables, eval_ds, mesh, num_classes: int,
                   class_names, max_batches: int = 0) -> list[dict]:
    """One row per (scales, fusion): mIoU and per-class IoU of the same variables."""
    rows = []
    for scales, fusion in comparison_variants(model.attention):
        eval_fn = make_validation_fn(model, num_classes, mesh, scales, fusion)
        scores = segmentation_scores(validate(eval_fn, variables, eval_ds, mesh, max_batches))
        rows.append({"scales": list(scales), "fusion": "single scale" if len(scales) == 1 else fusion,
                     "miou": float(scores["miou"]),
                     "iou": {n: float(v) for n, v in zip(class_names, scores["iou"])}})
    return rows


def format_comparison(rows: list[dict]) -> str:
    """A Markdown table: one row per inference, a column per class, IoU in percent."""
    names = list(rows[0]["iou"])
    pct = lambda v: "n/a" if not np.isfinite(v) else f"{100 * v:.1f}"
    lines = ["| inference | scales | mIoU | " + " | ".join(names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    for row in rows:
        scales = "{" + ", ".join(f"{s:g}" for s in row["scales"]) + "}"
        lines.append(f"| {row['fusion']} | {scales} | {pct(row['miou'])} | "
                     + " | ".join(pct(row["iou"][n]) for n in names) + " |")
    return "\n".join(lines)


def compare_and_report(model, variables, eval_ds, mesh, num_classes, class_names, config,
                       workdir: str | None, log) -> list[dict]:
    """The final checkpoint at single scale and each multi-scale fusion; printed and, on the
    main process, written to <workdir>/scale_comparison.{json,md}."""
    rows = compare_scales(model, variables, eval_ds, mesh, num_classes, class_names,
                          config.validation.max_batches)
    if workdir is not None:
        table = format_comparison(rows)
        run_files.write_json_atomically(os.path.join(workdir, "scale_comparison.json"), rows)
        with open(os.path.join(workdir, "scale_comparison.md"), "w") as f:
            f.write(table + "\n")
        log("The same checkpoint on the validation split, single scale and multi-scale (IoU %):\n" + table)
    return rows


def write_validation_pictures(config, model, state, eval_ds, classes, workdir: str) -> str:
    """Predictions and per-scale attention of the first validation images; the index page path."""
    iterator = iter(eval_ds)
    batch = next(iterator)
    close_iterator(iterator)
    count = min(config.validation.pictures, int(np.sum(batch["valid"])))
    options = InferenceOptions(tuple(config.validation.picture_scales),
                               "hierarchical" if getattr(model, "attention", "none") == "hierarchical"
                               else "avg")
    step = int(jax.device_get(state.step))
    step_dir = os.path.join(workdir, "checkpoints", str(step))
    header = picture_header(step_dir if os.path.isdir(step_dir) else workdir, step, config.model.name, options)
    header["pictures of"] = f"the first validation images ({config.data.dataset} {config.data.eval_split})"
    header.update(run_files.validation_heading(workdir))
    return write_pictures(
        model, jax.device_get(state.variables), batch["image"][:count], classes,
        os.path.join(workdir, "pictures"), scales=options.scales, fusion=options.fusion,
        normalized=config.data.augment.normalize,
        names=[f"val_{int(i)}" for i in batch["index"][:count]],
        title=f"hmsa train: validation pictures at step {step}", labels=batch["label"][:count],
        header=header)


__all__ = ["COMPARISON_SCALE_SETS", "compare_and_report", "compare_scales", "comparison_variants",
           "format_comparison", "make_validation_fn", "validate", "validation_options",
           "write_validation_pictures"]
