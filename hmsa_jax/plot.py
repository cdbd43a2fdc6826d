"""`hmsa plot RUN... [--out=FILE]`: training curves of one or more runs as one PNG.

Each RUN is a training workdir (or its metrics.jsonl). Four panels: loss, learning rate,
throughput (images/s) and validation mIoU against the step, one colour per run, so runs
overlay. A step logged twice (a run resumed from an older checkpoint re-logs the steps after
it) keeps its latest value. Default output: <first RUN>/curves.png.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from matplotlib.figure import Figure

METRICS_FILE = "metrics.jsonl"
# (metrics.jsonl key, panel title, factor applied to the values)
PANELS = (("loss", "training loss", 1.0), ("learning_rate", "learning rate", 1.0),
          ("images_per_s", "throughput (images/s)", 1.0), ("val/miou", "validation mIoU (%)", 100.0))


class PlotError(ValueError):
    """A run folder or metrics file that cannot be plotted; the message names it."""


def metrics_path(run: str) -> str:
    path = os.path.join(run, METRICS_FILE) if os.path.isdir(run) else run
    if not os.path.isfile(path):
        raise PlotError(f"{run}: no {METRICS_FILE} (expected a training workdir or its {METRICS_FILE})")
    return path


def read_metrics(path: str) -> list[dict]:
    """The records of a metrics.jsonl; a half-written last line (a run in progress) is left out."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # no newline yet: still being written
                continue
            raise PlotError(f"{path}: line {number} is not JSON: {line[:80]!r}") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise PlotError(f"{path}: line {number} has no integer 'step': {line[:80]!r}")
        records.append(record)
    return records


def curves(records: Sequence[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """{key: (steps ascending, values)} for each panel's key found in the records."""
    latest: dict[str, dict[int, float]] = {}
    for record in records:
        for key, _, factor in PANELS:
            if isinstance(record.get(key), (int, float)):
                latest.setdefault(key, {})[record["step"]] = factor * record[key]
    return {key: (sorted(by_step), [by_step[s] for s in sorted(by_step)]) for key, by_step in latest.items()}


def run_labels(runs: Sequence[str]) -> list[str]:
    """Folder names, or the paths as given where two runs share a name."""
    names = [os.path.basename(os.path.normpath(os.path.dirname(metrics_path(r)))) or r for r in runs]
    return [name if names.count(name) == 1 else run for name, run in zip(names, runs)]


def draw(run_curves: dict[str, dict], out: str) -> None:
    """One PNG, 2 x 2 panels, a line per run per panel."""
    figure = Figure(figsize=(11, 7.5), layout="constrained")
    axes = figure.subplots(2, 2, sharex=True).ravel()  # one step axis: validation points line up
    colours = [f"C{k % 10}" for k in range(len(run_curves))]
    for ax, (key, title, _) in zip(axes, PANELS):
        ax.set_title(title)
        ax.grid(alpha=0.3)
        drawn = False
        for colour, (label, by_key) in zip(colours, run_curves.items()):
            if key in by_key:
                steps, values = by_key[key]
                ax.plot(steps, values, color=colour, label=label, marker="o" if len(steps) < 20 else None,
                        markersize=3)
                drawn = True
        if not drawn:
            ax.text(0.5, 0.5, f"no '{key}' in these runs", ha="center", va="center", transform=ax.transAxes,
                    color="grey")
        elif key == "learning_rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    for ax in axes[2:]:
        ax.set_xlabel("step")
    axes[0].legend(loc="best", fontsize="small")
    figure.suptitle("hmsa training curves")
    figure.savefig(out, dpi=110)


def plot_runs(runs: Sequence[str], out: str) -> dict[str, dict]:
    """Read every run, draw them into `out`; returns {label: curves} (what was drawn)."""
    run_curves = {}
    for label, run in zip(run_labels(runs), runs):
        path = metrics_path(run)
        found = curves(read_metrics(path))
        if not found:
            raise PlotError(f"{path}: no loss, learning_rate, images_per_s or val/miou values")
        run_curves[label] = found
    directory = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(directory):
        raise PlotError(f"--out={out}: folder {directory} does not exist")
    if os.path.isdir(out):
        raise PlotError(f"--out={out}: is a folder; name the PNG file")
    try:
        draw(run_curves, out)
    except OSError as error:
        raise PlotError(f"--out={out}: cannot write it ({error.strerror or error})") from None
    return run_curves


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hmsa plot", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("runs", nargs="+", metavar="RUN", help="training workdirs or metrics.jsonl files")
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="the PNG to write (default: <first RUN>/curves.png)")
    args = parser.parse_args(argv)
    try:
        out = args.out or os.path.join(os.path.dirname(metrics_path(args.runs[0])), "curves.png")
        drawn = plot_runs(args.runs, out)
    except PlotError as error:
        print(f"hmsa plot: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({', '.join(drawn)})")
    return 0


__all__ = ["PANELS", "PlotError", "curves", "draw", "metrics_path", "plot_runs", "read_metrics",
           "run_labels"]
