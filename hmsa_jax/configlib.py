"""Loading a run's config: `--config=configs/x.py[:preset]` plus `--config.a.b=value` overrides.

ml_collections config_flags semantics without absl's app.run: a config file defines
`get_config(arg)`, the text after ':' is `arg`, and every override must name an existing field
with a value of its type. Errors (unknown preset, unknown key, wrong type) surface as
`ConfigError` naming the file, key or value, before anything is computed.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import traceback

from absl import flags
from ml_collections import ConfigDict, config_flags


class ConfigError(ValueError):
    """A config file, preset, key or value that cannot be used."""


def load_config(argv: list[str]):
    """Parse `--config=FILE[:preset]` and `--config.a.b=value` arguments (the others are the
    command's: see hmsa_jax.flags) into (config, the absl FlagValues that read them). The
    config is locked: later code cannot add keys by mistake.
    """
    argv = ["hmsa"] + list(argv)
    values = flags.FlagValues()
    # sys_argv: the overrides are read from this list, not from the process's sys.argv.
    config_flags.DEFINE_config_file("config", None, "config file, optionally :preset",
                                    flag_values=values, lock_config=True, sys_argv=argv)
    _check_config_file(argv)
    _check_override_keys(argv)
    try:
        values(argv)
        config = values.config
        if config is not None and not isinstance(config, ConfigDict):
            raise ConfigError(f"{_config_path(argv)}: get_config() returned a "
                              f"{type(config).__name__}; expected an ml_collections ConfigDict "
                              f"(build it on hmsa_jax.train.config.default_config())")
        if config is not None:
            "model" in config  # noqa: B015  (config_flags defers a load failure to first use)
    except ConfigError:
        raise
    except (flags.Error, KeyError, TypeError, ValueError, AttributeError) as error:
        raised_by_file = _raised_in_config_file(error, argv)
        if raised_by_file is not None:  # e.g. get_config rejecting a preset
            raise ConfigError(_explain_file_error(raised_by_file, argv)) from error
        raise ConfigError(_explain(error, argv)) from error
    except Exception as error:  # raised by the config file itself (syntax error, get_config)
        raise ConfigError(_explain_file_error(error, argv)) from error
    if config is None:
        raise ConfigError("missing --config=configs/<file>.py[:preset]")
    return config, values


def config_fields(config: ConfigDict, prefix: str = "config") -> list[tuple[str, object]]:
    """(dotted key, value) of every leaf field, in the config's order."""
    fields = []
    for key, value in config.items():
        if isinstance(value, ConfigDict):
            fields += config_fields(value, f"{prefix}.{key}")
        else:
            fields.append((f"{prefix}.{key}", value))
    return fields


def format_config_fields(config: ConfigDict) -> str:
    """`  --config.train.steps=0` lines, tuples written as an override takes them."""
    def text(value) -> str:
        if isinstance(value, (tuple, list)):
            return "(" + ",".join(str(v) for v in value) + ("," if len(value) == 1 else "") + ")"
        return "''" if value == "" else str(value)

    return "\n".join(f"  --{key}={text(value)}" for key, value in config_fields(config))


def _config_path(argv: list[str]) -> str | None:
    config_args = [a for a in argv if a.startswith("--config=")]
    return config_args[-1].split("=", 1)[1].split(":")[0] if config_args else None


def _check_config_file(argv: list[str]) -> None:
    path = _config_path(argv)
    if path is not None and not os.path.isfile(path):
        raise ConfigError(f"{path}: no such config file (expected a Python file defining "
                          f"get_config, e.g. configs/synthetic_demo.py)")
    if path is not None and not path.endswith(".py"):
        kind = f"a {os.path.splitext(path)[1]} file" if os.path.splitext(path)[1] else "a file without extension"
        raise ConfigError(f"{path}: {kind}; expected a Python config file (.py) defining "
                          f"get_config(), e.g. configs/synthetic_demo.py (YAML/JSON are not read: "
                          f"set values with --config.a.b=value overrides)")
    if path is not None and not _defines_get_config(path):
        raise ConfigError(f"{path}: defines no get_config(); expected a Python file with "
                          f"get_config(arg=None) returning the config, e.g. configs/synthetic_demo.py")


def _raised_in_config_file(error: Exception, argv: list[str]) -> Exception | None:
    """The exception the config file itself raised, if `error` (config_flags wraps it) has one."""
    path = _config_path(argv)
    while error is not None and path is not None:
        frames = traceback.extract_tb(error.__traceback__)
        if any(os.path.basename(f.filename) == os.path.basename(path) for f in frames):
            return error
        error = error.__cause__ or error.__context__
    return None


def _defines_get_config(path: str) -> bool:
    """Whether the file binds `get_config` at its top level (a def, an assignment or an import).
    A file that does not parse counts as defining it: loading it reports the syntax error. (An
    AST check because ml_collections re-executes every config file into one module object, so
    a file without get_config would silently reuse the previous file's in a long process.)"""
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return True
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "get_config":
            return True
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any(
                (alias.asname or alias.name) == "get_config" for alias in node.names):
            return True
        targets = node.targets if isinstance(node, ast.Assign) else []
        if any(isinstance(t, ast.Name) and t.id == "get_config" for t in targets):
            return True
    return False


def _explain_file_error(error: Exception, argv: list[str]) -> str:
    """`file: line N: Error: message`, the line being the deepest frame inside the config file."""
    path = _config_path(argv) or "<config>"
    line = getattr(error, "lineno", None) if isinstance(error, SyntaxError) else None
    for frame in traceback.extract_tb(error.__traceback__):
        if os.path.basename(frame.filename) == os.path.basename(path):
            line = frame.lineno
    where = f"{path}: line {line}" if line else path
    message = error.msg if isinstance(error, SyntaxError) else str(error)
    head, separator, rest = message.partition(": ")
    if separator and head.endswith(os.path.basename(path)):  # the file already named itself
        message = rest
    return f"{where}: {type(error).__name__}: {message}"


def _check_override_keys(argv: list[str]) -> None:
    """Name the unknown key of a `--config.a.b=v` override (config_flags only says 'b')."""
    config_args = [a for a in argv if a.startswith("--config=")]
    overrides = [a for a in argv if a.startswith("--config.")]
    if overrides and not config_args:
        raise ConfigError(f"{overrides[0]}: an override needs the config it changes; missing "
                          f"--config=configs/<file>.py[:preset]")
    if not config_args or not overrides:
        return
    path = config_args[-1].split("=", 1)[1]
    try:
        config = _run_get_config(path)
    except Exception:  # the full parse below reports problems with the file itself
        return
    for override in overrides:
        keys = override[len("--config."):].split("=", 1)[0].split(".")
        node, walked = config, []
        for key in keys:
            if not isinstance(node, ConfigDict) or key not in node:
                where = ".".join(walked) or "the top level"
                known = sorted(node.keys()) if isinstance(node, ConfigDict) else []
                raise ConfigError(f"{path}: {override.split('=', 1)[0]}: unknown key {key!r} in "
                                  f"{where}; expected one of {known}")
            node, walked = node[key], walked + [key]


def _run_get_config(path: str):
    """`get_config(preset)` of `file.py[:preset]`, the file imported as a fresh module."""
    file, *preset = path.split(":", 1)
    spec = importlib.util.spec_from_file_location("hmsa_config_file", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*preset)


def _explain(error: Exception, argv: list[str]) -> str:
    config_arg = next((a for a in argv if a.startswith("--config=")), "--config=<unset>")
    return f"{config_arg.split('=', 1)[1]}: {error}"


def config_to_dict(config: ConfigDict) -> dict:
    """A JSON-ready copy (tuples become lists)."""
    return json.loads(config.to_json_best_effort())


def check_fields(config: ConfigDict, reference: ConfigDict, where: str = "config") -> None:
    """Every key of `config` exists in `reference` with a value of the same type (recursively).

    For configs read back from JSON (a checkpoint's saved config), where no ConfigDict typing
    guards the values.
    """
    for key, value in config.items():
        path = f"{where}.{key}"
        if key not in reference:
            raise ConfigError(f"{path}: unknown key; expected one of {sorted(reference.keys())}")
        expected = reference[key]
        if isinstance(expected, ConfigDict):
            if not isinstance(value, (ConfigDict, dict)):
                raise ConfigError(f"{path}: expected a section, got {value!r}")
            check_fields(ConfigDict(value) if isinstance(value, dict) else value, expected, path)
        elif expected is not None and value is not None and not _same_kind(value, expected):
            raise ConfigError(f"{path}={value!r}: expected a {type(expected).__name__}")


def _same_kind(value, expected) -> bool:
    if isinstance(expected, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(expected, bool)
    if isinstance(expected, float):
        return isinstance(value, (int, float))
    if isinstance(expected, (tuple, list)):
        return isinstance(value, (tuple, list))
    return isinstance(value, type(expected))


__all__ = ["ConfigError", "check_fields", "config_fields", "config_to_dict", "format_config_fields",
           "load_config"]
