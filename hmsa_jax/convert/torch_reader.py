"""Read a PyTorch checkpoint as {key: numpy array} without executing code from the file.

`torch.load(weights_only=True)` unpickles only tensors, containers and plain Python values.
Training checkpoints of the reference also hold numpy scalars and arrays (e.g. `mean_iu`); the
numpy reconstructors for those are allowed too, since they build plain data and nothing else.
Anything needing more is refused with the list of Python objects the file asks for.
"""
from __future__ import annotations

import dataclasses
import pathlib
import pickle
from typing import Any, Mapping

import numpy as np

try:
    from numpy._core import multiarray  # numpy >= 2
except ImportError:
    from numpy.core import multiarray  # numpy 1.26

INSTALL_HINT = ("reading PyTorch checkpoints needs PyTorch: pip install 'hmsa_jax[convert]' "
                "(the CPU build is enough: pip install torch --index-url https://download.pytorch.org/whl/cpu)")
DDP_PREFIX = "module."


class TorchNotInstalledError(ImportError):
    """torch is an optional extra; raised with the command that installs it."""


class CheckpointReadError(ValueError):
    """The file is not a readable state dict, or needs more than weights-only loading."""


@dataclasses.dataclass(frozen=True)
class TorchStateDict:
    arrays: dict[str, np.ndarray]        # keys without the DDP prefix, torch layouts
    container: str                       # "state_dict" (a training checkpoint) or "bare"
    stripped_prefix: bool                # whether any key carried `module.`
    original_dtypes: dict[str, str]      # keys whose tensors were not float32 / int64


def import_torch():
    try:
        import torch  # the optional `convert` extra, needed by this command only
    except ImportError as e:
        raise TorchNotInstalledError(INSTALL_HINT) from e
    return torch


def _numpy_data_globals() -> list:
    """numpy reconstructors that build plain data, under both their numpy 1.x and 2.x names."""
    allowed = [np.ndarray, np.dtype]
    allowed += [(multiarray.scalar, f"{mod}.multiarray.scalar") for mod in ("numpy.core", "numpy._core")]
    allowed += [(multiarray._reconstruct, f"{mod}.multiarray._reconstruct") for mod in ("numpy.core", "numpy._core")]
    allowed += [cls for cls in vars(np.dtypes).values() if isinstance(cls, type) and issubclass(cls, np.dtype)]
    return allowed


def load_weights_only(path: str | pathlib.Path) -> Any:
    """torch.load(path, weights_only=True) on CPU, with errors that say what to do."""
    torch = import_torch()
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointReadError(f"{path}: no such file")
    try:
        with torch.serialization.safe_globals(_numpy_data_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        try:
            needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 - not a pickle torch can even scan: not a checkpoint
            needed = []
        if not needed:
            raise CheckpointReadError(f"{path}: not a readable PyTorch checkpoint "
                                      f"({_unpickler_reason(e)})") from e
        raise CheckpointReadError(
            f"{path}: refused: besides tensors and plain values, the file asks to import and call "
            f"{', '.join(needed)}. Loading it any other way than PyTorch's weights-only loading "
            f"would run that code, with your permissions; it was not loaded. Convert a file that "
            f"holds only tensors (a state dict), from a source you trust") from e
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError, TypeError) as e:
        # torch's restricted unpickler fails on arbitrary bytes with whatever its stack gives
        # (IndexError on a text file): none of them is a checkpoint
        raise CheckpointReadError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from e


def _unpickler_reason(error: Exception) -> str:
    """The line of torch's weights-only message that says what broke (the rest is advice that
    applies to real checkpoints, e.g. 'Unsupported operand 35' for a file that is no pickle)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.endswith("error:") and i + 1 < len(lines):
            return f"{line} {lines[i + 1]}".split("use case: ")[-1]
    return lines[0] if lines else type(error).__name__


def select_state_dict(obj: Any, path: str | pathlib.Path) -> tuple[Mapping[str, Any], str]:
    """The state dict inside a loaded checkpoint: obj["state_dict"] or obj itself."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        return obj["state_dict"], "state_dict"
    if isinstance(obj, Mapping) and obj and all(isinstance(k, str) for k in obj):
        return obj, "bare"
    shown = list(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__
    raise CheckpointReadError(
        f"{path}: expected a state dict (a dict of tensors) or a dict holding one under 'state_dict'; "
        f"got {shown}")


def strip_ddp_prefix(keys: list[str], path: str | pathlib.Path) -> dict[str, str]:
    """{checkpoint key: key without a leading `module.`}; raises if two keys then collide."""
    renamed = {k: k[len(DDP_PREFIX):] if k.startswith(DDP_PREFIX) else k for k in keys}
    seen: dict[str, str] = {}
    for original, new in renamed.items():
        if new in seen:
            raise CheckpointReadError(f"{path}: keys {seen[new]!r} and {original!r} both mean {new!r}")
        seen[new] = original
    return renamed


def tensor_to_numpy(torch, key: str, value: Any, path) -> np.ndarray:
    if not isinstance(value, torch.Tensor):
        raise CheckpointReadError(f"{path}: state dict entry {key!r} is a {type(value).__name__}, not a tensor")
    value = value.detach().cpu()
    if value.is_floating_point():
        value = value.float()  # float16/bfloat16 checkpoints: our parameters are float32
    return value.numpy().copy()


def read_state_dict(path: str | pathlib.Path) -> TorchStateDict:
    """Load `path` weights-only and return its tensors as numpy, keys without `module.`."""
    torch = import_torch()
    state, container = select_state_dict(load_weights_only(path), path)
    renamed = strip_ddp_prefix(list(state), path)
    arrays, dtypes = {}, {}
    for key, value in state.items():
        arrays[renamed[key]] = tensor_to_numpy(torch, key, value, path)
        if value.dtype not in (torch.float32, torch.int64):
            dtypes[renamed[key]] = str(value.dtype).removeprefix("torch.")
    return TorchStateDict(arrays=arrays, container=container,
                          stripped_prefix=any(k != v for k, v in renamed.items()),
                          original_dtypes=dtypes)
