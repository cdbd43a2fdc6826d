"""Process-wide JAX setup every command does before a backend starts: the persistent
compilation cache and, on CPU, fast compilation."""
from __future__ import annotations

import importlib.util
import os

import jax

CPU_FAST_COMPILE_FLAG = "--xla_backend_optimization_level=0"
_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                        "jax_rocm7_plugin", "libtpu")


def _cpu_only() -> bool:
    """Whether JAX will run on the CPU, decided without initialising a backend (XLA flags must
    be set before that)."""
    platforms = os.environ.get("JAX_PLATFORMS", "").lower()
    if platforms:
        return platforms == "cpu"
    return not any(importlib.util.find_spec(m) for m in _ACCELERATOR_PLUGINS)


def _backend_started() -> bool:
    """Whether a JAX backend already exists (it read XLA_FLAGS when it started). JAX has no
    public query for this, but refuses to change jax_num_cpu_devices once a backend exists: try
    another value and put the old one back."""
    current = jax.config.jax_num_cpu_devices
    try:
        jax.config.update("jax_num_cpu_devices", 2 if current == 1 else 1)
    except RuntimeError:
        return True
    jax.config.update("jax_num_cpu_devices", current)
    return False


def configure_runtime(runtime) -> list[str]:
    """Persistent compilation cache and, on CPU, fast compilation. Returns what it did."""
    notes = []
    if runtime.compile_cache and not jax.config.jax_compilation_cache_dir:
        cache = os.path.expanduser(runtime.compile_cache)
        os.makedirs(cache, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
        notes.append(f"compilation cache: {cache}")
    flags = os.environ.get("XLA_FLAGS", "")
    if (runtime.cpu_fast_compile and _cpu_only() and "xla_backend_optimization_level" not in flags
            and not _backend_started()):
        os.environ["XLA_FLAGS"] = f"{flags} {CPU_FAST_COMPILE_FLAG}".strip()
        notes.append(f"CPU: XLA_FLAGS+={CPU_FAST_COMPILE_FLAG} (runtime.cpu_fast_compile)")
    return notes


__all__ = ["CPU_FAST_COMPILE_FLAG", "configure_runtime"]
