"""Inference with a loaded model: options, the logits function, sliding windows, and `Predictor`.

    from hmsa_jax.inference import Predictor

    predictor = Predictor.from_checkpoint("/tmp/hmsa_demo", scales=(0.5, 1.0, 2.0))
    out = predictor(image)              # uint8 [H, W, 3] (or [B, H, W, 3]; floats in [0, 1])
    out["labels"]                        # [B, H, W] int32 fused argmax (train ids)
    out["logits"]                        # [B, H, W, K] float32 fused logits
    out["per_scale"][0.5]["logits"]      # [B, h, w, K] at the 0.5x input size
    out["per_scale"][0.5]["attention"]   # [B, h, w] how much each pixel trusts 0.5x vs larger scales
    out["scale_weights"][2.0]            # [B, H, W] effective weight of 2.0x in the fused result

Every inference here (Predictor, `hmsa eval`, `hmsa autolabel`, `hmsa export`) runs the model
through `fused_outputs`: the model's multi-scale forward at the options' scales and fusion,
flip-averaged when asked. The model layer's own jitted entry point is
hmsa_jax.models.inference.make_predict_fn (variables and normalised images in, outputs out).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hmsa_jax import multiscale, ops, parallel
from hmsa_jax.data.labels import ClassTable, numbered_classes
from hmsa_jax.data.transforms import normalize_image
from hmsa_jax.inference_cli import parse_pair
from hmsa_jax.input_checks import InferenceError
from hmsa_jax.loading import load_model

DEFAULT_SCALES = (0.5, 1.0, 2.0)


# ----------------------------------------------------------------------------- options
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
    return InferenceOptions(parse_scales(args.scales, args.fusion), args.fusion, args.flip,
                            parse_pair(args.window, "--window"), args.overlap)


def check_options_fit(model, options: InferenceOptions) -> None:
    """The options fit the model: an explicit-attention model takes only the scales it was
    trained on; otherwise multiscale.check_fusion's rule."""
    if model.attention == "explicit":
        if tuple(sorted(model.explicit_scales)) != tuple(options.scales):
            raise InferenceError(f"this model has explicit attention over fixed scales "
                                 f"{list(model.explicit_scales)}; got scales {list(options.scales)}")
        return
    multiscale.check_fusion(options.fusion, model.attention, len(options.scales), InferenceError)


# ----------------------------------------------------------------------------- the forward
def fused_outputs(model, variables, images, options: InferenceOptions) -> dict:
    """The model's outputs for normalised images at the options' scales and fusion; with
    `options.flip` the logits are the mean with those of the mirrored images (mirrored back)."""
    apply = functools.partial(model.apply, variables, train=False, scales=options.scales,
                              fusion=options.fusion)
    outputs = apply(images)
    if options.flip:
        mirrored = apply(images[:, :, ::-1])["logits"][:, :, ::-1]
        outputs = {**outputs, "logits": 0.5 * (outputs["logits"] + mirrored)}
    return outputs


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


def make_logits_fn(model, options: InferenceOptions):
    """`logits(variables, normalised images) -> [B, H, W, K]` (not jitted): fused over the
    scales, flip-averaged, and whole-image or sliding-window as the options say."""
    check_options_fit(model, options)

    def logits(variables, images):
        return fused_outputs(model, variables, images, options)["logits"]

    if options.window is None:
        return logits
    return lambda variables, images: sliding_window(lambda x: logits(variables, x), images,
                                                    options.window, options.overlap)


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


# ----------------------------------------------------------------------------- host batches
def normalize_input(images: np.ndarray, normalized: bool = False) -> np.ndarray:
    """uint8 (0..255) or float (0..1) RGB, [H, W, 3] or [B, H, W, 3] -> normalised float32 batch."""
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
    return ops.normalize_images(array)


def pad_batch(batch: np.ndarray, multiple: int) -> np.ndarray:
    """`batch` with copies of its last row appended up to a multiple of `multiple` rows."""
    missing = -batch.shape[0] % multiple
    if not missing:
        return batch
    return np.concatenate([batch, np.repeat(batch[-1:], missing, axis=0)])


# ----------------------------------------------------------------------------- Predictor
class Predictor:
    """Load once, predict many: numpy images in, numpy fused/per-scale logits and attention out."""

    def __init__(self, model, variables: dict, classes: ClassTable | None = None, *,
                 scales: Sequence[float] | str = DEFAULT_SCALES, fusion: str = "hierarchical",
                 flip: bool = False, window: tuple[int, int] | None = None, overlap: float = 1 / 3):
        self.model, self.variables = model, variables
        self.classes = classes or numbered_classes(model.num_classes)
        self.options = InferenceOptions(parse_scales(scales, fusion), fusion, flip, window, overlap)
        self._logits = make_logits_fn(model, self.options)
        self._mesh = parallel.make_mesh(local=True)
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
            outputs = fused_outputs(self.model, variables, images, opts)
            logits = outputs["logits"]
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
            mesh = parallel.make_mesh(devices, local=True)
            replicated = parallel.replicated(mesh)
            jitted = jax.jit(self._forward, in_shardings=(replicated, parallel.batch_sharded(mesh)))
            self._jitted[devices] = (jitted, jax.device_put(self.variables, replicated))
        return self._jitted[devices]


__all__ = ["DEFAULT_SCALES", "InferenceOptions", "Predictor", "check_options_fit", "fused_outputs",
           "inference_options", "make_logits_fn", "normalize_input", "pad_batch", "parse_scales",
           "scale_weights", "sliding_window", "window_starts"]
