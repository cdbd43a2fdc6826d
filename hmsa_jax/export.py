"""`hmsa export`: a trained predictor as one versioned file that a plain `jax` install runs.

    hmsa export --checkpoint=DIR --scales=0.5,1.0,2.0 --size=1024x2048 --out=model.hmsa [--flip]

The file is a zip: `manifest.json` (format, model, classes with colours, scales, fusion, flip,
input and output specification, checkpoint and step, the jax version that wrote it) and
`predictor.jaxexport`, a `jax.export` serialisation (StableHLO) of

    images uint8 [B, H, W, 3] RGB  ->  {"labels": int32 [B, H, W], "logits": float32 [B, H, W, K]}

with the variables inside as constants and B symbolic (any batch size). Running it needs jax
and nothing of this package:

    import json, zipfile, jax
    with zipfile.ZipFile("model.hmsa") as z:
        manifest = json.loads(z.read("manifest.json"))
        predictor = jax.export.deserialize(bytearray(z.read("predictor.jaxexport")))
    out = predictor.call(images)  # images: uint8 [B, H, W, 3] of manifest["input"]["shape"][1:3]
"""
from __future__ import annotations

import json
import os
import zipfile

import jax
import jax.numpy as jnp

from hmsa_jax import inference_cli as cli
from hmsa_jax.data.transforms import normalize_image
from hmsa_jax.inference import InferenceOptions, make_logits_fn, parse_scales
from hmsa_jax.input_checks import InferenceError
from hmsa_jax.loading import load_model

FORMAT = "hmsa_jax.exported/1"
MANIFEST, PROGRAM = "manifest.json", "predictor.jaxexport"


def parse_size(text: str) -> tuple[int, int]:
    """'1024x2048' (or '1024,2048') -> (height, width)."""
    try:
        height, width = (int(v) for v in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise InferenceError(f"--size={text!r}; expected HxW, e.g. 1024x2048") from None
    if min(height, width) < 1:
        raise InferenceError(f"--size={text!r}; expected positive height and width")
    return height, width


def predictor_function(model, variables, options):
    """images uint8 [B, H, W, 3] -> {"labels", "logits"}: normalisation, multi-scale fusion and
    flip as `Predictor` does them, variables closed over (they become constants when exported)."""
    logits_fn = make_logits_fn(model, options)

    def predict(images):
        logits = logits_fn(variables, normalize_image(images))
        return {"labels": jnp.argmax(logits, -1).astype(jnp.int32), "logits": logits}

    return predict


def export_predictor(loaded, options, size: tuple[int, int], platforms=("cpu",)):
    """jax.export.Exported of `predictor_function` for uint8 images of `size`, any batch size."""
    batch = jax.export.symbolic_shape("b")[0]
    images = jax.ShapeDtypeStruct((batch, *size, 3), jnp.uint8)
    function = jax.jit(predictor_function(loaded.model, jax.device_get(loaded.variables), options))
    return jax.export.export(function, platforms=tuple(platforms))(images)


def manifest_for(loaded, options, size, exported) -> dict:
    num_classes = loaded.num_classes
    return {
        "format": FORMAT, "model": loaded.model_name, "checkpoint": loaded.path,
        "step": loaded.meta.get("step"),
        "classes": [{"train_id": k, "name": n, "color": list(c)}
                    for k, (n, c) in enumerate(zip(loaded.classes.names, loaded.classes.colors))],
        "scales": list(options.scales), "fusion": options.fusion, "flip": options.flip,
        "input": {"shape": ["B", size[0], size[1], 3], "dtype": "uint8", "meaning": "RGB, 0..255"},
        "outputs": {"labels": {"shape": ["B", size[0], size[1]], "dtype": "int32",
                               "meaning": f"train ids 0..{num_classes - 1}"},
                    "logits": {"shape": ["B", size[0], size[1], num_classes], "dtype": "float32"}},
        "platforms": list(exported.platforms),
        "calling_convention_version": exported.calling_convention_version,
        "written_by": {"jax": jax.__version__},
    }


def write_exported(path: str, manifest: dict, exported) -> str:
    """The zip at `path`, written to a temporary name and renamed (no torn file on failure)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = path + ".partial"
    with zipfile.ZipFile(partial, "w") as archive:
        archive.writestr(MANIFEST, json.dumps(manifest, indent=1))
        archive.writestr(PROGRAM, bytes(exported.serialize()), compress_type=zipfile.ZIP_STORED)
    os.replace(partial, path)
    return path


def read_exported(path: str):
    """(manifest, jax.export.Exported) of a file `hmsa export` wrote; ValueError naming the
    file for another format or version."""
    with zipfile.ZipFile(path) as archive:
        manifest = json.loads(archive.read(MANIFEST))
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{path}: format {manifest.get('format')!r}; expected {FORMAT!r}")
        return manifest, jax.export.deserialize(bytearray(archive.read(PROGRAM)))


# ----------------------------------------------------------------------------- command line
def main(argv: list[str]) -> int:
    parser = cli.argument_parser(
        "hmsa export", "serialise a checkpoint's predictor (jax.export, StableHLO) into one file that "
        "a plain jax install runs: uint8 images [B, H, W, 3] -> labels and logits")
    cli.add_checkpoint_arguments(parser)
    parser.add_argument("--scales", default="0.5,1.0,2.0", help="comma-separated inference scales")
    parser.add_argument("--fusion", choices=cli.FUSION_CHOICES, default="hierarchical")
    parser.add_argument("--flip", action="store_true", help="average with the mirrored image's logits")
    parser.add_argument("--size", required=True, metavar="HxW", help="the input images' size, e.g. 1024x2048")
    parser.add_argument("--platforms", default="cpu",
                        help="comma-separated platforms the file runs on: cpu, cuda, rocm, tpu (default cpu)")
    parser.add_argument("--out", required=True, help="the file to write (a zip; e.g. model.hmsa)")
    args = parser.parse_args(argv)
    return cli.run_guarded("hmsa export", lambda: _export_command(args))


def _export_command(args) -> int:
    options = InferenceOptions(parse_scales(args.scales, args.fusion), args.fusion, args.flip)
    size = parse_size(args.size)
    platforms = tuple(p.strip() for p in args.platforms.split(",") if p.strip())
    unknown = sorted(set(platforms) - {"cpu", "cuda", "rocm", "tpu"})
    if unknown or not platforms:
        raise InferenceError(f"--platforms={args.platforms!r}; expected some of cpu, cuda, rocm, tpu")
    if os.path.isdir(args.out):
        raise IsADirectoryError(f"--out={args.out} is a folder; expected a file name")
    cli.configure_runtime()
    loaded = load_model(args.checkpoint, step=args.step, which=args.which)
    exported = export_predictor(loaded, options, size, platforms)
    path = write_exported(args.out, manifest_for(loaded, options, size, exported), exported)
    print(f"{loaded.path}: {loaded.model_name}, scales {list(options.scales)}, fusion {options.fusion}"
          f"{', flip' if options.flip else ''}, {size[0]}x{size[1]} uint8 input, any batch size, "
          f"{', '.join(platforms)} -> {path} ({os.path.getsize(path) / 1e6:.1f} MB)")
    return 0


__all__ = ["FORMAT", "export_predictor", "manifest_for", "parse_size", "predictor_function", "read_exported",
           "write_exported"]
