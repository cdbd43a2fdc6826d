"""The `hmsa` command: one entry point, one subcommand per job.

Each subcommand lives in its own module and exposes `main(argv) -> int`; this file only maps
names to modules, imported lazily so that `hmsa --help` stays fast and a subcommand's heavy
imports (grain, orbax, torch) are paid only by the subcommand that needs them.
"""
from __future__ import annotations

import importlib
import sys

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "models": ("hmsa_jax.models.registry", "list the models create_model() knows, with parameter counts"),
    "data-check": ("hmsa_jax.data.check", "validate a dataset (files, sizes, label values) and print class histograms"),
    "convert": ("hmsa_jax.convert.cli", "convert a PyTorch checkpoint of the reference implementation to Orbax"),
    "train": ("hmsa_jax.train.cli", "train or resume a model from a config (synthetic demo without a dataset)"),
    "eval": ("hmsa_jax.evaluate", "score a checkpoint on a dataset split at any scales (mIoU table and JSON)"),
    "predict": ("hmsa_jax.predict", "predict images: colour maps, overlays, per-scale attention pictures, index.html"),
    "autolabel": ("hmsa_jax.autolabel", "hard-threshold teacher labels for a folder of images (training source)"),
    "export": ("hmsa_jax.export", "one file (jax.export / StableHLO) that runs a checkpoint's predictor with plain jax"),
    "config": ("hmsa_jax.config_cli", "print the resolved config of --config=FILE[:preset] [--config.a.b=v] and exit"),
    "plot": ("hmsa_jax.plot", "loss, learning rate, throughput and val mIoU curves of runs (metrics.jsonl) as a PNG"),
}


def _usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = ["usage: hmsa <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "Run `hmsa <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"hmsa: unknown command {name!r}; expected one of: {', '.join(SUBCOMMANDS)}",
              file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
