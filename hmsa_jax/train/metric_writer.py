"""What a training run logs for plotting: metrics.jsonl (one JSON object per line) and
TensorBoard event files (scalars, per-class IoU, the config as text, validation pictures)."""
from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image


class MetricWriter:
    """metrics.jsonl and TensorBoard event files under `workdir`; process 0 only (`enabled`)."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        from tensorboardX import SummaryWriter  # 1.6 s of imports: process 0 of a run only

        path = os.path.join(workdir, "metrics.jsonl")
        drop_partial_last_line(path)
        self._jsonl = open(path, "a")
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        scalars = {k: float(v) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        self._jsonl.flush()
        for key, value in scalars.items():
            self._tb.add_scalar(key, value, step)
        self._tb.flush()

    def write_tensorboard_scalars(self, step: int, scalars: dict) -> None:
        """Scalars for TensorBoard only (per-class IoU: too wide for metrics.jsonl)."""
        if not self.enabled:
            return
        for key, value in scalars.items():
            self._tb.add_scalar(key, value, step)
        self._tb.flush()

    def write_text(self, tag: str, text: str, step: int = 0) -> None:
        if self.enabled:
            self._tb.add_text(tag, text, step)
            self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def drop_partial_last_line(path: str) -> None:
    """Cut a line a killed process left half-written, so appended lines stay parseable."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def class_iou_scalars(scores: dict, class_names) -> dict:
    """{"val/iou/<class>": IoU} for the classes with a defined IoU."""
    return {f"val/iou/{name}": float(iou) for name, iou in zip(class_names, scores["iou"])
            if np.isfinite(iou)}


def config_as_markdown(resolved: dict) -> str:
    """The resolved config as a Markdown code block (TensorBoard's text tab renders Markdown)."""
    return "\n".join("    " + line for line in json.dumps(resolved, indent=2).splitlines())


def pictures_to_tensorboard(pictures_dir: str, workdir: str, step: int) -> int:
    """Every PNG of the validation pictures as a TensorBoard image (tag pictures/<file name>);
    returns how many. A writer of its own: the run's writer is closed by now."""
    from tensorboardX import SummaryWriter  # as in MetricWriter: imported where it writes

    paths = sorted(p for p in os.listdir(pictures_dir) if p.endswith(".png"))
    with SummaryWriter(os.path.join(workdir, "tensorboard")) as tb:
        for name in paths:
            with Image.open(os.path.join(pictures_dir, name)) as picture:
                pixels = np.asarray(picture.convert("RGB"))
            tb.add_image(f"pictures/{name[:-len('.png')]}", pixels, step, dataformats="HWC")
    return len(paths)


__all__ = ["MetricWriter", "class_iou_scalars", "config_as_markdown", "drop_partial_last_line",
           "pictures_to_tensorboard"]
