"""One PNG of the benchmark results: training FLOPs and memory per scale scheme, training
throughput per dtype/remat variant, inference throughput per scale set.

    python benchmarks/plot.py --results benchmarks/results --out benchmarks/results/benchmarks.png
"""
from __future__ import annotations

import argparse
import glob
import json
import os

import common


def load(results_dir: str, pattern: str) -> list[dict]:
    reports = []
    for path in sorted(glob.glob(os.path.join(results_dir, pattern))):
        with open(path) as f:
            reports.append(json.load(f))
    return reports


def scheme_series(reports: list[dict], key: str) -> dict[str, dict[str, float]]:
    """{'<family> <size> <analysis>': {scheme: value}} for rows that have `key`."""
    series = {}
    for report in reports:
        for row in report.get("rows", []):
            if row.get(key) is not None:
                label = f"{report['family']} {row['size']} ({report['analysis']})"
                series.setdefault(label, {})[row["scheme"]] = row[key]
    return series


def grouped_bars(ax, series: dict[str, dict[str, float]], categories: list[str], ylabel: str, title: str):
    width = 0.8 / max(len(series), 1)
    for i, (label, values) in enumerate(series.items()):
        xs = [c + i * width for c in range(len(categories))]
        ax.bar(xs, [values.get(c, 0.0) for c in categories], width, label=label)
    ax.set_xticks([c + width * (len(series) - 1) / 2 for c in range(len(categories))])
    ax.set_xticklabels(categories, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if series:
        ax.legend(fontsize=6)


def plot(results_dir: str, out: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    schemes = ["single", "hierarchical", "explicit"]
    scheme_reports = load(results_dir, "scale_schemes*.json")
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    flops = scheme_series(scheme_reports, "flops_ratio")
    grouped_bars(axes[0, 0], flops, schemes, "FLOPs / single scale", "Training step FLOPs per scheme")
    axes[0, 0].scatter(range(3), [1.0, 1.25, 5.25], marker="_", s=400, color="k", zorder=3,
                       label="paper")
    axes[0, 0].legend(fontsize=6)
    memory = scheme_series(scheme_reports, "temp_ratio")
    grouped_bars(axes[0, 1], memory, schemes, "XLA temp memory / single scale",
                 "Training step temporary memory per scheme")

    ax = axes[1, 0]
    for report in load(results_dir, "train_throughput.json"):
        rows = report["rows"]
        short = {"float32": "f32", "bfloat16": "bf16"}
        labels = [f"{short.get(r['dtype'], r['dtype'])}/{r['remat']}" for r in rows]
        ax.bar(labels, [r["images_per_s"] for r in rows], color="tab:blue")
        ax.set_ylabel("images/s per device")
        mem_ax = ax.twinx()
        mem = [r.get("peak_memory_mib") or r.get("temp_mib") or 0 for r in rows]
        mem_ax.plot(labels, mem, "o", color="tab:red")
        mem_ax.set_ylim(0, max(mem + [1]) * 1.2)
        mem_ax.set_ylabel("peak device / XLA temp memory (MiB)", color="tab:red")
        ax.set_title(f"Training {rows[0]['model']} {rows[0]['size']} "
                     f"({report['machine']['device_kind']})", fontsize=9)

    ax = axes[1, 1]
    for report in load(results_dir, "inference.json"):
        rows = report["rows"]
        sets = list(dict.fromkeys(r["scales"] for r in rows))
        for flip, offset in ((False, -0.2), (True, 0.2)):
            values = {r["scales"]: r["images_per_s"] for r in rows if r["flip"] == flip}
            ax.bar([i + offset for i in range(len(sets))], [values.get(s, 0) for s in sets], 0.4,
                   label="flip" if flip else "no flip")
        ax.set_xticks(range(len(sets)))
        ax.set_xticklabels(["{" + s + "}" for s in sets], fontsize=7)
        ax.set_ylabel("images/s")
        ax.set_title(f"Inference {rows[0]['model']} {rows[0]['size']} "
                     f"({report['machine']['device_kind']})", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    print(f"wrote {out}")
    return out


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=common.RESULTS_DIR)
    parser.add_argument("--out", default=None, help="default <results>/benchmarks.png")
    args = parser.parse_args(argv)
    return plot(args.results, args.out or os.path.join(args.results, "benchmarks.png"))


if __name__ == "__main__":
    main()
