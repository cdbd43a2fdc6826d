"""One command-line style for every `hmsa` subcommand.

Options are argparse options with dashed names (`--stop-after`, `--max-records`); the
underscore spellings README and scripts once used (`--stop_after`, `--max_records`) are read as
the dashed ones. A run's config is ml_collections' `--config=FILE[:preset]` with
`--config.a.b=value` overrides (field names keep their underscores); `parse` hands those on,
untouched, for hmsa_jax.configlib.load_config.
"""
from __future__ import annotations

import argparse


def argument_parser(prog: str, description: str | None = None) -> argparse.ArgumentParser:
    """A parser that never takes `--config.a.b` (or any prefix) for an abbreviation and prints
    `description` as written."""
    return argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_config_argument(parser: argparse.ArgumentParser, what: str = "the run's config") -> None:
    parser.add_argument("--config", metavar="FILE[:preset]",
                        help=f"{what}: a configs/*.py file and preset; --config.a.b=VALUE sets a "
                             f"field (`hmsa train --help` lists them)")


def wants_help(argv: list[str]) -> bool:
    return any(arg in ("-h", "--help") for arg in argv)


def is_config_override(arg: str) -> bool:
    return arg.startswith("--config.")


def dashed_option_names(argv: list[str]) -> list[str]:
    """`--max_records=3` -> `--max-records=3`: underscores in an option's name (not in its value,
    a --config override's field names or anything after `--`) read as dashes."""
    spelled, options_ended = [], False
    for arg in argv:
        if arg == "--":
            options_ended = True
        if not options_ended and arg.startswith("--") and not is_config_override(arg):
            name, separator, value = arg.partition("=")
            arg = name.replace("_", "-") + separator + value
        spelled.append(arg)
    return spelled


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """(the parser's options, the config arguments for load_config: `--config=FILE` if given,
    then the `--config.a.b=value` overrides in order). An unknown option or a bad value is
    argparse's usual one-line error and exit status 2."""
    overrides = [arg for arg in argv if is_config_override(arg)]
    args = parser.parse_args(dashed_option_names([arg for arg in argv if not is_config_override(arg)]))
    return args, ([f"--config={args.config}"] if args.config is not None else []) + overrides


def config_arguments(argv: list[str]) -> list[str]:
    """The config arguments alone, for a command's --help (which runs before parsing)."""
    files = [f"--config={value}" for arg, value in zip(argv, argv[1:] + [""]) if arg == "--config"]
    files += [arg for arg in argv if arg.startswith("--config=")]
    return files[-1:] + [arg for arg in argv if is_config_override(arg)]


def comma_list(text: str) -> list[str]:
    """`--splits=train,eval` -> ["train", "eval"]."""
    return [item for item in text.split(",") if item]


__all__ = ["add_config_argument", "argument_parser", "comma_list", "config_arguments",
           "dashed_option_names", "is_config_override", "parse", "wants_help"]
