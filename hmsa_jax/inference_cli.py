"""Command-line pieces shared by `hmsa eval`, `hmsa predict` and `hmsa autolabel`: checkpoint
and inference options, runtime setup, and turning our error types into one clear line.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from hmsa_jax import runtime as runtime_setup
from hmsa_jax.checkpoint import CheckpointError
from hmsa_jax.configlib import ConfigError
from hmsa_jax.data.errors import DataError
from hmsa_jax.input_checks import InferenceError
from hmsa_jax.train.config import default_config

FUSION_CHOICES = ("hierarchical", "avg", "max")


def argument_parser(prog: str, description: str) -> argparse.ArgumentParser:
    # allow_abbrev=False: a --config.a.b override must never be taken for an abbreviation.
    return argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="a training workdir, its checkpoints/ folder, one step folder, or a "
                             "`hmsa convert` output")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: --which)")
    parser.add_argument("--which", choices=("latest", "best"), default="latest",
                        help="latest step, or the best by validation mIoU")


def add_inference_arguments(parser: argparse.ArgumentParser, default_scales: str = "0.5,1.0,2.0") -> None:
    parser.add_argument("--scales", default=default_scales,
                        help=f"comma-separated inference scales (default {default_scales}); hierarchical "
                             f"fusion needs 1.0 among them, avg and max take any (output at the input's size)")
    parser.add_argument("--fusion", choices=FUSION_CHOICES, default="hierarchical",
                        help="hierarchical attention (the paper), or the avg / max baselines")
    parser.add_argument("--flip", action="store_true", help="average with the mirrored image's logits")
    parser.add_argument("--window", default=None, metavar="H,W",
                        help="sliding-window inference with windows of H x W pixels (for images too "
                             "large for memory); default: whole images")
    parser.add_argument("--overlap", type=float, default=1 / 3,
                        help="fraction of a window shared with its neighbour (sliding window)")


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=0,
                        help="images per call, split over this process's devices (default 0: one "
                             "per local device); consecutive images of one size share a call")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar (there is none either when stderr is not a terminal)")


def check_batch_size(batch_size: int) -> None:
    if batch_size < 0:
        raise InferenceError(f"--batch-size={batch_size}; expected 0 (one image per device) or more")


def parse_pair(text: str | None, what: str) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        first, second = (int(v) for v in text.split(","))
    except ValueError:
        raise InferenceError(f"{what}={text!r}; expected two integers 'H,W'") from None
    return first, second


def configure_runtime(runtime=None) -> None:
    """Compilation cache and CPU fast compile as `hmsa train` does (before any backend starts),
    from `runtime` (a config given on this command line) or the defaults: a checkpoint's saved
    runtime section is another machine's and never applies."""
    for note in runtime_setup.configure_runtime(runtime if runtime is not None else default_config().runtime):
        print(note)


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean 'bad input', printed as one line instead of a traceback."""
    # The OSErrors a wrong path gives (an --out that is a file, a read-only folder): their
    # message names the path.
    return (CheckpointError, ConfigError, DataError, InferenceError, FileNotFoundError,
            FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


def run_guarded(prog: str, command: Callable[[], int]) -> int:
    """Run `command`; our error types become 'prog: message' on stderr and exit code 2."""
    errors = user_errors()
    try:
        return int(command() or 0)
    except errors as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 2


__all__ = ["add_batch_arguments", "add_checkpoint_arguments", "check_batch_size", "add_inference_arguments", "argument_parser",
           "configure_runtime",
           "parse_pair", "run_guarded", "user_errors"]
