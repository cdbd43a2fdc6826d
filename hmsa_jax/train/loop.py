"""The training loop: data -> sharded steps -> logs, validation and checkpoints.

`train(config, workdir)` resumes from the latest checkpoint in `workdir` when there is one,
else starts fresh (optionally from `config.checkpoint.init_from`), and returns a summary dict.
Files in `workdir`: config.json (resolved), metrics.jsonl, tensorboard/ (event files: scalars,
per-class IoU, the config as text, validation pictures), scores.json / scores.txt (the latest
validation), init_from.txt (with checkpoint.init_from), checkpoints/ (see hmsa_jax.checkpoint);
`hmsa train` adds log.txt (hmsa_jax.train.run_log).
"""
from __future__ import annotations

import math
import os
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from hmsa_jax import checkpoint, parallel
from hmsa_jax.configlib import ConfigError, config_to_dict
from hmsa_jax.console import is_terminal
from hmsa_jax.data.build import class_table, make_eval_dataset, make_train_dataset
from hmsa_jax.data.pipeline import close_iterator
from hmsa_jax.metrics import format_scores, segmentation_scores
from hmsa_jax.models import create_model
from hmsa_jax.train import run_files
from hmsa_jax.train import step as step_lib
from hmsa_jax.train.config import validate_config
from hmsa_jax.train.metric_writer import (MetricWriter, class_iou_scalars, config_as_markdown,
                                          pictures_to_tensorboard)
from hmsa_jax.train.optimizer import kernel_only_decay_mask, make_optimizer, poly_schedule
from hmsa_jax.train.pretrained import load_pretrained
from hmsa_jax.train.profiling import StepProfiler
from hmsa_jax.train.progress import Progress
from hmsa_jax.train.state import abstract_train_state, create_train_state, init_image_shape, init_variables
from hmsa_jax.train.stopping import Preempted, StopSignals, agreed_stop, check_finite
from hmsa_jax.train.validation import (compare_and_report, make_validation_fn, validate,
                                       write_validation_pictures)


def train(config, workdir: str, *, stop_after: int | None = None,
          log: Callable[[str], None] = print, record: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) training; `stop_after` ends this run after that many steps of it (as a
    preemption would, with a checkpoint), for tests and time-boxed jobs. `record` receives the
    per-step lines a terminal's progress bar replaces (for the run's log file).

    SIGTERM/SIGINT: the current step finishes, a checkpoint is written and `Preempted` is raised
    (all processes stop at the same step). `faults.max_nonfinite_steps` non-finite steps in a
    row raise NonFiniteError without saving.
    """
    # ---- Check the config and the workdir ----
    validate_config(config)
    workdir = os.path.abspath(os.path.expanduser(workdir))
    is_main = jax.process_index() == 0
    classes = class_table(config.data)
    num_classes = resolve_num_classes(config, classes)
    resolved = config_to_dict(config)
    resolved["model"]["num_classes"] = num_classes
    run_files.check_workdir(workdir, resolved)

    # ---- Devices and data ----
    mesh = parallel.make_mesh(config.train.num_devices or None)
    parallel.check_batch_size(config.data.loader.batch_size, mesh, "data.loader.batch_size")
    validating = config.validation.every_steps >= 0
    if validating:
        parallel.check_batch_size(config.data.eval.batch_size, mesh, "data.eval.batch_size")
    train_ds, info = make_train_dataset(config.data)
    total_steps = config.train.steps or max(1, math.ceil(config.train.epochs * info.steps_per_epoch))
    resolved["train"]["steps"] = total_steps

    # ---- Build the model and the optimiser ----
    model = build_model(config, num_classes)
    tx, schedule = build_optimizer(config.optim, total_steps)

    # ---- Restore the latest checkpoint, or initialise ----
    os.makedirs(workdir, exist_ok=True)
    manager = checkpoint.make_manager(os.path.join(workdir, checkpoint.CHECKPOINTS_SUBDIR),
                                      max_to_keep=config.checkpoint.max_to_keep,
                                      keep_best=config.checkpoint.keep_best,
                                      async_save=config.checkpoint.async_save)
    state, iterator = restore_or_initialize(config, model, tx, mesh, manager, iter(train_ds),
                                            workdir if is_main else None, log)
    if is_main:
        run_files.write_config(workdir, resolved)

    # ---- Jit the steps ----
    train_fn = step_lib.jit_train_step(model, tx, step_config(config), mesh, schedule)
    dropout_key = jax.random.fold_in(jax.random.key(config.train.seed), 1)
    eval_fn = eval_ds = None
    if validating:
        eval_ds, _, _ = make_eval_dataset(config.data)
        eval_fn = make_validation_fn(model, num_classes, mesh, config.validation.scales,
                                     config.validation.fusion)

    # ---- Logs ----
    writer = MetricWriter(workdir, enabled=is_main)
    writer.write_text("config", config_as_markdown(resolved))
    start_step = step = int(jax.device_get(state.step))
    last_step = total_steps if stop_after is None else min(total_steps, start_step + stop_after)
    progress = Progress(total_steps, start_step, config.runtime.progress and is_main and is_terminal(),
                        log, record)
    report = Reporter(writer, progress, config.data.loader.batch_size, start_step,
                      int(jax.device_get(state.skipped_steps)), workdir if is_main else None,
                      classes.names, config.validation)
    meta = {"config": resolved, "model": config.model.name, "num_classes": num_classes,
            "class_names": list(classes.names), "class_colors": [list(c) for c in classes.colors]}
    profiler = StepProfiler(os.path.join(workdir, "profile"), config.train.profile_start_step,
                            config.train.profile_steps, progress.write)
    max_nonfinite = config.faults.max_nonfinite_steps
    stop_signal = ""

    # ---- Train ----
    with StopSignals() as signals:
        try:
            if step < last_step:
                progress.compiling()
            while step < last_step:
                batch = parallel.global_batch(next(iterator), mesh)
                profiler.before(step + 1)
                with step_lib.transfer_guard(config.runtime.transfer_guard):
                    state, metrics = train_fn(state, batch, dropout_key)
                step += 1
                profiler.after(step, state)
                if is_time(step, config.train.log_every, total_steps):
                    check_finite(state, step, max_nonfinite, manager)
                    report.train_metrics(step, metrics)
                val_metrics = None
                if validating and is_time(step, config.validation.every_steps, total_steps):
                    confusion = validate(eval_fn, state.variables, eval_ds, mesh, config.validation.max_batches)
                    val_metrics = report.validation(step, confusion)
                if agreed_stop(signals, step, config.faults.stop_check_every):
                    stop_signal = signals.name or "a stop signal on another process"
                if (is_time(step, config.train.checkpoint_every, total_steps) or step == last_step
                        or stop_signal or val_metrics is not None):
                    check_finite(state, step, max_nonfinite, manager)
                    checkpoint.save(manager, state, iterator, {**meta, "step": step, "metrics": val_metrics},
                                    val_metrics)
                if stop_signal:
                    break
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

    # ---- Summary, scale comparison and pictures ----
    summary = {"workdir": workdir, "steps": step, "total_steps": total_steps,
               "steps_this_run": step - start_step, "seconds": time.perf_counter() - report.run_start,
               "final_loss": report.last_loss, "best_val_miou": float(report.best_miou),
               "skipped_steps": int(jax.device_get(state.skipped_steps)),
               "checkpoint": None if latest is None else os.path.join(str(manager.directory), str(latest))}
    if stop_signal:
        raise Preempted(stop_signal, step, summary["checkpoint"], summary)
    if report.last_scores is not None:
        summary["val_miou"] = report.last_scores["miou"]
        if is_main:
            log(format_scores(report.last_scores, classes.names))
    if eval_ds is not None and config.validation.compare_scales:
        summary["scale_comparison"] = compare_and_report(model, state.variables, eval_ds, mesh, num_classes,
                                                         classes.names, config,
                                                         workdir if is_main else None, log)
    if is_main and eval_ds is not None and config.validation.pictures > 0:
        summary["pictures"] = write_validation_pictures(config, model, state, eval_ds, classes, workdir)
        pictures_to_tensorboard(os.path.dirname(summary["pictures"]), workdir, step)
    return summary


def is_time(step: int, every: int, last_step: int) -> bool:
    """When to log, validate or save: every `every` steps (0: never) and at the last step."""
    return (every > 0 and step % every == 0) or step == last_step


def resolve_num_classes(config, classes) -> int:
    if config.model.num_classes and config.model.num_classes != classes.num_classes:
        raise ConfigError(f"config.model.num_classes={config.model.num_classes} but dataset "
                          f"{config.data.dataset!r} has {classes.num_classes} classes; set 0 to "
                          f"use the dataset's")
    return classes.num_classes


def build_model(config, num_classes: int):
    overrides = {"lo_scale": config.model.lo_scale} if config.model.lo_scale != 0.5 else {}
    if config.train.remat == "trunk":
        overrides["remat_trunk"] = True
    if config.model.trunk_init != "reference":
        overrides["trunk_init"] = config.model.trunk_init
    return create_model(config.model.name, num_classes=num_classes,
                        dtype=jnp.dtype(config.model.dtype), **overrides)


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


def step_config(config) -> step_lib.StepConfig:
    train = config.train
    return step_lib.StepConfig(
        loss=step_lib.LossConfig(train.criterion, train.aux_weight, train.scale_supervision_weight,
                                 train.ignore_label),
        scale_mode=train.scale_mode, max_nonfinite_steps=config.faults.max_nonfinite_steps)


def restore_or_initialize(config, model, tx, mesh, manager, iterator, report_dir: str | None, log):
    """(state, data iterator): restored from the latest usable checkpoint of `manager`, else a
    fresh state (its variables from config.checkpoint.init_from when set, reported to `log` and
    to <report_dir>/init_from.txt) with the iterator as given. The state is replicated."""
    replicated = parallel.replicated(mesh)
    image_shape = init_image_shape(config.data.augment.crop_size, config.model.lo_scale)
    abstract = abstract_train_state(model, tx, image_shape, replicated)
    restored = checkpoint.restore_usable(manager, abstract, iterator, log=log)
    if restored is not None:
        state, iterator, _ = restored
        log(f"resumed from {manager.directory}/{int(state.step)}")
        return state, iterator
    if checkpoint.set_aside_steps(str(manager.directory)):
        raise checkpoint.CheckpointError(checkpoint.no_usable_message(str(manager.directory)))
    init_key = jax.random.fold_in(jax.random.key(config.train.seed), 0)
    variables = None
    if config.checkpoint.init_from:
        fresh = jax.jit(lambda key: init_variables(model, key, image_shape))(init_key)
        variables, loaded = load_pretrained(jax.device_get(fresh), config.checkpoint.init_from,
                                            config.checkpoint.init_which)
        log(loaded.format())
        if report_dir is not None:
            run_files.write_init_report(report_dir, loaded.format(max_lines=sys.maxsize))
    create = jax.jit(lambda key, variables: create_train_state(model, tx, key, image_shape, variables),
                     out_shardings=replicated)
    return create(init_key, variables), iterator


class Reporter:
    """The run's reports: each logged step (metrics.jsonl and TensorBoard, the progress line,
    steps skipped for a non-finite loss) and each validation (scores, per-class IoU, scores.json
    and scores.txt on the main process: `workdir` None elsewhere), and what the summary needs."""

    def __init__(self, writer: MetricWriter, progress: Progress, batch_size: int, step: int,
                 skipped_steps: int, workdir: str | None, class_names, validation):
        self.writer, self.progress, self.batch_size = writer, progress, batch_size
        self.workdir, self.class_names, self.validation_config = workdir, class_names, validation
        self.run_start = self.last_time = time.perf_counter()
        self.last_logged, self.skipped_logged = step, skipped_steps
        self.last_loss, self.best_miou, self.last_scores = float("nan"), float("nan"), None

    def train_metrics(self, step: int, metrics: dict) -> None:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        now = time.perf_counter()
        images_per_s = (step - self.last_logged) * self.batch_size / (now - self.last_time)
        metrics["images_per_s"] = images_per_s
        self.writer.write(step, metrics)
        self.last_loss = metrics["loss"]
        self.progress.update(step, step - self.last_logged,
                             {"loss": f"{metrics['loss']:.4f}", "lr": f"{metrics['learning_rate']:.2e}",
                              "img/s": f"{images_per_s:.1f}"}, now - self.last_time)
        if metrics["skipped_steps"] > self.skipped_logged:
            self.skipped_logged = int(metrics["skipped_steps"])
            self.progress.write(f"step {step}: {self.skipped_logged} step(s) with a non-finite "
                                f"loss or gradient skipped so far")
        self.last_logged, self.last_time = step, now

    def validation(self, step: int, confusion: np.ndarray) -> dict:
        """Reports a validation's confusion matrix; returns its metrics (for the checkpoint)."""
        scores = self.last_scores = segmentation_scores(confusion)
        metrics = {"val/miou": scores["miou"], "val/pixel_accuracy": scores["pixel_accuracy"],
                   "val/mean_class_accuracy": scores["mean_class_accuracy"]}
        self.writer.write(step, metrics)
        self.writer.write_tensorboard_scalars(step, class_iou_scalars(scores, self.class_names))
        if self.workdir is not None:
            run_files.write_scores(self.workdir, step, scores, self.class_names,
                                   self.validation_config.scales, self.validation_config.fusion)
        self.best_miou = np.nanmax([self.best_miou, scores["miou"]])
        self.progress.write(f"step {step}: val mIoU {100 * scores['miou']:.2f} "
                            f"(pixel acc {100 * scores['pixel_accuracy']:.2f})")
        self.last_time = time.perf_counter()  # validation is not training throughput
        return metrics


__all__ = ["Reporter", "build_model", "build_optimizer", "is_time", "resolve_num_classes",
           "restore_or_initialize", "step_config", "train"]
