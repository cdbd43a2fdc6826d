"""Pictures of predictions: colour-coded labels, overlays, attention heatmaps, a Figure-3 style
panel per image and an HTML index to browse them (numpy + PIL + matplotlib, Agg), and
`write_pictures`, which runs a Predictor over a few images and draws all of that.
"""
from __future__ import annotations

import html
import os
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from hmsa_jax.data.labels import ClassTable
from hmsa_jax.data.transforms import denormalize_image
from hmsa_jax.inference import DEFAULT_SCALES, InferenceOptions, Predictor
from hmsa_jax.input_checks import InferenceError

ATTENTION_COLORMAP = "viridis"
# "Which scale wins": one colour per scale, ascending: blue (coarse context) ... red (fine
# detail); pale where the winner has only a narrow lead, solid where it takes nearly all.
SCALE_COLORS = ((33, 102, 172), (26, 152, 80), (215, 48, 39), (118, 42, 131), (254, 153, 41),
                (140, 81, 10), (231, 41, 138), (77, 77, 77))
PANEL_DPI = 100


def colorize(labels: np.ndarray, classes: ClassTable) -> np.ndarray:
    """uint8 [H, W, 3] colours of train ids (ignore and unknown ids black)."""
    return classes.colorize(labels)


def overlay(image: np.ndarray, colors: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a colour map over the RGB image: alpha of the colours, 1 - alpha of the image."""
    if image.shape != colors.shape:
        raise ValueError(f"overlay: image {image.shape} and colours {colors.shape} differ in shape")
    mixed = (1.0 - alpha) * image.astype(np.float32) + alpha * colors.astype(np.float32)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def heatmap(values: np.ndarray, colormap: str = ATTENTION_COLORMAP, vmin: float = 0.0,
            vmax: float = 1.0) -> np.ndarray:
    """uint8 [H, W, 3] of a [H, W] map through a matplotlib colormap (values clipped to range)."""
    from matplotlib import colormaps  # 0.45 s of imports, for pictures only (not every eval or run)

    scaled = np.clip((np.asarray(values, np.float32) - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    return (colormaps[colormap](scaled)[..., :3] * 255.0 + 0.5).astype(np.uint8)


def resize_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A float [h, w] map resized bilinearly to (height, width), for display."""
    values = np.asarray(values, np.float32)
    if values.shape == tuple(size):
        return values
    return np.asarray(Image.fromarray(values, mode="F").resize((size[1], size[0]), Image.BILINEAR))


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A uint8 [h, w] label map resized (nearest) to (height, width), for display."""
    if labels.shape == tuple(size):
        return labels
    return np.asarray(Image.fromarray(np.asarray(labels, np.uint8)).resize((size[1], size[0]), Image.NEAREST))


def trust_map(weights: Mapping[float, np.ndarray]) -> tuple[np.ndarray, list[tuple[float, tuple]]]:
    """Colour each pixel by the scale with the largest effective weight in the fusion, faded
    towards white where that lead is narrow (n equal weights: white-ish; one weight 1: solid).

    `weights`: scale -> [H, W] weights summing to 1 over scales. Returns the RGB map and the
    legend [(scale, colour)], scales in ascending order."""
    scales = sorted(weights)
    if len(scales) > len(SCALE_COLORS):
        raise ValueError(f"trust_map: at most {len(SCALE_COLORS)} scales, got {len(scales)}")
    stacked = np.stack([np.asarray(weights[s], np.float32) for s in scales])
    palette = np.asarray(SCALE_COLORS[:len(scales)], np.float32)
    floor = 1.0 / len(scales)
    lead = np.clip((stacked.max(0) - floor) / max(1.0 - floor, 1e-6), 0.0, 1.0)[..., None]
    strength = 0.25 + 0.75 * lead  # keep some hue even for the narrowest win
    colors = palette[np.argmax(stacked, axis=0)]
    mixed = strength * colors + (1.0 - strength) * 255.0
    return np.rint(mixed).astype(np.uint8), [(s, SCALE_COLORS[i]) for i, s in enumerate(scales)]


def scale_shares(weights: Mapping[float, np.ndarray]) -> dict[float, float]:
    """Fraction of the pixels each scale wins (largest effective weight)."""
    scales = sorted(weights)
    winner = np.argmax(np.stack([np.asarray(weights[s]) for s in scales]), axis=0)
    return {s: float(np.mean(winner == i)) for i, s in enumerate(scales)}


def image_scores(prediction: np.ndarray, label: np.ndarray, num_classes: int) -> dict:
    """One image's mIoU (over classes present in its label or prediction) and pixel accuracy;
    pixels whose label is not a train id (ignore) are not counted."""
    label = np.asarray(label).astype(np.int64)
    counted = (label >= 0) & (label < num_classes)
    index = label[counted] * num_classes + np.asarray(prediction).astype(np.int64)[counted]
    confusion = np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    hits = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - hits
    iou = hits[union > 0] / union[union > 0]
    total = confusion.sum()
    return {"miou": float(iou.mean()) if iou.size else float("nan"),
            "pixel_accuracy": float(hits.sum() / total) if total else float("nan"),
            "labelled_pixels": int(total)}


def save_png(path: str, array: np.ndarray) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.fromarray(np.asarray(array)).save(path)
    return path


def figure_panel(path: str, image: np.ndarray, prediction_colors: np.ndarray,
                 scale_predictions: Mapping[float, np.ndarray],
                 attention: Mapping[float, np.ndarray], weights: Mapping[float, np.ndarray] | None,
                 title: str = "", ground_truth_colors: np.ndarray | None = None,
                 legend_classes: Sequence[tuple[str, tuple]] = ()) -> str:
    """The paper's Figure 3 for one image, large enough to read: input, ground truth (when
    given), fused prediction and the scale each pixel trusts most; then per scale its
    prediction and its attention (how much each pixel trusts that scale against the larger
    ones). `legend_classes` [(name, colour)]: the classes to name under the panel."""
    import matplotlib  # lazy, as in heatmap

    matplotlib.use("Agg", force=False)  # before pyplot: files, no window
    import matplotlib.pyplot as plt

    scales = sorted(scale_predictions)
    top = [("input", image)]
    if ground_truth_colors is not None:
        top.append(("ground truth", ground_truth_colors))
    top.append(("fused prediction", prediction_colors))
    if weights is not None:
        trust, scale_legend = trust_map(weights)
        top.append(("which scale wins", trust))
    columns = max(len(top), len(scales))
    rows = 1 + bool(scales) + bool(attention)
    height, width = image.shape[:2]
    cell = 4.5  # inches per column: 450 px at PANEL_DPI
    legend_rows = -(-len(legend_classes) // 6) if legend_classes else 0
    fig, axes = plt.subplots(rows, columns, squeeze=False, layout="constrained", figsize=(
        cell * columns, rows * (cell * height / width + 0.55) + 0.6 + 0.35 * legend_rows))
    for ax in axes.ravel():
        ax.axis("off")
    show = dict(interpolation="nearest")  # small crops stay crisp when enlarged
    for ax, (name, picture) in zip(axes[0], top):
        ax.imshow(picture, **show)
        ax.set_title(name, fontsize=14)
    if weights is not None:
        handles = [matplotlib.patches.Patch(color=np.asarray(c) / 255.0, label=f"{s:g}x")
                   for s, c in scale_legend]
        axes[0][len(top) - 1].legend(handles=handles, loc="upper right", fontsize=11, framealpha=0.85,
                                     title="wins", title_fontsize=11)
    if scales:
        for ax, s in zip(axes[1], scales):
            ax.imshow(scale_predictions[s], **show)
            ax.set_title(f"prediction at {s:g}x", fontsize=14)
    shown = None
    for ax, s in zip(axes[-1] if attention else (), scales):
        if s in attention:
            shown = ax.imshow(attention[s], cmap=ATTENTION_COLORMAP, vmin=0.0, vmax=1.0, **show)
            ax.set_title(f"attention at {s:g}x (1 = trust {s:g}x)", fontsize=14)
    if shown is not None:
        bar = fig.colorbar(shown, ax=axes[-1][columns - 1], location="right", shrink=0.9)
        bar.ax.tick_params(labelsize=11)
    if legend_classes:
        fig.legend(handles=[matplotlib.patches.Patch(facecolor=np.asarray(c) / 255.0, edgecolor="#444",
                                                     label=n) for n, c in legend_classes],
                   loc="outside lower center", ncol=min(6, len(legend_classes)), fontsize=12, frameon=False)
    if title:
        fig.suptitle(title, fontsize=16)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=PANEL_DPI)
    plt.close(fig)
    return path


def _swatch(color: Sequence[int]) -> str:
    return f'<span class="swatch" style="background:rgb{tuple(int(c) for c in color)}"></span>'


def class_legend_html(classes: ClassTable) -> str:
    items = "".join(f"<li>{_swatch(c)}{k} {html.escape(n)}</li>"
                    for k, (n, c) in enumerate(zip(classes.names, classes.colors)))
    return (f'<h3>Classes</h3><ul class="legend">{items}<li>{_swatch((0, 0, 0))}ignore / no label</li>'
            "</ul>")


def scale_legend_html(scales: Sequence[float]) -> str:
    scales = sorted(scales)
    items = "".join(f"<li>{_swatch(SCALE_COLORS[i])}{s:g}x</li>" for i, s in enumerate(scales))
    return ('<h3>Which scale wins</h3><ul class="legend">' + items + "</ul><p class=\"note\">Each "
            "pixel takes the colour of the scale with the largest effective weight in the "
            "hierarchical fusion: solid where that scale takes nearly all the weight, pale where "
            "its lead is narrow. Attention at scale s: how much each pixel trusts s against the "
            "fusion of the larger scales (1 = only s).</p>")


def _percent(value) -> str:
    return "-" if value is None or value != value else f"{100 * value:.1f}%"


def _entry_html(entry: dict) -> str:
    scores = entry.get("scores")
    heading = html.escape(entry["name"])
    if scores:
        heading += (f' <span class="score">mIoU {_percent(scores["miou"])} &middot; pixel accuracy '
                    f'{_percent(scores["pixel_accuracy"])}</span>')
    shares = entry.get("scale_shares")
    if shares:
        heading += ' <span class="shares">wins: ' + ", ".join(
            f"{s:g}x {_percent(v)}" for s, v in sorted(shares.items())) + "</span>"
    panel = entry.get("panel")
    panel_html = (f'<a href="{html.escape(panel)}"><img class="panel" src="{html.escape(panel)}" '
                  f'alt="Figure-3 panel of {html.escape(entry["name"])}"></a>') if panel else ""
    cells = "".join(
        f'<figure><a href="{html.escape(p)}"><img src="{html.escape(p)}" loading="lazy"></a>'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for caption, p in entry["pictures"] if p != panel)
    return (f"<section><h2>{heading}</h2>{panel_html}<details{'' if panel else ' open'}>"
            f'<summary>single pictures (full size)</summary><div class="row">{cells}</div></details>'
            "</section>")


def write_index(out_dir: str, entries: Sequence[dict], title: str = "hmsa predictions",
                header: Mapping[str, object] | None = None, classes: ClassTable | None = None,
                scales: Sequence[float] | None = None) -> str:
    """index.html in `out_dir`: a header table (`header`: what made the pictures, e.g.
    checkpoint, step, scales, fusion, flip), the class and scale colour legends, then one
    section per image. Each entry holds "name" and "pictures" [(caption, path relative to
    out_dir)], optionally "panel" (path: shown full width), "scores" (image_scores) and
    "scale_shares" (scale_shares)."""
    header = dict(header or {})
    scored = [e["scores"]["miou"] for e in entries if e.get("scores") and e["scores"]["miou"] == e["scores"]["miou"]]
    if scored:
        header["mean of the per-image mIoU"] = f"{100 * float(np.mean(scored)):.1f}% over {len(scored)} images"
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in header.items())
    legends = (class_legend_html(classes) if classes is not None else "") + (
        scale_legend_html(scales) if scales and len(scales) > 1 else "")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1em 2em; color: #222; }}
table.run th {{ text-align: left; padding-right: 1em; font-weight: 600; }}
table.run td {{ font-family: monospace; }}
ul.legend {{ list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: 4px 18px; }}
ul.legend li {{ display: flex; align-items: center; font-size: 15px; }}
.swatch {{ display: inline-block; width: 22px; height: 16px; margin-right: 6px; border: 1px solid #555; }}
.note {{ color: #444; max-width: 60em; }}
img.panel {{ width: 100%; max-width: 1800px; border: 1px solid #ccc; }}
.row {{ display: flex; flex-wrap: wrap; gap: 8px; }}
figure {{ margin: 0; }}
.row img {{ width: 384px; image-rendering: pixelated; border: 1px solid #ccc; }}
figcaption {{ font-size: 13px; color: #444; }}
.score {{ font-size: 70%; color: #0a5; margin-left: 1em; }}
.shares {{ font-size: 60%; color: #555; margin-left: 1em; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<table class="run">{rows}<tr><th>images</th><td>{len(entries)}</td></tr></table>
{legends}
{"".join(_entry_html(e) for e in entries)}
</body></html>
"""
    path = os.path.join(out_dir, "index.html")
    os.makedirs(out_dir, exist_ok=True)
    with open(path, "w") as f:
        f.write(page)
    return path


# ----------------------------------------------------------------------------- predictions
def pictures_for_image(out_dir: str, name: str, image: np.ndarray, prediction: dict, index: int,
                       classes: ClassTable, label: np.ndarray | None = None) -> dict:
    """Write one image's pictures (from a Predictor output, row `index`; `label`: its ground
    truth train ids, if known); returns its index entry."""
    height, width = image.shape[:2]
    path = lambda suffix: os.path.join(out_dir, f"{name}_{suffix}.png")
    rel = lambda p: os.path.relpath(p, out_dir)
    labels = prediction["labels"][index]
    colors = colorize(labels, classes)
    pictures = [("input", save_png(path("input"), image))]
    truth_colors, scores, shown_ids = None, None, set(np.unique(labels).tolist())
    if label is not None:
        label = np.asarray(label)
        truth_colors = colorize(label, classes)
        pictures.append(("ground truth", save_png(path("truth"), truth_colors)))
        scores = image_scores(labels, label, classes.num_classes)
        shown_ids |= set(np.unique(label).tolist())
    pictures += [("prediction", save_png(path("pred"), colors)),
                 ("overlay", save_png(path("overlay"), overlay(image, colors)))]
    save_png(path("labels"), labels.astype(np.uint8))  # train ids, for tools
    per_scale = prediction.get("per_scale", {})
    scale_colors, attention = {}, {}
    for s in sorted(per_scale):
        scale_labels = np.argmax(per_scale[s]["logits"][index], -1).astype(np.uint8)
        scale_colors[s] = colorize(resize_labels(scale_labels, (height, width)), classes)
        pictures.append((f"prediction at {s:g}x", save_png(path(f"scale{s:g}_pred"), scale_colors[s])))
        if per_scale[s]["attention"] is not None and s != max(per_scale):
            attention[s] = resize_map(per_scale[s]["attention"][index], (height, width))
            pictures.append((f"attention at {s:g}x",
                             save_png(path(f"scale{s:g}_attention"), heatmap(attention[s]))))
    weights, shares = None, None
    if "scale_weights" in prediction:
        weights = {s: w[index] for s, w in prediction["scale_weights"].items()}
        trust, _ = trust_map(weights)
        shares = scale_shares(weights)
        pictures.append(("which scale wins", save_png(path("trust"), trust)))
    panel = None
    if per_scale:
        named = [(classes.names[k], classes.colors[k]) for k in sorted(shown_ids) if k < classes.num_classes]
        title = name if scores is None else f"{name}: mIoU {100 * scores['miou']:.1f}%"
        panel = figure_panel(path("panel"), image, colors, scale_colors, attention, weights,
                             title=title, ground_truth_colors=truth_colors, legend_classes=named)
        pictures.insert(0, ("panel", panel))
    return {"name": name, "pictures": [(caption, rel(p)) for caption, p in pictures],
            "panel": None if panel is None else rel(panel), "scores": scores, "scale_shares": shares}


def picture_header(checkpoint: str, step, model_name: str, options: InferenceOptions) -> dict:
    """What made a pictures page: the index's header rows."""
    return {"checkpoint": checkpoint, "step": "-" if step is None else step, "model": model_name,
            "scales": ", ".join(f"{s:g}x" for s in options.scales), "fusion": options.fusion,
            "flip": "yes (mean with the mirrored image)" if options.flip else "no",
            "inference": "whole images" if options.window is None else
            f"sliding windows of {options.window[0]}x{options.window[1]}"}


def display_images(images: np.ndarray, normalized: bool) -> np.ndarray:
    """uint8 [B, H, W, 3] to show of images given as a Predictor takes them."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if normalized:
        return denormalize_image(images)
    if images.dtype == np.uint8:
        return images
    return np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)


def write_pictures(model, variables: dict, images: np.ndarray, classes: ClassTable, out_dir: str, *,
                   scales: Sequence[float] = DEFAULT_SCALES, fusion: str = "hierarchical",
                   flip: bool = False, names: Sequence[str] | None = None, normalized: bool = False,
                   title: str = "hmsa predictions", labels: np.ndarray | None = None,
                   header: dict | None = None) -> str:
    """Pictures of a few images (predictions, overlays, per-scale predictions and attention,
    a Figure-3 panel each; ground truth and per-image mIoU when `labels` [B, H, W] are given)
    and out_dir/index.html with `header` (what made them) and colour legends; returns the index
    path. `images`: uint8 or [0, 1] RGB, or normalised float (an eval batch's "image") with
    normalized=True."""
    predictor = Predictor(model, variables, classes, scales=scales, fusion=fusion, flip=flip)
    display = display_images(images, normalized)
    names = list(names) if names is not None else [f"image{k:03d}" for k in range(len(display))]
    if len(names) != len(display):
        raise InferenceError(f"write_pictures: {len(names)} names for {len(display)} images")
    source = np.asarray(images) if np.asarray(images).ndim == 4 else np.asarray(images)[None]
    entries = []
    for start in range(0, len(display), predictor.batch_size):  # all local devices at once
        prediction = predictor(source[start:start + predictor.batch_size], normalized=normalized)
        for row in range(len(prediction["labels"])):
            k = start + row
            entries.append(pictures_for_image(out_dir, names[k], display[k], prediction, row, classes,
                                              None if labels is None else labels[k]))
    return write_index(out_dir, entries, title, header=header, classes=classes,
                       scales=predictor.options.scales if "scale_weights" in prediction else None)


__all__ = ["ATTENTION_COLORMAP", "SCALE_COLORS", "class_legend_html", "colorize", "display_images",
           "figure_panel", "heatmap", "image_scores", "overlay", "picture_header", "pictures_for_image",
           "resize_labels", "resize_map", "save_png", "scale_legend_html", "scale_shares", "trust_map",
           "write_index", "write_pictures"]
