"""Which scale does each class trust, and how do the fusions compare? (built-in scenes)

    python benchmarks/attention_study.py --checkpoint=/tmp/hmsa_demo [--out=DIR]

On the checkpoint's validation split of the synthetic street scenes or the scale benchmark
(its saved data config), one forward pass at
0.5x, 1.0x and 2.0x per image gives everything:
  * per class, the mean attention of the 0.5x scale (upsampled to 1.0x) over that class's
    ground-truth pixels: low means the pixel trusts the higher scale (1.0x); the mean
    attention of 1.0x against 2.0x; and the effective weight of each scale in the 3-scale
    hierarchical fusion;
  * mIoU of single scales (0.5x and 2.0x logits resized to 1.0x), and of hierarchical,
    average and max fusion of {0.5, 1.0} and {0.5, 1.0, 2.0}.
The paper's claim to test: thin structures (pole, traffic_sign, lane_marking) lean on the
higher scale, large regions (road, sidewalk, sky, building, vegetation) on the lower.
Prints tables; writes attention_study.json and attention_study.png under --out (default
runs/attention_study/, ignored by git; the figures the README shows are in benchmarks/results/
and are replaced only when --out=benchmarks/results says so).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from hmsa_jax.data.sources import scale_bench

THIN = {"synthetic": ("pole", "traffic_sign", "lane_marking"), "scale_bench": scale_bench.THIN_CLASSES}
VARIANTS = tuple(f"single {s:g}x" for s in (0.5, 1.0, 2.0)) + tuple(
    f"{fusion} {tag}" for tag in ("{0.5,1}", "{0.5,1,2}") for fusion in ("hierarchical", "avg", "max"))


class ClassTally:
    """Per-class tallies over labelled batches, shared with scale_study.py: a confusion matrix
    per prediction variant, and per map the sum of its values over each class's ground-truth
    pixels (labels outside [0, K) are left out)."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.pixels = np.zeros(num_classes)
        self.confusions: dict[str, np.ndarray] = {}
        self.map_sums: dict[str, np.ndarray] = {}

    def add(self, labels: np.ndarray, predictions: dict, maps: dict) -> None:
        """labels [B, H, W]; predictions {variant: [B, H, W] class ids}; maps {name: [B, H, W]}."""
        k = self.num_classes
        flat = np.asarray(labels, np.int64).ravel()
        self.pixels += np.bincount(flat, minlength=k)[:k]
        for key, prediction in predictions.items():
            index = flat * k + np.asarray(prediction).ravel().astype(np.int64)
            self.confusions[key] = self.confusions.get(key, 0) + np.bincount(index, minlength=k * k)[:k * k]
        for key, values in maps.items():
            sums = np.bincount(flat, weights=np.asarray(values, np.float64).ravel(), minlength=k)
            self.map_sums[key] = self.map_sums.get(key, 0) + sums[:k]

    def scores(self) -> dict:
        """{variant: hmsa_jax.metrics.segmentation_scores of its confusion matrix}."""
        from hmsa_jax.metrics import segmentation_scores

        k = self.num_classes
        return {key: segmentation_scores(c.reshape(k, k)) for key, c in self.confusions.items()}

    def group_mean(self, key: str, classes: list[int]) -> float:
        """The mean of map `key` over the pixels of these classes together."""
        return float(self.map_sums[key][classes].sum() / self.pixels[classes].sum())


def _variants(per_scale):
    from hmsa_jax import multiscale, ops

    target = per_scale[1.0]["logits"]
    subsets = {"{0.5,1}": (0.5, 1.0), "{0.5,1,2}": (0.5, 1.0, 2.0)}
    logits = {f"single {s:g}x": ops.resize_like(per_scale[s]["logits"], target) for s in (0.5, 1.0, 2.0)}
    for tag, scales in subsets.items():
        chosen = {s: per_scale[s] for s in scales}
        for fusion in ("hierarchical", "avg", "max"):
            logits[f"{fusion} {tag}"] = multiscale.FUSIONS[fusion](chosen)["logits"]
    return logits


def make_study_fn(model):
    import jax
    import jax.numpy as jnp

    from hmsa_jax import ops
    from hmsa_jax.inference import scale_weights

    @jax.jit
    def study(variables, images):
        out = model.apply(variables, images, train=False, scales=(0.5, 1.0, 2.0), fusion="hierarchical")
        per_scale = out["per_scale"]
        size = images.shape[1:3]
        predictions = {k: jnp.argmax(v, -1).astype(jnp.uint8) for k, v in _variants(per_scale).items()}
        attention = {"a0.5 vs 1x": ops.resize_bilinear(per_scale[0.5]["attention"], size)[..., 0],
                     "a1 vs 2x": per_scale[1.0]["attention"][..., 0]}
        weights = scale_weights({s: o["attention"] for s, o in per_scale.items()}, size)
        return predictions, attention, weights

    return study


def run(checkpoint: str, out_dir: str, max_images: int = 0, batch_size: int = 8) -> dict:
    from ml_collections import ConfigDict

    from hmsa_jax.data.build import build_source
    from hmsa_jax.data.transforms import normalize_image
    from hmsa_jax.loading import load_model

    loaded = load_model(checkpoint)
    config = ConfigDict(loaded.meta["config"])
    if config.data.dataset not in THIN:
        raise SystemExit(f"{checkpoint}: trained on {config.data.dataset!r}; this study reads the built-in "
                         f"scenes ({', '.join(THIN)})")
    thin_names = THIN[config.data.dataset]
    source = build_source(config.data, config.data.eval_split, "eval")
    count = min(len(source), max_images) if max_images else len(source)
    names, num_classes = loaded.classes.names, loaded.num_classes
    study = make_study_fn(loaded.model)
    tally, examples = ClassTally(num_classes), []
    start = time.perf_counter()
    for first in range(0, count, batch_size):
        records = [source.load(i) for i in range(first, min(first + batch_size, count))]
        images = np.stack([r["image"] for r in records])
        labels = np.stack([r["label"] for r in records]).astype(np.int64)
        predictions, attention, weights = study(loaded.variables, normalize_image(images))
        tally.add(labels, predictions, {**attention, **{f"w{s:g}x": w for s, w in weights.items()}})
        if len(examples) < 3:
            examples += [(images[k], labels[k], np.asarray(attention["a0.5 vs 1x"][k]),
                          {s: np.asarray(w[k]) for s, w in weights.items()},
                          np.asarray(predictions["hierarchical {0.5,1,2}"][k])) for k in range(min(3, len(records)))]
    seconds = time.perf_counter() - start
    miou, pixels = tally.scores(), tally.pixels
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = {key: sums / pixels for key, sums in tally.map_sums.items()}
    thin = [k for k, n in enumerate(names) if n in thin_names and pixels[k] > 0]
    large = [k for k, n in enumerate(names) if n not in thin_names and pixels[k] > 0]
    result = {
        "checkpoint": loaded.path, "model": loaded.model_name, "images": count,
        "size": list(source.load(0)["image"].shape[:2]), "seconds": round(seconds, 1),
        "classes": {n: {"pixel_share": float(pixels[k] / pixels.sum()),
                        **{key: (None if not np.isfinite(v[k]) else float(v[k])) for key, v in per_class.items()}}
                    for k, n in enumerate(names)},
        "groups": {g: {key: tally.group_mean(key, ks) if ks else None for key in tally.map_sums}
                   for g, ks in (("thin", thin), ("large", large))},
        "miou": {key: miou[key]["miou"] for key in VARIANTS},
        "pixel_accuracy": {key: miou[key]["pixel_accuracy"] for key in VARIANTS},
        "iou_per_class": {key: dict(zip(names, [None if not np.isfinite(v) else float(v) for v in s["iou"]]))
                          for key, s in miou.items()},
    }
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "attention_study.json"), "w") as f:
        json.dump(result, f, indent=1)
    draw(os.path.join(out_dir, "attention_study.png"), examples, result, loaded.classes)
    return result


def draw(path: str, examples, result: dict, classes) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hmsa_jax import visualize as vis

    rows = len(examples)
    fig, axes = plt.subplots(rows + 1, 4, figsize=(12, 1.7 * rows + 2.6),
                             gridspec_kw={"height_ratios": [1] * rows + [1.3]})
    for r, (image, label, attention, weights, prediction) in enumerate(examples):
        trust, legend = vis.trust_map(weights)
        panels = [("input", image), ("ground truth", vis.colorize(label, classes)),
                  ("attention of 0.5x vs 1x (1 = trust 0.5x)", attention),
                  ("most trusted scale (" + ", ".join(f"{s:g}x" for s, _ in legend) + ")", trust)]
        for c, (title, picture) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(picture, **({"cmap": vis.ATTENTION_COLORMAP, "vmin": 0, "vmax": 1} if picture.ndim == 2 else {}))
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=8)
    legend_handles = [matplotlib.patches.Patch(color=np.asarray(c) / 255, label=f"{s:g}x") for s, c in legend]
    axes[0][3].legend(handles=legend_handles, fontsize=6, loc="lower right")
    for ax in axes[rows][1:]:
        ax.remove()
    bar = fig.add_subplot(axes[rows][0].get_gridspec()[rows, :])
    axes[rows][0].remove()
    names = list(result["classes"])
    values = [result["classes"][n]["a0.5 vs 1x"] or 0.0 for n in names]
    colours = [np.asarray(c) / 255 for c in classes.colors]
    bar.bar(names, values, color=colours, edgecolor="black")
    bar.set_ylabel("mean attention of 0.5x")
    bar.set_ylim(0, 1)
    bar.tick_params(axis="x", labelsize=8)
    bar.set_title("per class: mean attention of 0.5x over ground-truth pixels (low: trusts 1.0x)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
    from PIL import Image

    with Image.open(path) as picture:  # a 256-colour palette keeps the committed PNG small
        quantized = picture.convert("RGB").quantize(256)
    quantized.save(path, optimize=True)


def format_tables(result: dict) -> str:
    lines = [f"{result['model']} at {result['checkpoint']}: {result['images']} val images "
             f"{result['size'][0]}x{result['size'][1]}", "",
             "| class | pixels % | attention 0.5x vs 1x | attention 1x vs 2x | weight 0.5x | weight 1x | weight 2x |",
             "|---|---|---|---|---|---|---|"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
    for name, row in list(result["classes"].items()) + [(f"*{g}*", {"pixel_share": None, **v})
                                                         for g, v in result["groups"].items()]:
        share = "" if row["pixel_share"] is None else f"{100 * row['pixel_share']:.1f}"
        lines.append(f"| {name} | {share} | {fmt(row['a0.5 vs 1x'])} | {fmt(row['a1 vs 2x'])} | "
                     f"{fmt(row['w0.5x'])} | {fmt(row['w1x'])} | {fmt(row['w2x'])} |")
    lines += ["", "| inference | mIoU % | pixel acc % |", "|---|---|---|"]
    for key, value in result["miou"].items():
        lines.append(f"| {key} | {100 * value:.2f} | {100 * result['pixel_accuracy'][key]:.2f} |")
    return "\n".join(lines)


DEFAULT_OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "runs", "attention_study")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="/tmp/hmsa_demo")
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help="output folder (default runs/attention_study; the tracked figures are in "
                             "benchmarks/results)")
    parser.add_argument("--max-images", type=int, default=0, help="0: the whole val split")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    from hmsa_jax import inference_cli

    inference_cli.configure_runtime()  # this machine's defaults, as hmsa predict does
    result = run(args.checkpoint, args.out, args.max_images, args.batch_size)
    print(format_tables(result))
    print(f"\nwrote {os.path.join(args.out, 'attention_study.json')} and attention_study.png")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
