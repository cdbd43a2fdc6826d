"""The sections of a training config besides `data`: model, train, optim, checkpoint,
validation and runtime. `default_config()` is the base every configs/*.py file edits.

Every field has a value of its final type (0 / "" mean "off" or "derive"), so that
ml_collections rejects an override of the wrong type before anything runs.
"""
from __future__ import annotations

import math

from ml_collections import ConfigDict

from hmsa_jax.configlib import ConfigError
from hmsa_jax.data.config import DATASETS, default_data_config
from hmsa_jax.data.sources.synthetic import ALL_CLASSES, MIN_CLASSES
from hmsa_jax.losses import CRITERIA
from hmsa_jax.models import create_model, list_models
from hmsa_jax.models.hrnet import TRUNK_INITS
from hmsa_jax.multiscale import FUSIONS, check_fusion, validate_scales
from hmsa_jax.ops import scaled_size
from hmsa_jax.train.step import REMAT_MODES, SCALE_MODES, TRANSFER_GUARD_MODES

LABEL_FORMATS = ("labelIds", "trainIds")


def default_config() -> ConfigDict:
    config = ConfigDict()
    config.data = default_data_config()
    config.model = ConfigDict(dict(
        name="hrnet48_ocr_mscale",  # hmsa_jax.list_models()
        num_classes=0,  # 0: the dataset's class count
        dtype="bfloat16",  # compute dtype; parameters stay float32
        lo_scale=0.5,  # the lower training scale of two-scale models
        # HRNet trunk init: reference (N(0, 0.001), meant for ImageNet-initialised training) |
        # he (Kaiming normal, for training from scratch; see WORKSPACE_NOTES.md)
        trunk_init="reference",
    ))
    config.train = ConfigDict(dict(
        steps=0,  # 0: epochs x steps per epoch
        epochs=175.0,
        criterion="rmi",  # one of losses.CRITERIA: rmi | ce
        aux_weight=0.4,
        scale_supervision_weight=0.05,
        ignore_label=255,
        scale_mode="model",  # model | average (the paper's averaging baseline)
        remat="none",  # none | trunk: recompute trunk blocks in the backward pass (less memory)
        seed=0,  # parameter init and dropout
        num_devices=0,  # 0: every device
        log_every=20,
        checkpoint_every=1000,  # also at the end and after every validation
        # A jax.profiler trace of steps profile_start_step .. +profile_steps-1 into
        # <workdir>/profile (TensorBoard's profile plugin); 0: off. Start after step 1 (compile).
        profile_start_step=0, profile_steps=3,
    ))
    config.optim = ConfigDict(dict(
        learning_rate=5e-3, momentum=0.9, weight_decay=1e-4, nesterov=False, poly_power=2.0,
        warmup_steps=0, end_lr=0.0,
        grad_clip_norm=0.0,  # 0: off
        decay="all",  # all (the reference) | kernels (conv/dense kernels only)
    ))
    config.checkpoint = ConfigDict(dict(
        max_to_keep=3, keep_best=1, async_save=True,
        init_from="",  # a checkpoint (workdir, checkpoints/ or step folder) to start from
        init_which="latest",  # latest | best step of init_from
    ))
    config.validation = ConfigDict(dict(
        every_steps=0,  # 0: only at the end; <0: never
        scales=(1.0,), fusion="hierarchical",  # hierarchical | avg | max
        max_batches=0,  # 0: the whole eval split
        # At the end of a run, pictures of this many validation images (predictions and
        # per-scale attention, the paper's Figure 3) in <workdir>/pictures/index.html.
        pictures=0, picture_scales=(0.5, 1.0, 2.0),
        # At the end of a run, the final checkpoint at single scale and with each multi-scale
        # fusion over {0.5, 1}, {0.5, 1, 2}, {0.25, 0.5, 1, 2} (<workdir>/scale_comparison.md).
        compare_scales=False,
    ))
    config.distributed = ConfigDict(dict(
        # auto: join a multi-process job when the environment describes one (an explicit
        # coordinator below or JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID, SLURM
        # with >1 task, Open MPI with >1 rank, a TPU pod); on: always call
        # jax.distributed.initialize (its own cluster detection); off: single process.
        mode="auto",
        coordinator_address="",  # host:port of process 0; "" -> environment
        num_processes=0,  # 0 -> environment
        process_id=-1,  # -1 -> environment
        # Seconds every process waits for all the others to connect (a host that never starts).
        initialization_timeout_s=300,
        # Seconds without a heartbeat before the coordinator declares a process dead and the
        # others stop with an error (a host that dies mid-run).
        heartbeat_timeout_s=100,
    ))
    config.faults = ConfigDict(dict(
        # Steps with a non-finite loss or gradient are skipped (no update) and counted; this
        # many in a row stop the run with an error (the last good checkpoint is kept).
        max_nonfinite_steps=10,
        # Multi-process runs: how often (steps) the processes agree on a received
        # SIGTERM/SIGINT, so that all stop at the same step and save together.
        stop_check_every=5,
    ))
    config.runtime = ConfigDict(dict(
        compile_cache="~/.cache/hmsa_jax/jax_cache",  # "" disables the persistent cache
        # On CPU only: XLA backend optimisation level 0 cuts compile time by a third but makes
        # each step 1.8-4x slower (benchmarks/opt0_effect.py), so it pays only for runs of a
        # few steps (the tests set it themselves); the demo is 19% faster without it.
        cpu_fast_compile=False,
        progress=True,  # the progress bar (off: one log line per log_every)
        # Debug runs: "log" or "disallow" an implicit host<->device copy inside each training
        # step (jax.transfer_guard); "" (the default) checks nothing.
        transfer_guard="",
    ))
    return config


def _choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"config.{key}={value!r}; expected one of {tuple(allowed)}")


def _positive(key: str, value, allow_zero=False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"config.{key}={value!r}; expected {'>= 0' if allow_zero else '> 0'}")


def _within(key: str, value, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"config.{key}={value!r}; expected {low:g}..{high:g}")


def _pair(key: str, value, allow_zero: bool = False) -> None:
    """(height, width): two integers, > 0 (or >= 0 for 'off' pairs like pad_to)."""
    low = 0 if allow_zero else 1
    if len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= low
                                  for v in value):
        raise ConfigError(f"config.{key}={tuple(value)!r}; expected two integers (height, width) "
                          f"{'>= 0' if allow_zero else '> 0'}, e.g. --config.{key}=(128,256)")


def validate_data_config(data: ConfigDict) -> None:
    """The `data` section's names, shapes and ranges, before any file is read (folders are the
    data sources' to check). Raises ConfigError naming the key."""
    _choice("data.dataset", data.dataset, DATASETS)
    for key in ("train_split", "eval_split"):
        if not data[key]:
            raise ConfigError(f"config.data.{key} is empty; expected a split name, e.g. 'train'")
    for key in ("synthetic", "scale_bench"):
        for field in ("num_train", "num_eval", "height", "width"):
            _positive(f"data.{key}.{field}", data[key][field])
    _within("data.synthetic.num_classes", data.synthetic.num_classes, MIN_CLASSES, len(ALL_CLASSES))
    _within("data.scale_bench.distractor", data.scale_bench.distractor, 0, 2)
    _choice("data.cityscapes.label_kind", data.cityscapes.label_kind, ("fine", "coarse", "none"))
    _choice("data.cityscapes.label_format", data.cityscapes.label_format, LABEL_FORMATS)
    _choice("data.tfds.label_format", data.tfds.label_format, LABEL_FORMATS)
    augment = data.augment
    _pair("data.augment.crop_size", augment.crop_size)
    _pair("data.eval.pad_to", data.eval.pad_to, allow_zero=True)
    if not 0 < augment.scale_min <= augment.scale_max:
        raise ConfigError(f"config.data.augment.scale_min={augment.scale_min!r}, scale_max="
                          f"{augment.scale_max!r}; expected 0 < scale_min <= scale_max")
    for field in ("flip_prob", "blur_prob"):
        _within(f"data.augment.{field}", augment[field], 0.0, 1.0)
    for field in ("brightness", "contrast", "saturation"):
        _positive(f"data.augment.{field}", augment[field], allow_zero=True)
    _within("data.augment.hue", augment.hue, 0.0, 0.5)
    _within("data.class_uniform.fraction", data.class_uniform.fraction, 0.0, 1.0)
    _positive("data.class_uniform.tile_size", data.class_uniform.tile_size)
    _within("data.autolabel.probability", data.autolabel.probability, 0.0, 1.0)
    if data.autolabel.labels_dir and not data.autolabel.images_root:
        raise ConfigError("config.data.autolabel.labels_dir is set but data.autolabel.images_root is "
                          "empty; expected the --images folder the labels were made from")
    _positive("data.loader.batch_size", data.loader.batch_size)
    _positive("data.eval.batch_size", data.eval.batch_size)
    for key in ("loader.num_workers", "loader.prefetch", "loader.epoch_size", "eval.num_workers",
                "class_uniform.num_workers"):
        section, field = key.split(".")
        _positive(f"data.{key}", data[section][field], allow_zero=True)
    for key in ("loader.read_threads", "eval.read_threads"):
        section, field = key.split(".")
        _positive(f"data.{key}", data[section][field])


def validate_config(config: ConfigDict) -> None:
    """Check values ml_collections' typing cannot: names, choices, shapes and ranges. Raises
    ConfigError naming the key; called before any data is read or anything is compiled."""
    choice, positive = _choice, _positive
    for section in ("data", "model", "train", "optim", "checkpoint", "validation", "distributed",
                    "faults", "runtime"):
        if section not in config:
            raise ConfigError(f"config has no {section!r} section; build configs on "
                              f"hmsa_jax.train.config.default_config()")
    validate_data_config(config.data)
    choice("model.name", config.model.name, list_models())
    choice("model.dtype", config.model.dtype, ("float32", "bfloat16"))
    if config.model.num_classes == 1 or config.model.num_classes < 0:
        raise ConfigError(f"config.model.num_classes={config.model.num_classes}; expected 0 (the "
                          f"dataset's count) or >= 2")
    if not 0 < config.model.lo_scale < 1:
        raise ConfigError(f"config.model.lo_scale={config.model.lo_scale!r}; expected in (0, 1)")
    choice("model.trunk_init", config.model.trunk_init, tuple(TRUNK_INITS))
    if config.model.trunk_init != "reference" and not hasattr(create_model(config.model.name, num_classes=2), "trunk_init"):
        raise ConfigError(f"config.model.trunk_init={config.model.trunk_init!r} applies to HRNet "
                          f"models only; {config.model.name!r} keeps its reference init")
    choice("train.criterion", config.train.criterion, CRITERIA)
    choice("train.scale_mode", config.train.scale_mode, SCALE_MODES)
    choice("train.remat", config.train.remat, REMAT_MODES)
    positive("train.steps", config.train.steps, allow_zero=True)
    if not config.train.steps:
        positive("train.epochs", config.train.epochs)
    positive("train.log_every", config.train.log_every)
    positive("train.checkpoint_every", config.train.checkpoint_every)
    positive("train.num_devices", config.train.num_devices, allow_zero=True)
    positive("train.profile_start_step", config.train.profile_start_step, allow_zero=True)
    positive("train.profile_steps", config.train.profile_steps)
    choice("optim.decay", config.optim.decay, ("all", "kernels"))
    positive("optim.learning_rate", config.optim.learning_rate)
    _within("optim.momentum", config.optim.momentum, 0.0, 1.0)
    for field in ("weight_decay", "poly_power", "warmup_steps", "end_lr", "grad_clip_norm"):
        positive(f"optim.{field}", config.optim[field], allow_zero=True)
    for field in ("aux_weight", "scale_supervision_weight"):
        positive(f"train.{field}", config.train[field], allow_zero=True)
    _within("train.ignore_label", config.train.ignore_label, 0, 255)
    positive("validation.pictures", config.validation.pictures, allow_zero=True)
    positive("validation.max_batches", config.validation.max_batches, allow_zero=True)
    choice("checkpoint.init_which", config.checkpoint.init_which, ("latest", "best"))
    positive("checkpoint.max_to_keep", config.checkpoint.max_to_keep)
    positive("checkpoint.keep_best", config.checkpoint.keep_best, allow_zero=True)
    choice("validation.fusion", config.validation.fusion, tuple(FUSIONS))
    choice("distributed.mode", config.distributed.mode, ("auto", "on", "off"))
    choice("runtime.transfer_guard", config.runtime.transfer_guard, TRANSFER_GUARD_MODES)
    positive("distributed.num_processes", config.distributed.num_processes, allow_zero=True)
    if config.distributed.process_id < -1:
        raise ConfigError(f"config.distributed.process_id={config.distributed.process_id}; "
                          f"expected -1 (from the environment) or >= 0")
    positive("distributed.initialization_timeout_s", config.distributed.initialization_timeout_s)
    positive("distributed.heartbeat_timeout_s", config.distributed.heartbeat_timeout_s)
    positive("faults.max_nonfinite_steps", config.faults.max_nonfinite_steps)
    positive("faults.stop_check_every", config.faults.stop_check_every)
    try:
        for field in ("scales", "picture_scales"):
            validate_scales(config.validation[field])
    except ValueError as error:
        raise ConfigError(f"config.validation.{field}: {error}") from None
    _check_scaled_sizes(config)
    attention = _model_attention(config.model.name)
    if config.train.scale_mode == "average" and attention != "none":
        raise ConfigError(f"config.train.scale_mode='average' needs a single-scale model "
                          f"(attention 'none'); {config.model.name!r} has attention {attention!r}")
    check_fusion(config.validation.fusion, attention, len(config.validation.scales), ConfigError,
                 "config.validation.fusion", repr(config.model.name))


def _check_scaled_sizes(config: ConfigDict) -> None:
    """Each scale leaves at least one pixel: the training crop at model.lo_scale and, for the
    built-in datasets (whose image size the config holds), their images at the validation and
    picture scales."""
    crop = tuple(config.data.augment.crop_size)
    if _empty_at(*crop, config.model.lo_scale):
        raise ConfigError(f"config.model.lo_scale={config.model.lo_scale} makes the "
                          f"{crop[0]}x{crop[1]} training crop empty; expected a crop of at least "
                          f"{math.ceil(1 / config.model.lo_scale)} pixels each way")
    if config.data.dataset not in ("synthetic", "scale_bench"):
        return
    size = config.data[config.data.dataset]
    for field in ("scales", "picture_scales"):
        for scale in config.validation[field]:
            if _empty_at(size.height, size.width, scale):
                raise ConfigError(f"config.validation.{field}: scale {scale:g} makes the "
                                  f"{size.height}x{size.width} {config.data.dataset} images empty; "
                                  f"expected every scale to leave at least 1 pixel each way")


def _empty_at(height: int, width: int, scale: float) -> bool:
    """Whether the model's rescaling rule (ops.scaled_size) leaves no pixel."""
    try:
        scaled_size(height, width, scale)
    except ValueError:
        return True
    return False


def _model_attention(name: str) -> str:
    return create_model(name, num_classes=2).attention


__all__ = ["default_config", "validate_config", "validate_data_config"]
