"""Inference from a checkpoint: load once, predict numpy images at any scales, draw pictures.

    from hmsa_jax.predict import Predictor

    predictor = Predictor.from_checkpoint("/tmp/hmsa_demo", scales=(0.5, 1.0, 2.0))
    out = predictor(image)              # uint8 [H, W, 3] (or [B, H, W, 3]; floats in [0, 1])
    out["labels"]                        # [B, H, W] int32 fused argmax (train ids)
    out["logits"]                        # [B, H, W, K] float32 fused logits
    out["per_scale"][0.5]["logits"]      # [B, h, w, K] at the 0.5x input size
    out["per_scale"][0.5]["attention"]   # [B, h, w] how much each pixel trusts 0.5x vs larger scales
    out["scale_weights"][2.0]            # [B, H, W] effective weight of 2.0x in the fused result

`hmsa predict --checkpoint=DIR INPUT... --out=DIR` writes colour-coded predictions, overlays,
per-scale predictions and attention maps, a Figure-3 panel per image and an index.html.

Checkpoints: a training workdir (or its checkpoints/ or a step folder; params and batch_stats
only, never the optimiser state) or a `hmsa convert` output. The model is built from the
checkpoint's own metadata and its variables are checked against it by path and shape.
"""
from __future__ import annotations

import colorsys
import dataclasses
import functools
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from hmsa_jax import checkpoint as checkpoint_lib
from hmsa_jax import input_checks, multiscale, ops
from hmsa_jax.input_checks import InferenceError
from hmsa_jax.data import labels as label_tables
from hmsa_jax.data.errors import DataError
from hmsa_jax.data.labels import ClassTable

DEFAULT_SCALES = (0.5, 1.0, 2.0)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
CONVERTED_FORMAT = "hmsa_jax.converted/1"


# ----------------------------------------------------------------------------- checkpoints
@dataclasses.dataclass
class LoadedModel:
    """A model, its variables (placed on devices) and what the checkpoint says about it."""
    model: Any
    variables: dict
    meta: dict
    classes: ClassTable
    path: str  # the step folder read

    @property
    def num_classes(self) -> int:
        return self.classes.num_classes

    @property
    def model_name(self) -> str:
        return self.meta["model"]


def _converted_step_dir(path: str) -> str | None:
    """The step folder of a `hmsa convert` output at `path` (its folder or step 0), else None."""
    for candidate in (path, os.path.join(path, "0")):
        if os.path.isdir(os.path.join(candidate, "variables")):
            return candidate
    return None


def resolve_checkpoint(path: str, step: int | None = None, which: str = "latest") -> tuple[str, str, dict]:
    """(kind "train" | "converted", step folder, meta) without touching any device."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        raise checkpoint_lib.CheckpointError(f"{path}: no such checkpoint folder")
    converted = _converted_step_dir(path)
    if converted is not None:
        meta = checkpoint_lib.read_meta(converted)
        if meta.get("format") != CONVERTED_FORMAT:
            raise checkpoint_lib.CheckpointError(
                f"{converted}/meta: format {meta.get('format')!r}; expected {CONVERTED_FORMAT!r}")
        return "converted", converted, meta
    step_dir = checkpoint_lib.resolve_step_dir(path, step, which)
    return "train", step_dir, checkpoint_lib.read_meta(step_dir)


def _hue_colors(count: int) -> tuple[tuple[int, int, int], ...]:
    return tuple(tuple(int(255 * c) for c in colorsys.hsv_to_rgb(k / count, 0.65, 0.9))
                 for k in range(count))


def class_table_for(meta: dict) -> ClassTable:
    """The class table (names and colours) of a checkpoint: the colours its meta records (the
    training's own table, so pictures match those of the run), else recognised from the names."""
    from hmsa_jax.data.sources.scale_bench import CLASSES as SCALE_BENCH_CLASSES
    from hmsa_jax.data.sources.synthetic import ALL_CLASSES, synthetic_classes

    num_classes = int(meta["num_classes"])
    names = meta.get("class_names")
    cityscapes = label_tables.cityscapes_classes()
    if names is None:
        if num_classes == cityscapes.num_classes:
            return cityscapes
        if num_classes == label_tables.MAPILLARY_NUM_CLASSES:
            return label_tables.mapillary_default_classes()[0]
        names = [f"class_{k}" for k in range(num_classes)]
    names = tuple(names)
    if len(names) != num_classes:
        raise checkpoint_lib.CheckpointError(
            f"checkpoint meta lists {len(names)} class names for num_classes={num_classes}")
    colors = meta.get("class_colors")
    if colors is not None and len(colors) == num_classes:
        return ClassTable("checkpoint", names, tuple(tuple(int(v) for v in c) for c in colors))
    if names == cityscapes.names:
        return cityscapes
    if names == SCALE_BENCH_CLASSES.names:
        return SCALE_BENCH_CLASSES
    if 4 <= num_classes <= len(ALL_CLASSES) and names == synthetic_classes(num_classes).names:
        return synthetic_classes(num_classes)
    return ClassTable("checkpoint", names, _hue_colors(num_classes))


def build_model_from_meta(meta: dict, dtype: str | None = None):
    """The model a checkpoint's meta describes (name, class count, dtype and lo_scale of its config)."""
    from hmsa_jax import create_model, list_models

    name = meta.get("model")
    if name not in list_models():
        raise checkpoint_lib.CheckpointError(f"checkpoint meta names model {name!r}; expected one of "
                                             f"{', '.join(list_models())}")
    model_config = (meta.get("config") or {}).get("model", {})
    overrides = {}
    if model_config.get("lo_scale", 0.5) != 0.5:
        overrides["lo_scale"] = float(model_config["lo_scale"])
    return create_model(name, num_classes=int(meta["num_classes"]),
                        dtype=jnp.dtype(dtype or model_config.get("dtype", "float32")), **overrides)


def abstract_variables(model, sharding=None) -> dict:
    """{"params", "batch_stats"} shapes and dtypes of `model`, nothing computed."""
    images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), images)
    shapes = {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})}
    return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                                  shapes)


def _stored_shapes(item_dir: str) -> dict:
    stored = checkpoint_lib.stored_tree_metadata(item_dir)
    return {key: stored.get(key, {}) for key in ("params", "batch_stats")}


def _flat_shapes(tree: dict) -> dict[str, tuple]:
    from flax import traverse_util

    flat = {}
    for collection in ("params", "batch_stats"):
        for path, leaf in traverse_util.flatten_dict(dict(tree.get(collection) or {}), sep="/").items():
            flat[f"{collection}/{path}"] = tuple(leaf.shape)
    return flat


def check_variables_fit(stored: dict, expected: dict, where: str, model_name: str) -> None:
    """Raise CheckpointError listing variables missing, unexpected or of another shape."""
    have, want = _flat_shapes(stored), _flat_shapes(expected)
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    reshaped = sorted(k for k in set(have) & set(want) if have[k] != want[k])
    if not (missing or unexpected or reshaped):
        return
    detail = []
    if reshaped:
        detail.append(f"{len(reshaped)} of another shape, e.g. {reshaped[0]}: checkpoint "
                      f"{list(have[reshaped[0]])} vs model {list(want[reshaped[0]])}")
    if missing:
        detail.append(f"{len(missing)} missing, e.g. {missing[0]}")
    if unexpected:
        detail.append(f"{len(unexpected)} not in the model, e.g. {unexpected[0]}")
    raise checkpoint_lib.CheckpointError(
        f"{where}: the variables do not fit model {model_name!r} ({'; '.join(detail)}); is it a "
        f"checkpoint of another architecture?")


def load_model(path: str, *, step: int | None = None, which: str = "latest",
               sharding: jax.sharding.Sharding | None = None, expect_model: str | None = None,
               dtype: str | None = None) -> LoadedModel:
    """Restore a checkpoint for inference: params + batch_stats placed with `sharding` (default:
    replicated over this process's devices), on any device count. `expect_model` (a config's
    model name) must match the checkpoint's. The newest (or best) sound step is used: damaged
    ones are set aside on the way (hmsa_jax.checkpoint.load_usable)."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        raise checkpoint_lib.CheckpointError(f"{path}: no such checkpoint folder")
    sharding = sharding or NamedSharding(local_mesh(), P())
    load = functools.partial(_load_step, sharding=sharding, expect_model=expect_model, dtype=dtype)
    converted = _converted_step_dir(path)
    if converted is not None:
        return load(converted, kind="converted")
    _, loaded = checkpoint_lib.load_usable(path, load, step, which)
    return loaded


def _load_step(step_dir: str, *, sharding, expect_model: str | None, dtype: str | None,
               kind: str = "train") -> LoadedModel:
    meta = checkpoint_lib.read_meta(step_dir)
    if kind == "converted" and meta.get("format") != CONVERTED_FORMAT:
        raise checkpoint_lib.CheckpointError(
            f"{step_dir}/meta: format {meta.get('format')!r}; expected {CONVERTED_FORMAT!r}")
    if expect_model is not None and meta.get("model") != expect_model:
        raise checkpoint_lib.CheckpointError(
            f"{step_dir}: holds a {meta.get('model')!r} checkpoint, but the config asks for model "
            f"{expect_model!r}; pass the matching --config or checkpoint")
    model = build_model_from_meta(meta, dtype)
    target = abstract_variables(model, sharding)
    item_dir = os.path.join(step_dir, "variables" if kind == "converted" else checkpoint_lib.STATE)
    check_variables_fit(_stored_shapes(item_dir), target, step_dir, meta["model"])
    if kind == "converted":
        from hmsa_jax.convert.checkpoint_io import restore_converted

        variables, meta = restore_converted(os.path.dirname(step_dir), target)
    else:
        variables, meta = checkpoint_lib.read_variables(step_dir, sharding=sharding)
    variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    return LoadedModel(model, variables, meta, class_table_for(meta), step_dir)


# ----------------------------------------------------------------------------- inference
def local_mesh() -> Mesh:
    """A 1-D "data" mesh over this process's devices (predict and autolabel are per process)."""
    return Mesh(np.asarray(jax.local_devices()), ("data",), axis_types=(AxisType.Auto,))


def parse_scales(scales: Sequence[float] | str, fusion: str = "hierarchical") -> tuple[float, ...]:
    """"0.5,1.0,2.0" or a sequence -> validated, ascending tuple; InferenceError naming the value.
    Hierarchical fusion needs 1.0 among them; avg and max take any (output at the input's size)."""
    if isinstance(scales, str):
        try:
            scales = [float(s) for s in scales.split(",") if s.strip()]
        except ValueError:
            raise InferenceError(f"scales={scales!r}: expected comma-separated numbers, e.g. 0.5,1.0,2.0") from None
    try:
        return tuple(sorted(multiscale.validate_scales(scales, require_one=fusion == "hierarchical")))
    except ValueError as error:
        raise InferenceError(f"scales: {error}") from None


def check_fusion(model, scales: tuple[float, ...], fusion: str) -> None:
    if fusion not in multiscale.FUSIONS:
        raise InferenceError(f"fusion={fusion!r}; expected one of {tuple(multiscale.FUSIONS)}")
    if model.attention == "explicit":
        if tuple(sorted(model.explicit_scales)) != tuple(scales):
            raise InferenceError(f"this model has explicit attention over fixed scales "
                                 f"{list(model.explicit_scales)}; got scales {list(scales)}")
    elif fusion == "hierarchical" and len(scales) > 1 and model.attention != "hierarchical":
        raise InferenceError(f"fusion 'hierarchical' needs a model with scale attention; this one "
                             f"has attention={model.attention!r}: use --fusion=avg or max, or one scale")


def fused_logits(model, variables, images, *, scales, fusion, flip) -> jax.Array:
    """[B, H, W, K] fused logits of normalised images; with `flip` the mean with the logits of
    the mirrored images (mirrored back)."""
    run = lambda x: model.apply(variables, x, train=False, scales=scales, fusion=fusion)["logits"]
    logits = run(images)
    if flip:
        logits = 0.5 * (logits + run(images[:, :, ::-1])[:, :, ::-1])
    return logits


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start offsets of windows covering [0, size): stride window*(1-overlap), the last window
    flush with the end."""
    if window >= size:
        return [0]
    stride = max(1, int(window * (1.0 - overlap)))
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def sliding_window(fn, images: jax.Array, window: tuple[int, int], overlap: float) -> jax.Array:
    """Apply `fn` ([B, h, w, C] -> [B, h, w, K]) to overlapping windows and average the
    results where windows overlap. One window is in flight at a time (a scan), so memory
    is that of one window, whatever the image size."""
    batch, height, width, channels = images.shape
    win_h, win_w = min(window[0], height), min(window[1], width)
    offsets = np.asarray([(y, x) for y in window_starts(height, win_h, overlap)
                          for x in window_starts(width, win_w, overlap)], np.int32)
    coverage = np.zeros((height, width), np.float32)
    for y, x in offsets:
        coverage[y:y + win_h, x:x + win_w] += 1.0
    first = jax.eval_shape(fn, jax.ShapeDtypeStruct((batch, win_h, win_w, channels), images.dtype))

    def add_window(total, offset):
        crop = jax.lax.dynamic_slice(images, (0, offset[0], offset[1], 0), (batch, win_h, win_w, channels))
        start = (0, offset[0], offset[1], 0)
        current = jax.lax.dynamic_slice(total, start, first.shape)
        return jax.lax.dynamic_update_slice(total, current + fn(crop), start), None

    total = jnp.zeros((batch, height, width, first.shape[-1]), first.dtype)
    total, _ = jax.lax.scan(add_window, total, jnp.asarray(offsets))
    return total / coverage[None, :, :, None]


@dataclasses.dataclass(frozen=True)
class InferenceOptions:
    scales: tuple[float, ...] = DEFAULT_SCALES
    fusion: str = "hierarchical"
    flip: bool = False
    window: tuple[int, int] | None = None  # sliding-window size (height, width); None: whole image
    overlap: float = 1 / 3

    def __post_init__(self):
        object.__setattr__(self, "scales", parse_scales(self.scales, self.fusion))
        if self.window is not None:
            window = tuple(int(v) for v in self.window)
            if len(window) != 2 or min(window) < 1:
                raise InferenceError(f"window={self.window!r}; expected (height, width) > 0")
            object.__setattr__(self, "window", window)
        if not 0 <= self.overlap < 1:
            raise InferenceError(f"overlap={self.overlap!r}; expected 0 <= overlap < 1")


def inference_options(args) -> InferenceOptions:
    """The options an inference command line asks for (its --scales, --fusion, --flip,
    --window, --overlap); InferenceError naming a bad value."""
    from hmsa_jax.inference_cli import parse_pair

    return InferenceOptions(parse_scales(args.scales, args.fusion), args.fusion, args.flip,
                            parse_pair(args.window, "--window"), args.overlap)


def make_logits_fn(model, options: InferenceOptions):
    """`logits(variables, normalised images) -> [B, H, W, K]` (not jitted): fused over the
    scales, flip-averaged, and whole-image or sliding-window as the options say."""
    check_fusion(model, options.scales, options.fusion)
    one = functools.partial(fused_logits, model, scales=options.scales, fusion=options.fusion,
                            flip=options.flip)
    if options.window is None:
        return one
    return lambda variables, images: sliding_window(lambda x: one(variables, x), images,
                                                    options.window, options.overlap)


def normalize_input(images: np.ndarray, normalized: bool = False) -> np.ndarray:
    """uint8 (0..255) or float (0..1) RGB, [H, W, 3] or [B, H, W, 3] -> normalised float32 batch."""
    from hmsa_jax.data.transforms import normalize_image

    array = np.asarray(images)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise InferenceError(f"images must be RGB [H, W, 3] or [B, H, W, 3]; got shape {array.shape}")
    if normalized:
        return array.astype(np.float32)
    if array.dtype == np.uint8:
        return normalize_image(array)
    if not np.issubdtype(array.dtype, np.floating):
        raise InferenceError(f"images of dtype {array.dtype}; expected uint8 (0..255) or float (0..1)")
    if array.size and (array.min() < -1e-3 or array.max() > 1.0 + 1e-3):
        raise InferenceError(f"float images must be RGB in [0, 1]; got values in "
                             f"[{array.min():.3g}, {array.max():.3g}] (pass uint8 for 0..255)")
    mean = np.asarray(label_tables.IMAGENET_MEAN, np.float32)
    std = np.asarray(label_tables.IMAGENET_STD, np.float32)
    return ((array.astype(np.float32) - mean) / std).astype(np.float32)


def scale_weights(attention: dict[float, jax.Array], size: tuple[int, int]) -> dict[float, jax.Array]:
    """Effective weight of each scale in the hierarchical fusion, per output pixel.

    Scales s_1 > ... > s_n; scale k's attention a_k weighs it against the fusion of the larger
    ones, so w_n = a_n and w_k = a_k * prod_{j>k} (1 - a_j), with a_1 = 1 (the largest scale's
    attention is unused). Attention maps are resized to `size` first, so this is exact for the
    weights and approximate (by the resize order) for the fused logits."""
    scales = sorted(attention, reverse=True)
    maps = {s: ops.resize_bilinear(attention[s], size)[..., 0] for s in scales[1:]}
    weights, remaining = {}, None
    for s in reversed(scales):  # smallest first: it takes its share of everything
        a = maps.get(s)
        share = (1.0 if remaining is None else remaining) * (a if a is not None else 1.0)
        weights[s] = jnp.broadcast_to(share, (attention[s].shape[0], *size))
        if a is not None:
            remaining = (1.0 - a) if remaining is None else remaining * (1.0 - a)
    return weights


class Predictor:
    """Load once, predict many: numpy images in, numpy fused/per-scale logits and attention out."""

    def __init__(self, model, variables: dict, classes: ClassTable | None = None, *,
                 scales: Sequence[float] | str = DEFAULT_SCALES, fusion: str = "hierarchical",
                 flip: bool = False, window: tuple[int, int] | None = None, overlap: float = 1 / 3):
        self.model, self.variables = model, variables
        self.classes = classes or ClassTable("model", tuple(f"class_{k}" for k in range(model.num_classes)),
                                             _hue_colors(model.num_classes))
        self.options = InferenceOptions(parse_scales(scales, fusion), fusion, flip, window, overlap)
        self._logits = make_logits_fn(model, self.options)
        self._mesh = local_mesh()
        self._jitted = {}

    @classmethod
    def from_checkpoint(cls, path: str, *, step: int | None = None, which: str = "latest",
                        **options) -> "Predictor":
        loaded = load_model(path, step=step, which=which)
        return cls(loaded.model, loaded.variables, loaded.classes, **options)

    def _forward(self, variables, images):
        opts = self.options
        out = {}
        if opts.window is None and self.model.attention != "explicit":
            outputs = self.model.apply(variables, images, train=False, scales=opts.scales,
                                       fusion=opts.fusion)
            logits = outputs["logits"]
            if opts.flip:
                logits = 0.5 * (logits + fused_logits(self.model, variables, images[:, :, ::-1],
                                                       scales=opts.scales, fusion=opts.fusion,
                                                       flip=False)[:, :, ::-1])
            per_scale = outputs["per_scale"]
            out["per_scale"] = {s: {"logits": o["logits"],
                                    "attention": None if o["attention"] is None else o["attention"][..., 0]}
                                for s, o in per_scale.items()}
            attention = {s: o["attention"] for s, o in per_scale.items()}
            if opts.fusion == "hierarchical" and all(a is not None for a in attention.values()):
                out["scale_weights"] = scale_weights(attention, logits.shape[1:3])
        else:
            logits = self._logits(variables, images)
        out.update(logits=logits, labels=jnp.argmax(logits, -1).astype(jnp.int32),
                   probabilities=jax.nn.softmax(logits, -1))
        return out

    @property
    def batch_size(self) -> int:
        """Images per call that keep every local device busy (one per device)."""
        return int(self._mesh.devices.size)

    def __call__(self, images: np.ndarray, *, normalized: bool = False) -> dict:
        """Predict a batch (or one image). Returns numpy arrays: "logits" [B,H,W,K], "labels"
        [B,H,W], "probabilities" [B,H,W,K]; for whole-image inference also "per_scale"
        {scale: {"logits", "attention"}} and, for hierarchical fusion, "scale_weights".
        The batch is split over this process's devices: a batch smaller than their count runs
        on that many devices; a larger one is padded (with copies of its last image, dropped
        from the result) to a multiple of their count."""
        batch = normalize_input(images, normalized)
        count = batch.shape[0]
        devices = min(count, self.batch_size)
        jitted, variables = self._compiled_for(devices)
        out = jax.device_get(jitted(variables, pad_batch(batch, devices)))
        return jax.tree_util.tree_map(lambda a: np.asarray(a)[:count], out)

    def _compiled_for(self, devices: int):
        """(jitted forward, variables) on a mesh of this process's first `devices` devices."""
        if devices not in self._jitted:
            mesh = Mesh(self._mesh.devices[:devices], ("data",), axis_types=(AxisType.Auto,))
            replicated = NamedSharding(mesh, P())
            jitted = jax.jit(self._forward, in_shardings=(replicated, NamedSharding(mesh, P("data"))))
            self._jitted[devices] = (jitted, jax.device_put(self.variables, replicated))
        return self._jitted[devices]


def pad_batch(batch: np.ndarray, multiple: int) -> np.ndarray:
    """`batch` with copies of its last row appended up to a multiple of `multiple` rows."""
    missing = -batch.shape[0] % multiple
    if not missing:
        return batch
    return np.concatenate([batch, np.repeat(batch[-1:], missing, axis=0)])


# ----------------------------------------------------------------------------- pictures
def find_images(inputs: Sequence[str]) -> list[tuple[str, str]]:
    """(path, name) of every image in `inputs` (files, or folders searched recursively); name is
    the path relative to its folder without extension (the file stem for files)."""
    found = []
    for item in inputs:
        if os.path.isdir(item):
            for root, _, files in sorted(os.walk(item)):
                for f in sorted(files):
                    if f.lower().endswith(IMAGE_EXTENSIONS):
                        path = os.path.join(root, f)
                        found.append((path, os.path.splitext(os.path.relpath(path, item))[0]))
        elif os.path.isfile(item):
            found.append((item, os.path.splitext(os.path.basename(item))[0]))
        else:
            raise DataError(f"{item}: no such image file or folder")
    if not found:
        raise DataError(f"no images ({'/'.join(IMAGE_EXTENSIONS)}) found in {', '.join(inputs)}")
    names = [n for _, n in found]
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise DataError(f"two inputs give the output name {duplicate!r}; pass their common folder instead")
    return found


def pictures_for_image(out_dir: str, name: str, image: np.ndarray, prediction: dict, index: int,
                       classes: ClassTable, label: np.ndarray | None = None) -> dict:
    """Write one image's pictures (from a Predictor output, row `index`; `label`: its ground
    truth train ids, if known); returns its index entry."""
    from hmsa_jax import visualize as vis

    height, width = image.shape[:2]
    path = lambda suffix: os.path.join(out_dir, f"{name}_{suffix}.png")
    rel = lambda p: os.path.relpath(p, out_dir)
    labels = prediction["labels"][index]
    colors = vis.colorize(labels, classes)
    pictures = [("input", vis.save_png(path("input"), image))]
    truth_colors, scores, shown_ids = None, None, set(np.unique(labels).tolist())
    if label is not None:
        label = np.asarray(label)
        truth_colors = vis.colorize(label, classes)
        pictures.append(("ground truth", vis.save_png(path("truth"), truth_colors)))
        scores = vis.image_scores(labels, label, classes.num_classes)
        shown_ids |= set(np.unique(label).tolist())
    pictures += [("prediction", vis.save_png(path("pred"), colors)),
                 ("overlay", vis.save_png(path("overlay"), vis.overlay(image, colors)))]
    vis.save_png(path("labels"), labels.astype(np.uint8))  # train ids, for tools
    per_scale = prediction.get("per_scale", {})
    scale_colors, attention = {}, {}
    for s in sorted(per_scale):
        scale_labels = np.argmax(per_scale[s]["logits"][index], -1).astype(np.uint8)
        scale_colors[s] = vis.colorize(vis.resize_labels(scale_labels, (height, width)), classes)
        pictures.append((f"prediction at {s:g}x", vis.save_png(path(f"scale{s:g}_pred"), scale_colors[s])))
        if per_scale[s]["attention"] is not None and s != max(per_scale):
            attention[s] = vis.resize_map(per_scale[s]["attention"][index], (height, width))
            pictures.append((f"attention at {s:g}x",
                             vis.save_png(path(f"scale{s:g}_attention"), vis.heatmap(attention[s]))))
    weights, shares = None, None
    if "scale_weights" in prediction:
        weights = {s: w[index] for s, w in prediction["scale_weights"].items()}
        trust, _ = vis.trust_map(weights)
        shares = vis.scale_shares(weights)
        pictures.append(("which scale wins", vis.save_png(path("trust"), trust)))
    panel = None
    if per_scale:
        named = [(classes.names[k], classes.colors[k]) for k in sorted(shown_ids) if k < classes.num_classes]
        title = name if scores is None else f"{name}: mIoU {100 * scores['miou']:.1f}%"
        panel = vis.figure_panel(path("panel"), image, colors, scale_colors, attention, weights,
                                 title=title, ground_truth_colors=truth_colors, legend_classes=named)
        pictures.insert(0, ("panel", panel))
    return {"name": name, "pictures": [(caption, rel(p)) for caption, p in pictures],
            "panel": None if panel is None else rel(panel), "scores": scores, "scale_shares": shares}


def picture_header(checkpoint: str, step, model_name: str, options: "InferenceOptions") -> dict:
    """What made a pictures page: the index's header rows."""
    return {"checkpoint": checkpoint, "step": "-" if step is None else step, "model": model_name,
            "scales": ", ".join(f"{s:g}x" for s in options.scales), "fusion": options.fusion,
            "flip": "yes (mean with the mirrored image)" if options.flip else "no",
            "inference": "whole images" if options.window is None else
            f"sliding windows of {options.window[0]}x{options.window[1]}"}


def _display_images(images: np.ndarray, normalized: bool) -> np.ndarray:
    from hmsa_jax.data.transforms import denormalize_image

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
    from hmsa_jax import visualize as vis

    predictor = Predictor(model, variables, classes, scales=scales, fusion=fusion, flip=flip)
    display = _display_images(images, normalized)
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
    return vis.write_index(out_dir, entries, title, header=header, classes=classes,
                           scales=predictor.options.scales if "scale_weights" in prediction else None)


# ----------------------------------------------------------------------------- command line
def main(argv: list[str]) -> int:
    from hmsa_jax import inference_cli as cli

    parser = cli.argument_parser("hmsa predict", "colour-coded predictions, overlays and per-scale "
                                 "attention pictures of images, with an index.html")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders (recursive)")
    parser.add_argument("--out", required=True, help="output folder")
    cli.add_checkpoint_arguments(parser)
    cli.add_inference_arguments(parser)
    cli.add_batch_arguments(parser)
    args = parser.parse_args(argv)
    return cli.run_guarded("hmsa predict", lambda: _predict_command(args))


def _predict_command(args) -> int:
    from hmsa_jax import inference_cli as cli
    from hmsa_jax import visualize as vis
    from hmsa_jax.batching import same_size_batches, stack
    from hmsa_jax.console import plural, progress_bar
    from hmsa_jax.data.imageio import read_rgb

    cli.check_batch_size(args.batch_size)
    images = find_images(args.inputs)  # before any compilation: bad paths fail fast
    options = inference_options(args)
    input_checks.check_out_dir(args.out, args.inputs)  # else the next run predicts its pictures
    input_checks.check_inputs_fit(images, options.scales, pictures=True)
    cli.configure_runtime()  # this machine's defaults, not the checkpoint's
    loaded = load_model(args.checkpoint, step=args.step, which=args.which)
    predictor = Predictor(loaded.model, loaded.variables, loaded.classes, **dataclasses.asdict(options))
    batch_size = args.batch_size or predictor.batch_size
    print(f"{loaded.path}: {loaded.model_name}, {loaded.num_classes} classes; scales "
          f"{list(options.scales)}, fusion {options.fusion}{', flip' if options.flip else ''}; "
          f"batches of {plural(batch_size, 'image')} on {plural(predictor.batch_size, 'device')}")
    entries = []
    bar = progress_bar(total=len(images), desc="predict", unit="image", quiet=args.quiet)
    for batch in same_size_batches(images, lambda item: read_rgb(item[0]), batch_size):
        prediction = predictor(stack(batch))
        for row, ((path, name), image) in enumerate(batch):
            entries.append(pictures_for_image(args.out, name, image, prediction, row, loaded.classes))
            bar.write(f"  {path} -> {os.path.join(args.out, name)}_*.png")
        bar.update(len(batch))
    bar.close()
    header = picture_header(loaded.path, loaded.meta.get("step"), loaded.model_name, options)
    index = vis.write_index(args.out, entries, f"hmsa predict: {loaded.model_name}", header=header,
                            classes=loaded.classes,
                            scales=options.scales if any(e["scale_shares"] for e in entries) else None)
    print(f"wrote the pictures of {plural(len(entries), 'image')}; browse {index}")
    return 0


__all__ = ["DEFAULT_SCALES", "InferenceError", "InferenceOptions", "LoadedModel", "Predictor",
           "check_fusion", "class_table_for", "find_images", "fused_logits", "load_model",
           "make_logits_fn", "normalize_input", "pad_batch", "parse_scales", "picture_header",
           "pictures_for_image", "resolve_checkpoint", "scale_weights", "sliding_window", "window_starts",
           "write_pictures"]
