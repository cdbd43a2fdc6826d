"""Pictures of predictions: colour-coded labels, overlays, attention heatmaps, a Figure-3 style
panel per image and an HTML index to browse them. numpy + PIL + matplotlib (Agg), no JAX.
"""
from __future__ import annotations

import html
import os
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from hmsa_jax.data.labels import ClassTable

ATTENTION_COLORMAP = "viridis"
# One colour per scale for the "which scale does each pixel trust" map (up to 8 scales).
SCALE_COLORS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37),
                (230, 97, 1), (178, 24, 43), (255, 255, 255))


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
    from matplotlib import colormaps

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
    """Colour each pixel by the scale with the largest effective weight in the fusion.

    `weights`: scale -> [H, W] weights summing to 1 over scales. Returns the RGB map and the
    legend [(scale, colour)], scales in ascending order."""
    scales = sorted(weights)
    if len(scales) > len(SCALE_COLORS):
        raise ValueError(f"trust_map: at most {len(SCALE_COLORS)} scales, got {len(scales)}")
    stacked = np.stack([weights[s] for s in scales])
    palette = np.asarray(SCALE_COLORS[:len(scales)], np.uint8)
    return palette[np.argmax(stacked, axis=0)], [(s, SCALE_COLORS[i]) for i, s in enumerate(scales)]


def save_png(path: str, array: np.ndarray) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.fromarray(np.asarray(array)).save(path)
    return path


def figure_panel(path: str, image: np.ndarray, prediction_colors: np.ndarray,
                 scale_predictions: Mapping[float, np.ndarray],
                 attention: Mapping[float, np.ndarray], weights: Mapping[float, np.ndarray] | None,
                 title: str = "") -> str:
    """The paper's Figure 3 for one image: input and fused prediction, then per scale its
    prediction and its attention (how much each pixel trusts that scale against the larger
    ones), and the scale each pixel trusts most in the fused result."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    scales = sorted(scale_predictions)
    columns = max(2 + (weights is not None), len(scales))
    height, width = image.shape[:2]
    cell = 3.2
    fig, axes = plt.subplots(3, columns, figsize=(cell * columns, cell * 3 * height / width + 0.9),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    top = [("input", image), ("fused prediction", prediction_colors)]
    if weights is not None:
        trust, legend = trust_map(weights)
        top.append(("most trusted scale: " + ", ".join(f"{s:g}x" for s, _ in legend), trust))
    for ax, (name, picture) in zip(axes[0], top):
        ax.imshow(picture)
        ax.set_title(name, fontsize=9)
    if weights is not None:
        handles = [matplotlib.patches.Patch(color=np.asarray(c) / 255.0, label=f"{s:g}x")
                   for s, c in legend]
        axes[0][2].legend(handles=handles, loc="lower right", fontsize=7, framealpha=0.8)
    for ax, s in zip(axes[1], scales):
        ax.imshow(scale_predictions[s])
        ax.set_title(f"prediction at {s:g}x", fontsize=9)
    for ax, s in zip(axes[2], scales):
        if s in attention:
            shown = ax.imshow(attention[s], cmap=ATTENTION_COLORMAP, vmin=0.0, vmax=1.0)
            ax.set_title(f"attention at {s:g}x", fontsize=9)
    if attention:
        fig.colorbar(shown, ax=axes[2].tolist(), fraction=0.02, pad=0.01)
    if title:
        fig.suptitle(title, fontsize=10)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def write_index(out_dir: str, entries: Sequence[dict], title: str = "hmsa predictions") -> str:
    """index.html in `out_dir`: one row per image; each entry holds "name" and "pictures",
    a list of (caption, path relative to out_dir)."""
    rows = []
    for entry in entries:
        cells = "".join(
            f'<figure><a href="{html.escape(p)}"><img src="{html.escape(p)}" loading="lazy"></a>'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            for caption, p in entry["pictures"])
        rows.append(f'<section><h2>{html.escape(entry["name"])}</h2><div class="row">{cells}</div></section>')
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
.row {{ display: flex; flex-wrap: wrap; gap: 6px; }}
figure {{ margin: 0; }} img {{ max-width: 320px; border: 1px solid #ccc; }}
figcaption {{ font-size: 12px; color: #444; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{len(entries)} images. Attention at scale s: how much each pixel trusts scale s against the
fusion of the larger scales (1 = only s). Most trusted scale: the scale with the largest
effective weight in the hierarchical fusion.</p>
{"".join(rows)}
</body></html>
"""
    path = os.path.join(out_dir, "index.html")
    os.makedirs(out_dir, exist_ok=True)
    with open(path, "w") as f:
        f.write(page)
    return path


__all__ = ["ATTENTION_COLORMAP", "colorize", "figure_panel", "heatmap", "overlay", "resize_labels", "resize_map",
           "save_png", "trust_map", "write_index"]
