"""`hmsa predict --checkpoint=DIR INPUT... --out=DIR`: colour-coded predictions, overlays,
per-scale predictions and attention maps, a Figure-3 panel per image and an index.html.

The pieces live where their job is: hmsa_jax.loading (checkpoint -> model and variables),
hmsa_jax.inference (options, Predictor) and hmsa_jax.visualize (the pictures and the page).
"""
from __future__ import annotations

import dataclasses
import os

from hmsa_jax import inference_cli as cli
from hmsa_jax import input_checks, visualize
from hmsa_jax.batching import same_size_batches, stack
from hmsa_jax.console import plural, progress_bar
from hmsa_jax.data.imageio import read_rgb
from hmsa_jax.inference import Predictor, inference_options
from hmsa_jax.loading import load_model

def main(argv: list[str]) -> int:
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
    cli.check_batch_size(args.batch_size)
    images = input_checks.find_images(args.inputs)  # before any compilation: bad paths fail fast
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
            entries.append(visualize.pictures_for_image(args.out, name, image, prediction, row,
                                                        loaded.classes))
            bar.write(f"  {path} -> {os.path.join(args.out, name)}_*.png")
        bar.update(len(batch))
    bar.close()
    header = visualize.picture_header(loaded.path, loaded.meta.get("step"), loaded.model_name, options)
    index = visualize.write_index(args.out, entries, f"hmsa predict: {loaded.model_name}", header=header,
                                  classes=loaded.classes,
                                  scales=options.scales if any(e["scale_shares"] for e in entries) else None)
    print(f"wrote the pictures of {plural(len(entries), 'image')}; browse {index}")
    return 0


__all__ = ["main"]
