"""Evaluation of a checkpoint over a dataset split, at any scales, on any number of devices/hosts.

    hmsa eval --checkpoint=/tmp/hmsa_demo [--config=configs/x.py ...] [--scales=0.5,1.0,2.0]
              [--flip] [--fusion=hierarchical|avg|max] [--window=H,W] [--save-predictions=DIR]

The eval split comes in padded global batches whose `valid` mask marks padding, so every image
is scored exactly once whatever the device and process count; the [K, K] confusion matrix is
summed on the devices (replicated result) and turned into per-class IoU, mIoU, pixel accuracy
and mean class accuracy. `--save-predictions` writes one PNG per image (Cityscapes labelIds for
Cityscapes, the format of the benchmark server and of cityscapesscripts' evaluator; train ids
otherwise), each process writing its own images.

The evaluator (`make_eval_fn` + `confusion_over`) is also what training-time validation runs
(hmsa_jax.train.validation), so a checkpoint scores the same in both.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from hmsa_jax import inference_cli as cli
from hmsa_jax import input_checks, parallel
from hmsa_jax.configlib import ConfigError, load_config
from hmsa_jax.console import plural, progress_bar
from hmsa_jax.data.build import make_eval_dataset
from hmsa_jax.data.errors import DataError
from hmsa_jax.data.imageio import write_png
from hmsa_jax.data.labels import cityscapes_train_ids_to_label_ids, trainids_read_as_labelids
from hmsa_jax.data.pipeline import close_iterator
from hmsa_jax.inference import InferenceOptions, inference_options, make_logits_fn
from hmsa_jax.input_checks import InferenceError
from hmsa_jax.loading import LoadedModel, load_model
from hmsa_jax.metrics import confusion_matrix, format_scores, scores_to_json, segmentation_scores
from hmsa_jax.ops import prepare_images
from hmsa_jax.visualize import picture_header, write_pictures

# What the evaluator reads of an eval batch (the rest, e.g. "index", stays on the host).
EVAL_KEYS = ("image", "label", "valid")


@dataclasses.dataclass
class EvalResult:
    scores: dict  # metrics.segmentation_scores of the confusion matrix
    confusion: np.ndarray  # [K, K] int64, rows ground truth
    num_images: int  # valid images scored, over all processes
    num_records: int  # images in the split
    seconds: float
    class_names: tuple[str, ...]

    def table(self) -> str:
        return format_scores(self.scores, self.class_names)

    def to_json(self, **extra) -> dict:
        return {**extra, "num_images": self.num_images, "num_records": self.num_records,
                **scores_to_json(self.scores, self.class_names),
                "confusion": self.confusion.tolist(), "seconds": round(self.seconds, 2)}


def eval_step(variables: dict, batch: dict, *, logits_fn: Callable, num_classes: int,
              with_predictions: bool) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """One batch: (confusion [K, K] of its valid images, how many are valid, predictions
    [B, H, W] uint8 or None). Pure; `logits_fn` is hmsa_jax.inference.make_logits_fn's."""
    logits = logits_fn(variables, prepare_images(batch["image"]))
    predictions = jnp.argmax(logits, axis=-1)
    confusion = confusion_matrix(predictions, batch["label"], num_classes, batch["valid"])
    counted = jnp.sum(batch["valid"].astype(jnp.int32))
    return confusion, counted, predictions.astype(jnp.uint8) if with_predictions else None


def make_eval_fn(model, num_classes: int, mesh, options: InferenceOptions,
                 with_predictions: bool = False) -> Callable:
    """eval_step jitted over `mesh`: variables replicated, the batch split over "data"."""
    step = functools.partial(eval_step, logits_fn=make_logits_fn(model, options),
                             num_classes=num_classes, with_predictions=with_predictions)
    replicated, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    return jax.jit(step, in_shardings=(replicated, sharded),
                   out_shardings=(replicated, replicated, sharded if with_predictions else None))


def confusion_over(eval_fn: Callable, variables: dict, batches: Iterable[dict], mesh, *,
                   max_batches: int = 0, on_batch: Callable | None = None) -> tuple[np.ndarray, int]:
    """The evaluator: ([K, K] int64 confusion matrix, images counted) of `eval_fn` (make_eval_fn)
    summed over this process's padded eval batches (or the first `max_batches`), as global
    batches over `mesh`. `on_batch(number, host batch, predictions)` runs after each batch.
    Every process gets the whole result."""
    iterator = iter(batches)
    confusion = counted = None
    try:
        for number, batch in enumerate(iterator):
            if max_batches and number >= max_batches:
                break
            arrays = parallel.global_batch({k: batch[k] for k in EVAL_KEYS}, mesh)
            batch_confusion, batch_count, predictions = eval_fn(variables, arrays)
            confusion = batch_confusion if confusion is None else confusion + batch_confusion
            counted = batch_count if counted is None else counted + batch_count
            if on_batch is not None:
                on_batch(number, batch, predictions)
    finally:
        close_iterator(iterator)
    if confusion is None:
        raise InferenceError("nothing was evaluated (max_batches or an empty split)")
    # Replicated: every process holds the whole matrix.
    return (np.asarray(confusion.addressable_data(0)).astype(np.int64),
            int(counted.addressable_data(0)))


def local_rows(array: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded array, in the order of its local batch."""
    shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
    rows, seen = [], set()
    for shard in shards:
        start = shard.index[0].start or 0
        if start not in seen:  # replicas of one row block (several devices per row) once
            seen.add(start)
            rows.append(np.asarray(shard.data))
    return np.concatenate(rows)


def prediction_writer(directory: str, source, classes_name: str, padded: bool) -> Callable:
    """write(record index, train ids [H, W]) -> path: Cityscapes labelIds for Cityscapes,
    train ids otherwise, at `directory/<record name>.png`, cropped to the image when padded."""
    cityscapes = classes_name == "cityscapes"

    def write(index: int, train_ids: np.ndarray) -> str:
        if padded:
            height, width = source.load_label(index).shape
            train_ids = train_ids[:height, :width]
        values = cityscapes_train_ids_to_label_ids(train_ids) if cityscapes else train_ids
        path = os.path.join(directory, source.name(index) + ".png")
        write_png(path, values)
        return path

    return write


def _check_sizes(data, source, options: InferenceOptions) -> None:
    """Every scale fits the images (or windows) before anything compiles; eval images share
    one size (data.eval.pad_to, else the first record's)."""
    if len(source) == 0:
        return
    pad_to = tuple(int(v) for v in data.eval.pad_to)
    height, width = pad_to if all(pad_to) else source.load(0)["image"].shape[:2]
    if options.window is not None:
        height, width = min(height, options.window[0]), min(width, options.window[1])
    input_checks.check_scaled_size(f"{data.dataset} {data.eval_split}", height, width, options.scales)


def evaluate(loaded: LoadedModel, data, options: InferenceOptions, *, mesh=None,
             predictions_dir: str | None = None, max_batches: int = 0,
             log: Callable[[str], None] = print, quiet: bool = True) -> EvalResult:
    """Score `loaded` on data.eval_split of the `data` config section (see module docstring).
    `quiet=False`: a progress bar over the batches (on a terminal)."""
    mesh = mesh or parallel.make_mesh()
    parallel.check_batch_size(data.eval.batch_size, mesh, "data.eval.batch_size")
    eval_ds, num_batches, source = make_eval_dataset(data)
    _check_sizes(data, source, options)
    if source.classes.num_classes != loaded.num_classes:
        raise InferenceError(f"{loaded.path}: the checkpoint predicts {loaded.num_classes} classes, "
                             f"dataset {data.dataset!r} has {source.classes.num_classes} "
                             f"({source.classes.name}); evaluate with the dataset it was trained on")
    variables = jax.device_put(loaded.variables, parallel.replicated(mesh))
    eval_fn = make_eval_fn(loaded.model, loaded.num_classes, mesh, options, predictions_dir is not None)
    write = None
    if predictions_dir is not None:
        write = prediction_writer(predictions_dir, source, source.classes.name, all(data.eval.pad_to))
    start = time.perf_counter()
    bar = progress_bar(total=min(num_batches, max_batches or num_batches), desc="eval", unit="batch",
                       quiet=quiet)
    bar.set_postfix_str("compiling (first batch)")

    def on_batch(number: int, batch: dict, predictions) -> None:
        bar.set_postfix_str("", refresh=False)
        bar.update(1)
        if write is not None:
            for row, index, valid in zip(local_rows(predictions), batch["index"], batch["valid"]):
                if valid:
                    write(int(index), row)
        log(f"batch {number + 1}/{num_batches}")

    try:
        confusion, counted = confusion_over(eval_fn, variables, eval_ds, mesh, max_batches=max_batches,
                                            on_batch=on_batch)
    finally:
        bar.close()
    mixup = trainids_read_as_labelids(confusion.sum(1), getattr(source, "table_name", ""))
    if mixup is not None:  # the scores would be of the wrong classes
        raise DataError(f"{data.dataset} {data.eval_split}: {mixup}")
    return EvalResult(segmentation_scores(confusion), confusion, counted, len(source),
                      time.perf_counter() - start, tuple(source.classes.names))


def show_pictures(loaded: LoadedModel, data, options: InferenceOptions, directory: str, *,
                  max_images: int, header: dict) -> str:
    """The pictures page (hmsa_jax.visualize.write_pictures, with ground truth and per-image mIoU)
    of the first `max_images` images of the eval split; returns its index.html."""
    eval_ds, _, source = make_eval_dataset(data)
    images, labels, names = [], [], []
    iterator = iter(eval_ds)
    for batch in iterator:
        for image, label, index, valid in zip(batch["image"], batch["label"], batch["index"], batch["valid"]):
            if valid and len(names) < max_images:
                images.append(image), labels.append(label), names.append(source.name(int(index)))
        if len(names) >= max_images:
            break
    close_iterator(iterator)
    # On the host: the pictures use every local device, whatever mesh the scores ran on.
    variables = jax.tree_util.tree_map(lambda a: np.asarray(a.addressable_data(0)), loaded.variables)
    return write_pictures(loaded.model, variables, np.stack(images), loaded.classes, directory,
                          scales=options.scales, fusion=options.fusion, flip=options.flip,
                          names=names, normalized=data.augment.normalize, labels=np.stack(labels),
                          title=f"hmsa eval: {loaded.model_name}", header=header)


# ----------------------------------------------------------------------------- command line
def main(argv: list[str]) -> int:
    parser = cli.argument_parser(
        "hmsa eval", "Score a checkpoint on a dataset split: per-class IoU, mIoU, pixel and mean "
        "class accuracy. The data section comes from --config (with --config.a.b=value "
        "overrides) or, without it, from the checkpoint's saved config.")
    cli.add_checkpoint_arguments(parser)
    cli.add_inference_arguments(parser)
    parser.add_argument("--num-devices", type=int, default=0, help="devices to use (0: all)")
    parser.add_argument("--batch-size", type=int, default=0,
                        help="global eval batch size (0: data.eval.batch_size of the config)")
    parser.add_argument("--max-batches", type=int, default=0, help="score only the first N batches")
    parser.add_argument("--save-predictions", default=None, metavar="DIR",
                        help="write one PNG per image (Cityscapes labelIds for Cityscapes)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the scores as JSON")
    parser.add_argument("--show-dir", default=None, metavar="DIR",
                        help="also write the pictures page (DIR/index.html: prediction, ground truth, "
                             "per-image mIoU, per-scale attention) of the first --show-max images")
    parser.add_argument("--show-max", type=int, default=20, metavar="N",
                        help="images on the --show-dir page (default 20)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar (there is none either when stderr is not a terminal)")
    args, rest = parser.parse_known_args(argv)
    unknown = [a for a in rest if not a.startswith("--config")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return cli.run_guarded("hmsa eval", lambda: _eval_command(args, rest))


def _command_line_config(config_args: list[str]):
    """The --config file with its overrides, or None (then the checkpoint's data section)."""
    if any(a.startswith("--config=") for a in config_args):
        config, _ = load_config(config_args)
        return config
    if config_args:
        raise ConfigError(f"{config_args[0]}: --config.* overrides need --config=FILE")
    return None


def _checkpoint_data_config(meta: dict, checkpoint: str):
    if not meta.get("config"):
        raise ConfigError(f"{checkpoint}: this checkpoint stores no config (a converted one?); pass "
                          f"--config=configs/<dataset>.py to say what to evaluate on")
    return ConfigDict(meta["config"])


def _eval_command(args, config_args: list[str]) -> int:
    options = inference_options(args)  # bad scales fail before anything loads
    for option, folder in (("--save-predictions", args.save_predictions), ("--show-dir", args.show_dir)):
        if folder:  # output paths fail before the evaluation, not after it
            input_checks.check_output_folder(folder, option)
    if args.json:
        input_checks.check_output_file(args.json, "--json")
    if args.show_max < 1:
        raise InferenceError(f"--show-max={args.show_max}; expected >= 1")
    config = _command_line_config(config_args)
    # Run-time settings (compilation cache, ...) are this machine's: the --config given here, or
    # the defaults; never those a checkpoint was trained with elsewhere.
    cli.configure_runtime(config.runtime if config is not None and "runtime" in config else None)
    parallel.initialize_distributed_if_requested()
    mesh = parallel.make_mesh(args.num_devices or None)
    expect = config.model.name if config is not None and "model" in config else None
    loaded = load_model(args.checkpoint, step=args.step, which=args.which,
                        sharding=parallel.replicated(mesh), expect_model=expect)
    if config is None:
        config = _checkpoint_data_config(loaded.meta, loaded.path)
    if args.batch_size:
        config.data.eval.batch_size = args.batch_size
    main_process = jax.process_index() == 0
    say = print if main_process else (lambda _: None)
    say(f"{loaded.path}: {loaded.model_name}, {loaded.num_classes} classes, step {loaded.meta.get('step')}; "
        f"{config.data.dataset} {config.data.eval_split}, scales {list(options.scales)}, "
        f"fusion {options.fusion}{', flip' if options.flip else ''}"
        f"{f', windows {options.window}' if options.window else ', whole images'}, "
        f"{plural(mesh.devices.size, 'device')}, {plural(jax.process_count(), 'process')}")
    result = evaluate(loaded, config.data, options, mesh=mesh, predictions_dir=args.save_predictions,
                      max_batches=args.max_batches, log=lambda _: None,
                      quiet=args.quiet or not main_process)
    say(result.table())
    say(f"{result.num_images} of {result.num_records} images scored in {result.seconds:.1f} s")
    report = result.to_json(checkpoint=loaded.path, model=loaded.model_name, step=loaded.meta.get("step"),
                            dataset=config.data.dataset, split=config.data.eval_split,
                            **{k: (list(v) if isinstance(v, tuple) else v)
                               for k, v in dataclasses.asdict(options).items()})
    if main_process:
        for path in filter(None, (args.json, args.save_predictions and
                                  os.path.join(args.save_predictions, "scores.json"))):
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w") as f:
                json.dump(report, f, indent=1)
            say(f"wrote {path}")
    if args.show_dir and main_process:
        header = {**picture_header(loaded.path, loaded.meta.get("step"), loaded.model_name, options),
                  "evaluated": f"{config.data.dataset} {config.data.eval_split}: mIoU "
                               f"{100 * result.scores['miou']:.2f}% over {result.num_images} images"}
        if options.window is not None:  # the pictures need every scale's outputs: whole images
            header["inference"] = (f"whole images (the scores: windows of {options.window[0]}x"
                                   f"{options.window[1]})")
        index = show_pictures(loaded, config.data, options, args.show_dir, max_images=args.show_max,
                              header=header)
        say(f"wrote the pictures page {index}")
    return 0


__all__ = ["EVAL_KEYS", "EvalResult", "confusion_over", "eval_step", "evaluate",
           "local_rows", "make_eval_fn", "prediction_writer", "show_pictures"]
