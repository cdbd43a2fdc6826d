"""The paper's Table 1 on the built-in scale benchmark: which multi-scale scheme wins?

    python benchmarks/scale_study.py [--families resnet hrnet] [--seeds 0 1 2] [--steps 500]

Trains, with one recipe (configs/scale_bench.py:study), for each model family and seed:
  single        the single-scale network (attention none), trained at 1.0
  average       the same network trained on {lo, 1.0} with averaged logits (scale_mode=average)
  explicit      explicit attention over {0.5, 1.0, 2.0} (Chen et al. 2016), trained on all three
  hierarchical  the paper's two-scale hierarchical attention
and evaluates each on the benchmark's validation split at the scale sets where it applies:
{1}, {0.5, 1}, {0.5, 1, 2}, {0.25, 0.5, 1, 2} (avg fusion for the networks without attention,
hierarchical fusion for the attention model; explicit only on the scales it was trained on).
Every single-scale result is also given per scale (0.25x, 0.5x, 1x, 2x), which verifies the
construction: the thin classes should fail at 0.5x, the large ones do worse at 1x or 2x.

One run takes minutes on a 2-core CPU; runs are done one at a time, each in its own workdir
under --workdir, and a finished run's result.json is reused: interrupt the study at any point
and run the same command again to continue it. Writes scale_study.json and scale_study.md
under --out (mean and spread over seeds per cell, per-class IoU, mean attention per class group).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from hmsa_jax import multiscale, ops
from hmsa_jax.configlib import load_config
from hmsa_jax.data.build import build_source
from hmsa_jax.data.sources.scale_bench import LARGE_CLASSES, THIN_CLASSES
from hmsa_jax.data.transforms import normalize_image
from hmsa_jax.inference import scale_weights
from hmsa_jax.loading import load_model
from hmsa_jax.train.loop import train
from hmsa_jax.train.run_files import write_json_atomically

from attention_study import ClassTally  # benchmarks/ is on the path of a script run from it

FAMILIES = {"resnet": "resnet_tiny_deeplabv3plus", "hrnet": "hrnet_tiny_ocr"}
# method -> (model-name suffix, train.scale_mode)
METHODS = {"single": ("", "model"), "average": ("", "average"),
           "explicit": ("_explicit", "model"), "hierarchical": ("_mscale", "model")}
SCALE_SETS = {"{1}": (1.0,), "{0.5,1}": (0.5, 1.0), "{0.5,1,2}": (0.5, 1.0, 2.0),
              "{0.25,0.5,1,2}": (0.25, 0.5, 1.0, 2.0)}
ALL_SCALES = (0.25, 0.5, 1.0, 2.0)
CONFIG = "configs/scale_bench.py:study"


def run_config(family: str, method: str, seed: int, steps: int, overrides: list[str], config_arg: str = CONFIG):
    suffix, scale_mode = METHODS[method]
    argv = [f"--config={config_arg}", f"--config.model.name={FAMILIES[family]}{suffix}",
            f"--config.train.scale_mode={scale_mode}", f"--config.train.seed={seed}",
            f"--config.data.seed={seed}", *overrides]
    if steps:
        argv.append(f"--config.train.steps={steps}")
    return load_config(argv)[0]


def validation_set(config) -> tuple[np.ndarray, np.ndarray]:
    source = build_source(config.data, config.data.eval_split, "eval")
    records = [source.load(i) for i in range(len(source))]
    return (normalize_image(np.stack([r["image"] for r in records])),
            np.stack([r["label"] for r in records]).astype(np.int64))


def make_outputs_fn(model):
    """images -> ({variant: predictions}, {map name: [B, H, W] values}) for one checkpoint."""
    def single_scale_variants(per_scale):
        target = per_scale[1.0]["logits"]
        logits = {f"{s:g}x": ops.resize_like(per_scale[s]["logits"], target) for s in ALL_SCALES}
        fusion = "hierarchical" if model.attention == "hierarchical" else "avg"
        for name, scales in SCALE_SETS.items():
            if len(scales) > 1:
                logits[name] = multiscale.FUSIONS[fusion]({s: per_scale[s] for s in scales})["logits"]
        return logits

    @jax.jit
    def outputs(variables, images):
        maps = {}
        if model.attention == "explicit":
            out = model.apply(variables, images, train=False)
            logits = {"{0.5,1,2}": out["logits"]}
            logits.update({f"{s:g}x": ops.resize_like(o["logits"], out["logits"])
                           for s, o in out["per_scale"].items()})
            maps = {f"w{s:g}x": out["scale_weights"][..., i] for i, s in enumerate(model.explicit_scales)}
        else:
            out = model.apply(variables, images, train=False, scales=ALL_SCALES, fusion="avg")
            per_scale = out["per_scale"]
            logits = single_scale_variants(per_scale)
            if model.attention == "hierarchical":
                size = images.shape[1:3]
                maps["a0.5 vs 1x"] = ops.resize_bilinear(per_scale[0.5]["attention"], size)[..., 0]
                maps["a1 vs 2x"] = per_scale[1.0]["attention"][..., 0]
                three = {s: per_scale[s]["attention"] for s in (0.5, 1.0, 2.0)}
                maps.update({f"w{s:g}x": w for s, w in scale_weights(three, size).items()})
        return {k: jnp.argmax(v, -1).astype(jnp.uint8) for k, v in logits.items()}, maps

    return outputs


def evaluate(workdir: str, images: np.ndarray, labels: np.ndarray, batch_size: int = 16) -> dict:
    loaded = load_model(workdir)
    names = loaded.classes.names
    outputs = make_outputs_fn(loaded.model)
    tally = ClassTally(loaded.num_classes)
    for first in range(0, len(images), batch_size):
        tally.add(labels[first:first + batch_size], *outputs(loaded.variables, images[first:first + batch_size]))
    scores = tally.scores()
    groups = {"large": [names.index(n) for n in LARGE_CLASSES], "thin": [names.index(n) for n in THIN_CLASSES]}
    return {
        "checkpoint": loaded.path,
        "miou": {key: float(s["miou"]) for key, s in scores.items()},
        "iou": {key: dict(zip(names, map(float, s["iou"]))) for key, s in scores.items()},
        "attention": {key: {g: tally.group_mean(key, ks) for g, ks in groups.items()} for key in tally.map_sums},
    }


def run_one(root: str, family: str, method: str, seed: int, steps: int, overrides: list[str],
            data, config_arg: str = CONFIG) -> dict:
    workdir = os.path.join(root, family, method, f"seed{seed}")
    result_path = os.path.join(workdir, "result.json")
    if os.path.exists(result_path):
        with open(result_path) as f:
            return json.load(f)
    config = run_config(family, method, seed, steps, overrides, config_arg)
    start = time.perf_counter()
    summary = train(config, workdir, log=lambda _: None)
    seconds = time.perf_counter() - start
    result = {"family": family, "method": method, "seed": seed, "model": config.model.name,
              "steps": summary["steps"], "train_seconds": round(seconds, 1),
              "final_loss": summary["final_loss"], **evaluate(workdir, *data)}
    write_json_atomically(result_path, result)
    return result


def aggregate(results: list[dict]) -> dict:
    """{family: {method: {"miou": {variant: [mean, std, n]}, "iou": ..., "attention": ...}}}."""
    table = {}
    for r in results:
        table.setdefault(r["family"], {}).setdefault(r["method"], []).append(r)
    stats = lambda values: [float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                            len(values)]
    out = {}
    for family, methods in table.items():
        for method, runs in methods.items():
            cell = {"seeds": [r["seed"] for r in runs],
                    "train_seconds": stats([r["train_seconds"] for r in runs]),
                    "miou": {v: stats([100 * r["miou"][v] for r in runs]) for v in runs[0]["miou"]},
                    "iou": {v: {c: stats([100 * r["iou"][v][c] for r in runs]) for c in runs[0]["iou"][v]}
                            for v in runs[0]["iou"]},
                    "attention": {m: {g: stats([r["attention"][m][g] for r in runs]) for g in runs[0]["attention"][m]}
                                  for m in runs[0]["attention"]}}
            out.setdefault(family, {})[method] = cell
    return out


TABLE_ROWS = (  # (method, variant, the paper's row)
    ("single", "1x", "single scale"),
    ("single", "2x", "single scale, input upscaled 2x (not in the paper)"),
    ("single", "{0.5,1,2}", "multi-scale inference, average (paper's 'average')"),
    ("average", "{0.5,1}", "two-scale training, average"),
    ("average", "{0.5,1,2}", "two-scale training, average"),
    ("explicit", "{0.5,1,2}", "explicit attention (trained on 3 scales)"),
    ("hierarchical", "1x", "hierarchical model, 1x only"),
    ("hierarchical", "{0.5,1}", "hierarchical"),
    ("hierarchical", "{0.5,1,2}", "hierarchical"),
    ("hierarchical", "{0.25,0.5,1,2}", "hierarchical + 0.25x"),
)


def format_tables(summary: dict, class_names) -> str:
    pm = lambda s: f"{s[0]:.1f} ± {s[1]:.1f}"
    lines = []
    for family, methods in summary.items():
        n = max(len(m["seeds"]) for m in methods.values())
        lines += [f"### {family} (mean ± std over up to {n} seeds)", "",
                  "| method | eval scales | mIoU | " + " | ".join(class_names) + " | train s |",
                  "|---|---|---|" + "---|" * len(class_names) + "---|"]
        for method, variant, _ in TABLE_ROWS:
            cell = methods.get(method)
            if cell is None or variant not in cell["miou"]:
                continue
            ious = " | ".join(pm(cell["iou"][variant][c]) for c in class_names)
            lines.append(f"| {method} (n={len(cell['seeds'])}) | {variant} | {pm(cell['miou'][variant])} | "
                         f"{ious} | {cell['train_seconds'][0]:.0f} |")
        lines += ["", "Single scales of each trained network (construction check):", "",
                  "| method | scale | mIoU | " + " | ".join(class_names) + " |",
                  "|---|---|---|" + "---|" * len(class_names)]
        for method, cell in methods.items():
            for s in ALL_SCALES:
                key = f"{s:g}x"
                if key in cell["miou"]:
                    ious = " | ".join(pm(cell["iou"][key][c]) for c in class_names)
                    lines.append(f"| {method} | {key} | {pm(cell['miou'][key])} | {ious} |")
        lines += ["", "Mean attention / scale weight over ground-truth pixels of each class group:", "",
                  "| method | map | large (field, water) | thin (wire, dot) |", "|---|---|---|---|"]
        for method, cell in methods.items():
            for m, groups in cell["attention"].items():
                lines.append(f"| {method} | {m} | {groups['large'][0]:.3f} ± {groups['large'][1]:.3f} | "
                             f"{groups['thin'][0]:.3f} ± {groups['thin'][1]:.3f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["resnet"], choices=sorted(FAMILIES))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=0, help="0: the recipe's train.steps")
    parser.add_argument("--workdir", default="runs/scale_study")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--config", default=CONFIG, help="the recipe (a config file and preset)")
    parser.add_argument("--override", action="append", default=[],
                        help="a --config.x=y override for every run (changes the recipe: use a new --workdir)")
    args = parser.parse_args(argv)
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser("~/.cache/hmsa_jax/jax_cache"))
    data = validation_set(run_config(args.families[0], "single", 0, args.steps, args.override, args.config))
    results = []
    for seed in args.seeds:  # seed-major, so that an interrupted study has whole seeds
        for family in args.families:
            for method in args.methods:
                start = time.perf_counter()
                result = run_one(args.workdir, family, method, seed, args.steps, args.override, data,
                                 args.config)
                results.append(result)
                print(f"{family} {method} seed {seed}: mIoU " + ", ".join(
                    f"{k} {100 * v:.1f}" for k, v in result["miou"].items() if k.startswith("{"))
                    + f" ({time.perf_counter() - start:.0f} s)", flush=True)
    summary = aggregate(results)
    class_names = list(next(iter(results))["iou"]["1x"])
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "scale_study.json"), "w") as f:
        json.dump({"recipe": args.config, "steps": args.steps, "overrides": args.override,
                   "summary": summary, "runs": results}, f, indent=1)
    text = format_tables(summary, class_names)
    with open(os.path.join(args.out, "scale_study.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
