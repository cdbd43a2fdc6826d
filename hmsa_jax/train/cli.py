"""hmsa train --config=configs/<file>.py[:preset] --workdir=DIR [--config.a.b=value ...]

Trains (or resumes, when DIR holds checkpoints) the config's model. With the synthetic demo
config it needs no dataset:

    hmsa train --config=configs/synthetic_demo.py --workdir=/tmp/hmsa_demo

Writes DIR/config.json, DIR/metrics.jsonl, DIR/tensorboard/, DIR/checkpoints/, DIR/log.txt
(everything this command prints, with times, appended across resumes), DIR/scores.json and
DIR/scores.txt (the latest validation's per-class table) and, with checkpoint.init_from,
DIR/init_from.txt. `hmsa config --config=...` prints a resolved config without training;
`hmsa plot DIR...` draws the curves of metrics.jsonl.

Multi-host: the same command on every host; the job is joined as config.distributed and the
environment say (SLURM, Open MPI, TPU pods, or JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES +
JAX_PROCESS_ID). --stop-after=N ends this run after N steps with a checkpoint.

Exit status: 0 done (or --stop-after reached); 2 a config, workdir or checkpoint error (e.g.
no usable checkpoint left after setting damaged ones aside); 74 a checkpoint could not be
written (disk full, no permission: the earlier ones are intact, run the same command again once
fixed); 75 stopped by SIGTERM/SIGINT after saving a checkpoint (run the same command to resume;
a signal before the first step ends the process with 143 or 130, saving nothing); 1 any other error,
e.g. too many non-finite steps in a row or a process of the job that could not be reached.
"""
from __future__ import annotations

import os
import shlex
import sys

import jax

from hmsa_jax import flags, parallel
from hmsa_jax.checkpoint import CHECKPOINTS_SUBDIR, CheckpointError, CheckpointWriteError
from hmsa_jax.configlib import ConfigError, format_config_fields, load_config
from hmsa_jax.console import plural
from hmsa_jax.data.errors import DataError
from hmsa_jax.runtime import configure_runtime
from hmsa_jax.train import loop
from hmsa_jax.train.config import default_config, validate_config
from hmsa_jax.train.run_log import RunLog, log_file_name
from hmsa_jax.train.stopping import NonFiniteError, Preempted


def argument_parser():
    parser = flags.argument_parser("hmsa train", __doc__)
    flags.add_config_argument(parser)
    parser.add_argument("--workdir", metavar="DIR", help="run folder: config, metrics, checkpoints")
    parser.add_argument("--stop-after", type=int, default=None, metavar="N",
                        help="end this run after N steps, with a checkpoint (--stop_after too)")
    return parser


PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: try again (resume) later
WRITE_FAILED_EXIT_CODE = 74  # EX_IOERR: a checkpoint could not be written


def help_text(argv: list[str]) -> str:
    """The module docstring, this command's options and every config field with its value: the
    defaults, or those of the --config file (and overrides) when one is given."""
    config_args = flags.config_arguments(argv)
    if any(a.startswith("--config=") for a in config_args):
        config, _ = load_config(config_args)
        where = f"values of {' '.join(config_args)}"
    else:
        config, where = default_config(), "defaults; configs/*.py files change some"
    return (f"{argument_parser().format_help()}\nconfig fields ({where}; set any with "
            f"--config.<key>=<value>, print a whole config with `hmsa config --config=FILE`):\n"
            f"{format_config_fields(config)}")


def main(argv: list[str]) -> int:
    if flags.wants_help(argv):
        try:
            print(help_text(argv))
        except ConfigError as error:
            print(f"hmsa train: {error}", file=sys.stderr)
            return 2
        return 0

    values, config_args = flags.parse(argument_parser(), argv)
    try:
        config, _ = load_config(config_args)
        if not values.workdir:
            raise ConfigError("missing --workdir=DIR (where checkpoints and logs go)")
        _check_workdir(values.workdir)
        validate_config(config)
        _check_init_from(config.checkpoint.init_from, values.workdir)
        if values.stop_after is not None and values.stop_after < 1:
            raise ConfigError(f"--stop-after={values.stop_after}; expected a number of steps > 0")
    except ConfigError as error:
        print(f"hmsa train: {error}", file=sys.stderr)
        return 2
    with RunLog("hmsa train " + " ".join(argv)) as run_log:
        return _train_command(config, values, argv, run_log)


def _train_command(config, values, argv: list[str], run_log) -> int:
    """Everything after the config is known; what it prints also goes to the workdir's log."""
    for note in configure_runtime(config.runtime):
        print(note)
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
    run_log.attach(os.path.join(values.workdir, log_file_name(jax.process_index())))
    if plan is not None:
        print(f"hmsa train: process {jax.process_index()} of {jax.process_count()}, "
              f"{jax.local_device_count()} local / {plural(jax.device_count(), 'device')}", flush=True)
    try:
        summary = loop.train(config, values.workdir, stop_after=values.stop_after, record=run_log.record)
    except (CheckpointError, ConfigError, DataError) as error:  # data errors name the file or value; the last
        print(f"hmsa train: {error}", file=sys.stderr)  # checkpoint, if any, is untouched
        return 2
    except CheckpointWriteError as error:  # one line: the path and the cause
        print(f"hmsa train: {error}", file=sys.stderr)
        return WRITE_FAILED_EXIT_CODE
    except Preempted as stop:
        print(format_summary(stop.summary))
        print(f"hmsa train: {stop.signal_name} received: stopped after step {stop.step} and saved "
              f"{stop.checkpoint_dir}. To resume, run the same command again: "
              f"hmsa train {shlex.join(argv)}", file=sys.stderr, flush=True)
        return PREEMPTED_EXIT_CODE
    except NonFiniteError as error:
        print(f"hmsa train: {error}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    return 0


def _check_workdir(workdir: str) -> None:
    """Fail before any compute if the workdir cannot hold checkpoints."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"--workdir={workdir}: exists and is not a folder")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"--workdir={workdir}: cannot create it ({error.strerror})") from error
    if not os.access(workdir, os.W_OK):
        raise ConfigError(f"--workdir={workdir}: not writable")


def _check_init_from(init_from: str, workdir: str) -> None:
    """A missing checkpoint.init_from fails before any data or compile, unless the workdir
    already has checkpoints (a resume never reads init_from)."""
    if not init_from or os.path.exists(os.path.expanduser(init_from)):
        return
    checkpoints = os.path.join(workdir, CHECKPOINTS_SUBDIR)
    if os.path.isdir(checkpoints) and any(name.isdigit() for name in os.listdir(checkpoints)):
        return
    raise ConfigError(f"config.checkpoint.init_from={init_from!r}: no such checkpoint folder "
                      f"(expected a training workdir, its checkpoints/ or a step folder)")


def _final_loss(summary: dict) -> str:
    if summary["steps_this_run"] == 0:
        return f"- (nothing to train: step {summary['steps']} of {summary['total_steps']} reached before)"
    return f"{summary['final_loss']:.4f}"


def format_summary(summary: dict) -> str:
    lines = ["", "training summary",
             f"  steps            {summary['steps']} / {summary['total_steps']} "
             f"({summary['steps_this_run']} in this run, {summary['seconds']:.0f} s)",
             f"  final loss       {_final_loss(summary)}"]
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
