"""The training loop: data -> sharded steps -> logs, validation and checkpoints.

`train(config, workdir)` resumes from the latest checkpoint in `workdir` when there is one,
else starts fresh (optionally from `config.checkpoint.init_from`), and returns a summary dict.
Files in `workdir`: config.json (resolved), metrics.jsonl, tensorboard/ (event files: scalars,
per-class IoU, the config as text, validation pictures), scores.json / scores.txt (the latest
validation), init_from.txt (with checkpoint.init_from), checkpoints/ (see hmsa_jax.checkpoint);
`hmsa train` adds log.txt (hmsa_jax.train.run_log).
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from hmsa_jax import checkpoint, parallel
from hmsa_jax.configlib import ConfigError, config_to_dict
from hmsa_jax.console import is_terminal
from hmsa_jax.metrics import format_scores, segmentation_scores
from hmsa_jax.train import step as step_lib
from hmsa_jax.train.config import validate_config
from hmsa_jax.train import run_files
from hmsa_jax.train.optimizer import kernel_only_decay_mask, make_optimizer, poly_schedule
from hmsa_jax.train.profiling import StepProfiler
from hmsa_jax.train.progress import Progress
from hmsa_jax.train.state import abstract_train_state, create_train_state
from hmsa_jax.train.validation import compare_scales, format_comparison, validate

# Changing these under an existing workdir would restore a checkpoint into another model.
IDENTITY_KEYS = (("model", "name"), ("model", "num_classes"))
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """The run stopped at a step boundary on SIGTERM/SIGINT after saving a checkpoint."""

    def __init__(self, signal_name: str, step: int, checkpoint_dir: str | None, summary: dict):
        self.signal_name, self.step, self.checkpoint_dir, self.summary = (
            signal_name, step, checkpoint_dir, summary)
        super().__init__(f"stopped by {signal_name} after step {step}; checkpoint "
                         f"{checkpoint_dir}; run the same command again to resume from it")


class NonFiniteError(RuntimeError):
    """Too many steps in a row had a non-finite loss or gradient."""


class StopSignals:
    """Records SIGTERM/SIGINT instead of dying, so the loop can finish its step and save.
    A second signal of the same kind restores the default action and re-delivers it."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.received == signum:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else ""


def agreed_stop(signals: StopSignals, step: int, check_every: int) -> bool:
    """Whether every process stops after `step`: single process, as soon as a signal came;
    several processes, at steps that are multiples of `check_every`, if any process got one
    (a collective all processes reach at the same steps)."""
    if jax.process_count() == 1:
        return signals.received is not None
    if step % check_every:
        return False
    return parallel.process_any(signals.received is not None)


def write_json_atomically(path: str, value) -> None:
    """A kill mid-write leaves the old file or the new one, never half of one."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def build_optimizer(optim, total_steps: int):
    """(optax transformation, learning-rate schedule for logging) from config.optim."""
    kwargs = dict(learning_rate=optim.learning_rate, total_steps=total_steps,
                  poly_power=optim.poly_power, warmup_steps=optim.warmup_steps, end_lr=optim.end_lr)
    tx = make_optimizer(momentum=optim.momentum, weight_decay=optim.weight_decay,
                        nesterov=optim.nesterov,
                        weight_decay_mask=kernel_only_decay_mask if optim.decay == "kernels" else None,
                        grad_clip_norm=optim.grad_clip_norm or None, **kwargs)
    schedule = poly_schedule(optim.learning_rate, total_steps, optim.poly_power,
                             optim.warmup_steps, optim.end_lr)
    return tx, schedule


def build_model(config, num_classes: int):
    from hmsa_jax import create_model

    overrides = {"lo_scale": config.model.lo_scale} if config.model.lo_scale != 0.5 else {}
    if config.train.remat == "trunk":
        overrides["remat_trunk"] = True
    return create_model(config.model.name, num_classes=num_classes,
                        dtype=jnp.dtype(config.model.dtype), **overrides)


def resolve_num_classes(config, classes) -> int:
    if config.model.num_classes and config.model.num_classes != classes.num_classes:
        raise ConfigError(f"config.model.num_classes={config.model.num_classes} but dataset "
                          f"{config.data.dataset!r} has {classes.num_classes} classes; set 0 to "
                          f"use the dataset's")
    return classes.num_classes


def _saved_config(workdir: str) -> tuple[str, dict] | None:
    """(where, config) of what the workdir trains: config.json, else the config in the latest
    complete checkpoint (a run killed before it wrote config.json)."""
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        try:
            with open(path) as f:
                return path, json.load(f)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}: unreadable ({error}); it should hold the config this "
                              f"workdir was trained with") from None
    directory = os.path.join(workdir, checkpoint.CHECKPOINTS_SUBDIR)
    steps = checkpoint.step_candidates(directory) if os.path.isdir(directory) else []
    for step in reversed(steps):  # a damaged step is dealt with when restoring
        step_dir = os.path.join(directory, str(step))
        try:
            meta = checkpoint.read_meta(step_dir)
        except (checkpoint.CheckpointError, OSError):
            continue
        return (os.path.join(step_dir, checkpoint.META), meta["config"]) if "config" in meta else None
    return None


def check_workdir(workdir: str, resolved: dict) -> None:
    """Refuse a workdir whose saved config trains another model or class count."""
    found = _saved_config(workdir)
    if found is None:
        return
    path, saved = found
    for section, key in IDENTITY_KEYS:
        old, new = saved.get(section, {}).get(key), resolved[section][key]
        if old != new:
            raise ConfigError(f"{path}: this workdir trains {section}.{key}={old!r}, the config asks "
                              f"for {new!r}; use another --workdir (nothing was overwritten)")


class MetricWriter:
    """metrics.jsonl (one JSON object per line) and TensorBoard event files; process 0 only."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        from tensorboardX import SummaryWriter

        path = os.path.join(workdir, "metrics.jsonl")
        drop_partial_last_line(path)
        self._jsonl = open(path, "a")
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        scalars = {k: float(v) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        self._jsonl.flush()
        for key, value in scalars.items():
            self._tb.add_scalar(key, value, step)
        self._tb.flush()

    def write_tensorboard_scalars(self, step: int, scalars: dict) -> None:
        """Scalars for TensorBoard only (per-class IoU: too wide for metrics.jsonl)."""
        if not self.enabled:
            return
        for key, value in scalars.items():
            self._tb.add_scalar(key, value, step)
        self._tb.flush()

    def write_text(self, tag: str, text: str, step: int = 0) -> None:
        if self.enabled:
            self._tb.add_text(tag, text, step)
            self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def drop_partial_last_line(path: str) -> None:
    """Cut a line a killed process left half-written, so appended lines stay parseable."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def class_iou_scalars(scores: dict, class_names) -> dict:
    """{"val/iou/<class>": IoU} for the classes with a defined IoU."""
    return {f"val/iou/{name}": float(iou) for name, iou in zip(class_names, scores["iou"])
            if np.isfinite(iou)}


def config_as_markdown(resolved: dict) -> str:
    """The resolved config as a Markdown code block (TensorBoard's text tab renders Markdown)."""
    return "\n".join("    " + line for line in json.dumps(resolved, indent=2).splitlines())


def train(config, workdir: str, *, stop_after: int | None = None,
          log: Callable[[str], None] = print, record: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) training; `stop_after` ends this run after that many steps of it (as a
    preemption would, with a checkpoint), for tests and time-boxed jobs. `record` receives the
    per-step lines a terminal's progress bar replaces (for the run's log file).

    SIGTERM/SIGINT: the current step finishes, a checkpoint is written and `Preempted` is raised
    (all processes stop at the same step). `faults.max_nonfinite_steps` non-finite steps in a
    row raise NonFiniteError without saving.
    """
    from hmsa_jax.data.build import class_table, make_eval_dataset, make_train_dataset

    validate_config(config)
    workdir = os.path.abspath(os.path.expanduser(workdir))
    is_main = jax.process_index() == 0
    classes = class_table(config.data)
    num_classes = resolve_num_classes(config, classes)
    resolved = config_to_dict(config)
    resolved["model"]["num_classes"] = num_classes
    check_workdir(workdir, resolved)

    mesh = parallel.make_mesh(config.train.num_devices or None)
    parallel.check_batch_size(config.data.loader.batch_size, mesh, "data.loader.batch_size")
    validating = config.validation.every_steps >= 0
    if validating:
        parallel.check_batch_size(config.data.eval.batch_size, mesh, "data.eval.batch_size")

    train_ds, info = make_train_dataset(config.data)
    total_steps = config.train.steps or max(1, math.ceil(config.train.epochs * info.steps_per_epoch))
    resolved["train"]["steps"] = total_steps
    model = build_model(config, num_classes)
    tx, schedule = build_optimizer(config.optim, total_steps)
    crop = tuple(int(v) for v in config.data.augment.crop_size)
    image_shape = (1, *crop, 3)
    replicated = parallel.replicated(mesh)

    os.makedirs(workdir, exist_ok=True)
    manager = checkpoint.make_manager(os.path.join(workdir, checkpoint.CHECKPOINTS_SUBDIR),
                                      max_to_keep=config.checkpoint.max_to_keep,
                                      keep_best=config.checkpoint.keep_best,
                                      async_save=config.checkpoint.async_save)
    iterator = iter(train_ds)
    seed_key = jax.random.key(config.train.seed)
    init_key, dropout_key = jax.random.fold_in(seed_key, 0), jax.random.fold_in(seed_key, 1)
    abstract = abstract_train_state(model, tx, image_shape, replicated)
    restored = checkpoint.restore_usable(manager, abstract, iterator, log=log)
    if restored is None and checkpoint.set_aside_steps(str(manager.directory)):
        raise checkpoint.CheckpointError(checkpoint.no_usable_message(str(manager.directory)))
    if restored is not None:
        state, iterator, _ = restored
        log(f"resumed from {manager.directory}/{int(state.step)}")
    else:
        state = jax.jit(lambda key: create_train_state(model, tx, key, image_shape),
                        out_shardings=replicated)(init_key)
        if config.checkpoint.init_from:
            from hmsa_jax.train.pretrained import load_pretrained

            variables, report = load_pretrained(jax.device_get(state.variables),
                                                config.checkpoint.init_from,
                                                config.checkpoint.init_which)
            state = parallel.replicate(jax.device_get(state), mesh)
            state = state.replace(**parallel.replicate(variables, mesh),
                                  opt_state=jax.jit(tx.init, out_shardings=replicated)(
                                      parallel.replicate(variables["params"], mesh)))
            log(report.format())
            if is_main:
                run_files.write_init_report(workdir, report.format(max_lines=sys.maxsize))
    if is_main:
        write_json_atomically(os.path.join(workdir, "config.json"), resolved)

    max_nonfinite = config.faults.max_nonfinite_steps
    step_config = step_lib.StepConfig(
        loss=step_lib.LossConfig(config.train.criterion, config.train.aux_weight,
                                 config.train.scale_supervision_weight, config.train.ignore_label),
        scale_mode=config.train.scale_mode, remat=config.train.remat,
        max_nonfinite_steps=max_nonfinite)
    train_fn = step_lib.jit_train_step(model, tx, step_config, mesh, schedule)
    eval_fn = eval_ds = None
    if validating:
        eval_ds, _, _ = make_eval_dataset(config.data)
        eval_fn = step_lib.jit_eval_step(model, num_classes, mesh, config.validation.scales,
                                         config.validation.fusion)

    writer = MetricWriter(workdir, enabled=is_main)
    writer.write_text("config", config_as_markdown(resolved))
    start_step = int(jax.device_get(state.step))
    progress = Progress(total_steps, start_step, config.runtime.progress and is_main and is_terminal(),
                        log, record)
    meta = lambda step, metrics: {"config": resolved, "model": config.model.name,
                                  "num_classes": num_classes, "class_names": list(classes.names),
                                  "class_colors": [list(c) for c in classes.colors],
                                  "step": step, "metrics": metrics}
    batch_images = config.data.loader.batch_size
    best_miou, last_loss, last_scores = float("nan"), float("nan"), None
    run_start = last_time = time.perf_counter()
    last_logged = step = start_step
    skipped_logged = int(jax.device_get(state.skipped_steps))
    stop_signal, nonfinite_error = "", None

    def check_finite() -> None:
        """Raise NonFiniteError once the step's streak of skipped steps reached the limit."""
        streak = int(jax.device_get(state.nonfinite_streak))
        if streak >= max_nonfinite:
            good = manager.latest_step()
            raise NonFiniteError(
                f"step {step}: {streak} steps in a row had a non-finite loss or gradient "
                f"(faults.max_nonfinite_steps={max_nonfinite}); they were skipped and the run "
                f"stopped without saving. Last good checkpoint: "
                f"{os.path.join(str(manager.directory), str(good)) if good is not None else 'none'}. "
                f"Lower optim.learning_rate or set optim.grad_clip_norm, then run again to "
                f"resume from it.")

    profiler = StepProfiler(os.path.join(workdir, "profile"), config.train.profile_start_step,
                            config.train.profile_steps, progress.write)
    with StopSignals() as signals:
        try:
            if step < total_steps:
                progress.compiling()
            while step < total_steps and (stop_after is None or step - start_step < stop_after):
                batch = parallel.global_batch(next(iterator), mesh)
                profiler.before(step + 1)
                with step_lib.transfer_guard(config.runtime.transfer_guard):
                    state, metrics = train_fn(state, batch, dropout_key)
                step += 1
                profiler.after(step, state)
                if step % config.train.log_every == 0 or step == total_steps:
                    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    check_finite()
                    now = time.perf_counter()
                    images_per_s = (step - last_logged) * batch_images / (now - last_time)
                    metrics["images_per_s"] = images_per_s
                    writer.write(step, metrics)
                    last_loss = metrics["loss"]
                    progress.update(step, step - last_logged,
                                    {"loss": f"{metrics['loss']:.4f}",
                                     "lr": f"{metrics['learning_rate']:.2e}",
                                     "img/s": f"{images_per_s:.1f}"}, now - last_time)
                    if metrics["skipped_steps"] > skipped_logged:
                        skipped_logged = int(metrics["skipped_steps"])
                        progress.write(f"step {step}: {skipped_logged} step(s) with a non-finite "
                                       f"loss or gradient skipped so far")
                    last_logged, last_time = step, now
                val_metrics = None
                every = config.validation.every_steps
                if validating and ((every > 0 and step % every == 0) or step == total_steps):
                    confusion = validate(eval_fn, state.variables, eval_ds, mesh, config.validation.max_batches)
                    last_scores = segmentation_scores(confusion)
                    val_metrics = {"val/miou": last_scores["miou"],
                                   "val/pixel_accuracy": last_scores["pixel_accuracy"],
                                   "val/mean_class_accuracy": last_scores["mean_class_accuracy"]}
                    writer.write(step, val_metrics)
                    writer.write_tensorboard_scalars(step, class_iou_scalars(last_scores, classes.names))
                    if is_main:
                        run_files.write_scores(workdir, step, last_scores, classes.names,
                                               config.validation.scales, config.validation.fusion)
                    best_miou = np.nanmax([best_miou, last_scores["miou"]])
                    progress.write(f"step {step}: val mIoU {100 * last_scores['miou']:.2f} "
                                   f"(pixel acc {100 * last_scores['pixel_accuracy']:.2f})")
                    last_time = time.perf_counter()  # validation is not training throughput
                if agreed_stop(signals, step, config.faults.stop_check_every):
                    stop_signal = signals.name or "a stop signal on another process"
                stopping = bool(stop_signal) or (stop_after is not None
                                                 and step - start_step >= stop_after)
                if (step % config.train.checkpoint_every == 0 or step == total_steps or stopping
                        or val_metrics is not None):
                    check_finite()
                    checkpoint.save(manager, state, iterator, meta(step, val_metrics), val_metrics)
                if stop_signal:
                    break
        except NonFiniteError as error:
            nonfinite_error = error
        finally:
            # A save in flight is completed (or, on an error, at least not left half-written by
            # us); the step folders Orbax commits are whole in any case.
            profiler.close()
            progress.close()
            manager.wait_until_finished()
            latest = manager.latest_step()
            manager.close()
            writer.close()
            close_iterator(iterator)
    if nonfinite_error is not None:
        raise nonfinite_error
    elapsed = time.perf_counter() - run_start
    skipped_total = int(jax.device_get(state.skipped_steps))
    summary = {"workdir": workdir, "steps": step, "total_steps": total_steps,
               "steps_this_run": step - start_step, "seconds": elapsed,
               "final_loss": last_loss, "best_val_miou": float(best_miou),
               "skipped_steps": skipped_total,
               "checkpoint": None if latest is None else os.path.join(str(manager.directory), str(latest))}
    if stop_signal:
        raise Preempted(stop_signal, step, summary["checkpoint"], summary)
    if last_scores is not None:
        summary["val_miou"] = last_scores["miou"]
        if is_main:
            log(format_scores(last_scores, classes.names))
    if eval_ds is not None and config.validation.compare_scales:
        summary["scale_comparison"] = compare_and_report(model, state.variables, eval_ds, mesh, num_classes,
                                                         classes.names, config,
                                                         workdir if is_main else None, log)
    if is_main and eval_ds is not None and config.validation.pictures > 0:
        summary["pictures"] = write_validation_pictures(config, model, state, eval_ds, classes, workdir)
        pictures_to_tensorboard(os.path.dirname(summary["pictures"]), workdir, step)
    return summary


def compare_and_report(model, variables, eval_ds, mesh, num_classes, class_names, config,
                       workdir: str | None, log) -> list[dict]:
    """The final checkpoint at single scale and each multi-scale fusion; printed and, on the
    main process, written to <workdir>/scale_comparison.{json,md}."""
    rows = compare_scales(model, variables, eval_ds, mesh, num_classes, class_names,
                          config.validation.max_batches)
    if workdir is not None:
        table = format_comparison(rows)
        write_json_atomically(os.path.join(workdir, "scale_comparison.json"), rows)
        with open(os.path.join(workdir, "scale_comparison.md"), "w") as f:
            f.write(table + "\n")
        log("The same checkpoint on the validation split, single scale and multi-scale (IoU %):\n" + table)
    return rows


def close_iterator(iterator) -> None:
    """Stop a Grain iterator's prefetch threads now. Left to the garbage collector, an iterator
    of a pipeline with worker processes can be collected on its own prefetch thread, whose
    __del__ then tries to join that thread ("RuntimeError: cannot join current thread")."""
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


def write_validation_pictures(config, model, state, eval_ds, classes, workdir: str) -> str:
    """Predictions and per-scale attention of the first validation images; the index page path."""
    from hmsa_jax.inference import InferenceOptions
    from hmsa_jax.visualize import picture_header, write_pictures

    iterator = iter(eval_ds)
    batch = next(iterator)
    close_iterator(iterator)
    count = min(config.validation.pictures, int(np.sum(batch["valid"])))
    options = InferenceOptions(tuple(config.validation.picture_scales),
                               "hierarchical" if _has_attention(model) else "avg")
    step = int(jax.device_get(state.step))
    step_dir = os.path.join(workdir, "checkpoints", str(step))
    header = picture_header(step_dir if os.path.isdir(step_dir) else workdir, step, config.model.name, options)
    header["pictures of"] = f"the first validation images ({config.data.dataset} {config.data.eval_split})"
    header.update(validation_heading(workdir))
    return write_pictures(
        model, jax.device_get(state.variables), batch["image"][:count], classes,
        os.path.join(workdir, "pictures"), scales=options.scales, fusion=options.fusion,
        normalized=config.data.augment.normalize,
        names=[f"val_{int(i)}" for i in batch["index"][:count]],
        title=f"hmsa train: validation pictures at step {step}", labels=batch["label"][:count],
        header=header)


def validation_heading(workdir: str) -> dict:
    """{"validation": mIoU, step, scales, fusion of the run's last validation} from
    scores.json, so the pictures page says at which scales the run's score was measured
    (they may differ from the pictures' scales); {} without one."""
    try:
        with open(os.path.join(workdir, run_files.SCORES_JSON)) as f:
            report = json.load(f)
        return {"validation": f"mIoU {100 * report['miou']:.2f}% at step {report['step']} on the whole "
                              f"split, scales {', '.join(f'{s:g}x' for s in report['scales'])}, "
                              f"fusion {report['fusion']}"}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def pictures_to_tensorboard(pictures_dir: str, workdir: str, step: int) -> int:
    """Every PNG of the validation pictures as a TensorBoard image (tag pictures/<file name>);
    returns how many. A writer of its own: the run's writer is closed by now."""
    from PIL import Image
    from tensorboardX import SummaryWriter

    paths = sorted(p for p in os.listdir(pictures_dir) if p.endswith(".png"))
    with SummaryWriter(os.path.join(workdir, "tensorboard")) as tb:
        for name in paths:
            with Image.open(os.path.join(pictures_dir, name)) as picture:
                pixels = np.asarray(picture.convert("RGB"))
            tb.add_image(f"pictures/{name[:-len('.png')]}", pixels, step, dataformats="HWC")
    return len(paths)


def _has_attention(model) -> bool:
    return getattr(model, "attention", "none") == "hierarchical"


__all__ = ["NonFiniteError", "Preempted", "StopSignals", "agreed_stop", "build_model",
           "build_optimizer", "check_workdir", "class_iou_scalars", "config_as_markdown",
           "drop_partial_last_line", "pictures_to_tensorboard", "train", "validate",
           "write_json_atomically"]
