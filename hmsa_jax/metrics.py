"""Segmentation metrics: a confusion matrix accumulated under jit, and IoU tables from it.

Only pixels with 0 <= label < K count (the ignore label and any other out-of-range value are
dropped), and whole images can be masked out with `valid` (padding of the last eval batch).
Rows of the confusion matrix are ground truth, columns predictions.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def confusion_matrix(predictions: jax.Array, labels: jax.Array, num_classes: int,
                     valid: jax.Array | None = None) -> jax.Array:
    """[K, K] int32 counts of (label, prediction) pairs; predictions/labels [B, H, W] ints,
    valid [B] bool (None = every image)."""
    if predictions.shape != labels.shape:
        raise ValueError(f"confusion_matrix: predictions {predictions.shape} and labels "
                         f"{labels.shape} differ in shape")
    labels = labels.astype(jnp.int32)
    counted = (labels >= 0) & (labels < num_classes)
    if valid is not None:
        counted &= valid.reshape((-1,) + (1,) * (labels.ndim - 1))
    index = jnp.where(counted, labels * num_classes + predictions.astype(jnp.int32), 0)
    counts = jnp.bincount(index.ravel(), weights=counted.ravel().astype(jnp.int32),
                          length=num_classes * num_classes)
    return counts.astype(jnp.int32).reshape(num_classes, num_classes)


def segmentation_scores(confusion: np.ndarray) -> dict:
    """IoU per class and the summaries: mIoU (nan-mean over classes with any pixel in label or
    prediction), pixel accuracy, mean class accuracy (nan-mean over classes present in labels)."""
    confusion = np.asarray(confusion, np.float64)
    true_positive = np.diag(confusion)
    label_total = confusion.sum(axis=1)
    predicted_total = confusion.sum(axis=0)
    union = label_total + predicted_total - true_positive
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, true_positive / union, np.nan)
        class_accuracy = np.where(label_total > 0, true_positive / label_total, np.nan)
    total = confusion.sum()
    return {
        "iou": iou,
        "class_accuracy": class_accuracy,
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "pixel_accuracy": float(true_positive.sum() / total) if total else float("nan"),
        "mean_class_accuracy": (float(np.nanmean(class_accuracy))
                                if np.isfinite(class_accuracy).any() else float("nan")),
        "pixels": int(total),
    }


def format_scores(scores: dict, class_names: Sequence[str] | None = None) -> str:
    """A plain-text table: one row per class (IoU, accuracy), then the summaries, in percent."""
    iou, accuracy = scores["iou"], scores["class_accuracy"]
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(iou))]
    if len(names) != len(iou):
        raise ValueError(f"format_scores: {len(names)} class names for {len(iou)} classes")
    width = max(8, *(len(n) for n in names))
    pct = lambda v: "   n/a" if not np.isfinite(v) else f"{100 * v:6.2f}"
    lines = [f"{'class':<{width}}   IoU    acc"]
    lines += [f"{name:<{width}} {pct(i)} {pct(a)}" for name, i, a in zip(names, iou, accuracy)]
    lines.append(f"{'mIoU':<{width}} {pct(scores['miou'])}")
    lines.append(f"{'pixel acc':<{width}} {pct(scores['pixel_accuracy'])}")
    lines.append(f"{'mean acc':<{width}} {pct(scores['mean_class_accuracy'])}")
    return "\n".join(lines)


def scores_to_json(scores: dict, class_names: Sequence[str]) -> dict:
    """segmentation_scores as JSON values: fractions, None where a score is undefined."""
    as_float = lambda v: None if not np.isfinite(v) else float(v)
    return {"miou": as_float(scores["miou"]), "pixel_accuracy": as_float(scores["pixel_accuracy"]),
            "mean_class_accuracy": as_float(scores["mean_class_accuracy"]), "pixels": scores["pixels"],
            "per_class": {name: {"iou": as_float(i), "accuracy": as_float(a)}
                          for name, i, a in zip(class_names, scores["iou"], scores["class_accuracy"])}}


__all__ = ["confusion_matrix", "format_scores", "scores_to_json", "segmentation_scores"]
