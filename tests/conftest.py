"""Test-wide JAX setup: 8 simulated CPU devices and a persistent compilation cache.

Both must be configured before JAX initialises its backend, hence at import time here.
"""
import os
import pathlib

import jax

jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_num_cpu_devices", 8)
_cache = os.environ.get("HMSA_JAX_CACHE", str(pathlib.Path(__file__).resolve().parent.parent / ".jax_cache"))
jax.config.update("jax_compilation_cache_dir", _cache)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
