"""Hard-threshold auto-labelling with a teacher (paper section 4).

    hmsa autolabel --checkpoint=TEACHER --images=DIR --out=LABELS [--threshold=0.9]
                   [--scales=0.5,1.0,2.0] [--flip] [--border=cityscapes]

The teacher predicts each image at the given scales; a pixel gets the argmax class where the
fused softmax probability exceeds the threshold and ignore (255) elsewhere, and outside the
kept border region when one is given. Output, ready as the training auto-label source:

    LABELS/<image path relative to DIR>.png    train ids, 255 = ignore   (uint8, mode L)
    LABELS/<image path relative to DIR>.json   coverage per class, confidence, settings
    LABELS/autolabel_summary.json              totals over all images

Train with `--config.data.autolabel.labels_dir=LABELS --config.data.autolabel.images_root=DIR`.
Each process labels every process_count-th image on its own devices.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hmsa_jax import inference_cli as cli
from hmsa_jax import input_checks, parallel
from hmsa_jax.batching import same_size_batches, stack
from hmsa_jax.console import progress_bar
from hmsa_jax.data.errors import DataError
from hmsa_jax.data.imageio import read_rgb, write_png
from hmsa_jax.data.labels import IGNORE_LABEL, ClassTable
from hmsa_jax.inference import inference_options, make_logits_fn, normalize_input, pad_batch
from hmsa_jax.input_checks import InferenceError
from hmsa_jax.loading import load_model

SUMMARY_NAME = "autolabel_summary.json"


@dataclasses.dataclass(frozen=True)
class BorderMask:
    """Keep rows [rows) and columns [cols) of an image of `reference_size` (height, width),
    scaled proportionally to other sizes; everything outside becomes ignore.
    The reference's Cityscapes recipe keeps rows [15, 840) and columns [14, 2030) of 1024x2048
    (the ego car's bonnet and the rectification border are not labelled)."""
    rows: tuple[int, int] = (15, 840)
    cols: tuple[int, int] = (14, 2030)
    reference_size: tuple[int, int] = (1024, 2048)

    def __post_init__(self):
        for name, (lo, hi), limit in (("rows", self.rows, self.reference_size[0]),
                                      ("cols", self.cols, self.reference_size[1])):
            if not 0 <= lo < hi <= limit:
                raise InferenceError(f"border {name}={[lo, hi]}: expected 0 <= start < end <= {limit} "
                                     f"(reference size {list(self.reference_size)})")

    def keep(self, height: int, width: int) -> np.ndarray:
        """bool [height, width]: True inside the kept region."""
        sy, sx = height / self.reference_size[0], width / self.reference_size[1]
        r0, r1 = round(self.rows[0] * sy), round(self.rows[1] * sy)
        c0, c1 = round(self.cols[0] * sx), round(self.cols[1] * sx)
        mask = np.zeros((height, width), bool)
        mask[r0:r1, c0:c1] = True
        return mask

    def describe(self) -> dict:
        return {"rows": list(self.rows), "cols": list(self.cols),
                "reference_size": list(self.reference_size)}


CITYSCAPES_BORDER = BorderMask()


def parse_border(text: str | None) -> BorderMask | None:
    """'none', 'cityscapes', or 'R0,R1,C0,C1@H,W' (kept rows/cols of an H x W image, scaled to
    each image's size)."""
    if text is None or text.lower() == "none":
        return None
    if text.lower() == "cityscapes":
        return CITYSCAPES_BORDER
    try:
        bounds, size = text.split("@")
        r0, r1, c0, c1 = (int(v) for v in bounds.split(","))
        height, width = (int(v) for v in size.split(","))
    except ValueError:
        raise InferenceError(f"--border={text!r}; expected none, cityscapes or R0,R1,C0,C1@H,W "
                             f"(e.g. 15,840,14,2030@1024,2048)") from None
    return BorderMask((r0, r1), (c0, c1), (height, width))


def check_threshold(threshold: float, name: str = "threshold") -> None:
    """The one rule for the confidence threshold (the CLI checks it before loading the teacher)."""
    if not 0.0 <= threshold < 1.0:
        raise InferenceError(f"{name}={threshold!r}; expected 0 <= threshold < 1")


def hard_labels(confidence: np.ndarray, argmax: np.ndarray, threshold: float,
                keep: np.ndarray | None = None) -> np.ndarray:
    """uint8 [H, W]: argmax where confidence > threshold (and inside `keep`), else ignore."""
    selected = confidence > threshold
    if keep is not None:
        selected &= keep
    return np.where(selected, argmax, IGNORE_LABEL).astype(np.uint8)


def coverage(labels: np.ndarray, classes: ClassTable) -> dict:
    """Fraction of the image's pixels per class and ignored."""
    counts = np.bincount(labels.ravel(), minlength=256)
    total = labels.size
    return {"labelled": float(1.0 - counts[IGNORE_LABEL] / total),
            "ignored": float(counts[IGNORE_LABEL] / total),
            "per_class": {name: float(counts[k] / total) for k, name in enumerate(classes.names)}}


def make_teacher_fn(model, options, mesh=None):
    """jit(variables, normalised images) -> (max softmax probability, argmax), both [B, H, W];
    with `mesh` the batch is split over its "data" axis (variables replicated)."""
    logits_fn = make_logits_fn(model, options)

    def teacher(variables, images):
        probabilities = jax.nn.softmax(logits_fn(variables, images), axis=-1)
        return jnp.max(probabilities, -1), jnp.argmax(probabilities, -1).astype(jnp.uint8)

    if mesh is None:
        return jax.jit(teacher)
    return jax.jit(teacher, in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)))


def _done_before(stats_path: str, settings: dict, overwrite: bool) -> dict | None:
    """The stats of an image labelled by an earlier run with the same settings (None: label it).

    An image's JSON is written after its PNG, so a JSON that parses means a complete label."""
    if overwrite:
        return None
    try:
        with open(stats_path) as f:
            stats = json.load(f)
    except (OSError, ValueError):
        return None
    changed = sorted(k for k in settings if stats.get(k) != settings[k])
    if changed:
        raise InferenceError(
            f"{stats_path}: labelled by an earlier run with other settings ({', '.join(changed)}: "
            f"{stats.get(changed[0])!r}, now {settings[changed[0]]!r}); pass --overwrite to "
            f"relabel everything, or choose another --out")
    return stats


def _refuse_overwriting_inputs(images: Sequence[tuple[str, str]], out_dir: str) -> None:
    inputs = {os.path.realpath(path) for path, _ in images}
    for _, name in images:
        for suffix in (".png", ".json"):
            target = os.path.realpath(os.path.join(out_dir, name + suffix))
            if target in inputs:
                raise InferenceError(f"--out={out_dir}: writing {target} would overwrite an input "
                                     f"image; choose an --out outside the images folder")


def autolabel_images(loaded, images: Sequence[tuple[str, str]], out_dir: str, options, *,
                     threshold: float = 0.9, border: BorderMask | None = None,
                     overwrite: bool = False, log=print, batch_size: int = 0, quiet: bool = True) -> dict:
    """Label `images` [(path, name relative to the images root)]; returns the summary.

    Images go `batch_size` at a time (0: one per local device; consecutive images of one size
    share a batch) over this process's devices. Images an earlier run into `out_dir` labelled
    with the same settings are kept and counted, so an interrupted run continues where it
    stopped; other settings are refused unless `overwrite`. `quiet=False`: a progress bar (on
    a terminal)."""
    check_threshold(threshold)
    mesh = parallel.make_mesh(local=True)
    devices = mesh.devices.size
    teacher = make_teacher_fn(loaded.model, options, mesh)
    variables = jax.device_put(loaded.variables, parallel.replicated(mesh))
    settings = {"checkpoint": loaded.path, "model": loaded.model_name, "threshold": threshold,
                "scales": list(options.scales), "fusion": options.fusion, "flip": options.flip,
                "window": None if options.window is None else list(options.window),
                "border": None if border is None else border.describe()}
    _refuse_overwriting_inputs(images, out_dir)
    mine = images[jax.process_index()::jax.process_count()]
    labelled_pixels = total_pixels = kept = 0
    class_pixels = np.zeros(loaded.num_classes, np.int64)
    todo = []
    for number, (path, name) in enumerate(mine, 1):
        earlier = _done_before(os.path.join(out_dir, name + ".json"), settings, overwrite)
        if earlier is not None and os.path.isfile(os.path.join(out_dir, name + ".png")):
            size = int(np.prod(earlier["size"]))
            class_pixels += np.array([round(earlier["per_class"].get(c, 0.0) * size)
                                      for c in loaded.classes.names], np.int64)
            labelled_pixels += round(earlier["labelled"] * size)
            total_pixels += size
            kept += 1
        else:
            todo.append((number, path, name))
    bar = progress_bar(total=len(mine), desc="autolabel", unit="image", quiet=quiet)
    bar.update(kept)
    say = log if bar.disable else bar.write  # lines above a live bar, not through it
    for batch in same_size_batches(todo, lambda item: read_rgb(item[1]), batch_size or devices):
        inputs = pad_batch(normalize_input(stack(batch)), devices)
        confidences, argmaxes = (np.asarray(a) for a in teacher(variables, inputs))
        for ((number, path, name), image), confidence, argmax in zip(batch, confidences, argmaxes):
            keep = None if border is None else border.keep(*image.shape[:2])
            labels = hard_labels(confidence, argmax, threshold, keep)
            write_png(os.path.join(out_dir, name + ".png"), labels)
            stats = {"image": os.path.abspath(path), "size": list(labels.shape),
                     **coverage(labels, loaded.classes), "mean_confidence": float(confidence.mean()),
                     **settings}
            with open(os.path.join(out_dir, name + ".json"), "w") as f:
                json.dump(stats, f, indent=1)
            counts = np.bincount(labels.ravel(), minlength=256)
            class_pixels += counts[:loaded.num_classes]
            labelled_pixels += int(labels.size - counts[IGNORE_LABEL])
            total_pixels += labels.size
            say(f"[{number}/{len(mine)}] {path}: {100 * stats['labelled']:.1f}% labelled")
        bar.update(len(batch))
    bar.close()
    if kept:
        log(f"{kept} of {len(mine)} images were labelled by an earlier run with these settings: kept")
    summary = {**settings, "images": len(mine), "kept_from_earlier_run": kept, "pixels": int(total_pixels),
               "labelled": labelled_pixels / total_pixels if total_pixels else 0.0,
               "per_class": {name: int(c) for name, c in zip(loaded.classes.names, class_pixels)}}
    if jax.process_count() > 1:
        summary["process"] = jax.process_index()
    name = SUMMARY_NAME if jax.process_count() == 1 else f"autolabel_summary.{jax.process_index()}.json"
    with open(os.path.join(out_dir, name), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


# ----------------------------------------------------------------------------- command line
def main(argv: list[str]) -> int:
    parser = cli.argument_parser("hmsa autolabel", "hard-threshold teacher labels for a folder of "
                                 "images, usable as data.autolabel of a training config")
    cli.add_checkpoint_arguments(parser)
    parser.add_argument("--images", required=True, help="folder of images (searched recursively)")
    parser.add_argument("--out", required=True, help="output folder of label PNGs and JSON")
    parser.add_argument("--threshold", type=float, default=0.9,
                        help="keep pixels whose softmax probability exceeds this (paper 0.9)")
    parser.add_argument("--overwrite", action="store_true",
                        help="relabel images an earlier run into --out labelled with other settings "
                             "(by default they are refused; same settings are kept, so a re-run resumes)")
    parser.add_argument("--border", default="none",
                        help="none | cityscapes (rows [15,840), cols [14,2030) of 1024x2048) | "
                             "R0,R1,C0,C1@H,W: the region kept, scaled to each image")
    cli.add_inference_arguments(parser)
    cli.add_batch_arguments(parser)
    args = parser.parse_args(argv)
    return cli.run_guarded("hmsa autolabel", lambda: _autolabel_command(args))


def _autolabel_command(args) -> int:
    if not os.path.isdir(args.images):
        raise DataError(f"--images={args.images}: not a folder of images")
    options = inference_options(args)
    border = parse_border(args.border)
    check_threshold(args.threshold, "--threshold")
    cli.check_batch_size(args.batch_size)
    images = input_checks.find_images([args.images])
    input_checks.check_out_dir(args.out, [args.images])  # labels among the images: refused
    input_checks.check_inputs_fit(images, options.scales)  # non-images, scales vs sizes
    cli.configure_runtime()  # this machine's defaults, not the checkpoint's
    loaded = load_model(args.checkpoint, step=args.step, which=args.which)
    summary = autolabel_images(loaded, images, args.out, options, threshold=args.threshold,
                               border=border, overwrite=args.overwrite, batch_size=args.batch_size,
                               quiet=args.quiet)
    print(f"{summary['images']} images, {100 * summary['labelled']:.1f}% of pixels labelled -> {args.out}")
    print(f"train with: --config.data.autolabel.labels_dir={os.path.abspath(args.out)} "
          f"--config.data.autolabel.images_root={os.path.abspath(args.images)}")
    return 0


__all__ = ["BorderMask", "CITYSCAPES_BORDER", "autolabel_images", "check_threshold", "coverage", "hard_labels",
           "make_teacher_fn", "parse_border"]
