"""hmsa train --config=configs/<file>.py[:preset] --workdir=DIR [--config.a.b=value ...]

Trains (or resumes, when DIR holds checkpoints) the config's model. With the synthetic demo
config it needs no dataset:

    hmsa train --config=configs/synthetic_demo.py --workdir=/tmp/hmsa_demo

Writes DIR/config.json, DIR/metrics.jsonl, DIR/tensorboard/ and DIR/checkpoints/.

Multi-host: the same command on every host; the job is joined as config.distributed and the
environment say (SLURM, Open MPI, TPU pods, or JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES +
JAX_PROCESS_ID). --stop_after=N ends this run after N steps with a checkpoint.

Exit status: 0 done (or --stop_after reached); 2 a config, workdir or checkpoint error (e.g.
no usable checkpoint left after setting damaged ones aside); 75 stopped by
SIGTERM/SIGINT after saving a checkpoint (run the same command to resume); 1 any other error,
e.g. too many non-finite steps in a row or a process of the job that could not be reached.
"""
from __future__ import annotations

import os
import sys

CPU_FAST_COMPILE_FLAG = "--xla_backend_optimization_level=0"
_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                        "jax_rocm7_plugin", "libtpu")


def _cpu_only() -> bool:
    """Whether JAX will run on the CPU, decided without initialising a backend (XLA flags must
    be set before that)."""
    import importlib.util

    platforms = os.environ.get("JAX_PLATFORMS", "").lower()
    if platforms:
        return platforms == "cpu"
    return not any(importlib.util.find_spec(m) for m in _ACCELERATOR_PLUGINS)


def configure_runtime(runtime) -> list[str]:
    """Persistent compilation cache and, on CPU, fast compilation. Returns what it did."""
    import jax
    from jax._src import xla_bridge

    notes = []
    if runtime.compile_cache and not jax.config.jax_compilation_cache_dir:
        cache = os.path.expanduser(runtime.compile_cache)
        os.makedirs(cache, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
        notes.append(f"compilation cache: {cache}")
    flags = os.environ.get("XLA_FLAGS", "")
    if (runtime.cpu_fast_compile and _cpu_only() and "xla_backend_optimization_level" not in flags
            and not xla_bridge.backends_are_initialized()):
        os.environ["XLA_FLAGS"] = f"{flags} {CPU_FAST_COMPILE_FLAG}".strip()
        notes.append(f"CPU: XLA_FLAGS+={CPU_FAST_COMPILE_FLAG} (runtime.cpu_fast_compile)")
    return notes


def _define_flags(values) -> None:
    from absl import flags

    flags.DEFINE_string("workdir", None, "run folder: config, metrics, checkpoints", flag_values=values)
    flags.DEFINE_integer("stop_after", None, "end this run after N steps (with a checkpoint)",
                         flag_values=values)


PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: try again (resume) later


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    from hmsa_jax.configlib import ConfigError, load_config

    try:
        config, values = load_config(argv, _define_flags)
        if not values.workdir:
            raise ConfigError("missing --workdir=DIR (where checkpoints and logs go)")
        _check_workdir(values.workdir)
        from hmsa_jax.train.config import validate_config

        validate_config(config)
    except ConfigError as error:
        print(f"hmsa train: {error}", file=sys.stderr)
        return 2
    for note in configure_runtime(config.runtime):
        print(note)
    from hmsa_jax import parallel
    from hmsa_jax.train.loop import NonFiniteError, Preempted, train

    plan = parallel.distributed_plan(config.distributed)
    if plan is not None:
        # The runtime aborts the process (a fatal log line, not a Python error) when a peer
        # never connects or stops sending heartbeats; this line says what it was waiting for.
        print(f"hmsa train: joining a multi-process job ({plan.reason}); waiting up to "
              f"{config.distributed.initialization_timeout_s} s for all processes, a process "
              f"silent for {config.distributed.heartbeat_timeout_s} s stops the job",
              file=sys.stderr, flush=True)
    try:
        parallel.initialize_distributed(config.distributed)
    except parallel.DistributedError as error:
        print(f"hmsa train: {error}", file=sys.stderr)
        return 1
    if plan is not None:
        import jax

        print(f"hmsa train: process {jax.process_index()} of {jax.process_count()}, "
              f"{jax.local_device_count()} local / {jax.device_count()} devices", flush=True)
    from hmsa_jax.checkpoint import CheckpointError
    from hmsa_jax.data.errors import DataError

    try:
        summary = train(config, values.workdir, stop_after=values.stop_after)
    except (CheckpointError, ConfigError, DataError) as error:  # data errors name the file or value; the last
        print(f"hmsa train: {error}", file=sys.stderr)  # checkpoint, if any, is untouched
        return 2
    except Preempted as stop:
        print(format_summary(stop.summary))
        print(f"hmsa train: {stop.signal_name} received: stopped after step {stop.step} and saved "
              f"{stop.checkpoint_dir}. To resume, run the same command again: "
              f"hmsa train {' '.join(argv)}", file=sys.stderr, flush=True)
        return PREEMPTED_EXIT_CODE
    except NonFiniteError as error:
        print(f"hmsa train: {error}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    return 0


def _check_workdir(workdir: str) -> None:
    """Fail before any compute if the workdir cannot hold checkpoints."""
    import os

    from hmsa_jax.configlib import ConfigError

    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"--workdir={workdir}: exists and is not a folder")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"--workdir={workdir}: cannot create it ({error.strerror})") from error
    if not os.access(workdir, os.W_OK):
        raise ConfigError(f"--workdir={workdir}: not writable")


def format_summary(summary: dict) -> str:
    lines = ["", "training summary",
             f"  steps            {summary['steps']} / {summary['total_steps']} "
             f"({summary['steps_this_run']} in this run, {summary['seconds']:.0f} s)",
             f"  final loss       {summary['final_loss']:.4f}"]
    if "val_miou" in summary:
        lines.append(f"  val mIoU         {100 * summary['val_miou']:.2f} "
                     f"(best {100 * summary['best_val_miou']:.2f})")
    if summary.get("skipped_steps"):
        lines.append(f"  skipped steps    {summary['skipped_steps']} (non-finite loss or gradient)")
    lines.append(f"  checkpoint       {summary['checkpoint']}")
    lines.append(f"  workdir          {summary['workdir']}")
    if summary.get("pictures"):
        lines.append(f"  pictures         {summary['pictures']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
