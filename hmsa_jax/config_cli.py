"""`hmsa config --config=configs/<file>.py[:preset] [--config.a.b=value ...] [--json]`

Prints the config a `hmsa train` with the same arguments would run (file, preset and overrides
applied, checked as training checks it) and exits; nothing is read or compiled. Fields that are
0 or "" mean "derive" or "off" (train.steps=0: epochs x steps per epoch; model.num_classes=0:
the dataset's count), as the comments in hmsa_jax/train/config.py say.
"""
from __future__ import annotations

import json
import sys

import yaml  # ml_collections' own dependency

from hmsa_jax import flags
from hmsa_jax.configlib import ConfigError, config_to_dict, load_config
from hmsa_jax.train.config import validate_config


def argument_parser():
    parser = flags.argument_parser("hmsa config", __doc__)
    flags.add_config_argument(parser)
    parser.add_argument("--json", action="store_true",
                        help="print JSON (as config.json of a run) instead of YAML")
    return parser


class _InlineListDumper(yaml.SafeDumper):
    """Sections as blocks, lists (crop sizes, scales) on one line."""


_InlineListDumper.add_representer(
    list, lambda dumper, value: dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=True))


def render(config, as_json: bool) -> str:
    resolved = config_to_dict(config)  # tuples as lists: no "!!python/tuple" tags in the YAML
    if as_json:
        return json.dumps(resolved, indent=2)
    return yaml.dump(resolved, Dumper=_InlineListDumper, sort_keys=False).rstrip("\n")


def main(argv: list[str]) -> int:
    parser = argument_parser()
    if flags.wants_help(argv):
        print(parser.format_help())
        return 0
    values, config_args = flags.parse(parser, argv)
    try:
        config, _ = load_config(config_args)
        if "model" in config:  # a training config (a data-only config has nothing more to check)
            validate_config(config)
    except ConfigError as error:
        print(f"hmsa config: {error}", file=sys.stderr)
        return 2
    print(render(config, values.json))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
