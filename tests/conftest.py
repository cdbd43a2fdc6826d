"""Test-wide JAX setup: 8 simulated CPU devices, fast CPU compiles, a persistent compile cache.

All of it must be configured before JAX initialises its backend, hence at import time here.
"""
import os
import pathlib

# The tests run tiny models on tiny inputs, where XLA:CPU's LLVM optimisation costs far more
# (about 2x the compile time of a train step) than it saves at run time.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402

jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_num_cpu_devices", 8)
_cache = os.environ.get("HMSA_JAX_CACHE", str(pathlib.Path(__file__).resolve().parent.parent / ".jax_cache"))
jax.config.update("jax_compilation_cache_dir", _cache)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
