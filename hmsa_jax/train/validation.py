"""Validation during and at the end of training: the confusion matrix over the eval split, and
the end-of-run comparison of one checkpoint at single scale against the multi-scale fusions."""
from __future__ import annotations

import numpy as np

from hmsa_jax import parallel
from hmsa_jax.metrics import segmentation_scores
from hmsa_jax.multiscale import fusion_fits
from hmsa_jax.train import step as step_lib

# The scale sets of the paper's Table 1 (and Mapillary's {0.25, 0.5, 1, 2}).
COMPARISON_SCALE_SETS = ((1.0,), (0.5, 1.0), (0.5, 1.0, 2.0), (0.25, 0.5, 1.0, 2.0))


def validate(eval_fn, variables, eval_ds, mesh, max_batches: int = 0) -> np.ndarray:
    """The [K, K] confusion matrix over the eval split (or its first max_batches batches)."""
    confusion = None
    for index, batch in enumerate(eval_ds):
        if max_batches and index >= max_batches:
            break
        arrays = parallel.global_batch({k: batch[k] for k in ("image", "label", "valid")}, mesh)
        counts = eval_fn(variables, arrays)
        confusion = counts if confusion is None else confusion + counts
    # Replicated: every process holds the whole matrix.
    return np.asarray(confusion.addressable_data(0)).astype(np.int64)


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
        eval_fn = step_lib.jit_eval_step(model, num_classes, mesh, scales,
                                         "hierarchical" if fusion == "explicit" else fusion)
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


__all__ = ["COMPARISON_SCALE_SETS", "compare_scales", "comparison_variants", "format_comparison",
           "validate"]
