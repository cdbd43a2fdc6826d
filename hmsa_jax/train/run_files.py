"""Text files a training run leaves in its workdir besides metrics.jsonl and checkpoints:
scores.json / scores.txt (the latest validation's per-class table) and init_from.txt (what
`checkpoint.init_from` loaded). Written by process 0, each replaced whole (tmp + rename)."""
from __future__ import annotations

import json
import os
from typing import Sequence

from hmsa_jax.metrics import format_scores, scores_to_json

SCORES_JSON, SCORES_TEXT, INIT_REPORT = "scores.json", "scores.txt", "init_from.txt"


def _replace(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


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


def write_init_report(workdir: str, report_text: str) -> str:
    path = os.path.join(workdir, INIT_REPORT)
    _replace(path, report_text + "\n")
    return path


__all__ = ["INIT_REPORT", "SCORES_JSON", "SCORES_TEXT", "scores_heading", "scores_report",
           "write_init_report", "write_scores"]
